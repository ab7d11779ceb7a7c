//! Prefill workers: prefill and decode as separate workers joined by a
//! queue and the KV store.
//!
//! In one process (the default) the *prefill worker* is the scheduler's
//! chunk planner: each step folds a budget of prompt tokens into the
//! decode batch (`scheduler.rs`). On a CPU that is the better design: a
//! separate prefill thread would need the same cores and the same
//! worker pool (one pass at a time), so it could only take turns with
//! decode, and a step that decodes every stream plus one chunk bounds
//! their inter-token latency by one chunk's time.
//!
//! A worker that brings its own compute — another process, on this
//! machine or another, or a GPU — plugs in through this module:
//!
//! - [`PrefillBackend`]: what a prefill *implementation* provides. Given
//!   a [`PrefillJob`] it computes the K/V of the job's tokens and hands
//!   back the rows from `skip` on as page images
//!   (`tandem_kv::PageImage`, checked bytes in global head order) and the
//!   last position's logits. [`cpu::CpuPrefill`] is the CPU one (the
//!   model's own forward pass over a private pool with its own prefix
//!   cache); a GPU backend implements the same trait.
//! - [`WorkerLink`]: how the engine thread reaches a worker (start a job,
//!   cancel it, close); the worker reports back through a [`WorkerPort`]
//!   with [`WorkerReport`]s. [`local::spawn`] runs a backend on a thread
//!   of this process; [`remote`] connects worker processes over TCP
//!   (`tandem prefill-worker`, the protocol in [`wire`]).
//!
//! # The hand-off, step by step
//!
//! All of it runs on the engine thread, between scheduler steps, except
//! the worker's computing and the connection's reading.
//!
//! 1. A worker joins: [`WorkerHub::add`] queues it to the engine thread,
//!    which keeps it idle. (A TCP worker has already said hello: same
//!    model identity, same layer count, head size, KV heads and
//!    vocabulary, or it was refused; the server told it the KV type,
//!    page size, chunk size and context.)
//! 2. Before each step, for each idle worker, the scheduler admits what
//!    it can and offers the oldest admitted request that still has at
//!    least `remote_min_tokens` prompt tokens to compute and has not
//!    failed a worker before (`Scheduler::take_prefill`). The request
//!    leaves the decode batch for the *handed-off* set, its sequence
//!    reserves the pages of every remaining position (if the pool cannot
//!    give them now, it is prefilled in-process instead; a sliding-window
//!    layer group only the pages a query after the prompt reads, the rest
//!    are holes whose rows the images carry and the sequence skips:
//!    `Sequence::reserve_final`), and the worker
//!    gets `(job, tokens, skip = positions the server holds)`.
//! 3. The worker computes (reusing its own prefix cache where it can: it
//!    does not receive the server's cached pages) and sends the rows of
//!    positions `skip..` in order, a page (or a page's tail) per image,
//!    as they are computed, then the logits of the last position.
//! 4. Each image is checked (`PageImage::parse`: size, format, geometry,
//!    model identity, checksum), must name this job, start at the
//!    sequence's next position and carry exactly the request's tokens
//!    there; it is then written into the sequence's reserved private
//!    pages and committed (full pages enter the prefix index, so a second
//!    request with this prefix waits for them rather than computing them).
//!    Only positions the sequence reserved can be written: an image never
//!    reaches another request's pages.
//! 5. `Done`: with every position filled and a finite logits row of the
//!    vocabulary's length, the scheduler samples the first token from it
//!    (the request's own sampler, penalties, log-probabilities: as if the
//!    step had computed the logits) and the request joins the decode
//!    batch.
//! 6. Failure — the link breaks (worker killed, connection closed), a
//!    report does not check out, `Failed`, or no report for
//!    `remote_timeout` — the job is taken back (`return_prefill`): the
//!    request re-enters the decode batch as a prefill with the rows that
//!    did check out kept (they are the request's own, verified), and is
//!    prefilled in-process from there (the pages reserved past them go
//!    back to the pool; where a windowed layer lacks rows the next
//!    position reads, because they were holes, from where the hand-off
//!    began, or from the start); a worker that misbehaved or went
//!    silent is dropped. Nothing is lost and no page leaks: the pages
//!    always belong to the request's sequence, which the scheduler owns.
//! 7. Cancel (client gone, timeout): the request and its sequence are
//!    dropped at once (pages freed before the next step); the worker is
//!    told `Cancel`, stops at its next chunk boundary, and stays busy
//!    until it answers (`Failed` or `Done`); its late images for the job
//!    are ignored.
//!
//! Results: the CPU backend runs the server's chunk size from the
//! positions its own cache holds; kernels do not depend on the batch, so
//! with the server's thread count (attention over a long context is split
//! by threads, and split attention equals unsplit only to ~1e-5) a worker
//! gives the in-process tokens and log-probabilities bit for bit
//! (`tests/prefill_workers.rs`, `tests/server/test_prefill_worker.py`).
//!
//! What the checks cannot see: the arithmetic. A worker with the right
//! model that computes wrong values (a bug, or a hostile process)
//! gives its request wrong K/V, and the pages it filled reach the prefix
//! cache. Workers are trusted to compute; they are not trusted to stay
//! inside their request's pages, to be well-formed, or to stay alive.

pub mod cpu;
pub mod local;
pub mod remote;
pub mod wire;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::engine::Command;
use crate::EngineError;

pub use crate::scheduler::PrefillJob;

/// What a worker tells the engine about its job.
#[derive(Debug)]
pub enum WorkerReport {
    /// A page image (`tandem_kv::PageImage` bytes) of job `job`.
    Rows { job: u64, image: Vec<u8> },
    /// Every row is sent; the last position's logits.
    Done { job: u64, logits: Vec<f32> },
    /// The job stopped (an error, or a cancel).
    Failed { job: u64, error: String },
    /// The worker is gone (its link broke); whatever it held is retried.
    Gone { error: String },
}

/// The engine's end of a worker.
pub trait WorkerLink: Send {
    /// A name for logs (e.g. the peer's address).
    fn name(&self) -> String;
    /// Starts `job`; an error means the worker is unusable.
    fn start(&mut self, job: &PrefillJob) -> Result<(), String>;
    /// Asks the worker to stop `job` (it answers `Failed` or `Done`).
    fn cancel(&mut self, job: u64);
    /// Drops the worker (closing its connection).
    fn close(&mut self) {}
}

/// A prefill implementation (CPU, GPU ...).
pub trait PrefillBackend: Send {
    /// Computes the K/V of `job.tokens` and returns the last position's
    /// logits. `rows` gets the rows of positions `job.skip..` in order, as
    /// page images of stream `job.job`, as soon as they are computed;
    /// when it returns false (cancelled, connection gone) the backend
    /// stops at its next chunk and returns `Ok(None)`.
    fn prefill(
        &mut self,
        job: &PrefillJob,
        rows: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<Option<Vec<f32>>, EngineError>;
}

/// Adds workers to a running engine (cloneable, usable from any thread).
#[derive(Clone)]
pub struct WorkerHub {
    pub(crate) tx: Sender<Command>,
    pub(crate) next: Arc<AtomicU64>,
}

impl WorkerHub {
    /// Hands `link` to the engine thread; the worker reports through the
    /// returned port. None: the engine has stopped.
    pub fn add(&self, link: Box<dyn WorkerLink>) -> Option<WorkerPort> {
        let worker = self.next.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Command::AddWorker(worker, link)).ok()?;
        Some(WorkerPort {
            worker,
            tx: self.tx.clone(),
        })
    }
}

/// A worker's way to report to the engine thread.
#[derive(Clone)]
pub struct WorkerPort {
    worker: u64,
    tx: Sender<Command>,
}

impl WorkerPort {
    /// False: the engine has stopped.
    pub fn report(&self, r: WorkerReport) -> bool {
        self.tx.send(Command::Report(self.worker, r)).is_ok()
    }

    pub fn worker(&self) -> u64 {
        self.worker
    }
}
