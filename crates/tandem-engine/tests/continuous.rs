//! Continuous batching: requests arriving while others run join the
//! running batch, long prompts are prefilled in chunks beside the decodes
//! (a running request gets a token every step), requests sharing a prefix
//! compute it once, every greedy result equals its solo run, and the
//! engine thread (channels, sinks, cancellation) leaves no page in use.

mod tiny_model;

use tiny_model::tiny_model as model;

use std::collections::HashMap;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_engine::engine::{Engine, EngineConfig, SubmitError};
use tandem_engine::generate::{generate, GenerateOptions};
use tandem_engine::sampler::SamplingParams;
use tandem_engine::scheduler::{Event, Request, Scheduler};
use tandem_model::Model;

fn greedy() -> SamplingParams {
    SamplingParams::greedy()
}

fn alone(m: &Model, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut cache = m.new_cache(prompt.len() + max_tokens + 1).expect("cache");
    let opts = GenerateOptions {
        max_tokens,
        sampling: greedy(),
        prefill_batch: 512,
    };
    generate(m, &mut cache, prompt, &opts, |_| {})
        .expect("alone")
        .tokens
}

fn prompts(m: &Model) -> Vec<Vec<u32>> {
    let system = "You are a helpful assistant who answers questions about Python. \
                  Keep answers short and precise, and give an example when it helps. ";
    [
        "What is a list?",
        "How do I open a file?",
        "Explain decorators.",
        "What does the with statement do?",
        "The Python language is",
        "Exceptions are raised when",
    ]
    .iter()
    .map(|q| {
        m.tokenizer
            .encode(&format!("{system}{q}"), true)
            .expect("encode")
    })
    .collect()
}

#[test]
fn prefill_in_chunks_beside_decode_and_shared_prefixes_computed_once() {
    let m = model();
    let max_tokens = 24;
    let ps = prompts(&m);
    let solo: Vec<Vec<u32>> = ps.iter().map(|p| alone(&m, p, max_tokens)).collect();
    let store = m.new_kv_store(m.kv_options(), 1 << 24).expect("store");
    let mut s = Scheduler::new(&m, store.clone(), 8, 512).with_prefill_chunk(8);
    // Request 0 starts alone; the rest arrive while it decodes.
    let submit = |s: &mut Scheduler<'_>, i: usize| {
        s.submit(Request {
            id: i as u64,
            prompt: ps[i].clone(),
            max_tokens,
            sampling: greedy(),
            ..Request::default()
        })
        .expect("submit")
    };
    submit(&mut s, 0);
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut done = 0;
    let mut step = 0;
    let mut prefill_steps_beside_decode = 0;
    while !s.is_idle() || step < 3 {
        if step == 3 {
            for i in 1..ps.len() {
                submit(&mut s, i);
            }
        }
        let running_before: Vec<u64> = out
            .iter()
            .filter(|(id, t)| !t.is_empty() && t.len() < max_tokens && **id != u64::MAX)
            .map(|(id, _)| *id)
            .collect();
        let before = s.stats().prefilled_tokens;
        let events = s.step().expect("step");
        let prefilled = s.stats().prefilled_tokens - before;
        let mut got_token: Vec<u64> = Vec::new();
        for ev in events {
            match ev {
                Event::Token { id, token, .. } => {
                    out.entry(id).or_default().push(token);
                    got_token.push(id);
                }
                Event::Finished { id, .. } => {
                    done += 1;
                    got_token.push(id);
                }
                Event::Failed { id, error } => panic!("{id}: {error}"),
                _ => {}
            }
        }
        // Every request that was decoding got its token this step, even
        // in steps that also prefilled prompt chunks.
        for id in &running_before {
            assert!(
                got_token.contains(id),
                "request {id} stalled at step {step}"
            );
        }
        if prefilled > 0 && !running_before.is_empty() {
            prefill_steps_beside_decode += 1;
        }
        // The budget, plus prompts whose last token is all that is left
        // after a cache hit (planned like decodes).
        assert!(
            prefilled <= 8 + ps.len() as u64,
            "prefill budget exceeded: {prefilled}"
        );
        step += 1;
        assert!(step < 10_000);
    }
    assert_eq!(done, ps.len());
    assert!(
        prefill_steps_beside_decode > 3,
        "{prefill_steps_beside_decode}"
    );
    for (i, want) in solo.iter().enumerate() {
        assert_eq!(&out[&(i as u64)], want, "request {i}");
    }
    // The system prompt's full pages were prefilled once: every request
    // after the first found them in the cache.
    let pt = store.geometry().page_tokens;
    let common = ps[0].iter().zip(&ps[1]).take_while(|(a, b)| a == b).count();
    let shared = (common / pt * pt) as u64;
    assert!(shared >= pt as u64, "the prompts share at least one page");
    assert!(
        s.stats().reused_tokens >= shared * (ps.len() as u64 - 1),
        "{:?}, shared {shared}",
        s.stats()
    );
    assert_eq!(store.counts().in_use, 0);
}

/// With a pace, a prompt arriving while a request decodes is prefilled
/// in chunks far below the fixed budget (the pacer's first offer, then
/// what the measured costs allow), the decoding request still gets a
/// token every step, and the results equal the solo runs.
#[test]
fn a_paced_prefill_takes_small_chunks_beside_decodes() {
    let m = model();
    let max_tokens = 24;
    let ps = prompts(&m);
    let (a, b) = (&ps[4], &ps[0]);
    let solo = [alone(&m, a, max_tokens), alone(&m, b, max_tokens)];
    let store = m.new_kv_store(m.kv_options(), 1 << 24).expect("store");
    let mut s = Scheduler::new(&m, store.clone(), 8, 512)
        .with_prefill_chunk(512)
        .with_prefill_pace(Some(1.5));
    for (id, p) in [a, b].into_iter().enumerate() {
        s.submit(Request {
            id: id as u64,
            prompt: p.clone(),
            max_tokens,
            sampling: greedy(),
            ..Request::default()
        })
        .expect("submit");
        if id == 0 {
            // Request 0 prefills alone (the whole chunk), then decodes.
            s.step().expect("step");
        }
    }
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut chunks = Vec::new();
    while !s.is_idle() {
        let before = s.stats().prefilled_tokens;
        let events = s.step().expect("step");
        let prefilled = s.stats().prefilled_tokens - before;
        let mut zero_got_one = false;
        for ev in events {
            match ev {
                Event::Token { id, token, .. } => {
                    zero_got_one |= id == 0;
                    out.entry(id).or_default().push(token);
                }
                Event::Finished { id, .. } => zero_got_one |= id == 0,
                Event::Failed { id, error } => panic!("{id}: {error}"),
                _ => {}
            }
        }
        if prefilled > 0 {
            chunks.push(prefilled);
            assert!(zero_got_one, "the decoding request stalled");
        }
        assert!(s.stats().steps < 10_000);
    }
    // The first chunk beside the decode is the pacer's first offer; the
    // whole prompt would have fit in one step of the fixed budget.
    assert!(b.len() > tandem_engine::scheduler::pacing::FIRST_CHUNK + 1);
    assert_eq!(
        chunks[0],
        tandem_engine::scheduler::pacing::FIRST_CHUNK as u64
    );
    assert!(chunks.len() > 1, "{chunks:?}");
    assert_eq!(
        out[&0][..],
        solo[0][1..],
        "request 0 (its first token came alone)"
    );
    assert_eq!(out[&1], solo[1]);
    assert_eq!(store.counts().in_use, 0);
}

#[test]
fn the_engine_thread_serves_concurrent_requests_like_solo_runs() {
    let m = Arc::new(model());
    let max_tokens = 16;
    let ps = prompts(&m);
    let solo: Vec<Vec<u32>> = ps.iter().map(|p| alone(&m, p, max_tokens)).collect();
    let store = m.new_kv_store(m.kv_options(), 1 << 24).expect("store");
    let engine = Engine::start(
        Arc::clone(&m),
        store.clone(),
        EngineConfig {
            max_batch: 16,
            ctx: 512,
            prefill_chunk: 16,
            max_queue: 64,
            ..EngineConfig::default()
        },
    );
    let (tx, rx) = channel::<(usize, Event)>();
    // 16 requests: each prompt several times, all at once.
    let n = 16;
    for k in 0..n {
        let tx = tx.clone();
        let i = k % ps.len();
        engine
            .submit(
                Request {
                    prompt: ps[i].clone(),
                    max_tokens,
                    sampling: greedy(),
                    ..Request::default()
                },
                Box::new(move |ev| tx.send((k, ev)).is_ok()),
            )
            .expect("submit");
    }
    drop(tx);
    let mut out: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut ended = 0;
    for (k, ev) in rx.iter() {
        match ev {
            Event::Token { token, .. } => out.entry(k).or_default().push(token),
            Event::Finished { .. } => ended += 1,
            Event::Failed { error, .. } => panic!("{k}: {error}"),
            _ => {}
        }
    }
    assert_eq!(ended, n);
    for k in 0..n {
        assert_eq!(out[&k], solo[k % ps.len()], "request {k}");
    }
    let st = engine.stats();
    assert_eq!(
        (st.running, st.waiting, st.pages_in_use),
        (0, 0, 0),
        "{st:?}"
    );
    engine.shutdown();
    assert_eq!(store.counts().in_use, 0);
}

#[test]
fn a_gone_listener_cancels_its_request_and_a_full_queue_refuses() {
    let m = Arc::new(model());
    let store = m.new_kv_store(m.kv_options(), 1 << 24).expect("store");
    let engine = Engine::start(
        Arc::clone(&m),
        store.clone(),
        EngineConfig {
            max_batch: 4,
            ctx: 512,
            prefill_chunk: 64,
            max_queue: 2,
            ..EngineConfig::default()
        },
    );
    let prompt = m
        .tokenizer
        .encode("The Python language is", true)
        .expect("encode");
    // A listener that hangs up after three tokens, on a request that
    // would run for a long time.
    let (tx, rx) = channel::<Event>();
    let mut heard = 0;
    engine
        .submit(
            Request {
                prompt: prompt.clone(),
                max_tokens: 400,
                sampling: greedy(),
                ignore_eos: true,
                ..Request::default()
            },
            Box::new(move |ev| {
                if matches!(ev, Event::Token { .. }) {
                    heard += 1;
                }
                heard < 3 && tx.send(ev).is_ok()
            }),
        )
        .expect("submit");
    let t0 = Instant::now();
    while rx.recv_timeout(Duration::from_secs(30)).is_ok() {}
    // Cancelled within a step of hanging up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().pages_in_use > 0 || engine.stats().running > 0 {
        assert!(Instant::now() < deadline, "{:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(engine.stats().scheduler.decoded_tokens < 10);

    // Bounded queue: with the engine busy on long requests, the queue
    // takes `max_queue` more and refuses the next.
    let mut refused = 0;
    for _ in 0..12 {
        let r = engine.submit(
            Request {
                prompt: prompt.clone(),
                max_tokens: 200,
                sampling: greedy(),
                ignore_eos: true,
                ..Request::default()
            },
            Box::new(|_| true),
        );
        if let Err(SubmitError::QueueFull(_)) = r {
            refused += 1;
        }
    }
    assert!(refused > 0, "the queue never filled");
    drop(engine);
    assert_eq!(store.counts().in_use, 0);
}
