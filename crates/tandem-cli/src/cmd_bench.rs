//! `tandem bench`: how fast a model prefills and decodes here, and how that
//! compares with the machine's memory bandwidth measured in the same run;
//! or, with `--synthetic`, write a random-weight model of a real shape to
//! benchmark without downloads (and to run llama.cpp's llama-bench on).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tandem_bench::measure::{self, BenchConfig, TokenBytes};
use tandem_bench::probe::{self, ProbeConfig};
use tandem_bench::report::{ModelInfo, Report};
use tandem_bench::synthetic::{self, Quant, Shape};

use crate::load::{load_files, open_files};
use crate::Common;

#[derive(Args)]
pub struct BenchArgs {
    /// The model to measure (.gguf file, first shard, or Hugging Face directory).
    #[arg(long, short = 'm', value_name = "MODEL")]
    model: Option<PathBuf>,
    /// The same, given without `--model` (as llama-bench's `-m` is not).
    #[arg(value_name = "PATH", conflicts_with = "model")]
    path: Option<PathBuf>,
    /// Prompt tokens of the prefill test (0 skips it).
    #[arg(long = "n-prompt", short = 'p', default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens of the decode tests (0 skips them).
    #[arg(long = "n-gen", short = 'n', default_value_t = 128)]
    n_gen: usize,
    /// Sequences decoding together in the batched test (1 skips it).
    #[arg(long, short = 'b', default_value_t = 8)]
    batch: usize,
    /// Contexts the decode tests start after, in tokens (llama-bench's
    /// depth; a comma-separated list gives one test each, side by side in
    /// one run): each sequence first holds this many positions of
    /// synthetic K/V rows (decode speed does not depend on their values).
    #[arg(long, short = 'd', value_delimiter = ',', default_value = "0")]
    ctx: Vec<usize>,
    /// Also time a conversation whose turn 1 is N tokens: turn 2's time to
    /// first token on the cached turn 1 against a cold prefill, and
    /// restoring turn 1 from the KV disk tier (`--kv-disk`, default a
    /// temporary directory) against recomputing it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    restore: usize,
    /// New tokens of turn 2 for `--restore`.
    #[arg(long, default_value_t = 64)]
    turn2: usize,
    /// Repetitions of each test (mean ± stddev, as llama-bench).
    #[arg(long, short = 'r', default_value_t = 3)]
    reps: usize,
    /// Print one JSON document (fields: see tandem-bench's report module).
    #[arg(long)]
    json: bool,
    /// Also print bytes per token, probe repetitions and sync costs.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Size of the bandwidth probe's buffer in MiB (0 skips the probe).
    #[arg(long, default_value_t = 1024)]
    probe_mib: usize,
    /// Write a synthetic model of this shape instead of measuring
    /// (llama3.2-3b, llama3-8b, qwen2.5-3b, llama3.1-405b, qwen3-30b-a3b,
    /// deepseek-v3, kimi-k2; for tests: tiny, tiny-qwen2, tiny-qwen3moe,
    /// tiny-deepseek3).
    #[arg(long, value_name = "SHAPE")]
    synthetic: Option<String>,
    /// Quantization of the synthetic model: a file type (F16, BF16, Q8_0,
    /// Q4_0, Q4_K_M, Q5_K_M, Q6_K), any single weight type tandem loads
    /// (Q2_K, IQ2_XXS, MXFP4, Q1_0, ...), or a mixture as the big
    /// downloads use (UD-Q2_K_XL, UD-IQ2_XXS, UD-IQ1_S). An unknown name
    /// lists them all.
    #[arg(long)]
    quant: Option<String>,
    /// Where to write the synthetic model.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Layer count of the synthetic model (default: the shape's; 2 for llama3.1-405b).
    #[arg(long)]
    layers: Option<usize>,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the prefill test runs: cpu (the tests above) or gpu (the
    /// streamed GPU prefill at each of --prefill-sizes, against its
    /// roofline).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    prefill: String,
    /// Prompt lengths of the GPU prefill test.
    #[arg(long, value_delimiter = ',', default_value = "512")]
    prefill_sizes: Vec<usize>,
    /// With --prefill gpu: first compare GPU prefill + CPU decode against
    /// the CPU path on N tokens (logits, stored K/V, decode).
    #[arg(long, value_name = "N")]
    check: Option<usize>,
    #[command(flatten)]
    gpu: crate::gpu::GpuArgs,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.model.is_none() {
        args.model = args.path.take();
    }
    if let Some(shape) = &args.synthetic {
        if args.model.is_some() {
            anyhow::bail!("give either a MODEL to measure or --synthetic, not both");
        }
        return generate(&args, shape);
    }
    if args.quant.is_some() || args.out.is_some() || args.layers.is_some() {
        anyhow::bail!("--quant, --out and --layers only go with --synthetic SHAPE");
    }
    let Some(path) = args.model.as_deref() else {
        anyhow::bail!("a MODEL path is required (or --synthetic SHAPE --quant TYPE --out FILE)");
    };
    if args.prefill == "gpu" {
        let b = crate::cmd_bench_gpu::GpuBench {
            path,
            sizes: args.prefill_sizes.clone(),
            check: args.check,
            reps: args.reps,
            load: args.common.load_options(),
            stand_in: args.gpu.gpu_stand_in,
        };
        return crate::gpu::with_device(&args.gpu, b);
    }
    if args.check.is_some() {
        anyhow::bail!("--check goes with --prefill gpu");
    }
    bench(&args, path)
}

fn generate(args: &BenchArgs, shape: &str) -> anyhow::Result<()> {
    let shape = Shape::named(shape, args.layers)?;
    let quant = Quant::parse(
        args.quant
            .as_deref()
            .context("--synthetic needs --quant TYPE")?,
    )?;
    let out = args
        .out
        .as_deref()
        .context("--synthetic needs --out FILE.gguf")?;
    let bar = ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("writing {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    synthetic::write_model(&shape, quant, out, args.seed, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("cannot write {}", out.display()))?;
    bar.finish_and_clear();
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({} {}, {} layers, {:.2} GiB)",
        out.display(),
        shape.name,
        quant.name(),
        shape.n_layers,
        size as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

fn bench(args: &BenchArgs, path: &Path) -> anyhow::Result<()> {
    let files = open_files(Some(path))?;
    let bytes = TokenBytes::from_files(&files);
    let model = load_files(files, Some(path), &args.common.load_options())?;
    // KV a step reads: every position of whole-prefix layers, at most the
    // window of sliding-window ones.
    let g = model.kv_geometry(model.kv_options());
    let layer = g.layer_bytes() as u64;
    let windows: Vec<usize> = g.windows.iter().flatten().copied().collect();
    let full = (g.n_layers - windows.len()) as u64 * layer;
    let windowed = windows
        .iter()
        .max()
        .map(|&w| (windows.len() as u64 * layer, w as u64));
    let bytes = bytes.with_kv(full, windowed);
    let threads = model.pool().n_threads();
    let c = &model.config;
    let info = ModelInfo {
        path: path.display().to_string(),
        name: model
            .name
            .clone()
            .unwrap_or_else(|| path.display().to_string()),
        arch: c.arch.name().to_string(),
        size_bytes: bytes.model_size,
        n_params: bytes.n_params,
        n_layers: c.n_layers,
        hidden: c.hidden,
        vocab_size: c.vocab_size,
    };
    let show = std::io::stderr().is_terminal() && !args.json;
    let probe = if args.probe_mib == 0 {
        None
    } else {
        let cfg = ProbeConfig {
            bytes: args.probe_mib.saturating_mul(1 << 20),
            ..ProbeConfig::default()
        };
        Some(probe::probe(model.pool(), cfg)?)
    };
    let cfg = BenchConfig {
        n_prompt: args.n_prompt,
        n_gen: args.n_gen,
        batch: args.batch,
        reps: args.reps,
        ctx: args.ctx.clone(),
    };
    let tests = measure::run(&model, &bytes, &cfg, &mut |t| {
        if show {
            eprintln!("{}: {:.2} ± {:.2} tok/s", t.name, t.avg_ts, t.stddev_ts);
        }
    })?;
    let sync = if args.verbose {
        Some(measure::sync_stats(&model, args.n_gen.max(8))?)
    } else {
        None
    };
    let mut report = Report::new(info, threads, bytes, probe, tests, sync);
    if args.restore > 0 {
        let tmp;
        let dir = match &args.common.kv_disk {
            Some(d) => d.as_path(),
            None => {
                tmp = std::env::temp_dir().join(format!("tandem-bench-kv-{}", std::process::id()));
                tmp.as_path()
            }
        };
        let r = tandem_bench::restore::run(
            &model,
            args.restore,
            args.turn2.max(1),
            args.common.prefill_chunk as usize,
            dir,
        );
        if args.common.kv_disk.is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
        report.restore = Some(r?);
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table(args.verbose));
    }
    Ok(())
}
