//! The worker process's side (`tandem prefill-worker --connect ADDR`):
//! connect, say hello (model identity and shape), learn the server's
//! model identity (checked here too: a worker never computes for another
//! model), KV type, page size, chunk size and context, build a backend
//! for them, then run jobs until the server goes away.
//!
//! A reader thread takes the server's frames: jobs go to the computing
//! thread through a channel, a `Cancel` marks its job so the rows
//! callback stops the backend at its next chunk. Jobs run one at a time,
//! each answered by its rows then `Done`, or by `Failed`.

use std::io::BufReader;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use super::wire::{read_message, write_message, Hello, Message, Welcome, WireError};
use super::{PrefillBackend, PrefillJob};

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error("the server refused this worker: {0}")]
    Refused(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    Backend(String),
}

/// Connects to the server at `addr` as a worker announcing `hello`;
/// `make` builds the backend once the server said how it wants the KV.
/// Returns when the server closes the connection (Ok) or on an error.
pub fn run(
    addr: &str,
    hello: Hello,
    make: impl FnOnce(&Welcome) -> Result<Box<dyn PrefillBackend>, String>,
) -> Result<(), WorkerError> {
    let stream = TcpStream::connect(addr).map_err(|error| WorkerError::Connect {
        addr: addr.to_string(),
        error,
    })?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().map_err(WireError::from)?;
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    write_message(&mut writer, &Message::Hello(hello.clone()))?;
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)));
    let welcome = match read_message(&mut reader, 8192)? {
        Message::Welcome(w) => w,
        Message::Refuse(why) => return Err(WorkerError::Refused(why)),
        other => {
            return Err(
                WireError::Protocol(format!("expected welcome, got kind {}", other.kind())).into(),
            )
        }
    };
    if welcome.identity != hello.identity {
        return Err(WorkerError::Refused(format!(
            "the server's model (identity {:032x}) is not this worker's ({:032x})",
            welcome.identity, hello.identity
        )));
    }
    let _ = reader.get_ref().set_read_timeout(None);
    let mut backend = make(&welcome).map_err(WorkerError::Backend)?;
    eprintln!(
        "prefill worker: connected to {addr} ({} KV, {}-token pages, chunks of {})",
        welcome.kv_format, welcome.page_tokens, welcome.prefill_chunk
    );

    let cancelled = Arc::new(AtomicU64::new(u64::MAX));
    let (tx, rx) = channel::<PrefillJob>();
    let max_job = 16 + 4 * welcome.max_tokens as usize;
    let c = Arc::clone(&cancelled);
    let reading = std::thread::Builder::new()
        .name("tandem-worker-read".into())
        .spawn(move || -> Result<(), WireError> {
            loop {
                match read_message(&mut reader, max_job) {
                    Ok(Message::Job { job, skip, tokens }) => {
                        let j = PrefillJob {
                            job,
                            skip: skip as usize,
                            tokens,
                        };
                        if tx.send(j).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(Message::Cancel { job }) => c.store(job, Ordering::SeqCst),
                    Ok(other) => {
                        return Err(WireError::Protocol(format!(
                            "unexpected message kind {} from the server",
                            other.kind()
                        )))
                    }
                    Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Ok(())
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(WireError::from)?;

    for job in rx {
        let id = job.job;
        let mut broken: Option<WireError> = None;
        let mut rows = |image: Vec<u8>| {
            if cancelled.load(Ordering::SeqCst) == id {
                return false;
            }
            match write_message(&mut writer, &Message::Rows { job: id, image }) {
                Ok(()) => true,
                Err(e) => {
                    broken = Some(e);
                    false
                }
            }
        };
        let result = backend.prefill(&job, &mut rows);
        if let Some(e) = broken {
            return Err(e.into());
        }
        let reply = match result {
            Ok(Some(logits)) => Message::Done { job: id, logits },
            Ok(None) => Message::Failed {
                job: id,
                error: "cancelled".into(),
            },
            Err(e) => Message::Failed {
                job: id,
                error: e.to_string(),
            },
        };
        write_message(&mut writer, &reply)?;
    }
    match reading.join() {
        Ok(r) => r.map_err(WorkerError::from),
        Err(_) => Err(WorkerError::Backend("the reader thread panicked".into())),
    }
}
