//! MLA prefill expanded (keys and values decompressed per head) against
//! absorbed (the decode form, itself checked against transformers and
//! llama.cpp by the engine's reference tests): the same logits and the
//! same cached rows, for both GGUF layouts, for a prompt in chunks over a
//! cached prefix, over two virtual nodes, and in a batch that mixes an
//! expanded prefill with an absorbed decode step.

use std::path::PathBuf;

use tandem_model::{
    KvCache, KvFormat, KvOptions, LoadOptions, Logits, MlaPrefill, Model, ModelFiles, NumaMode,
    SeqInput,
};

fn load(file: &str, mode: MlaPrefill, numa: NumaMode, kv: KvFormat) -> Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-deepseek3/gguf")
        .join(file);
    let files = ModelFiles::open(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let opts = LoadOptions {
        numa,
        threads: Some(2),
        pin: false,
        mla_prefill: mode,
        kv: KvOptions {
            format: kv,
            page_tokens: 16,
        },
        ..LoadOptions::default()
    };
    Model::load_with(files, &opts).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn tokens(vocab: usize, n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(40_503) % vocab as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every cached row of both caches, decoded.
fn rows_diff(a: &KvCache, b: &KvCache, layers: usize) -> f32 {
    let g = a.store().geometry().clone();
    let fmt = g.format.weight_format();
    let (mut ra, mut rb) = (vec![0f32; g.head_dim], vec![0f32; g.head_dim]);
    let home = g.head_home(0).0;
    let mut worst = 0f32;
    for layer in 0..layers {
        for pos in 0..a.len() {
            for (c, out) in [(a, &mut ra), (b, &mut rb)] {
                let p = c.row_ptr(home, layer, 0, 0, pos).expect("row");
                // SAFETY: a committed row of a page the cache holds.
                let bytes = unsafe { std::slice::from_raw_parts(p, g.row_bytes()) };
                tandem_kernels::dequantize_row(fmt, bytes, out).expect("decode");
            }
            worst = worst.max(max_diff(&ra, &rb));
        }
    }
    worst
}

/// The prompt in `chunks` (lengths), then three decode steps: logits of
/// every prefilled position and step, and the caches.
fn run(m: &Model, chunks: &[usize]) -> (Vec<f32>, KvCache) {
    let total: usize = chunks.iter().sum();
    let toks = tokens(m.config.vocab_size, total + 3, 11);
    let mut cache = m.new_cache(total + 8).expect("cache");
    let mut logits = Vec::new();
    let mut at = 0;
    for &c in chunks {
        logits.extend(
            m.forward(&toks[at..at + c], &mut cache, Logits::All)
                .expect("prefill"),
        );
        at += c;
    }
    for &t in &toks[total..] {
        logits.extend(m.forward(&[t], &mut cache, Logits::Last).expect("decode"));
    }
    (logits, cache)
}

#[test]
fn expanded_prefill_gives_the_absorbed_logits_and_rows() {
    for (file, kv, tol) in [
        ("tiny-deepseek3-F32.gguf", KvFormat::F32, 1e-4f32),
        ("tiny-deepseek3-F32-kv_b.gguf", KvFormat::F16, 1e-4),
        // Quantized weights: both forms quantize the same activations,
        // except the expanded one's latents (for k_b's transpose and v_b).
        ("tiny-deepseek3-Q8_0.gguf", KvFormat::F16, 3e-2),
    ] {
        for numa in [NumaMode::Off, NumaMode::Virtual(2)] {
            let a = load(file, MlaPrefill::Absorbed, numa, kv);
            let e = load(file, MlaPrefill::Expanded, numa, kv);
            for chunks in [&[37][..], &[9, 20, 11][..]] {
                let (la, ca) = run(&a, chunks);
                let (le, ce) = run(&e, chunks);
                let d = max_diff(&la, &le);
                eprintln!("{file} {numa:?} {chunks:?}: logits max diff {d}");
                assert!(d <= tol, "{file} {numa:?} {chunks:?}: logits differ by {d}");
                // A row whose f32 values differ in their last bits may
                // round to the neighbouring f16.
                let row_tol = match kv {
                    KvFormat::F32 => tol,
                    _ => tol.max(2e-2),
                };
                let rd = rows_diff(&ca, &ce, a.config.n_layers);
                assert!(rd <= row_tol, "{file} {numa:?}: cached rows differ by {rd}");
            }
        }
    }
}

#[test]
fn a_batch_mixes_an_expanded_prefill_with_an_absorbed_decode() {
    let file = "tiny-deepseek3-F32.gguf";
    let (a, e) = (
        load(file, MlaPrefill::Absorbed, NumaMode::Off, KvFormat::F32),
        load(file, MlaPrefill::Expanded, NumaMode::Off, KvFormat::F32),
    );
    let v = a.config.vocab_size;
    let (p1, p2) = (tokens(v, 21, 3), tokens(v, 30, 5));
    let mut out = Vec::new();
    for m in [&a, &e] {
        // Sequence 1 has a prefix and decodes one token while sequence 2
        // prefills 30 (expanded when the model allows it).
        let mut c1 = m.new_cache(64).expect("cache");
        let mut c2 = m.new_cache(64).expect("cache");
        m.forward(&p1[..20], &mut c1, Logits::None).expect("prefix");
        let mut logits = Vec::new();
        let mut seqs = [
            SeqInput {
                tokens: &p1[20..],
                cache: &mut c1,
                want: Logits::Last,
            },
            SeqInput {
                tokens: &p2,
                cache: &mut c2,
                want: Logits::All,
            },
        ];
        m.forward_batch(&mut seqs, &mut logits).expect("batch");
        out.push(logits);
    }
    let d = max_diff(&out[0], &out[1]);
    assert!(d <= 1e-4, "mixed batch: logits differ by {d}");
}

#[test]
fn auto_expands_only_where_the_cost_model_says_it_pays() {
    let m = load(
        "tiny-deepseek3-F32.gguf",
        MlaPrefill::Auto,
        NumaMode::Off,
        KvFormat::F32,
    );
    let mla = m.config.mla.clone().expect("an MLA model");
    let expands = |p0, rows| tandem_model::mla_prefill_expands(MlaPrefill::Auto, &mla, p0, rows);
    // A prompt's first chunk: always (its rows are decompressed once
    // either way); a decode step: never.
    assert!(expands(0, 2) && expands(0, 5000));
    assert!(!expands(0, 1) && !expands(100, 1));
    // Over a cached prefix, from the cost model's break-even on: p0·A <
    // n·(p0 + n)·gain.
    let gain = mla.row() + mla.kv_lora_rank - mla.qk_head() - mla.v_head;
    let a = mla.kv_lora_rank * (mla.qk_nope + mla.v_head);
    let p0 = 4096;
    let even = (1..p0)
        .find(|&n| p0 * a < n * (p0 + n) * gain)
        .expect("break-even");
    assert!(!expands(p0, even - 1) && expands(p0, even));
    for mode in [MlaPrefill::Absorbed, MlaPrefill::Expanded] {
        let forced = |p0, rows| tandem_model::mla_prefill_expands(mode, &mla, p0, rows);
        assert_eq!(forced(0, 1000), mode == MlaPrefill::Expanded);
        assert!(!forced(0, 1));
    }
}

/// Several query tiles over two and three virtual nodes: each (head,
/// tile) item is folded by exactly one worker of one node (claims count
/// per node; an item folded twice counts its keys twice), so the logits
/// equal the unsharded one-thread ones bit for bit.
#[test]
fn expanded_prefill_is_the_same_on_any_split() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-deepseek3/gguf/tiny-deepseek3-Q8_0.gguf");
    let mk = |numa, threads| {
        let opts = LoadOptions {
            numa,
            threads,
            pin: false,
            mla_prefill: MlaPrefill::Expanded,
            ..LoadOptions::default()
        };
        Model::load_with(ModelFiles::open(&path).expect("fixture"), &opts).expect("model")
    };
    let base = mk(NumaMode::Off, Some(1));
    let toks = tokens(base.config.vocab_size, 150, 3);
    let run = |m: &Model| {
        let mut cache = m.new_cache(200).expect("cache");
        m.forward(&toks, &mut cache, Logits::All).expect("prefill")
    };
    let want = run(&base);
    for (numa, threads) in [
        (NumaMode::Off, Some(2)),
        (NumaMode::Virtual(2), None),
        (NumaMode::Virtual(3), Some(3)),
    ] {
        let d = max_diff(&want, &run(&mk(numa, threads)));
        assert_eq!(d, 0.0, "{numa:?} {threads:?}: logits differ by {d}");
    }
}
