//! A prefill backend on a thread of this process, as a worker: for a
//! backend with compute of its own (a GPU), and for tests of the
//! hand-off without sockets.
//!
//! The thread takes jobs from a channel, runs the backend and reports
//! through its [`WorkerPort`]; a cancel is a shared job id the rows
//! callback checks, so the backend stops at its next chunk. Dropping the
//! link (the engine closes it or stops) closes the channel and ends the
//! thread after its job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{PrefillBackend, PrefillJob, WorkerHub, WorkerLink, WorkerPort, WorkerReport};

struct LocalLink {
    tx: Option<Sender<PrefillJob>>,
    cancelled: Arc<AtomicU64>,
}

impl WorkerLink for LocalLink {
    fn name(&self) -> String {
        "in-process worker".into()
    }

    fn start(&mut self, job: &PrefillJob) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("closed")?;
        tx.send(job.clone())
            .map_err(|_| "the worker thread ended".to_string())
    }

    fn cancel(&mut self, job: u64) {
        self.cancelled.store(job, Ordering::SeqCst);
    }

    fn close(&mut self) {
        self.tx = None;
    }
}

/// Runs `backend` as a worker of the engine behind `hub`; None if the
/// engine has stopped. The thread ends when the engine drops the worker.
pub fn spawn(hub: &WorkerHub, mut backend: Box<dyn PrefillBackend>) -> Option<JoinHandle<()>> {
    let (tx, rx) = channel::<PrefillJob>();
    let cancelled = Arc::new(AtomicU64::new(u64::MAX));
    let port: WorkerPort = hub.add(Box::new(LocalLink {
        tx: Some(tx),
        cancelled: Arc::clone(&cancelled),
    }))?;
    std::thread::Builder::new()
        .name("tandem-prefill".into())
        .spawn(move || {
            for job in rx {
                let id = job.job;
                let mut rows = |image: Vec<u8>| {
                    cancelled.load(Ordering::SeqCst) != id
                        && port.report(WorkerReport::Rows { job: id, image })
                };
                let r = match backend.prefill(&job, &mut rows) {
                    Ok(Some(logits)) => WorkerReport::Done { job: id, logits },
                    Ok(None) => WorkerReport::Failed {
                        job: id,
                        error: "cancelled".into(),
                    },
                    Err(e) => WorkerReport::Failed {
                        job: id,
                        error: e.to_string(),
                    },
                };
                if !port.report(r) {
                    break;
                }
            }
        })
        .ok()
}
