//! `tandem prefill-worker`: a prefill worker as its own process. It loads
//! the model, connects to a `tandem serve --prefill-listen ADDR`, proves
//! it runs the same model (the server refuses it otherwise), builds a KV
//! pool in the server's KV type and page size, and computes the prefills
//! the server hands it, sending the KV back as checked page images
//! (`tandem_engine::prefill`). It exits when the server closes the
//! connection.
//!
//! With `--gpu` it computes on a GPU (`tandem_gpu::GpuPrefill`, the same
//! backend `tandem serve --prefill gpu` runs in-process), so the GPU
//! prefill can live in a process, or on a machine, of its own.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tandem_engine::prefill::cpu::CpuPrefill;
use tandem_engine::prefill::remote::hello_of;
use tandem_engine::prefill::worker;
use tandem_engine::prefill::PrefillBackend;
use tandem_model::KvOptions;

use crate::kv_pool::pool_bytes;
use crate::load::load_model;
use crate::Common;

#[derive(Args)]
pub struct PrefillWorkerArgs {
    #[arg(long, short = 'm', help = crate::model_arg_help())]
    model: Option<PathBuf>,
    /// The server's prefill address (`tandem serve --prefill-listen`).
    #[arg(long, value_name = "ADDR")]
    connect: String,
    /// Prefill on the GPU (layer-streamed weights, `tandem_gpu`) instead
    /// of this process's CPU threads.
    #[arg(long)]
    gpu: bool,
    #[command(flatten)]
    gpu_args: crate::gpu::GpuArgs,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: PrefillWorkerArgs) -> anyhow::Result<()> {
    // A build without CUDA says so before loading or connecting.
    #[cfg(not(feature = "cuda"))]
    if args.gpu && !args.gpu_args.gpu_stand_in {
        return Err(tandem_gpu::cuda_unavailable().into());
    }
    let model = Arc::new(load_model(
        args.model.as_deref(),
        &args.common.load_options(),
    )?);
    let hello = hello_of(&model);
    let common = args.common.clone();
    let (gpu, gpu_args, model_path) = (args.gpu, args.gpu_args.clone(), args.model.clone());
    worker::run(&args.connect, hello, move |w| {
        let kv = KvOptions {
            format: w.kv_format,
            page_tokens: w.page_tokens as usize,
        };
        let ctx = (w.max_tokens as usize).max(1);
        let store = model
            .new_kv_store(kv, pool_bytes(&model, &common, ctx))
            .map_err(|e| format!("cannot allocate the worker's KV pool: {e}"))?;
        if gpu {
            let make = MakeGpuBackend {
                model: model_path,
                store,
                identity: model.identity(),
            };
            return crate::gpu::with_device(&gpu_args, make).map_err(|e| format!("{e:#}"));
        }
        let backend: Box<dyn PrefillBackend> = Box::new(CpuPrefill::new(
            Arc::clone(&model),
            store,
            w.prefill_chunk as usize,
        ));
        Ok(backend)
    })
    .context("prefill worker")?;
    eprintln!("prefill worker: the server closed the connection");
    Ok(())
}

/// Opens the GPU prefill on the device `--gpu-*` names, over the worker's
/// pool.
struct MakeGpuBackend {
    model: Option<PathBuf>,
    store: Arc<tandem_model::KvStore>,
    identity: tandem_kv::ModelIdentity,
}

impl crate::gpu::OnDevice for MakeGpuBackend {
    type Out = Box<dyn PrefillBackend>;
    fn run<D: tandem_gpu::Device>(self, dev: D) -> anyhow::Result<Self::Out> {
        let files = crate::load::open_files(self.model.as_deref())?;
        let name = dev.describe();
        let gpu = tandem_gpu::GpuPrefill::new(dev, &files, tandem_gpu::PrefillOptions::default())
            .context("GPU prefill")?;
        eprintln!("prefill worker: prefilling on {name}");
        Ok(Box::new(crate::gpu_worker::GpuBackend {
            gpu,
            store: self.store,
            identity: self.identity,
        }))
    }
}
