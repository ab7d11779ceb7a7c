//! The streamed prefill on `CpuDevice` against the CPU model: logits, the
//! K/V rows it writes into the pages, and CPU decode continuing from them;
//! chunking (attention over cached pages pulled block by block), a cached
//! prefix, the memory budget, MoE expert uploads.

use std::path::PathBuf;

use tandem_gpu::prefill::Precision;
use tandem_gpu::{CpuDevice, Device, GpuPrefill, PrefillOptions};
use tandem_model::{
    KvCache, KvFormat, KvOptions, LoadOptions, Logits, Model, ModelFiles, NumaMode,
};

fn path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(file)
}

fn files(file: &str) -> ModelFiles {
    ModelFiles::open(&path(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn model(file: &str, kv: KvFormat) -> Model {
    let opts = LoadOptions {
        numa: NumaMode::Off,
        threads: Some(2),
        pin: false,
        kv: KvOptions {
            format: kv,
            page_tokens: 16,
        },
        ..LoadOptions::default()
    };
    Model::load_with(files(file), &opts).unwrap_or_else(|e| panic!("{file}: {e}"))
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

/// Every stored K/V row of positions `0..n` of both caches, decoded.
fn kv_diff(a: &KvCache, b: &KvCache, n: usize) -> f32 {
    let g = a.store().geometry().clone();
    let mut worst = 0f32;
    let (mut ra, mut rb) = (vec![0f32; g.head_dim], vec![0f32; g.head_dim]);
    let fmt = g.format.weight_format();
    for (node, heads) in g.node_heads.iter().enumerate() {
        for layer in 0..g.n_layers {
            for kv in 0..g.planes() {
                for h in 0..heads.len() {
                    for pos in 0..n {
                        for (c, out) in [(a, &mut ra), (b, &mut rb)] {
                            let p = c.row_ptr(node, layer, kv, h, pos).expect("row");
                            // SAFETY: committed rows of a held page.
                            let bytes = unsafe { std::slice::from_raw_parts(p, g.row_bytes()) };
                            tandem_kernels::dequantize_row(fmt, bytes, out).expect("decode");
                        }
                        worst = worst.max(max_diff(&ra, &rb));
                    }
                }
            }
        }
    }
    worst
}

struct Case {
    file: &'static str,
    kv: KvFormat,
    precision: Precision,
    chunk: Option<usize>,
    /// Tokens the CPU prefills first (a cached prefix).
    prefix: usize,
    tol: f32,
}

/// GPU-path prefill then CPU decode, against CPU prefill then decode.
fn check(c: &Case) {
    let m = model(c.file, c.kv);
    let f = files(c.file);
    let opts = PrefillOptions {
        max_chunk: c.chunk,
        precision: c.precision,
        block_pages: 1,
        ..PrefillOptions::default()
    };
    // Uploads straight from the mapping when chunked, through page-locked
    // staging otherwise: both paths run.
    let mut dev = CpuDevice::new(256 << 20);
    if c.chunk.is_some() {
        dev = dev.with_page_locking();
    }
    let gpu = GpuPrefill::new(dev, &f, opts).expect("prefill");
    let n = 40;
    let toks = tokens(m.config.vocab_size, n + 3, 7);
    let (prompt, decode) = toks.split_at(n);
    let mut a = m.new_cache(64).expect("cache");
    let mut b = m.new_cache(64).expect("cache");
    let la = m.forward(prompt, &mut a, Logits::All).expect("cpu prefill");
    if c.prefix > 0 {
        m.forward(&prompt[..c.prefix], &mut b, Logits::None)
            .expect("prefix");
    }
    let out = gpu
        .prefill(&mut b, &prompt[c.prefix..], Logits::All)
        .expect("gpu prefill");
    let v = m.config.vocab_size;
    let d = max_diff(&la[c.prefix * v..], &out.logits);
    let scale = la.iter().fold(0f32, |m, x| m.max(x.abs()));
    eprintln!(
        "{} {:?} {:?}: logits max diff {d} (max |logit| {scale})",
        c.file, c.kv, c.precision
    );
    assert!(
        d <= c.tol,
        "{}: prefill logits differ by {d} (tolerance {})",
        c.file,
        c.tol
    );
    assert_eq!(b.len(), n);
    assert_eq!(b.tokens(), a.tokens());
    // Stored values may round to the neighbouring value of the KV format
    // when the f32 values differ in their last bits.
    let kv_tol = match c.kv {
        KvFormat::F32 => c.tol,
        KvFormat::F16 | KvFormat::BF16 => c.tol.max(2e-2),
        KvFormat::Q8_0 => c.tol.max(6e-2),
    };
    let kd = kv_diff(&a, &b, n);
    assert!(kd <= kv_tol, "{}: stored K/V differ by {kd}", c.file);
    for &t in decode {
        let da = m.forward(&[t], &mut a, Logits::Last).expect("decode a");
        let db = m.forward(&[t], &mut b, Logits::Last).expect("decode b");
        let d = max_diff(&da, &db);
        assert!(
            d <= c.tol,
            "{}: decode after GPU prefill differs by {d}",
            c.file
        );
    }
    if let Some(ch) = c.chunk {
        assert_eq!(out.stats.chunks, (n - c.prefix).div_ceil(ch));
    }
}

#[test]
fn f32_operands_match_the_cpu_path_on_every_layer_kind() {
    // f32 GEMM operands: what differs from the CPU path is only the order
    // of f32 sums and the CPU's activation quantization (none for F32
    // weights), so the protocol is checked tightly.
    for file in [
        "tiny-llama3/gguf/tiny-llama3-F32.gguf",
        "tiny-qwen2/gguf/tiny-qwen2-F32.gguf",
        "tiny-gemma3/gguf/tiny-gemma3-F32.gguf",
        "tiny-qwen3moe/gguf/tiny-qwen3moe-F32.gguf",
        "tiny-glm4moe/gguf/tiny-glm4moe-F32.gguf",
        "tiny-mixtral/gguf/tiny-mixtral-F32.gguf",
        "tiny-gpt-oss/gguf/tiny-gpt-oss-F32.gguf",
        // MLA, decompressed on the device; both GGUF layouts.
        "tiny-deepseek3/gguf/tiny-deepseek3-F32.gguf",
        "tiny-deepseek3/gguf/tiny-deepseek3-F32-kv_b.gguf",
    ] {
        check(&Case {
            file,
            kv: KvFormat::F32,
            precision: Precision::F32,
            chunk: None,
            prefix: 0,
            tol: 1e-4,
        });
    }
}

#[test]
fn chunks_attend_over_cached_pages_block_by_block() {
    for (file, kv) in [
        ("tiny-llama3/gguf/tiny-llama3-F32.gguf", KvFormat::F32),
        ("tiny-gemma3/gguf/tiny-gemma3-F32.gguf", KvFormat::F16),
        ("tiny-qwen3moe/gguf/tiny-qwen3moe-F32.gguf", KvFormat::Q8_0),
        // Sinks, alternating windows over cached blocks, biased experts.
        ("tiny-gpt-oss/gguf/tiny-gpt-oss-F32.gguf", KvFormat::F16),
        // Latent rows pulled back and decompressed per block.
        ("tiny-deepseek3/gguf/tiny-deepseek3-F32.gguf", KvFormat::F32),
        (
            "tiny-deepseek3/gguf/tiny-deepseek3-F32-kv_b.gguf",
            KvFormat::F16,
        ),
    ] {
        for (chunk, prefix) in [(Some(7), 0), (Some(16), 0), (None, 21), (Some(9), 5)] {
            check(&Case {
                file,
                kv,
                precision: Precision::F32,
                chunk,
                prefix,
                tol: if kv == KvFormat::F32 { 1e-4 } else { 1e-3 },
            });
        }
    }
}

#[test]
fn half_operands_on_quantized_weights_stay_within_the_quantized_tolerance() {
    for file in [
        "tiny-llama3/gguf/tiny-llama3-Q8_0.gguf",
        "tiny-llama3/gguf/tiny-llama3-BF16.gguf",
        "tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf",
        "tandem-tiny/gguf/tandem-tiny-Q6_K.gguf",
        "tiny-qwen3moe/gguf/tiny-qwen3moe-Q8_0.gguf",
        "tiny-gpt-oss/gguf/tiny-gpt-oss-Q8_0.gguf",
        "tiny-deepseek3/gguf/tiny-deepseek3-Q8_0.gguf",
        "tiny-deepseek3/gguf/tiny-deepseek3-Q8_0-kv_b.gguf",
    ] {
        check(&Case {
            file,
            kv: KvFormat::F16,
            precision: Precision::Half,
            chunk: Some(24),
            prefix: 0,
            // The CPU path quantizes activations to 8 bits (Q8_0/Q8_K, as
            // llama.cpp), the GPU path rounds them to f16: up to ~0.21 on
            // logits of ±15 here, of which f16 is ≤ 1.2e-2 (next test).
            tol: 0.3,
        });
    }
}

#[test]
fn a_small_budget_means_smaller_chunks_and_too_small_is_an_error() {
    let file = "tiny-llama3/gguf/tiny-llama3-F32.gguf";
    let m = model(file, KvFormat::F32);
    let f = files(file);
    let toks = tokens(m.config.vocab_size, 48, 3);
    let mut a = m.new_cache(64).expect("cache");
    let la = m.forward(&toks, &mut a, Logits::Last).expect("cpu");
    let opts = PrefillOptions {
        precision: Precision::F32,
        dequant_elems: 1 << 12,
        block_pages: 1,
        ..PrefillOptions::default()
    };
    let dev = CpuDevice::new(1 << 30);
    let big = GpuPrefill::new(dev, &f, opts.clone()).expect("prefill");
    let mut b = m.new_cache(64).expect("cache");
    let full = big.prefill(&mut b, &toks, Logits::Last).expect("fits");
    assert_eq!(full.stats.chunks, 1);
    // The smallest budget (in 10% steps) that runs at all: it holds a
    // few tokens' activations, so the prompt is cut into chunks.
    let mut budget = 64 << 10;
    let out = loop {
        let small = GpuPrefill::new(CpuDevice::new(budget), &f, opts.clone()).expect("prefill");
        let mut c = m.new_cache(64).expect("cache");
        match small.prefill(&mut c, &toks, Logits::Last) {
            Ok(out) => {
                assert_eq!(
                    small.device().memory().used,
                    0,
                    "buffers returned to the budget"
                );
                break out;
            }
            Err(e) => {
                assert!(e.to_string().contains("--gpu-memory"), "{e}");
                budget += budget / 10;
            }
        }
    };
    assert!(out.stats.chunks > 1, "{} chunks", out.stats.chunks);
    assert!(max_diff(&la, &out.logits) < 2e-3);
    let tiny = GpuPrefill::new(CpuDevice::new(64 << 10), &f, opts).expect("prefill");
    let mut d = m.new_cache(64).expect("cache");
    let e = tiny
        .prefill(&mut d, &toks, Logits::Last)
        .expect_err("over budget");
    assert!(e.to_string().contains("--gpu-memory"), "{e}");
}

#[test]
fn moe_layers_upload_only_the_routed_experts() {
    let file = "tiny-qwen3moe/gguf/tiny-qwen3moe-F32.gguf";
    let m = model(file, KvFormat::F32);
    let f = files(file);
    let gpu =
        GpuPrefill::new(CpuDevice::new(256 << 20), &f, PrefillOptions::default()).expect("prefill");
    let moe = m.config.moe.clone().expect("an MoE model");
    let mut a = m.new_cache(64).expect("cache");
    let out = gpu
        .prefill(&mut a, &tokens(m.config.vocab_size, 1, 1), Logits::Last)
        .expect("one token");
    // One token: top_k experts per layer, each uploaded once.
    assert_eq!(out.stats.experts_uploaded, moe.top_k * m.config.n_layers);
    let w = gpu.weights();
    let all = w.stream_bytes();
    assert!(
        out.stats.weight_bytes < all,
        "{} of {all}",
        out.stats.weight_bytes
    );
    let mut b = m.new_cache(64).expect("cache");
    let long = gpu
        .prefill(&mut b, &tokens(m.config.vocab_size, 40, 2), Logits::Last)
        .expect("40 tokens");
    assert!(long.stats.experts_uploaded <= moe.n_experts * m.config.n_layers);
    assert!(long.stats.experts_uploaded > out.stats.experts_uploaded);
}

#[test]
fn a_cache_of_another_model_and_bad_tokens_are_refused() {
    let m = model("tandem-tiny/gguf/tandem-tiny-Q8_0.gguf", KvFormat::F16);
    let f = files("tiny-llama3/gguf/tiny-llama3-F32.gguf");
    let gpu =
        GpuPrefill::new(CpuDevice::new(64 << 20), &f, PrefillOptions::default()).expect("prefill");
    let mut c = m.new_cache(16).expect("cache");
    let e = gpu
        .prefill(&mut c, &[1, 2], Logits::Last)
        .expect_err("other model");
    assert!(e.to_string().contains("another model"), "{e}");
    let own = model("tiny-llama3/gguf/tiny-llama3-F32.gguf", KvFormat::F16);
    let mut c = own.new_cache(16).expect("cache");
    let e = gpu
        .prefill(&mut c, &[1, 100_000], Logits::Last)
        .expect_err("bad token");
    assert!(e.to_string().contains("100000"), "{e}");
    assert_eq!(c.len(), 0);
}

#[test]
fn half_operands_are_close_to_f32_operands_on_the_same_weights() {
    // What f16/bf16 operands cost on the GPU path by themselves (the CPU
    // path's 8-bit activations account for the rest of the difference in
    // `half_operands_on_quantized_weights...`).
    for file in [
        "tiny-llama3/gguf/tiny-llama3-Q8_0.gguf",
        "tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf",
        "tiny-qwen3moe/gguf/tiny-qwen3moe-Q8_0.gguf",
    ] {
        let m = model(file, KvFormat::F32);
        let f = files(file);
        let toks = tokens(m.config.vocab_size, 40, 5);
        let run = |precision| {
            let opts = PrefillOptions {
                precision,
                ..PrefillOptions::default()
            };
            let gpu = GpuPrefill::new(CpuDevice::new(256 << 20), &f, opts).expect("prefill");
            let mut c = m.new_cache(64).expect("cache");
            gpu.prefill(&mut c, &toks, Logits::All)
                .expect("prefill")
                .logits
        };
        let d = max_diff(&run(Precision::Half), &run(Precision::F32));
        eprintln!("{file}: half vs f32 operands {d}");
        assert!(d < 3e-2, "{file}: {d}");
    }
}
