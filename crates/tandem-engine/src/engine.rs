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
//! Does not know: HTTP, text, async runtimes (sinks are plain closures).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tandem_model::{KvStore, Model};

use crate::scheduler::{Event, Request, Scheduler, SchedulerStats};
use crate::EngineError;

/// Receives a request's events on the engine thread; returns false when
/// nobody listens any more (the request is then cancelled).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests decoded together at most.
    pub max_batch: usize,
    /// Tokens one sequence may hold.
    pub ctx: usize,
    /// Prompt tokens one step may prefill beside its decodes.
    pub prefill_chunk: usize,
    /// Requests waiting for admission at most (beyond: refused).
    pub max_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 32,
            ctx: 4096,
            prefill_chunk: 512,
            max_queue: 256,
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
}

impl EngineStats {
    /// Fraction of the pool's pages held by sequences.
    pub fn kv_usage(&self) -> f64 {
        self.pages_in_use as f64 / self.pages_total.max(1) as f64
    }
}

enum Command {
    Submit(Request, Sink),
    Cancel(u64),
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
        let thread = std::thread::Builder::new()
            .name("tandem-engine".into())
            .spawn(move || engine_loop(&model, store, c, rx, &sh))
            .ok();
        Engine {
            tx: Some(tx),
            shared,
            next_id: AtomicU64::new(1),
            max_queue: cfg.max_queue,
            ctx,
            thread,
        }
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
        self.tx = None;
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

fn engine_loop(
    model: &Model,
    store: Arc<KvStore>,
    cfg: EngineConfig,
    rx: Receiver<Command>,
    shared: &Shared,
) {
    let mut sched =
        Scheduler::new(model, store, cfg.max_batch, cfg.ctx).with_prefill_chunk(cfg.prefill_chunk);
    let mut sinks: HashMap<u64, Listener> = HashMap::new();
    let mut open = true;
    loop {
        // Sleep while idle; take everything that arrived.
        if sched.is_idle() {
            if !open {
                break;
            }
            match rx.recv() {
                Ok(cmd) => handle(cmd, &mut sched, &mut sinks, shared),
                Err(_) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => handle(cmd, &mut sched, &mut sinks, shared),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if sched.is_idle() {
            publish(&sched, shared);
            continue;
        }
        match sched.step() {
            Ok(events) => {
                // Stats first: whoever hears a request end sees it gone.
                publish(&sched, shared);
                for ev in events {
                    route(ev, &mut sched, &mut sinks, shared);
                }
            }
            Err(e) => {
                tracing::error!("engine step failed: {e}");
                let error = e.to_string();
                for id in sched.abort_all() {
                    route(
                        Event::Failed {
                            id,
                            error: error.clone(),
                        },
                        &mut sched,
                        &mut sinks,
                        shared,
                    );
                }
            }
        }
        publish(&sched, shared);
    }
}

fn handle(
    cmd: Command,
    sched: &mut Scheduler<'_>,
    sinks: &mut HashMap<u64, Listener>,
    shared: &Shared,
) {
    match cmd {
        Command::Submit(req, mut sink) => {
            let id = req.id;
            match sched.submit(req) {
                Ok(()) => {
                    sinks.insert(
                        id,
                        Listener {
                            sink,
                            started: false,
                        },
                    );
                }
                Err(e) => {
                    shared.queued.fetch_sub(1, Ordering::SeqCst);
                    sink(Event::Failed {
                        id,
                        error: e.to_string(),
                    });
                }
            }
        }
        Command::Cancel(id) => {
            if sched.cancel(id) {
                if let Some(l) = sinks.remove(&id) {
                    if !l.started {
                        shared.queued.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// Hands an event to its request's sink; cancels a request nobody hears.
fn route(
    ev: Event,
    sched: &mut Scheduler<'_>,
    sinks: &mut HashMap<u64, Listener>,
    shared: &Shared,
) {
    let (id, ends) = match &ev {
        Event::Started { id, .. } | Event::Token { id, .. } | Event::Preempted { id } => {
            (*id, false)
        }
        Event::Finished { id, .. } | Event::Failed { id, .. } => (*id, true),
    };
    let Some(l) = sinks.get_mut(&id) else { return };
    if matches!(ev, Event::Started { .. }) || (ends && !l.started) {
        l.started = true;
        shared.queued.fetch_sub(1, Ordering::SeqCst);
    }
    let heard = (l.sink)(ev);
    if ends {
        sinks.remove(&id);
    } else if !heard {
        sched.cancel(id);
        sinks.remove(&id);
    }
}

fn publish(sched: &Scheduler<'_>, shared: &Shared) {
    let (waiting, running) = sched.load();
    let c = sched.store().counts();
    let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    s.waiting = waiting;
    s.running = running;
    s.pages_in_use = c.in_use;
    s.pages_cached = c.cached;
    s.pages_total = sched.store().n_pages();
    s.scheduler = sched.stats();
}
