//! The engine thread: one thread owns the model's forward passes and the
//! [`Scheduler`]; everyone else talks to it through a channel.
//!
//! [`Engine::submit`] queues a request with a *sink*, a callback that the
//! engine thread calls with each of the request's events (started,
//! tokens, finished or failed). A sink that returns `false` (its
//! receiver is gone: the client disconnected) cancels the request at
//! once, so its pages are free before the next step; [`Engine::cancel`]
//! does the same from outside. The thread sleeps while nothing is queued
//! or running, and otherwise runs step after step, taking new requests
//! in between, so a request joins the running batch at the next step.
//!
//! The queue is bounded ([`EngineConfig::max_queue`]): a submit beyond it
//! is refused with [`SubmitError::QueueFull`] (a server answers 429).
//! [`Engine::stats`] is a snapshot for metrics and health, refreshed
//! after every step.
//!
//! Prefill workers (`prefill/`) join through [`Engine::worker_hub`] (or
//! [`Engine::listen_prefill`] for worker processes); the engine thread
//! owns them too: before each step it hands prefills to idle workers, and
//! it takes their reports between steps (the hand-off protocol is in
//! `prefill/mod.rs`). While requests wait only for workers, the thread
//! sleeps until a report arrives or a worker's time is up.
//!
//! Does not know: HTTP, text, async runtimes (sinks are plain closures).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_kv::KvGeometry;
use tandem_model::kv_cache::KvOptions;
use tandem_model::{KvStore, Model};

use crate::prefill::{WorkerHub, WorkerLink, WorkerReport};
use crate::scheduler::{Event, HandoffError, Request, Scheduler, SchedulerStats};
use crate::EngineError;

/// Receives a request's events on the engine thread; returns false when
/// nobody listens any more (the request is then cancelled).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// The default [`EngineConfig::prefill_pace`]: a running stream's token
/// interval grows by at most about half while a prompt is prefilled.
pub const DEFAULT_PREFILL_PACE: f64 = 1.5;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests decoded together at most.
    pub max_batch: usize,
    /// Tokens one sequence may hold.
    pub ctx: usize,
    /// Prompt tokens one step may prefill beside its decodes.
    pub prefill_chunk: usize,
    /// While requests decode, prefill may stretch a step to about this
    /// many times a decode-only step (None: the whole chunk every step).
    pub prefill_pace: Option<f64>,
    /// Requests waiting for admission at most (beyond: refused).
    pub max_queue: usize,
    /// A prefill goes to an idle worker only with at least this many
    /// prompt tokens left to compute (shorter ones are cheaper here).
    pub remote_min_tokens: usize,
    /// A worker that sends nothing for this long while it has a job is
    /// dropped and its job retried here.
    pub remote_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 32,
            ctx: 4096,
            prefill_chunk: 512,
            prefill_pace: Some(DEFAULT_PREFILL_PACE),
            max_queue: 256,
            remote_min_tokens: 512,
            remote_timeout: Duration::from_secs(120),
        }
    }
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    Stopped,
    #[error(transparent)]
    Invalid(#[from] EngineError),
}

/// A snapshot of the engine's state.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    pub pages_in_use: usize,
    pub pages_cached: usize,
    pub pages_total: usize,
    pub scheduler: SchedulerStats,
    /// Prefill workers connected, and how many have a job.
    pub prefill_workers: usize,
    pub prefill_workers_busy: usize,
}

impl EngineStats {
    /// Fraction of the pool's pages held by sequences.
    pub fn kv_usage(&self) -> f64 {
        self.pages_in_use as f64 / self.pages_total.max(1) as f64
    }
}

pub(crate) enum Command {
    Submit(Request, Sink),
    Cancel(u64),
    AddWorker(u64, Box<dyn WorkerLink>),
    Report(u64, WorkerReport),
    /// Stop taking requests; end once everything has drained.
    Stop,
}

struct Shared {
    stats: Mutex<EngineStats>,
    /// Submitted and not yet admitted (or ended).
    queued: AtomicUsize,
}

/// Handle to the engine thread; dropping it stops the thread once every
/// queued and running request has ended (drain).
pub struct Engine {
    tx: Option<Sender<Command>>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    max_queue: usize,
    ctx: usize,
    prefill_chunk: usize,
    model: Arc<Model>,
    kv: KvOptions,
    geometry: KvGeometry,
    workers: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread on `model` and `store`.
    pub fn start(model: Arc<Model>, store: Arc<KvStore>, cfg: EngineConfig) -> Engine {
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            stats: Mutex::new(EngineStats {
                pages_total: store.n_pages(),
                ..EngineStats::default()
            }),
            queued: AtomicUsize::new(0),
        });
        let ctx = cfg.ctx.min(store.capacity_tokens()).max(1);
        let sh = Arc::clone(&shared);
        let c = EngineConfig { ctx, ..cfg.clone() };
        let geometry = store.geometry().clone();
        let kv = KvOptions {
            format: geometry.format,
            page_tokens: geometry.page_tokens,
        };
        let m = Arc::clone(&model);
        let thread = std::thread::Builder::new()
            .name("tandem-engine".into())
            .spawn(move || engine_loop(&m, store, c, rx, &sh))
            .ok();
        Engine {
            tx: Some(tx),
            shared,
            next_id: AtomicU64::new(1),
            max_queue: cfg.max_queue,
            ctx,
            prefill_chunk: cfg.prefill_chunk.max(1),
            model,
            kv,
            geometry,
            workers: Arc::new(AtomicU64::new(1)),
            thread,
        }
    }

    /// Adds prefill workers to this engine (None once it is stopping).
    pub fn worker_hub(&self) -> Option<WorkerHub> {
        Some(WorkerHub {
            tx: self.tx.as_ref()?.clone(),
            next: Arc::clone(&self.workers),
        })
    }

    /// The KV options of the engine's pool (what its workers must use).
    pub fn kv_options(&self) -> KvOptions {
        self.kv
    }

    /// Listens on `addr` for prefill worker processes
    /// (`tandem prefill-worker --connect ADDR`); returns the bound address.
    pub fn listen_prefill(&self, addr: &str) -> std::io::Result<SocketAddr> {
        let hub = self
            .worker_hub()
            .ok_or_else(|| std::io::Error::other("the engine has stopped"))?;
        crate::prefill::remote::listen(
            addr,
            hub,
            &self.model,
            &self.geometry,
            self.prefill_chunk,
            self.ctx,
        )
    }

    /// Tokens one sequence may hold (the context, capped by the pool).
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Queues `req` (its id is replaced by a fresh one, returned); `sink`
    /// gets its events on the engine thread.
    pub fn submit(&self, mut req: Request, sink: Sink) -> Result<u64, SubmitError> {
        // Refuse what the scheduler would refuse, here, synchronously.
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if req.max_tokens == 0 {
            return Err(EngineError::InvalidArgument(
                "a request must allow at least one token".into(),
            )
            .into());
        }
        req.sampling.validate().map_err(EngineError::from)?;
        req.penalties.validate().map_err(EngineError::from)?;
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queue {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(queued));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.id = id;
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Command::Submit(req, sink)).is_ok());
        if !sent {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(id)
    }

    /// Cancels request `id` (a no-op if it has ended).
    pub fn cancel(&self, id: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Cancel(id));
        }
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.waiting = s.waiting.max(self.shared.queued.load(Ordering::SeqCst));
        s
    }

    /// Stops taking requests, lets the queued and running ones finish,
    /// and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Command::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request's sink and whether it has been admitted yet.
struct Listener {
    sink: Sink,
    started: bool,
}

/// A prefill worker as the engine thread sees it.
struct Worker {
    link: Box<dyn WorkerLink>,
    /// Its job, and when it last reported on it.
    busy: Option<(u64, Instant)>,
}

/// What the engine thread owns besides the scheduler.
struct Loop<'a> {
    sinks: HashMap<u64, Listener>,
    workers: HashMap<u64, Worker>,
    shared: &'a Shared,
    cfg: EngineConfig,
    open: bool,
}

fn engine_loop(
    model: &Model,
    store: Arc<KvStore>,
    cfg: EngineConfig,
    rx: Receiver<Command>,
    shared: &Shared,
) {
    let mut sched = Scheduler::new(model, store, cfg.max_batch, cfg.ctx)
        .with_prefill_chunk(cfg.prefill_chunk)
        .with_prefill_pace(cfg.prefill_pace);
    let mut st = Loop {
        sinks: HashMap::new(),
        workers: HashMap::new(),
        shared,
        cfg,
        open: true,
    };
    // Whether the last round did nothing but wait for workers.
    let mut stalled = false;
    loop {
        // Sleep while there is nothing to compute; take everything that
        // arrived.
        if sched.is_idle() || stalled || !sched.has_runnable() {
            if sched.is_idle() && !st.open {
                break;
            }
            // A busy worker (even one answering a cancel) has a deadline.
            let busy = st.workers.values().any(|w| w.busy.is_some());
            let cmd = if busy || sched.handed_off() > 0 {
                match rx.recv_timeout(Duration::from_millis(250)) {
                    Ok(cmd) => Some(cmd),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) => break,
                }
            };
            if let Some(cmd) = cmd {
                st.handle(cmd, &mut sched);
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => st.handle(cmd, &mut sched),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    st.open = false;
                    break;
                }
            }
        }
        st.check_timeouts(&mut sched);
        st.dispatch(&mut sched);
        stalled = false;
        if !sched.has_runnable() {
            publish(&sched, &st);
            continue;
        }
        match sched.step() {
            Ok(events) => {
                // Stats first: whoever hears a request end sees it gone.
                publish(&sched, &st);
                for ev in events {
                    st.route(ev, &mut sched);
                }
                stalled = !sched.ran() && sched.handed_off() > 0;
            }
            Err(e) => {
                tracing::error!("engine step failed: {e}");
                let error = e.to_string();
                for id in sched.abort_all() {
                    st.route(
                        Event::Failed {
                            id,
                            error: error.clone(),
                        },
                        &mut sched,
                    );
                }
                // Their jobs are gone: each worker answers the cancel and
                // is idle again.
                for w in st.workers.values_mut() {
                    if let Some((job, _)) = w.busy {
                        w.link.cancel(job);
                    }
                }
            }
        }
        publish(&sched, &st);
    }
    for (_, mut w) in st.workers.drain() {
        w.link.close();
    }
}

impl Loop<'_> {
    fn handle(&mut self, cmd: Command, sched: &mut Scheduler<'_>) {
        match cmd {
            Command::Submit(req, mut sink) => {
                let id = req.id;
                match sched.submit(req) {
                    Ok(()) => {
                        self.sinks.insert(
                            id,
                            Listener {
                                sink,
                                started: false,
                            },
                        );
                    }
                    Err(e) => {
                        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                        sink(Event::Failed {
                            id,
                            error: e.to_string(),
                        });
                    }
                }
            }
            Command::Cancel(id) => self.cancel(id, sched),
            Command::AddWorker(worker, link) => {
                tracing::info!("{} joined", link.name());
                self.workers.insert(worker, Worker { link, busy: None });
            }
            Command::Report(worker, report) => self.report(worker, report, sched),
            Command::Stop => self.open = false,
        }
    }

    /// Drops request `id` (its pages are freed now) and tells its worker.
    fn cancel(&mut self, id: u64, sched: &mut Scheduler<'_>) {
        let job = sched.job_of(id);
        if sched.cancel(id) {
            if let Some(l) = self.sinks.remove(&id) {
                if !l.started {
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        if let Some(job) = job {
            if let Some(w) = self
                .workers
                .values_mut()
                .find(|w| w.busy.is_some_and(|(j, _)| j == job))
            {
                w.link.cancel(job);
            }
        }
    }

    /// Hands prefills to idle workers.
    fn dispatch(&mut self, sched: &mut Scheduler<'_>) {
        if !self.open && sched.is_idle() {
            return;
        }
        let idle: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.busy.is_none())
            .map(|(&k, _)| k)
            .collect();
        for worker in idle {
            for ev in sched.admit_waiting() {
                self.route(ev, sched);
            }
            let Some(job) = sched.take_prefill(self.cfg.remote_min_tokens) else {
                return;
            };
            let Some(w) = self.workers.get_mut(&worker) else {
                continue;
            };
            match w.link.start(&job) {
                Ok(()) => w.busy = Some((job.job, Instant::now())),
                Err(e) => {
                    tracing::warn!("{}: cannot start a prefill ({e}); dropped", w.link.name());
                    sched.return_prefill(job.job);
                    self.drop_worker(worker, sched);
                }
            }
        }
    }

    /// Drops a worker; its job, if any, is taken back.
    fn drop_worker(&mut self, worker: u64, sched: &mut Scheduler<'_>) {
        if let Some(mut w) = self.workers.remove(&worker) {
            if let Some((job, _)) = w.busy {
                sched.return_prefill(job);
            }
            w.link.close();
        }
    }

    fn check_timeouts(&mut self, sched: &mut Scheduler<'_>) {
        let limit = self.cfg.remote_timeout;
        let late: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.busy.is_some_and(|(_, t)| t.elapsed() > limit))
            .map(|(&k, _)| k)
            .collect();
        for worker in late {
            if let Some(w) = self.workers.get(&worker) {
                tracing::warn!("{}: silent for {limit:?}; dropped", w.link.name());
            }
            self.drop_worker(worker, sched);
        }
    }

    fn report(&mut self, worker: u64, report: WorkerReport, sched: &mut Scheduler<'_>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return; // Dropped already.
        };
        let busy = w.busy.map(|(j, _)| j);
        let (job, result) = match report {
            WorkerReport::Gone { error } => {
                tracing::warn!("{} gone: {error}", w.link.name());
                self.drop_worker(worker, sched);
                return;
            }
            WorkerReport::Rows { job, image } if busy == Some(job) => {
                w.busy = Some((job, Instant::now()));
                (job, sched.accept_rows(job, &image).map(|()| Vec::new()))
            }
            WorkerReport::Done { job, logits } if busy == Some(job) => {
                w.busy = None;
                (job, sched.finish_prefill(job, &logits))
            }
            WorkerReport::Failed { job, error } if busy == Some(job) => {
                w.busy = None;
                if sched.return_prefill(job) {
                    tracing::warn!("{}: prefill failed ({error}); computed here", w.link.name());
                }
                return;
            }
            WorkerReport::Rows { job, .. }
            | WorkerReport::Done { job, .. }
            | WorkerReport::Failed { job, .. } => (
                job,
                Err(HandoffError::Bad {
                    job,
                    reason: "a report on a job the worker does not have".into(),
                }),
            ),
        };
        match result {
            Ok(events) => {
                for ev in events {
                    self.route(ev, sched);
                }
            }
            // Cancelled meanwhile: the rest of its reports are dropped.
            Err(HandoffError::UnknownJob(_)) => {}
            Err(e) => {
                if let Some(w) = self.workers.get(&worker) {
                    tracing::warn!(
                        "{}: {e}; dropped, the prefill is computed here",
                        w.link.name()
                    );
                }
                sched.return_prefill(job);
                self.drop_worker(worker, sched);
            }
        }
    }

    /// Hands an event to its request's sink; cancels a request nobody
    /// hears.
    fn route(&mut self, ev: Event, sched: &mut Scheduler<'_>) {
        let (id, ends) = match &ev {
            Event::Started { id, .. } | Event::Token { id, .. } | Event::Preempted { id } => {
                (*id, false)
            }
            Event::Finished { id, .. } | Event::Failed { id, .. } => (*id, true),
        };
        let Some(l) = self.sinks.get_mut(&id) else {
            return;
        };
        if matches!(ev, Event::Started { .. }) || (ends && !l.started) {
            l.started = true;
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        let heard = (l.sink)(ev);
        if ends {
            self.sinks.remove(&id);
        } else if !heard {
            self.cancel(id, sched);
        }
    }
}

fn publish(sched: &Scheduler<'_>, st: &Loop<'_>) {
    let (waiting, running) = sched.load();
    let c = sched.store().counts();
    let mut s = st.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    s.waiting = waiting;
    s.running = running;
    s.pages_in_use = c.in_use;
    s.pages_cached = c.cached;
    s.pages_total = sched.store().n_pages();
    s.scheduler = sched.stats();
    s.prefill_workers = st.workers.len();
    s.prefill_workers_busy = st.workers.values().filter(|w| w.busy.is_some()).count();
}
