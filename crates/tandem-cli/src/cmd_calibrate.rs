//! `tandem calibrate`: measures host↔device bandwidth, the GPU's GEMM
//! rate and this CPU's prefill rate, and saves them as the profile that
//! `--prefill auto` routes by (path: `tandem_gpu::Profile::default_path`,
//! or `--out`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tandem_gpu::routing::{crossover, ModelCost};
use tandem_gpu::weights::ModelWeights;
use tandem_gpu::{Device, Profile};

use crate::gpu::{with_device, GpuArgs, OnDevice};
use crate::load::{load_files, open_files};
use crate::Common;

#[derive(Args)]
pub struct CalibrateArgs {
    /// Model whose CPU prefill is timed (default: the bundled model).
    model: Option<PathBuf>,
    /// Where to save the profile (default: $TANDEM_GPU_PROFILE, else
    /// ~/.config/tandem/gpu-profile.json).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// MiB copied each way to measure bandwidth.
    #[arg(long, default_value_t = 512)]
    copy_mib: usize,
    /// Side of the square f16 GEMM that measures the GPU.
    #[arg(long, default_value_t = 8192)]
    gemm_dim: usize,
    /// Prompt tokens of the CPU prefill measurement.
    #[arg(long, default_value_t = 128)]
    cpu_tokens: usize,
    #[command(flatten)]
    gpu: GpuArgs,
    #[command(flatten)]
    pub common: Common,
}

struct Measure<'a>(&'a CalibrateArgs);

impl OnDevice for Measure<'_> {
    type Out = (String, tandem_gpu::calibrate::DeviceRates);
    fn run<D: Device>(self, dev: D) -> anyhow::Result<Self::Out> {
        let a = self.0;
        let r = tandem_gpu::calibrate::measure_device(
            &dev,
            a.copy_mib.max(1) << 20,
            a.gemm_dim.max(16),
            5,
        )
        .context("measuring the GPU")?;
        Ok((dev.describe(), r))
    }
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let (device, rates) = with_device(&args.gpu, Measure(&args))?;
    eprintln!(
        "{device}: H2D {:.1} GB/s ({}), D2H {:.1} GB/s, f16 GEMM {:.1} TFLOP/s",
        rates.h2d_gbps,
        if rates.pinned {
            "page-locked"
        } else {
            "pageable"
        },
        rates.d2h_gbps,
        rates.gemm_tflops
    );
    let files = open_files(args.model.as_deref())?;
    let weights = ModelWeights::from_files(&files)?;
    let model = load_files(files, args.model.as_deref(), &args.common.load_options())?;
    let kv_row = model.kv_geometry(model.kv_options()).row_bytes();
    let cost = ModelCost::of(&weights, kv_row);
    let cpu = tandem_gpu::calibrate::cpu_prefill_gflops(
        &model,
        cost.flops_per_token,
        args.cpu_tokens.max(1),
    )
    .context("timing the CPU prefill")?;
    eprintln!(
        "CPU prefill: {cpu:.1} GFLOP/s ({:.1} tok/s on this model)",
        cpu * 1e9 / cost.flops_per_token
    );
    let profile = Profile {
        device,
        h2d_gbps: rates.h2d_gbps,
        d2h_gbps: rates.d2h_gbps,
        gemm_tflops: rates.gemm_tflops,
        cpu_prefill_gflops: cpu,
        gpu_overhead_s: 0.01,
    };
    let path = match args.out.clone().or_else(Profile::default_path) {
        Some(p) => p,
        None => anyhow::bail!("no place for the profile: set --out or $HOME"),
    };
    profile.save(&path)?;
    match crossover(&profile, &cost, 1 << 20) {
        Some(n) => {
            eprintln!("this model's prompts of {n} tokens and more go to the GPU (--prefill auto)")
        }
        None => eprintln!("on this machine the CPU prefills this model faster at every length"),
    }
    println!("{}", path.display());
    Ok(())
}
