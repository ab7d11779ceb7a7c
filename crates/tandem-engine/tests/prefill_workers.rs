//! Prefill workers (`tandem_engine::prefill`): a prefill computed by a
//! worker gives exactly the tokens and log-probabilities of the
//! in-process one; a worker that dies mid-job, sends damaged, foreign or
//! out-of-place rows, or lies about being done loses nothing — its
//! request is prefilled again here and equals its solo run — and no page
//! leaks; a cancelled hand-off frees its pages at once.

mod tiny_model;

use tiny_model::tiny_model as model;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_engine::engine::{Engine, EngineConfig};
use tandem_engine::logprobs::TokenLogprobs;
use tandem_engine::prefill::cpu::CpuPrefill;
use tandem_engine::prefill::{
    local, PrefillBackend, PrefillJob, WorkerHub, WorkerLink, WorkerPort, WorkerReport,
};
use tandem_engine::sampler::SamplingParams;
use tandem_engine::scheduler::{Event, Request};
use tandem_model::{KvStore, Model};

const CHUNK: usize = 16;

fn cfg() -> EngineConfig {
    EngineConfig {
        max_batch: 8,
        ctx: 512,
        prefill_chunk: CHUNK,
        prefill_pace: None,
        max_queue: 64,
        remote_min_tokens: 1,
        remote_timeout: Duration::from_secs(30),
    }
}

fn prompts(m: &Model) -> Vec<Vec<u32>> {
    let long = "A list is a mutable sequence of items; a tuple is an immutable one. \
                Dictionaries map keys to values, and sets hold unique items. "
        .repeat(3);
    [
        format!("{long}What is a list?"),
        "The Python language is".to_string(),
        format!("{long}Explain decorators."),
    ]
    .iter()
    .map(|p| m.tokenizer.encode(p, true).expect("encode"))
    .collect()
}

type Out = Vec<(u32, f32)>;

/// Runs `prompts` one after another on `engine`; tokens with their
/// log-probabilities.
fn run_all(engine: &Engine, prompts: &[Vec<u32>]) -> Vec<Out> {
    prompts.iter().map(|p| run_one(engine, p, 12)).collect()
}

fn run_one(engine: &Engine, prompt: &[u32], max_tokens: usize) -> Out {
    collect(&submit(engine, prompt, max_tokens))
}

/// Submits a greedy request for `max_tokens` tokens with log-probabilities.
fn submit(engine: &Engine, prompt: &[u32], max_tokens: usize) -> Receiver<Event> {
    let (tx, rx) = channel();
    engine
        .submit(
            Request {
                prompt: prompt.to_vec(),
                max_tokens,
                sampling: SamplingParams::greedy(),
                logprobs: Some(2),
                ignore_eos: true,
                ..Request::default()
            },
            Box::new(move |ev| tx.send(ev).is_ok()),
        )
        .expect("submit");
    rx
}

fn collect(rx: &Receiver<Event>) -> Out {
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).expect("an event") {
            Event::Token {
                token, logprobs, ..
            } => {
                let lp = logprobs.map_or(f32::NAN, |l: TokenLogprobs| l.logprob);
                out.push((token, lp));
            }
            Event::Finished { .. } => return out,
            Event::Failed { error, .. } => panic!("{error}"),
            _ => {}
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn worker_store(m: &Model) -> Arc<KvStore> {
    m.new_kv_store(m.kv_options(), 1 << 24).expect("store")
}

fn in_process_reference(m: &Arc<Model>, ps: &[Vec<u32>]) -> Vec<Out> {
    let engine = Engine::start(Arc::clone(m), worker_store(m), cfg());
    let out = run_all(&engine, ps);
    engine.shutdown();
    out
}

#[test]
fn a_worker_prefill_equals_the_in_process_one_bit_for_bit() {
    let m = Arc::new(model());
    let ps = prompts(&m);
    let reference = in_process_reference(&m, &ps);
    let store = worker_store(&m);
    let engine = Engine::start(Arc::clone(&m), store.clone(), cfg());
    let hub = engine.worker_hub().expect("hub");
    let backend = CpuPrefill::new(Arc::clone(&m), worker_store(&m), CHUNK);
    local::spawn(&hub, Box::new(backend)).expect("worker");
    wait_for("the worker joins", || engine.stats().prefill_workers == 1);
    let got = run_all(&engine, &ps);
    // Tokens and log-probabilities equal, to the bit.
    for (g, r) in got.iter().zip(&reference) {
        let bits = |o: &Out| o.iter().map(|&(t, l)| (t, l.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(g), bits(r));
    }
    let st = engine.stats();
    assert_eq!(st.scheduler.remote_prefills, ps.len() as u64, "{st:?}");
    assert_eq!(st.scheduler.remote_failures, 0);
    // The second run of a prompt is a prefix-cache hit here and (for its
    // own prefix cache) in the worker: still equal.
    assert_eq!(run_one(&engine, &ps[0], 12), reference[0]);
    assert_eq!(engine.stats().pages_in_use, 0);
    engine.shutdown();
    assert_eq!(store.counts().in_use, 0);
}

/// How a test worker misbehaves after forwarding `after` good images.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The link breaks (a killed process).
    Dies,
    /// A byte of an image flipped.
    FlipByte,
    /// Rows carrying other tokens than the request's.
    OtherTokens,
    /// An image skipping a page.
    SkipsAhead,
    /// An image of another job.
    OtherJob,
    /// `Done` before every row was sent.
    EarlyDone,
    /// Logits that are not finite.
    NanLogits,
    /// `Failed` (a clean error report).
    Fails,
    /// Nothing at all (a hung process): the engine's timeout.
    Hangs,
}

/// A worker link whose thread runs a real CPU prefill and then commits
/// `fault` after `after` images.
struct FaultyLink {
    tx: Option<Sender<PrefillJob>>,
}

impl WorkerLink for FaultyLink {
    fn name(&self) -> String {
        "faulty worker".into()
    }
    fn start(&mut self, job: &PrefillJob) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("closed")?;
        tx.send(job.clone()).map_err(|e| e.to_string())
    }
    fn cancel(&mut self, _job: u64) {}
    fn close(&mut self) {
        self.tx = None;
    }
}

fn faulty_worker(m: &Arc<Model>, hub: &WorkerHub, fault: Fault, after: usize) {
    let (tx, rx) = channel::<PrefillJob>();
    let port: WorkerPort = hub.add(Box::new(FaultyLink { tx: Some(tx) })).expect("add");
    let mut backend = CpuPrefill::new(Arc::clone(m), worker_store(m), CHUNK);
    std::thread::spawn(move || {
        for job in rx {
            let mut images: Vec<Vec<u8>> = Vec::new();
            let logits = backend
                .prefill(&job, &mut |img| {
                    images.push(img);
                    true
                })
                .expect("prefill")
                .expect("logits");
            for img in images.iter().take(after) {
                port.report(WorkerReport::Rows {
                    job: job.job,
                    image: img.clone(),
                });
            }
            let mut next = images.get(after).cloned().unwrap_or_default();
            let r = match fault {
                Fault::Dies => WorkerReport::Gone {
                    error: "killed".into(),
                },
                Fault::FlipByte => {
                    let k = next.len() / 2;
                    next[k] ^= 1;
                    WorkerReport::Rows {
                        job: job.job,
                        image: next,
                    }
                }
                Fault::OtherTokens => {
                    // Re-encode the image with a token changed: a valid
                    // image whose tokens are not the request's.
                    let at = 8 + 4 + 8 + 16 + 16 + 8 + 8 + 4;
                    next[at] ^= 1;
                    let body = next.len() - 8;
                    let sum = xxhash_rust::xxh3::xxh3_64(&next[..body]);
                    next[body..].copy_from_slice(&sum.to_le_bytes());
                    WorkerReport::Rows {
                        job: job.job,
                        image: next,
                    }
                }
                Fault::SkipsAhead => WorkerReport::Rows {
                    job: job.job,
                    image: images.get(after + 1).cloned().unwrap_or_default(),
                },
                Fault::OtherJob => WorkerReport::Rows {
                    job: job.job + 1000,
                    image: next,
                },
                Fault::EarlyDone => WorkerReport::Done {
                    job: job.job,
                    logits,
                },
                Fault::NanLogits => {
                    for img in images.iter().skip(after) {
                        port.report(WorkerReport::Rows {
                            job: job.job,
                            image: img.clone(),
                        });
                    }
                    let mut l = logits;
                    l[3] = f32::NAN;
                    WorkerReport::Done {
                        job: job.job,
                        logits: l,
                    }
                }
                Fault::Fails => WorkerReport::Failed {
                    job: job.job,
                    error: "out of memory".into(),
                },
                Fault::Hangs => continue,
            };
            port.report(r);
        }
    });
}

#[test]
fn a_failing_or_hostile_worker_loses_nothing_and_leaks_no_page() {
    let m = Arc::new(model());
    let ps = prompts(&m);
    let long = &ps[0];
    assert!(long.len() > 3 * CHUNK, "the prompt spans several pages");
    let reference = in_process_reference(&m, std::slice::from_ref(long));
    for fault in [
        Fault::Dies,
        Fault::FlipByte,
        Fault::OtherTokens,
        Fault::SkipsAhead,
        Fault::OtherJob,
        Fault::EarlyDone,
        Fault::NanLogits,
        Fault::Fails,
        Fault::Hangs,
    ] {
        let store = worker_store(&m);
        let mut c = cfg();
        c.remote_timeout = match fault {
            Fault::Hangs => Duration::from_millis(500),
            _ => Duration::from_secs(30),
        };
        let engine = Engine::start(Arc::clone(&m), store.clone(), c);
        let hub = engine.worker_hub().expect("hub");
        faulty_worker(&m, &hub, fault, 2);
        wait_for("the worker joins", || engine.stats().prefill_workers == 1);
        let got = run_one(&engine, long, 12);
        assert_eq!(got.len(), reference[0].len(), "{fault:?}");
        for (g, r) in got.iter().zip(&reference[0]) {
            assert_eq!(g.0, r.0, "{fault:?}");
            assert!((g.1 - r.1).abs() < 1e-4, "{fault:?}: {g:?} vs {r:?}");
        }
        let st = engine.stats();
        assert_eq!(st.scheduler.remote_failures, 1, "{fault:?}: {st:?}");
        // A worker that broke the protocol or went silent is dropped;
        // one that reported a clean failure stays.
        let stays = matches!(fault, Fault::Fails);
        assert_eq!(st.prefill_workers, usize::from(stays), "{fault:?}");
        assert_eq!(st.pages_in_use, 0, "{fault:?}");
        engine.shutdown();
        assert_eq!(store.counts().in_use, 0, "{fault:?}");
    }
}

/// A backend that computes slowly (one chunk, then a pause per image),
/// so that a request can be cancelled while its worker has it.
struct Slow(CpuPrefill);

impl PrefillBackend for Slow {
    fn prefill(
        &mut self,
        job: &PrefillJob,
        rows: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<Option<Vec<f32>>, tandem_engine::EngineError> {
        self.0.prefill(job, &mut |img| {
            std::thread::sleep(Duration::from_millis(100));
            rows(img)
        })
    }
}

#[test]
fn cancelling_a_handed_off_request_frees_its_pages_and_the_worker() {
    let m = Arc::new(model());
    let ps = prompts(&m);
    let store = worker_store(&m);
    let engine = Engine::start(Arc::clone(&m), store.clone(), cfg());
    let hub = engine.worker_hub().expect("hub");
    let slow = Slow(CpuPrefill::new(Arc::clone(&m), worker_store(&m), CHUNK));
    local::spawn(&hub, Box::new(slow)).expect("worker");
    wait_for("the worker joins", || engine.stats().prefill_workers == 1);
    let (tx, rx) = channel();
    let id = engine
        .submit(
            Request {
                prompt: ps[0].clone(),
                max_tokens: 4,
                sampling: SamplingParams::greedy(),
                ..Request::default()
            },
            Box::new(move |ev| tx.send(ev).is_ok()),
        )
        .expect("submit");
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(Event::Started { .. })
    ));
    wait_for("the hand-off", || {
        let s = engine.stats();
        s.prefill_workers_busy == 1 && s.pages_in_use > 0
    });
    engine.cancel(id);
    wait_for("pages freed", || engine.stats().pages_in_use == 0);
    // The worker answers the cancel and takes the next job.
    wait_for("the worker is idle", || {
        engine.stats().prefill_workers_busy == 0
    });
    let reference = in_process_reference(&m, &ps[1..2]);
    assert_eq!(run_one(&engine, &ps[1], 12), reference[0]);
    engine.shutdown();
    assert_eq!(store.counts().in_use, 0);
}

/// tiny-gpt-oss: every other layer sees a window of 16 positions.
fn windowed_model() -> Model {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-gpt-oss/gguf/tiny-gpt-oss-F32.gguf");
    let files = tandem_model::ModelFiles::open(&path).expect("fixture");
    let opts = tandem_model::LoadOptions {
        threads: Some(2),
        pin: false,
        ..tandem_model::LoadOptions::default()
    };
    Model::load_with(files, &opts).expect("load")
}

#[test]
fn a_windowed_model_hands_off_only_its_window_and_loses_nothing() {
    let m = Arc::new(windowed_model());
    let ps = prompts(&m);
    let long = &ps[0];
    let reference = in_process_reference(&m, std::slice::from_ref(long));
    let store = worker_store(&m);
    let g = store.geometry().clone();
    assert!(g.n_groups() > 1, "windowed layers have a page group");
    // Every group's pages for the whole prompt: what a hand-off took
    // before windowed layers reserved only their window.
    let whole = g.n_groups() * long.len().div_ceil(g.page_tokens);
    assert!(long.len() > 4 * g.page_tokens, "the prompt spans pages");

    let engine = Engine::start(Arc::clone(&m), store.clone(), cfg());
    let hub = engine.worker_hub().expect("hub");
    let slow = Slow(CpuPrefill::new(Arc::clone(&m), worker_store(&m), CHUNK));
    local::spawn(&hub, Box::new(slow)).expect("worker");
    wait_for("the worker joins", || engine.stats().prefill_workers == 1);
    let rx = submit(&engine, long, 12);
    wait_for("the hand-off", || engine.stats().prefill_workers_busy == 1);
    let held = engine.stats().pages_in_use;
    assert!(
        held > 0 && held < whole,
        "{held} pages held during the hand-off, {whole} for every group"
    );
    let got = collect(&rx);
    let bits = |o: &Out| o.iter().map(|&(t, l)| (t, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&reference[0]));
    assert_eq!(engine.stats().scheduler.remote_prefills, 1);
    engine.shutdown();
    assert_eq!(store.counts().in_use, 0);

    // A worker that fails early or late: the request is computed here
    // (from where its rows allow) and equals its solo run.
    for after in [1, 4] {
        let store = worker_store(&m);
        let engine = Engine::start(Arc::clone(&m), store.clone(), cfg());
        let hub = engine.worker_hub().expect("hub");
        faulty_worker(&m, &hub, Fault::Dies, after);
        wait_for("the worker joins", || engine.stats().prefill_workers == 1);
        let got = run_one(&engine, long, 12);
        assert_eq!(got.len(), reference[0].len(), "after {after}");
        for (g, r) in got.iter().zip(&reference[0]) {
            assert_eq!(g.0, r.0, "after {after}");
            assert!((g.1 - r.1).abs() < 1e-4, "after {after}: {g:?} vs {r:?}");
        }
        assert_eq!(engine.stats().scheduler.remote_failures, 1);
        assert_eq!(engine.stats().pages_in_use, 0, "after {after}");
        engine.shutdown();
        assert_eq!(store.counts().in_use, 0, "after {after}");
    }
}
