//! The timed tests: prefill (`pp N`), decode (`tg N`) and batched decode,
//! each repeated and summarised as llama-bench does (mean ± sample stddev of
//! tok/s), plus the bytes each generated token has to read, from which the
//! effective bandwidth follows.

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tandem_model::{KvCache, Logits, Model, ModelFiles};

use crate::BenchError;

/// What the benchmark runs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Prompt tokens for `pp` (0 skips it).
    pub n_prompt: usize,
    /// Generated tokens for `tg` and the batched test (0 skips both).
    pub n_gen: usize,
    /// Sequences of the batched decode test (≤ 1 skips it).
    pub batch: usize,
    pub reps: usize,
    /// Contexts the decode tests start after (llama-bench's depths), one
    /// test each: each sequence first holds this many positions of
    /// synthetic K/V rows. Empty: no context.
    pub ctx: Vec<usize>,
}

/// Bytes read per generated token, from the weights actually in the file.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TokenBytes {
    /// Every weight matrix once (the output matrix, or the tied
    /// embedding), except the routed experts: a decode step reads only
    /// the ones it selects, which the test counts as they are read
    /// ([`Model::routed_expert_bytes`]).
    pub weights: u64,
    /// One embedding row (the token's input vector).
    pub embedding_row: u64,
    /// K and V of one cached position, all whole-prefix layers, as stored
    /// (set from the loaded model's KV geometry: [`TokenBytes::with_kv`]).
    pub kv_per_position: u64,
    /// The same for the sliding-window layers, which read at most
    /// `kv_window` positions (0 and 0: none).
    pub kv_windowed: u64,
    pub kv_window: u64,
    /// Every tensor's bytes: the file's size without metadata.
    pub model_size: u64,
    pub n_params: u64,
}

impl TokenBytes {
    /// From the opened files (before [`Model::load`] takes them).
    pub fn from_files(files: &ModelFiles) -> TokenBytes {
        let c = &files.config;
        let mut weights = 0u64;
        let (mut size, mut params) = (0u64, 0u64);
        let mut embd = 0u64;
        let mut has_output = false;
        for t in files.tensors() {
            size += t.n_bytes() as u64;
            params += t.n_elements() as u64;
            let name = t.name();
            if name == "token_embd.weight" || name == "model.embed_tokens.weight" {
                embd = t.n_bytes() as u64;
            } else if t.dims().len() == 2 && !name.contains(".experts.") {
                // (GGUF stacks the routed experts in 3-D tensors; Hugging
                // Face names each `...experts.N...`.)
                has_output |= name == "output.weight" || name == "lm_head.weight";
                weights += t.n_bytes() as u64;
            }
        }
        if !has_output {
            weights += embd;
        }
        TokenBytes {
            weights,
            embedding_row: embd / c.vocab_size.max(1) as u64,
            kv_per_position: (2 * c.n_layers * c.n_kv_heads * c.head_dim * 4) as u64,
            kv_windowed: 0,
            kv_window: 0,
            model_size: size,
            n_params: params,
        }
    }

    /// The same with `kv` bytes per cached position (the KV type's), and
    /// `windowed` (bytes per position, window) for sliding-window layers.
    pub fn with_kv(self, kv: u64, windowed: Option<(u64, u64)>) -> TokenBytes {
        let (kv_windowed, kv_window) = windowed.unwrap_or((0, 0));
        TokenBytes {
            kv_per_position: kv,
            kv_windowed,
            kv_window,
            ..self
        }
    }

    /// Bytes read by one decode step of `batch` sequences whose new tokens
    /// sit at position `pos` (attending over `pos + 1` positions). The
    /// weights are counted once per step: the engine reads them once for the
    /// whole batch.
    pub fn per_step(&self, batch: usize, pos: f64) -> f64 {
        let b = batch as f64;
        let seen = pos + 1.0;
        self.weights as f64
            + b * (self.embedding_row as f64
                + self.kv_per_position as f64 * seen
                + self.kv_windowed as f64 * seen.min(self.kv_window as f64))
    }
}

/// Which test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestKind {
    Pp,
    Tg,
}

/// One test's repetitions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestResult {
    /// `pp512`, `tg128`, `tg128@b8` (llama-bench's names plus the batch).
    pub name: String,
    pub kind: TestKind,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub batch: usize,
    /// Positions cached before the test's first token (`tg` only).
    pub ctx: usize,
    /// tok/s of each repetition (a batch counts all its sequences' tokens).
    pub samples_ts: Vec<f64>,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    /// Average bytes read per decode step (`tg` only).
    pub bytes_per_step: Option<f64>,
    /// Effective bandwidth: bytes per step × steps/s, 10^9 B/s (`tg` only).
    pub gbps: Option<f64>,
    /// `gbps` as a percentage of the probe's GB/s (filled by the report).
    pub pct_of_probe: Option<f64>,
}

/// llama-bench's statistics: mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Per-token synchronisation cost of the decode test at batch 1, for
/// `--verbose`: how many fork-join runs of the worker pool a token takes,
/// what an empty run costs (the fixed price of a barrier), how long the
/// driver waited for other workers at the end of runs (barrier + load
/// imbalance), and the time spent adding nodes' partial results into the
/// residual stream (the all-reduce / all-gather step).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncStats {
    pub runs_per_token: Option<f64>,
    pub empty_run_us: Option<f64>,
    pub barrier_us_per_token: Option<f64>,
    pub allreduce_us_per_token: Option<f64>,
}

/// Counters sampled around a measurement.
#[derive(Clone, Copy)]
struct Counters {
    runs: u64,
    wait_ns: u64,
    allreduce_ns: u64,
}

fn counters(model: &Model) -> Counters {
    let s = model.pool().stats();
    Counters {
        runs: s.runs,
        wait_ns: s.wait_ns,
        allreduce_ns: model.allreduce_ns(),
    }
}

/// Measures [`SyncStats`] over `n_gen` single-sequence decode steps.
pub fn sync_stats(model: &Model, n_gen: usize) -> Result<SyncStats, BenchError> {
    let n_gen = n_gen.max(1);
    let mut cache = model.new_cache(n_gen + 1)?;
    let mut logits = Vec::new();
    model.decode_batch(&[1], std::slice::from_mut(&mut cache), &mut logits)?;
    let before = counters(model);
    for _ in 0..n_gen {
        let t = argmax(&logits);
        model.decode_batch(&[t], std::slice::from_mut(&mut cache), &mut logits)?;
    }
    let after = counters(model);
    let per = |a: u64, b: u64| Some((b - a) as f64 / n_gen as f64);
    Ok(SyncStats {
        runs_per_token: per(before.runs, after.runs),
        empty_run_us: Some(model.pool().measure_empty_run_ns(2000) / 1e3),
        barrier_us_per_token: per(before.wait_ns, after.wait_ns).map(|v| v / 1e3),
        allreduce_us_per_token: per(before.allreduce_ns, after.allreduce_ns).map(|v| v / 1e3),
    })
}

fn random_tokens(rng: &mut SmallRng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// Runs everything `cfg` asks for; `on_test` sees each result as it lands.
pub fn run(
    model: &Model,
    bytes: &TokenBytes,
    cfg: &BenchConfig,
    on_test: &mut dyn FnMut(&TestResult),
) -> Result<Vec<TestResult>, BenchError> {
    let vocab = model.config.vocab_size;
    let mut rng = SmallRng::seed_from_u64(1234);
    let reps = cfg.reps.max(1);
    let mut results = Vec::new();

    // Warm-up, as llama-bench: pages in the weights, spins up the threads.
    let mut cache = model.new_cache(cfg.n_prompt.max(2) + 2)?;
    let warm = random_tokens(&mut rng, cfg.n_prompt.clamp(1, 32), vocab);
    model.forward(&warm, &mut cache, Logits::Last)?;
    cache.clear();
    model.forward(&warm[..1], &mut cache, Logits::Last)?;

    if cfg.n_prompt > 0 {
        let mut cache = model.new_cache(cfg.n_prompt)?;
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            cache.clear();
            let toks = random_tokens(&mut rng, cfg.n_prompt, vocab);
            let t0 = Instant::now();
            model.forward(&toks, &mut cache, Logits::Last)?;
            samples.push(cfg.n_prompt as f64 / t0.elapsed().as_secs_f64().max(1e-9));
        }
        let r = summarise(
            format!("pp{}", cfg.n_prompt),
            TestKind::Pp,
            cfg.n_prompt,
            0,
            1,
            samples,
            None,
        );
        on_test(&r);
        results.push(r);
    }
    if cfg.n_gen > 0 {
        let batches: Vec<usize> = if cfg.batch > 1 {
            vec![1, cfg.batch]
        } else {
            vec![1]
        };
        let depths = if cfg.ctx.is_empty() {
            vec![0]
        } else {
            cfg.ctx.clone()
        };
        for b in batches {
            for &d in &depths {
                let r = decode_test(model, bytes, cfg.n_gen, d, b, reps, &mut rng)?;
                on_test(&r);
                results.push(r);
            }
        }
    }
    Ok(results)
}

/// `n_gen` steps of `batch` sequences, each after `ctx` synthetic
/// positions and a one-token prompt.
fn decode_test(
    model: &Model,
    bytes: &TokenBytes,
    n_gen: usize,
    ctx: usize,
    batch: usize,
    reps: usize,
    rng: &mut SmallRng,
) -> Result<TestResult, BenchError> {
    let vocab = model.config.vocab_size;
    let mut caches = (0..batch)
        .map(|_| model.new_cache(ctx + n_gen + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = SyntheticRows::new(model, rng)?;
    let mut logits = vec![0.0f32; batch * vocab];
    let mut samples = Vec::with_capacity(reps);
    let mut expert_bytes = 0u64;
    for _ in 0..reps {
        let mut toks = random_tokens(rng, batch, vocab);
        for (c, &t) in caches.iter_mut().zip(&toks) {
            c.truncate(ctx);
            if c.len() < ctx {
                rows.fill(c, ctx, rng)?;
            }
            model.forward(&[t], c, Logits::None)?;
        }
        let e0 = model.routed_expert_bytes();
        let t0 = Instant::now();
        for _ in 0..n_gen {
            // One pass over the weights for the whole batch; no allocation.
            model.decode_batch(&toks, &mut caches, &mut logits)?;
            for (t, l) in toks.iter_mut().zip(logits.chunks_exact(vocab)) {
                *t = argmax(l);
            }
        }
        samples.push((n_gen * batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9));
        expert_bytes += model.routed_expert_bytes() - e0;
    }
    // Positions ctx+1..=ctx+n_gen: the mean step attends over
    // ctx + (n_gen + 1) / 2 + 1; plus the experts the steps routed to.
    let per_step = bytes.per_step(batch, ctx as f64 + (n_gen as f64 + 1.0) / 2.0)
        + expert_bytes as f64 / (reps * n_gen).max(1) as f64;
    let mut name = format!("tg{n_gen}");
    if batch > 1 {
        name += &format!("@b{batch}");
    }
    if ctx > 0 {
        name += &format!("@d{ctx}");
    }
    Ok(TestResult {
        ctx,
        ..summarise(name, TestKind::Tg, 0, n_gen, batch, samples, Some(per_step))
    })
}

/// Stored K/V rows of random values, to fill a context without running
/// the model: decode's speed depends on how many rows it reads, not on
/// their values (attention's arithmetic is the same for any finite
/// input), so a 16k-token context is ready in seconds instead of the
/// minutes a prefill would take on a small machine.
struct SyntheticRows {
    /// `N_ROWS` encoded rows of the model's KV type.
    bytes: Vec<u8>,
    row_bytes: usize,
}

const N_ROWS: usize = 1024;

impl SyntheticRows {
    fn new(model: &Model, rng: &mut SmallRng) -> Result<SyntheticRows, BenchError> {
        let g = model.kv_geometry(model.kv_options());
        let row_bytes = g.row_bytes();
        let mut bytes = vec![0u8; N_ROWS * row_bytes];
        let mut vals = vec![0.0f32; g.head_dim];
        for row in bytes.chunks_exact_mut(row_bytes) {
            vals.iter_mut()
                .for_each(|v| *v = rng.random_range(-1.0..1.0));
            tandem_kernels::attention::encode_row(g.format, &vals, row)
                .map_err(|e| BenchError::Invalid(format!("synthetic KV rows: {e}")))?;
        }
        Ok(SyntheticRows { bytes, row_bytes })
    }

    /// Appends positions up to `ctx` to `cache`, of random rows and tokens.
    fn fill(&self, cache: &mut KvCache, ctx: usize, rng: &mut SmallRng) -> Result<(), BenchError> {
        let n = ctx - cache.len();
        let tokens: Vec<u32> = (0..n).map(|_| rng.random()).collect();
        let offset = rng.random_range(0..N_ROWS);
        cache
            .append_rows(&tokens, |key, row| {
                let i = (key.pos * 31 + key.layer * 7 + key.head * 3 + key.kv + offset) % N_ROWS;
                row.copy_from_slice(&self.bytes[i * self.row_bytes..(i + 1) * self.row_bytes]);
            })
            .map_err(|e| BenchError::Invalid(format!("cannot fill a {ctx}-token context: {e}")))
    }
}

/// Greedy next token: keeps the decode data-dependent, as in real use.
fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

fn summarise(
    name: String,
    kind: TestKind,
    n_prompt: usize,
    n_gen: usize,
    batch: usize,
    samples: Vec<f64>,
    bytes_per_step: Option<f64>,
) -> TestResult {
    let (avg, std) = mean_std(&samples);
    TestResult {
        name,
        kind,
        n_prompt,
        n_gen,
        batch,
        ctx: 0,
        gbps: bytes_per_step.map(|b| b * avg / batch.max(1) as f64 / 1e9),
        bytes_per_step,
        samples_ts: samples,
        avg_ts: avg,
        stddev_ts: std,
        pct_of_probe: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_llama_bench() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }

    #[test]
    fn windowed_layers_read_at_most_their_window() {
        let b = TokenBytes {
            weights: 1000,
            embedding_row: 10,
            kv_per_position: 4,
            kv_windowed: 2,
            kv_window: 8,
            model_size: 0,
            n_params: 0,
        };
        // Position 3 sees 4 positions; position 99 sees 100, the window 8.
        assert_eq!(b.per_step(1, 3.0), 1000.0 + 10.0 + 16.0 + 8.0);
        assert_eq!(b.per_step(2, 99.0), 1000.0 + 2.0 * (10.0 + 400.0 + 16.0));
    }
}
