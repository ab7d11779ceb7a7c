//! The model on the paged KV store: a second turn that reuses the cached
//! pages of the first prefills only its new tokens and gives the logits of
//! a cold run of the whole conversation; chunked prefill equals one-shot
//! prefill; page sizes and KV types change nothing they should not (q8_0
//! KV only where the head size is whole 32-value blocks; elsewhere it is a
//! load error); a pool too small for a sequence is an error that leaves the
//! sequence intact.

use std::path::PathBuf;

use tandem_model::{
    KvFormat, KvOptions, LoadOptions, Logits, Model, ModelError, ModelFiles, NumaMode,
};

fn try_model(file: &str, kv: KvOptions, numa: NumaMode) -> Result<Model, ModelError> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(file);
    let files = ModelFiles::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = LoadOptions {
        numa,
        threads: Some(2),
        pin: false,
        kv,
        ..LoadOptions::default()
    };
    Model::load_with(files, &opts)
}

fn model(file: &str, kv: KvOptions, numa: NumaMode) -> Model {
    try_model(file, kv, numa).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn kv(format: KvFormat, page_tokens: usize) -> KvOptions {
    KvOptions {
        format,
        page_tokens,
    }
}

/// Token ids in the model's vocabulary, deterministic.
fn tokens(m: &Model, n: usize, seed: u32) -> Vec<u32> {
    let v = m.config.vocab_size as u32;
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(40_503) % v)
        .collect()
}

const FILES: [&str; 3] = [
    "tiny-llama3/gguf/tiny-llama3-F32.gguf",
    "tiny-qwen2/gguf/tiny-qwen2-Q8_0.gguf",
    "tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf",
];

#[test]
fn second_turn_reuses_the_prefix_and_matches_a_cold_run() {
    for file in FILES {
        for numa in [NumaMode::Off, NumaMode::Virtual(2)] {
            let m = model(file, kv(KvFormat::F16, 16), numa);
            let store = m.new_kv_store(m.kv_options(), 1 << 22).expect("store");
            let turn1 = tokens(&m, 53, 1);
            let turn2: Vec<u32> = [turn1.clone(), tokens(&m, 11, 2)].concat();
            {
                let mut s = store.new_sequence();
                m.forward(&turn1, &mut s, Logits::Last).expect("turn 1");
            }
            // 53 tokens = 3 full pages cached (the partial one is not).
            let mut s = store.sequence_with_prefix(&turn2);
            assert_eq!(s.len(), 48, "{file}: cached prefix");
            let warm = m
                .forward(&turn2[s.len()..], &mut s, Logits::Last)
                .expect("turn 2");
            let mut cold_seq = m.new_cache(turn2.len()).expect("cache");
            let cold = m
                .forward(&turn2, &mut cold_seq, Logits::Last)
                .expect("cold");
            // Same pages, same blocks, per-row kernels: bit for bit.
            assert_eq!(warm, cold, "{file} {numa:?}: warm turn 2 vs cold run");
        }
    }
}

#[test]
fn chunked_prefill_equals_one_shot() {
    for file in FILES {
        let m = model(file, kv(KvFormat::F16, 16), NumaMode::Off);
        let prompt = tokens(&m, 70, 3);
        let mut one = m.new_cache(prompt.len()).expect("cache");
        let want = m.forward(&prompt, &mut one, Logits::All).expect("one shot");
        for chunk in [1usize, 7, 16, 33] {
            let mut c = m.new_cache(prompt.len()).expect("cache");
            let mut got = Vec::new();
            for part in prompt.chunks(chunk) {
                got.extend(m.forward(part, &mut c, Logits::All).expect("chunk"));
            }
            assert_eq!(got, want, "{file}: chunks of {chunk}");
        }
    }
}

#[test]
fn page_size_does_not_change_logits_and_kv_types_stay_close() {
    let file = FILES[0];
    let prompt: Vec<u32> = tokens(&model(file, KvOptions::default(), NumaMode::Off), 45, 4);
    let run = |o: KvOptions| {
        let m = model(file, o, NumaMode::Off);
        let mut c = m.new_cache(prompt.len()).expect("cache");
        m.forward(&prompt, &mut c, Logits::All).expect("forward")
    };
    let f32_16 = run(kv(KvFormat::F32, 16));
    for pt in [1usize, 5, 32, 64] {
        let other = run(kv(KvFormat::F32, pt));
        let d = rel_max(&other, &f32_16);
        // Blocks of another size change only where the softmax rescales.
        assert!(d < 1e-5, "page {pt}: rel diff {d:.2e}");
    }
    for f in [KvFormat::F16, KvFormat::BF16] {
        let d = rel_max(&run(kv(f, 16)), &f32_16);
        let bound = if f == KvFormat::F16 { 5e-3 } else { 3e-2 };
        assert!(d > 0.0 && d < bound, "{f}: rel diff {d:.2e}");
    }
}

/// Measured on 45 tokens (max relative logit difference against f32 KV):
/// tiny-qwen3 F32 weights (head size 32) 5.3e-3, where f16 KV gives 2.0e-4
/// and bf16 2.1e-3 — a Q8_0 value is within half a step of 1/127 of its
/// block's largest magnitude, about twice bf16's relative rounding;
/// tandem-tiny Q8_0 weights (head size 64) 9.5e-3, where f16 KV already
/// gives 6.4e-3, because the KV difference flips roundings of the 8-bit
/// activations downstream. Bounds are about 2.7x those.
const Q8_0_KV_FIXTURES: [(&str, f32); 2] = [
    ("tiny-qwen3/hf", 1.5e-2),
    ("tandem-tiny/gguf/tandem-tiny-Q8_0.gguf", 2.5e-2),
];

#[test]
fn q8_0_kv_stays_close_to_f32_kv() {
    for (file, bound) in Q8_0_KV_FIXTURES {
        let prompt: Vec<u32> = tokens(&model(file, KvOptions::default(), NumaMode::Off), 45, 4);
        let run = |o: KvOptions| {
            let m = model(file, o, NumaMode::Off);
            let mut c = m.new_cache(prompt.len()).expect("cache");
            m.forward(&prompt, &mut c, Logits::All).expect("forward")
        };
        let d = rel_max(&run(kv(KvFormat::Q8_0, 16)), &run(kv(KvFormat::F32, 16)));
        eprintln!("{file}: q8_0 vs f32 KV: max rel logit diff {d:.3e} (bound {bound:.1e})");
        assert!(d > 0.0 && d < bound, "{file}: q8_0 rel diff {d:.2e}");
    }
}

#[test]
fn q8_0_kv_for_a_head_size_of_partial_blocks_is_a_load_error() {
    // tiny-llama3: head size 16.
    match try_model(FILES[0], kv(KvFormat::Q8_0, 16), NumaMode::Off) {
        Err(e @ ModelError::Kv(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("multiple of 32") && msg.contains("is 16"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected a KV error, got {e:?}"),
        Ok(_) => panic!("q8_0 KV with a head size of 16 loaded"),
    }
    // A store asked of a model loaded with another KV type: the same error.
    let m = model(FILES[0], kv(KvFormat::F16, 16), NumaMode::Off);
    assert!(matches!(
        m.new_kv_store(kv(KvFormat::Q8_0, 16), 1 << 20),
        Err(ModelError::Kv(_))
    ));
}

fn rel_max(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f32::max)
}

#[test]
fn a_full_pool_is_context_full_and_the_sequence_survives() {
    let m = model(FILES[0], kv(KvFormat::F16, 16), NumaMode::Off);
    let page = m.kv_geometry(m.kv_options()).page_bytes();
    let store = m.new_kv_store(m.kv_options(), 2 * page).expect("store");
    let mut s = store.new_sequence();
    let prompt = tokens(&m, 30, 5);
    m.forward(&prompt, &mut s, Logits::Last)
        .expect("fits in 2 pages");
    match m.forward(&tokens(&m, 3, 6), &mut s, Logits::Last) {
        Err(ModelError::ContextFull {
            needed: 33,
            capacity: 32,
        }) => {}
        other => panic!("expected ContextFull, got {other:?}"),
    }
    assert_eq!(s.len(), 30);
    assert_eq!(s.tokens(), &prompt[..]);
    // Two more tokens still fit and continue the same sequence.
    m.forward(&tokens(&m, 2, 7), &mut s, Logits::Last)
        .expect("fits");
    assert_eq!(s.len(), 32);
    drop(s);
    assert_eq!(store.counts().in_use, 0);
}

/// Models with sliding-window layers (window 16 in the fixtures).
const WINDOWED: [&str; 2] = [
    "tiny-gemma3/gguf/tiny-gemma3-F32.gguf",
    "tiny-gpt-oss/gguf/tiny-gpt-oss-F32.gguf",
];

/// The windowed layers' pages behind the window go back to the pool, and
/// nothing a query reads changes: prefill in chunks, decode one token at
/// a time and a second turn from the prefix cache all give the logits of
/// a sequence that keeps every row, bit for bit.
#[test]
fn windowed_layers_release_pages_and_logits_do_not_change() {
    for file in WINDOWED {
        let m = model(file, kv(KvFormat::F16, 16), NumaMode::Off);
        let store = m.new_kv_store(m.kv_options(), 1 << 24).expect("store");
        assert!(
            store.geometry().windows.iter().any(Option::is_some),
            "{file}: no windowed layer"
        );
        let prompt = tokens(&m, 120, 5);
        let mut keep = store.new_sequence().keep_window_rows();
        let want = m
            .forward(&prompt, &mut keep, Logits::All)
            .expect("kept rows");
        for chunk in [1usize, 7, 40] {
            let mut s = store.new_sequence();
            let mut got = Vec::new();
            for part in prompt.chunks(chunk) {
                got.extend(m.forward(part, &mut s, Logits::All).expect("chunk"));
            }
            assert_eq!(got, want, "{file}: chunks of {chunk}");
            assert!(
                s.held_pages() < keep.held_pages(),
                "{file}: {} pages held, {} without release",
                s.held_pages(),
                keep.held_pages()
            );
        }
        drop(keep);
        let turn2: Vec<u32> = [prompt.clone(), tokens(&m, 9, 6)].concat();
        let mut warm_seq = store.sequence_with_prefix(&turn2);
        assert_eq!(warm_seq.len(), 112, "{file}: cached prefix");
        let warm = m
            .forward(&turn2[warm_seq.len()..], &mut warm_seq, Logits::Last)
            .expect("turn 2");
        let mut cold_seq = m.new_cache(turn2.len()).expect("cache");
        let cold = m
            .forward(&turn2, &mut cold_seq, Logits::Last)
            .expect("cold");
        assert_eq!(warm, cold, "{file}: warm turn 2 vs cold run");
    }
}
