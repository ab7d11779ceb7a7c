//! The server's side of prefill worker processes: a TCP listener
//! (`tandem serve --prefill-listen ADDR`) that greets each worker, checks
//! that it runs the same model, and adds it to the engine; one thread per
//! connection reads its frames (bounded by what this server's geometry
//! allows) and reports them to the engine thread.
//!
//! A worker is refused (a `Refuse` frame naming the difference, then the
//! connection is closed) when its model identity (`Model::identity`: the
//! configuration, tensor names, types, shapes and bytes at both ends of
//! every tensor), layer count, head size, KV heads or vocabulary differ
//! from the server's. Any read error, malformed or unexpected frame ends
//! the connection; the engine then retries the worker's job elsewhere
//! (see the module docs of `prefill`).

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tandem_kv::{max_image_bytes, KvGeometry};
use tandem_model::Model;

use super::wire::{read_message, write_message, Hello, Message, Welcome, MAX_TEXT};
use super::{PrefillJob, WorkerHub, WorkerLink, WorkerPort, WorkerReport};

/// How long a worker has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a worker may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server tells workers, and how it checks them.
#[derive(Clone)]
struct Greeting {
    hello: Hello,
    welcome: Welcome,
    /// Largest payload a worker may send.
    max_payload: usize,
}

/// The model and KV shape a worker must match.
pub fn hello_of(model: &Model) -> Hello {
    let c = &model.config;
    Hello {
        identity: model.identity().0,
        n_layers: c.n_layers as u32,
        head_dim: c.head_dim as u32,
        n_kv_heads: c.n_kv_heads as u32,
        vocab: c.vocab_size as u32,
    }
}

/// Listens on `addr` for prefill workers of `model`, whose KV will go
/// into pools of geometry `geom`; returns the bound address. Workers
/// joining are added to the engine behind `hub`.
pub fn listen(
    addr: &str,
    hub: WorkerHub,
    model: &Model,
    geom: &KvGeometry,
    prefill_chunk: usize,
    max_tokens: usize,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let hello = hello_of(model);
    let identity = hello.identity;
    let vocab_bytes = 12 + 4 * hello.vocab as usize;
    let greeting = Greeting {
        hello,
        welcome: Welcome {
            identity,
            kv_format: geom.format,
            page_tokens: geom.page_tokens as u32,
            prefill_chunk: prefill_chunk as u32,
            max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        },
        max_payload: (8 + max_image_bytes(geom))
            .max(vocab_bytes)
            .max(8 + MAX_TEXT),
    };
    std::thread::Builder::new()
        .name("tandem-prefill-listen".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let hub = hub.clone();
                let g = greeting.clone();
                let _ = std::thread::Builder::new()
                    .name("tandem-prefill-conn".into())
                    .spawn(move || serve_worker(stream, &hub, &g));
            }
        })?;
    Ok(local)
}

/// Why `got` cannot serve this server, if it cannot.
fn mismatch(want: &Hello, got: &Hello) -> Option<String> {
    if got.identity != want.identity {
        return Some(format!(
            "the worker's model (identity {:032x}) is not the server's ({:032x}): load the same file",
            got.identity, want.identity
        ));
    }
    let shape = |h: &Hello| (h.n_layers, h.head_dim, h.n_kv_heads, h.vocab);
    if shape(got) != shape(want) {
        return Some(format!(
            "the worker's model shape (layers, head size, KV heads, vocabulary) {:?} is not the server's {:?}",
            shape(got),
            shape(want)
        ));
    }
    None
}

fn serve_worker(stream: TcpStream, hub: &WorkerHub, g: &Greeting) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let hello = match read_message(&mut reader, 64) {
        Ok(Message::Hello(h)) => h,
        Ok(other) => {
            tracing::warn!(
                "prefill worker {peer}: expected hello, got kind {}",
                other.kind()
            );
            return;
        }
        Err(e) => {
            tracing::warn!("prefill worker {peer}: {e}");
            return;
        }
    };
    if let Some(why) = mismatch(&g.hello, &hello) {
        tracing::warn!("prefill worker {peer} refused: {why}");
        let _ = write_message(&mut writer, &Message::Refuse(why));
        return;
    }
    if write_message(&mut writer, &Message::Welcome(g.welcome.clone())).is_err() {
        return;
    }
    let _ = reader.get_ref().set_read_timeout(None);
    let Ok(closer) = writer.try_clone() else {
        return;
    };
    let link = TcpLink {
        peer: peer.clone(),
        stream: writer,
    };
    let Some(port) = hub.add(Box::new(link)) else {
        return;
    };
    tracing::info!("prefill worker {peer} joined");
    let error = read_reports(&mut reader, &port, g);
    tracing::warn!("prefill worker {peer} left: {error}");
    let _ = closer.shutdown(std::net::Shutdown::Both);
    port.report(WorkerReport::Gone { error });
}

/// Forwards the worker's frames until the connection ends or breaks the
/// protocol; returns why it ended.
fn read_reports(reader: &mut BufReader<TcpStream>, port: &WorkerPort, g: &Greeting) -> String {
    loop {
        let m = match read_message(reader, g.max_payload) {
            Ok(m) => m,
            Err(e) => return e.to_string(),
        };
        let r = match m {
            Message::Rows { job, image } => WorkerReport::Rows { job, image },
            Message::Done { job, logits } => WorkerReport::Done { job, logits },
            Message::Failed { job, error } => WorkerReport::Failed { job, error },
            other => return format!("unexpected message kind {} from a worker", other.kind()),
        };
        if !port.report(r) {
            return "the engine stopped".into();
        }
    }
}

/// The engine's end of a worker process: frames written on the engine
/// thread (short: jobs and cancels).
struct TcpLink {
    peer: String,
    stream: TcpStream,
}

impl WorkerLink for TcpLink {
    fn name(&self) -> String {
        format!("prefill worker {}", self.peer)
    }

    fn start(&mut self, job: &PrefillJob) -> Result<(), String> {
        let m = Message::Job {
            job: job.job,
            skip: u32::try_from(job.skip).map_err(|_| "skip overflows")?,
            tokens: job.tokens.clone(),
        };
        write_message(&mut self.stream, &m).map_err(|e| e.to_string())
    }

    fn cancel(&mut self, job: u64) {
        let _ = write_message(&mut self.stream, &Message::Cancel { job });
    }

    fn close(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        self.close();
    }
}
