//! The scheduler under memory pressure: with a pool far too small for its
//! requests it preempts instead of failing, and every request — greedy —
//! produces the tokens it produces alone; with a disk tier, preempted
//! pages come back from disk; a request that cannot fit even alone fails
//! cleanly; and after many requests, some cancelled midway, no page is in
//! use.

mod tiny_model;

use tiny_model::tiny_model as model;

use std::collections::HashMap;

use tandem_engine::generate::{generate, GenerateOptions, StopReason};
use tandem_engine::sampler::SamplingParams;
use tandem_engine::scheduler::{Event, Request, Scheduler};
use tandem_model::{DiskTier, Model};

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

const PROMPTS: [&str; 4] = [
    "The Python language is",
    "A list is a mutable sequence of items, and a tuple",
    "Exceptions are raised when",
    "To define a function in Python you write the keyword def followed by",
];

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

/// Runs requests to the end; returns each one's tokens and how it ended.
fn run_all(s: &mut Scheduler<'_>) -> HashMap<u64, (Vec<u32>, Option<StopReason>)> {
    let mut out: HashMap<u64, (Vec<u32>, Option<StopReason>)> = HashMap::new();
    for _ in 0..100_000 {
        if s.is_idle() {
            return out;
        }
        for ev in s.step().expect("step") {
            match ev {
                Event::Token { id, token, .. } => out.entry(id).or_default().0.push(token),
                Event::Finished { id, reason } => out.entry(id).or_default().1 = Some(reason),
                Event::Failed { id, error } => panic!("request {id} failed: {error}"),
                Event::Preempted { .. } | Event::Started { .. } => {}
            }
        }
    }
    panic!("the scheduler did not finish");
}

/// Submits `prompts` as greedy requests `0..` and runs them to the end.
fn run_greedy(
    s: &mut Scheduler<'_>,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> HashMap<u64, (Vec<u32>, Option<StopReason>)> {
    for (i, p) in prompts.iter().enumerate() {
        s.submit(Request {
            id: i as u64,
            prompt: p.clone(),
            max_tokens,
            sampling: greedy(),
            ..Request::default()
        })
        .expect("submit");
    }
    run_all(s)
}

#[test]
fn a_tiny_pool_preempts_and_every_request_gives_its_solo_tokens() {
    let m = model();
    let max_tokens = 40;
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| m.tokenizer.encode(p, true).expect("encode"))
        .collect();
    let solo: Vec<Vec<u32>> = prompts.iter().map(|p| alone(&m, p, max_tokens)).collect();
    let dir = std::env::temp_dir().join(format!("tandem-sched-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for with_disk in [false, true] {
        // 8 pages of 16 tokens: room for about two of the four at once.
        let page_bytes = m.kv_geometry(m.kv_options()).page_bytes();
        let disk = with_disk.then(|| DiskTier::open(&dir, m.identity(), 1 << 30).expect("tier"));
        let store = m
            .new_kv_store_tiered(m.kv_options(), 8 * page_bytes, disk)
            .expect("store");
        let mut s = Scheduler::new(&m, store.clone(), 4, 128).with_prefill_chunk(7);
        let out = run_greedy(&mut s, &prompts, max_tokens);
        assert!(
            s.stats().preempted > 0,
            "the pool was meant to be too small: {:?}",
            s.stats()
        );
        // A preempted request's pages stay cached, but the requests that
        // keep running evict them as they grow (the pool is that small);
        // with the disk tier they come back from disk.
        assert!(
            !with_disk || s.stats().reused_tokens > 0,
            "readmission reuses cached pages: {:?}",
            s.stats()
        );
        for (i, want) in solo.iter().enumerate() {
            let (got, reason) = &out[&(i as u64)];
            assert_eq!(got, want, "request {i} (disk {with_disk})");
            assert!(reason.is_some());
        }
        assert_eq!(store.counts().in_use, 0, "pages left in use");
        if with_disk {
            let d = store.disk().expect("tier").stats();
            assert!(d.written > 0 && d.read > 0, "{d:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_request_larger_than_the_pool_fails_and_the_rest_run() {
    let m = model();
    let page_bytes = m.kv_geometry(m.kv_options()).page_bytes();
    let store = m
        .new_kv_store(m.kv_options(), 2 * page_bytes)
        .expect("store");
    let mut s = Scheduler::new(&m, store.clone(), 2, 1024);
    let long: Vec<u32> = (0..100).map(|i| 10 + i % 50).collect();
    let short = m.tokenizer.encode("Hello", true).expect("encode");
    for (id, prompt) in [(1, long), (2, short)] {
        s.submit(Request {
            id,
            prompt,
            max_tokens: 4,
            sampling: greedy(),
            ..Request::default()
        })
        .expect("submit");
    }
    let mut failed = Vec::new();
    let mut finished = Vec::new();
    while !s.is_idle() {
        for ev in s.step().expect("step") {
            match ev {
                Event::Failed { id, error } => {
                    assert!(error.contains("do not fit"), "{error}");
                    failed.push(id)
                }
                Event::Finished { id, .. } => finished.push(id),
                _ => {}
            }
        }
    }
    assert_eq!((failed, finished), (vec![1], vec![2]));
    assert_eq!(store.counts().in_use, 0);
}

#[test]
fn many_requests_some_cancelled_leave_no_page_in_use() {
    let m = model();
    let page_bytes = m.kv_geometry(m.kv_options()).page_bytes();
    let store = m
        .new_kv_store(m.kv_options(), 12 * page_bytes)
        .expect("store");
    let mut s = Scheduler::new(&m, store.clone(), 4, 256);
    let mut rng = 12345u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let n = 24u64;
    for id in 0..n {
        let len = 3 + (next() % 40) as usize;
        let prompt: Vec<u32> = (0..len).map(|_| 5 + (next() % 200) as u32).collect();
        s.submit(Request {
            id,
            prompt,
            max_tokens: 1 + (next() % 30) as usize,
            sampling: SamplingParams {
                seed: id,
                ..SamplingParams::default()
            },
            ..Request::default()
        })
        .expect("submit");
    }
    let mut ended = 0;
    let mut cancelled = 0;
    for step in 0..100_000 {
        if s.is_idle() {
            break;
        }
        if step % 5 == 3 {
            let id = next() % n;
            if s.cancel(id) {
                cancelled += 1;
            }
        }
        for ev in s.step().expect("step") {
            match ev {
                Event::Finished { .. } => ended += 1,
                Event::Failed { id, error } => panic!("{id}: {error}"),
                _ => {}
            }
        }
    }
    assert!(s.is_idle());
    assert!(cancelled > 0);
    assert_eq!(ended + cancelled, n as usize);
    let c = store.counts();
    assert_eq!(c.in_use, 0, "{c:?}");
    assert_eq!(c.free + c.cached, store.n_pages());
}

/// A model with sliding-window layers (gpt-oss, window 16) under the same
/// pressure: windowed groups release their pages behind the window while
/// requests run, are preempted and come back from the prefix cache and
/// the disk tier, and every request still gives its solo tokens.
#[test]
fn windowed_layers_under_pressure_give_the_solo_tokens() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-gpt-oss/gguf/tiny-gpt-oss-F32.gguf");
    let opts = tandem_model::LoadOptions {
        threads: Some(2),
        pin: false,
        ..tandem_model::LoadOptions::default()
    };
    let m = Model::load_with(
        tandem_model::ModelFiles::open(&path).expect("fixture"),
        &opts,
    )
    .expect("load");
    let geom = m.kv_geometry(m.kv_options());
    assert!(geom.n_groups() > 1, "no page groups: {geom:?}");
    let max_tokens = 60;
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| m.tokenizer.encode(p, true).expect("encode"))
        .collect();
    let solo: Vec<Vec<u32>> = prompts.iter().map(|p| alone(&m, p, max_tokens)).collect();
    // Long enough that windowed pages are released (past 16 + 2 pages).
    for (p, t) in prompts.iter().zip(&solo) {
        assert!(p.len() + t.len() > 48, "{} + {}", p.len(), t.len());
    }
    let dir = std::env::temp_dir().join(format!("tandem-sched-swa-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for with_disk in [false, true] {
        // A request of ~75 tokens holds 5 whole-prefix pages and at most 4
        // windowed ones: 14 pages hold fewer than two of the four.
        let disk = with_disk.then(|| DiskTier::open(&dir, m.identity(), 1 << 30).expect("tier"));
        let store = m
            .new_kv_store_tiered(m.kv_options(), 14 * geom.page_bytes(), disk)
            .expect("store");
        let mut s = Scheduler::new(&m, store.clone(), 4, 128).with_prefill_chunk(7);
        let out = run_greedy(&mut s, &prompts, max_tokens);
        assert!(s.stats().preempted > 0, "{:?}", s.stats());
        for (i, want) in solo.iter().enumerate() {
            let (got, reason) = &out[&(i as u64)];
            assert_eq!(got, want, "request {i} (disk {with_disk})");
            assert!(reason.is_some());
        }
        assert_eq!(store.counts().in_use, 0, "pages left in use");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
