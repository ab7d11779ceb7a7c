//! [`Pool`]: persistent worker threads, pinned per engine node, that run one
//! closure on every worker and return when all are done (fork-join).
//!
//! A decode step is a few hundred such runs (one per matmul group), so a run
//! must cost about a microsecond, not the tens of microseconds of spawning
//! or of a futex round trip. Workers therefore spin while work is likely to
//! come, and only sleep after a quiet spell.
//!
//! ## Protocol
//!
//! The thread that calls [`Pool::run`] (the *driver*) is worker 0; the pool
//! owns workers `1..n`. Shared state: `generation` (a counter), `job` (a
//! pointer to the closure), `remaining` (workers still running it) and
//! `sleepers`.
//!
//! 1. The driver stores `job`, sets `remaining = n - 1`, resets the per-node
//!    work counters, then increments `generation` (SeqCst). This publishes
//!    the job: a worker that sees the new generation sees the job.
//! 2. After a SeqCst fence, if `sleepers > 0` the driver unparks every
//!    worker.
//! 3. The driver runs the closure as worker 0.
//! 4. Each worker waits for `generation` to change: spinning for
//!    [`SPIN`], then yielding for [`YIELD`], then parking. Before parking
//!    it increments `sleepers`, fences (SeqCst) and re-reads `generation`.
//!    The two fences are ordered one way or the other, so either the
//!    worker sees the new generation, or the driver's step 2 sees
//!    `sleepers > 0` and unparks it (an unpark before the park is not
//!    lost). The fences, not just SeqCst accesses, because loom models
//!    SeqCst fences but checks SeqCst accesses only as AcqRel (with which
//!    both sides could miss each other: the models catch that lost
//!    wake-up).
//! 5. A worker runs the closure, then decrements `remaining` (Release).
//! 6. The driver waits until `remaining == 0` (Acquire) and only then
//!    returns, so the closure (and what it borrows) outlives every use.
//!    A panic in any worker is caught, the run still completes, and the
//!    driver re-raises it.
//!
//! Runs are serialised by a mutex; calling `run` from inside a job is a bug
//! and panics with a message instead of deadlocking.
//!
//! The atomics, the `job` cell, threads and parking come from
//! [`crate::sync`], so `tools/loom.sh` checks this very code with loom
//! (`tests/loom_pool.rs`): there an idle thread spins once and then parks
//! ([`Patience`]), instead of timing its spins.
//!
//! What the pool does not know: what the work is, or how it is split.
//! [`Worker`] says who a worker is (global index, node, index in node) and
//! hands out per-node chunk numbers, so a node's workers can balance load
//! among themselves; nothing is ever stolen across nodes.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cpuset::pin_current_thread;
use crate::sync::{
    fence, park, spin_loop, thread, yield_now, Arc, AtomicBool, AtomicU64, AtomicUsize, JoinHandle,
    Mutex, Thread, UnsafeCell,
};
use crate::topology::{Layout, NumaMode, Topology};
use crate::NumaError;

/// How long an idle worker spins before yielding.
pub const SPIN: Duration = Duration::from_micros(200);
/// How long it then yields before parking.
pub const YIELD: Duration = Duration::from_millis(5);

/// Who a worker is, as seen by a job.
#[derive(Clone, Copy)]
pub struct Worker<'a> {
    /// 0..n_threads; 0 is the driver.
    pub index: usize,
    pub n_threads: usize,
    /// Engine node (0..n_nodes).
    pub node: usize,
    pub n_nodes: usize,
    /// 0..threads_in_node.
    pub index_in_node: usize,
    pub threads_in_node: usize,
    counter: &'a AtomicUsize,
}

impl Worker<'_> {
    /// Claims the next chunk number of this node's work (0, 1, 2, ... across
    /// the node's workers, reset for every run). Workers loop
    /// `while let c = w.claim(); c < n_chunks`.
    #[inline]
    pub fn claim(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Worker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Worker({} of {}, node {} of {}, {} of {} in node)",
            self.index,
            self.n_threads,
            self.node,
            self.n_nodes,
            self.index_in_node,
            self.threads_in_node
        )
    }
}

type Job<'f> = dyn Fn(Worker<'_>) + Sync + 'f;

#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

#[derive(Default)]
struct Shared {
    generation: Padded<AtomicU64>,
    remaining: Padded<AtomicUsize>,
    sleepers: Padded<AtomicUsize>,
    /// The current job, lifetime erased (see protocol step 6). Written by
    /// the driver only while no worker runs (before the generation bump,
    /// after `remaining == 0`); read by workers only after observing the
    /// bump (Acquire), which orders the write before the read.
    job: UnsafeCell<Option<&'static Job<'static>>>,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    counters: Vec<Padded<AtomicUsize>>,
    /// Statistics, not synchronisation: `std`'s atomics even under loom.
    runs: std::sync::atomic::AtomicU64,
    wait_ns: std::sync::atomic::AtomicU64,
}

// SAFETY: every field but `job` is Sync; `job` follows the protocol above.
unsafe impl Sync for Shared {}

/// Counters of the pool's synchronisation, for `tandem bench --verbose`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Runs (fork-joins) so far.
    pub runs: u64,
    /// Nanoseconds the driver spent waiting for the other workers after
    /// finishing its own share (load imbalance + synchronisation).
    pub wait_ns: u64,
}

/// A pool of pinned workers, grouped by engine node.
pub struct Pool {
    shared: Arc<Shared>,
    layout: Layout,
    /// (node, index in node) per worker index.
    roles: Vec<(usize, usize)>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
    id: u64,
}

/// An id, not synchronisation (and a `static`, which loom's atomics
/// cannot be).
static NEXT_POOL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[cfg(not(loom))]
std::thread_local! {
    /// Pool id the current thread is pinned for as a driver (0: none).
    static DRIVER_OF: Cell<u64> = const { Cell::new(0) };
    /// Whether the current thread is inside a job.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

// Loom's threads share one OS thread: its own thread-locals keep them apart.
#[cfg(loom)]
loom::thread_local! {
    static DRIVER_OF: Cell<u64> = Cell::new(0);
    static IN_JOB: Cell<bool> = Cell::new(false);
}

impl Pool {
    /// Detects the topology and plans `threads` workers under `mode`.
    pub fn new(mode: NumaMode, threads: Option<usize>) -> Result<Pool, NumaError> {
        let layout = Layout::plan(&Topology::detect(), mode, threads)?;
        Pool::with_layout(layout)
    }

    /// A pool for an explicit layout (tests, benchmarks).
    pub fn with_layout(layout: Layout) -> Result<Pool, NumaError> {
        let mut roles = Vec::new();
        for (node, plan) in layout.nodes.iter().enumerate() {
            for k in 0..plan.worker_cpus.len() {
                roles.push((node, k));
            }
        }
        if roles.is_empty() {
            return Err(NumaError::ZeroThreads);
        }
        let shared = Arc::new(Shared {
            counters: (0..layout.nodes.len()).map(|_| Padded::default()).collect(),
            ..Shared::default()
        });
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let mut pool = Pool {
            shared,
            layout,
            roles,
            threads: Vec::new(),
            handles: Vec::new(),
            run_lock: Mutex::new(()),
            id,
        };
        for index in 1..pool.roles.len() {
            let (node, k) = pool.roles[index];
            let cpu = pool.layout.nodes[node].worker_cpus[k];
            let shared = Arc::clone(&pool.shared);
            let info = pool.worker_template(index);
            let pin = pool.layout.pin;
            let handle = thread::Builder::new()
                .name(format!("tandem-n{node}-w{k}"))
                .spawn(move || {
                    if pin {
                        if let Err(e) = pin_current_thread(&[cpu]) {
                            tracing::debug!("{e}; worker {index} runs unpinned");
                        }
                    }
                    worker_loop(&shared, info);
                })
                .map_err(NumaError::Spawn)?;
            pool.threads.push(handle.thread().clone());
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    fn worker_template(&self, index: usize) -> WorkerInfo {
        let (node, k) = self.roles[index];
        WorkerInfo {
            index,
            n_threads: self.roles.len(),
            node,
            n_nodes: self.layout.nodes.len(),
            index_in_node: k,
            threads_in_node: self.layout.nodes[node].worker_cpus.len(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn n_threads(&self) -> usize {
        self.roles.len()
    }
    pub fn n_nodes(&self) -> usize {
        self.layout.nodes.len()
    }
    /// Workers of engine node `node`.
    pub fn threads_in_node(&self, node: usize) -> usize {
        self.layout
            .nodes
            .get(node)
            .map_or(0, |n| n.worker_cpus.len())
    }

    /// Synchronisation counters since the pool was made.
    pub fn stats(&self) -> SyncStats {
        SyncStats {
            runs: self.shared.runs.load(Ordering::Relaxed),
            wait_ns: self.shared.wait_ns.load(Ordering::Relaxed),
        }
    }

    /// Runs `job` once on every worker (the calling thread is worker 0) and
    /// returns when all have finished. Re-raises a worker's panic.
    pub fn run<'f, F: Fn(Worker<'_>) + Sync + 'f>(&self, job: F) {
        assert!(
            !IN_JOB.with(Cell::get),
            "Pool::run called from inside a pool job (nested runs would deadlock)"
        );
        let guard = self.run_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.pin_driver();
        let s = &*self.shared;
        for c in &s.counters {
            c.0.store(0, Ordering::Relaxed);
        }
        let job_ref: &Job<'f> = &job;
        // SAFETY: the erased reference is used only by workers between the
        // generation bump below and their `remaining` decrement, and this
        // function does not return (nor unwind) before `remaining == 0`.
        let job_static: &'static Job<'static> =
            unsafe { std::mem::transmute::<&Job<'f>, &'static Job<'static>>(job_ref) };
        let n = self.roles.len();
        s.remaining.0.store(n - 1, Ordering::Relaxed);
        // SAFETY: no worker reads `job` now (the previous run ended with
        // `remaining == 0`, and the generation is not yet bumped).
        s.job.with_mut(|j| unsafe { *j = Some(job_static) });
        s.generation.0.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if s.sleepers.0.load(Ordering::SeqCst) > 0 {
            for t in &self.threads {
                t.unpark();
            }
        }
        let mine = self.worker_template(0);
        let result = run_job(job_ref, mine, &s.counters);
        let t0 = Instant::now();
        wait_until(|| s.remaining.0.load(Ordering::Acquire) == 0);
        s.wait_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        s.runs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: all workers are done with the job (remaining == 0).
        s.job.with_mut(|j| unsafe { *j = None });
        // Unlocked before re-raising: a panic is the job's, not a broken
        // pool (and loom's mutex does not model poisoning).
        drop(guard);
        if let Err(p) = result {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a tandem pool worker panicked");
        }
    }

    /// [`run`](Pool::run) for fallible jobs: the first error any worker
    /// returns (workers still all finish the run).
    pub fn try_run<E: Send, F: Fn(Worker<'_>) -> Result<(), E> + Sync>(
        &self,
        job: F,
    ) -> Result<(), E> {
        let first: Mutex<Option<E>> = Mutex::new(None);
        self.run(|w| {
            if let Err(e) = job(w) {
                let mut slot = first.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e);
            }
        });
        match first.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Average cost of an empty run in nanoseconds over `iters` runs (the
    /// fixed price of one fork-join).
    pub fn measure_empty_run_ns(&self, iters: u32) -> f64 {
        let iters = iters.max(1);
        self.run(|_| {});
        let t0 = Instant::now();
        for _ in 0..iters {
            self.run(|_| {});
        }
        t0.elapsed().as_nanos() as f64 / f64::from(iters)
    }

    fn pin_driver(&self) {
        if !self.layout.pin || DRIVER_OF.with(Cell::get) == self.id {
            return;
        }
        DRIVER_OF.with(|d| d.set(self.id));
        if let Some(cpu) = self
            .layout
            .nodes
            .first()
            .and_then(|n| n.worker_cpus.first())
        {
            if let Err(e) = pin_current_thread(&[*cpu]) {
                tracing::debug!("{e}; the driver runs unpinned");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.generation.0.fetch_add(1, Ordering::SeqCst);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[derive(Clone, Copy)]
struct WorkerInfo {
    index: usize,
    n_threads: usize,
    node: usize,
    n_nodes: usize,
    index_in_node: usize,
    threads_in_node: usize,
}

fn run_job(
    job: &Job<'_>,
    i: WorkerInfo,
    counters: &[Padded<AtomicUsize>],
) -> Result<(), Box<dyn std::any::Any + Send>> {
    let w = Worker {
        index: i.index,
        n_threads: i.n_threads,
        node: i.node,
        n_nodes: i.n_nodes,
        index_in_node: i.index_in_node,
        threads_in_node: i.threads_in_node,
        counter: &counters[i.node].0,
    };
    IN_JOB.with(|f| f.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| job(w)));
    IN_JOB.with(|f| f.set(false));
    r
}

fn worker_loop(s: &Shared, info: WorkerInfo) {
    // Generation 0 is the pool's state before any run; starting from the
    // current value instead would miss a run published before this thread
    // got going.
    let mut seen = 0;
    loop {
        // Step 4: wait for a new generation.
        let mut patience = Patience::new();
        loop {
            let g = s.generation.0.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            match patience.next() {
                Idle::Spin => spin_loop(),
                Idle::Yield => yield_now(),
                Idle::Park => {
                    s.sleepers.0.fetch_add(1, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    if s.generation.0.load(Ordering::SeqCst) == seen {
                        park();
                    }
                    s.sleepers.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // Step 5: run, then report.
        // SAFETY: the driver wrote `job` before bumping the generation we
        // observed (Acquire above) and keeps it alive until `remaining`
        // reaches 0, which happens only after our decrement below.
        if let Some(job) = s.job.with(|j| unsafe { *j }) {
            if run_job(job, info, &s.counters).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.remaining.0.fetch_sub(1, Ordering::Release);
    }
}

/// Spin, then yield, until `done()`.
fn wait_until(done: impl Fn() -> bool) {
    let mut patience = Patience::new();
    while !done() {
        match patience.next() {
            Idle::Spin => spin_loop(),
            // The driver never parks: nobody would wake it.
            Idle::Yield | Idle::Park => yield_now(),
        }
    }
}

/// What an idle thread does before it polls again.
enum Idle {
    Spin,
    #[cfg_attr(loom, allow(dead_code))]
    Yield,
    Park,
}

/// How long an idle thread has waited: it spins for [`SPIN`], yields for
/// [`YIELD`], then parks (reading the clock every 64 polls only).
#[cfg(not(loom))]
struct Patience {
    polls: u32,
    start: Instant,
}

#[cfg(not(loom))]
impl Patience {
    fn new() -> Patience {
        Patience {
            polls: 0,
            start: Instant::now(),
        }
    }

    /// After a poll that found nothing to do.
    #[inline]
    fn next(&mut self) -> Idle {
        self.polls = self.polls.wrapping_add(1);
        if !self.polls.is_multiple_of(64) {
            return Idle::Spin;
        }
        let waited = self.start.elapsed();
        if waited < SPIN {
            Idle::Spin
        } else if waited < SPIN + YIELD {
            Idle::Yield
        } else {
            Idle::Park
        }
    }
}

/// Under loom, time means nothing: an idle thread spins once (a loom
/// yield), then parks, so the models take both the spinning and the
/// parking path of step 4.
#[cfg(loom)]
struct Patience {
    polls: u32,
}

#[cfg(loom)]
impl Patience {
    fn new() -> Patience {
        Patience { polls: 0 }
    }

    fn next(&mut self) -> Idle {
        self.polls = self.polls.saturating_add(1);
        if self.polls == 1 {
            Idle::Spin
        } else {
            Idle::Park
        }
    }
}

// Under `--cfg loom` the primitives are loom's, usable only inside a
// model: `tests/loom_pool.rs` checks the pool there.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::topology::NodePlan;

    fn layout(nodes: &[usize]) -> Layout {
        Layout {
            nodes: nodes
                .iter()
                .map(|&n| NodePlan {
                    memory_node: Some(0),
                    worker_cpus: vec![0; n],
                })
                .collect(),
            pin: false,
        }
    }

    #[test]
    fn every_worker_runs_every_job_once() {
        let pool = Pool::with_layout(layout(&[2, 1, 3])).unwrap();
        assert_eq!(pool.n_threads(), 6);
        for round in 0..200 {
            let hits: Vec<AtomicUsize> = (0..6).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|w| {
                hits[w.index].fetch_add(round + 1, Ordering::Relaxed);
                assert_eq!(w.n_nodes, 3);
                assert!(w.index_in_node < w.threads_in_node);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), round + 1);
            }
        }
        assert_eq!(pool.stats().runs, 200);
    }

    #[test]
    fn chunks_are_claimed_once_per_node() {
        let pool = Pool::with_layout(layout(&[2, 2])).unwrap();
        let n_chunks = 1000;
        let done: Vec<AtomicUsize> = (0..2 * n_chunks).map(|_| AtomicUsize::new(0)).collect();
        pool.run(|w| loop {
            let c = w.claim();
            if c >= n_chunks {
                break;
            }
            done[w.node * n_chunks + c].fetch_add(1, Ordering::Relaxed);
        });
        assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = Pool::with_layout(layout(&[3])).unwrap();
        pool.run(|_| {});
        std::thread::sleep(SPIN + YIELD + Duration::from_millis(20));
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn errors_and_panics_come_back() {
        let pool = Pool::with_layout(layout(&[1, 2])).unwrap();
        let r: Result<(), String> = pool.try_run(|w| {
            if w.index == 2 {
                Err(format!("w{}", w.index))
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("w2".to_string()));
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|w| {
                if w.index == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(caught.is_err());
        // The pool still works afterwards.
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn nested_run_is_refused() {
        let pool = Pool::with_layout(layout(&[1])).unwrap();
        let caught = catch_unwind(AssertUnwindSafe(|| pool.run(|_| pool.run(|_| {}))));
        assert!(caught.is_err());
    }

    #[test]
    fn pools_from_the_machine() {
        for mode in [
            NumaMode::Auto,
            NumaMode::Off,
            NumaMode::Virtual(2),
            NumaMode::Virtual(3),
        ] {
            let mut layout = Layout::plan(&Topology::detect(), mode, None).unwrap();
            layout.pin = mode == NumaMode::Virtual(3);
            let pool = Pool::with_layout(layout).unwrap();
            let count = AtomicUsize::new(0);
            pool.run(|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), pool.n_threads());
            assert!(pool.measure_empty_run_ns(10) > 0.0);
        }
    }
}
