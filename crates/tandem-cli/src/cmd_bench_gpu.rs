//! `tandem bench MODEL --prefill gpu`: the streamed GPU prefill at several
//! prompt lengths, against the roofline max(weight bytes / measured H2D
//! bandwidth, FLOPs / measured GEMM rate); with `--check`, first the GPU
//! prefill's logits, stored K/V and the CPU decode that follows against
//! the CPU path on the same model.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use tandem_gpu::calibrate::measure_device;
use tandem_gpu::{Device, GpuPrefill, PrefillOptions};
use tandem_kv::{KvGeometry, KvStore};
use tandem_model::{KvCache, Logits, ModelFiles};

use crate::gpu::OnDevice;
use crate::load::{load_files, open_files};

pub struct GpuBench<'a> {
    pub path: &'a Path,
    pub sizes: Vec<usize>,
    pub check: Option<usize>,
    pub reps: usize,
    pub load: tandem_model::LoadOptions,
    /// The CPU stand-in device: small measurements (its GEMM is a loop).
    pub stand_in: bool,
}

fn tokens(vocab: usize, n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(40_503) % vocab.max(1) as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest difference of any stored K/V value of positions `0..n`.
fn kv_diff(a: &KvCache, b: &KvCache, n: usize) -> anyhow::Result<f32> {
    let g = a.store().geometry().clone();
    let fmt = g.format.weight_format();
    let (mut ra, mut rb) = (vec![0f32; g.head_dim], vec![0f32; g.head_dim]);
    let mut worst = 0f32;
    for (node, heads) in g.node_heads.iter().enumerate() {
        for layer in 0..g.n_layers {
            for kv in 0..2 {
                for h in 0..heads.len() {
                    for pos in 0..n {
                        for (c, out) in [(a, &mut ra), (b, &mut rb)] {
                            let p = c.row_ptr(node, layer, kv, h, pos)?;
                            // SAFETY: a committed row of a page the cache holds.
                            let bytes = unsafe { std::slice::from_raw_parts(p, g.row_bytes()) };
                            tandem_kernels::dequantize_row(fmt, bytes, out)
                                .map_err(|e| anyhow::anyhow!("{e}"))?;
                        }
                        worst = worst.max(max_diff(&ra, &rb));
                    }
                }
            }
        }
    }
    Ok(worst)
}

/// Tolerance of `--check` on logits, K/V and decode: the CPU path
/// quantizes activations to 8 bits for quantized weights (as llama.cpp),
/// the GPU path rounds them to f16; on the fixtures that moves logits of
/// ±15 by up to ~0.21, of which f16 is ≤ 1.2e-2 (tandem-gpu's
/// `tests/prefill.rs` measures both on the CPU stand-in device).
const CHECK_TOL: f32 = 0.3;

impl OnDevice for GpuBench<'_> {
    type Out = ();
    fn run<D: Device>(self, dev: D) -> anyhow::Result<()> {
        eprintln!("device: {}", dev.describe());
        let (bytes, dim) = match self.stand_in {
            true => (16 << 20, 128),
            false => (256 << 20, 4096),
        };
        let rates = measure_device(&dev, bytes, dim, 3).context("measuring the device")?;
        println!(
            "measured: H2D {:.2} GB/s ({}), D2H {:.2} GB/s, f16 GEMM {:.1} TFLOP/s",
            rates.h2d_gbps,
            if rates.pinned {
                "page-locked"
            } else {
                "pageable"
            },
            rates.d2h_gbps,
            rates.gemm_tflops
        );
        let files = open_files(Some(self.path))?;
        let cfg = files.config.clone();
        let gpu = GpuPrefill::new(dev, &files, PrefillOptions::default()).context("GPU prefill")?;
        if let Some(n) = self.check {
            check(&gpu, self.path, &self.load, n)?;
        }
        let kvo = self.load.kv;
        let geom = KvGeometry {
            values: Default::default(),
            n_layers: cfg.n_layers,
            head_dim: cfg.head_dim,
            page_tokens: kvo.page_tokens,
            format: kvo.format,
            #[allow(clippy::single_range_in_vec_init)]
            node_heads: vec![0..cfg.n_kv_heads],
            windows: Vec::new(),
        };
        let weight_total = gpu.weights().stream_bytes();
        println!(
            "model: {} layers, {:.2} GB of weights streamed per prompt (all experts)",
            cfg.n_layers,
            weight_total as f64 / 1e9
        );
        for &n in &self.sizes {
            let pages = n.div_ceil(geom.page_tokens) + 1;
            let store = KvStore::new(geom.clone(), pages, &[None]).context("KV store")?;
            let toks = tokens(cfg.vocab_size, n, 11);
            let mut best: Option<(f64, tandem_gpu::PrefillStats)> = None;
            for _ in 0..self.reps.max(1) {
                let mut seq = store.sequence_with_capacity(n);
                let t = Instant::now();
                let out = gpu.prefill(&mut seq, &toks, Logits::Last)?;
                let s = t.elapsed().as_secs_f64();
                if best.as_ref().is_none_or(|b| s < b.0) {
                    best = Some((s, out.stats));
                }
            }
            let Some((s, st)) = best else { continue };
            let roof = (st.weight_bytes as f64 / (rates.h2d_gbps * 1e9))
                .max(st.flops / (rates.gemm_tflops * 1e12));
            println!(
                "N={n}: {s:.3} s, {:.0} tok/s, {} chunk(s); H2D {:.2} GB/s ({:.2} GB weights); {:.1} TFLOP/s; roofline {roof:.3} s -> {:.0}% of roofline",
                n as f64 / s,
                st.chunks,
                st.weight_bytes as f64 / s / 1e9,
                st.weight_bytes as f64 / 1e9,
                st.flops / s / 1e12,
                100.0 * roof / s
            );
        }
        Ok(())
    }
}

/// GPU prefill + CPU decode against CPU prefill + decode.
fn check<D: Device>(
    gpu: &GpuPrefill<D>,
    path: &Path,
    load: &tandem_model::LoadOptions,
    n: usize,
) -> anyhow::Result<()> {
    let model = load_files(ModelFiles::open(path)?, Some(path), load)?;
    let toks = tokens(model.config.vocab_size, n + 4, 7);
    let (prompt, decode) = toks.split_at(n);
    let mut a = model.new_cache(n + 8)?;
    let mut b = model.new_cache(n + 8)?;
    let la = model.forward(prompt, &mut a, Logits::All)?;
    let out = gpu.prefill(&mut b, prompt, Logits::All)?;
    let dl = max_diff(&la, &out.logits);
    let dk = kv_diff(&a, &b, n)?;
    let mut dd = 0f32;
    for &t in decode {
        let x = model.forward(&[t], &mut a, Logits::Last)?;
        let y = model.forward(&[t], &mut b, Logits::Last)?;
        dd = dd.max(max_diff(&x, &y));
    }
    let ok = dl <= CHECK_TOL && dk <= CHECK_TOL && dd <= CHECK_TOL;
    println!(
        "check {}: {n} tokens, logits max |diff| {dl:.2e}, stored K/V {dk:.2e}, CPU decode after {dd:.2e} (tolerance {CHECK_TOL}) -> {}",
        path.display(),
        if ok { "ok" } else { "FAIL" }
    );
    if !ok {
        anyhow::bail!("GPU prefill differs from the CPU's on {}", path.display());
    }
    Ok(())
}
