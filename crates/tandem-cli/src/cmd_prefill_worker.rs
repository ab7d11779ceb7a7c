//! `tandem prefill-worker`: a prefill worker as its own process. It loads
//! the model, connects to a `tandem serve --prefill-listen ADDR`, proves
//! it runs the same model (the server refuses it otherwise), builds a KV
//! pool in the server's KV type and page size, and computes the prefills
//! the server hands it, sending the KV back as checked page images
//! (`tandem_engine::prefill`). It exits when the server closes the
//! connection.

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
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: PrefillWorkerArgs) -> anyhow::Result<()> {
    let model = Arc::new(load_model(
        args.model.as_deref(),
        &args.common.load_options(),
    )?);
    let hello = hello_of(&model);
    let common = args.common.clone();
    worker::run(&args.connect, hello, move |w| {
        let kv = KvOptions {
            format: w.kv_format,
            page_tokens: w.page_tokens as usize,
        };
        let ctx = (w.max_tokens as usize).max(1);
        let store = model
            .new_kv_store(kv, pool_bytes(&model, &common, ctx))
            .map_err(|e| format!("cannot allocate the worker's KV pool: {e}"))?;
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
