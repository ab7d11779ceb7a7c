//! `tandem serve`: the OpenAI-compatible HTTP server.
//!
//! The listener is bound first, so `/health` answers 503 while the model
//! loads (under the progress bar) and 200 once the engine thread runs, as
//! llama-server does. Loopback unless `--host` says otherwise. SIGTERM
//! (or Ctrl-C) stops accepting connections, lets the requests in flight
//! finish, and exits. With `--prefill-listen ADDR`, prefill worker
//! processes may join (`tandem prefill-worker --connect ADDR`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tandem_engine::chat::ChatTemplate;
use tandem_engine::engine::{Engine, EngineConfig};
use tandem_server::{AppState, Ready, ServerConfig};

use crate::kv_pool::open_pool;
use crate::load::load_model;
use crate::Common;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, short = 'm', help = crate::model_arg_help())]
    model: Option<PathBuf>,
    /// Address to listen on (loopback by default; 0.0.0.0 for every
    /// interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Key clients must send (`Authorization: Bearer KEY`) on every route
    /// but /health; default: the TANDEM_API_KEY environment variable.
    #[arg(long)]
    api_key: Option<String>,
    /// The model name the API reports (default: the file's name).
    #[arg(long)]
    alias: Option<String>,
    /// Tokens one request may hold, prompt and reply (default: the
    /// model's context, at most what the KV pool holds).
    #[arg(long, short = 'c')]
    ctx_size: Option<usize>,
    /// Requests decoded together at most.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Requests waiting for a place in the batch at most; beyond, 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Seconds a request may run (0: no limit).
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Accept prefill worker processes (`tandem prefill-worker --connect
    /// ADDR`) on this address (e.g. 127.0.0.1:8081; loopback unless told
    /// otherwise: the protocol has no authentication).
    #[arg(long, value_name = "ADDR")]
    prefill_listen: Option<String>,
    /// Prompts with fewer tokens left to compute are prefilled here even
    /// when a worker is idle.
    #[arg(long, default_value_t = 512)]
    prefill_remote_min: usize,
    /// While requests decode, the prompt tokens prefilled beside them may
    /// stretch a step to about this many times a decode-only step, so a
    /// long prompt never stalls the running streams (0: prefill a whole
    /// --prefill-chunk every step).
    #[arg(long, default_value_t = tandem_engine::engine::DEFAULT_PREFILL_PACE,
          allow_negative_numbers = true, value_name = "FACTOR")]
    prefill_pace: f64,
    /// Seconds a worker with a job may stay silent before its job is
    /// taken back and prefilled here.
    #[arg(long, default_value_t = 120)]
    prefill_timeout: u64,
    /// Where prompts are prefilled: cpu (here, chunked beside decode), gpu
    /// (a GPU prefill worker takes every prompt of at least
    /// --prefill-remote-min tokens), or auto (the GPU takes prompts from
    /// the calibrated crossover length on; `tandem calibrate` first).
    #[arg(long, default_value = "cpu")]
    prefill: tandem_gpu::PrefillMode,
    #[command(flatten)]
    gpu: crate::gpu::GpuArgs,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let pace = args.prefill_pace;
    if !(pace == 0.0 || (pace.is_finite() && pace > 1.0)) {
        anyhow::bail!("--prefill-pace must be 0 (off) or above 1, got {pace}");
    }
    let name = args.alias.clone().unwrap_or_else(|| match &args.model {
        Some(p) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string()),
        None => crate::bundled::NAME.to_string(),
    });
    let config = ServerConfig {
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("TANDEM_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        model_name: name,
        request_timeout: (args.request_timeout > 0)
            .then(|| Duration::from_secs(args.request_timeout)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "listening on http://{local} (loading the model: /health answers 503 until ready)"
        );
        let state = AppState::new(config);
        let loading = Arc::clone(&state);
        let load = tokio::task::spawn_blocking(move || load(&args, &loading));
        let server = tokio::spawn(tandem_server::serve(
            listener,
            Arc::clone(&state),
            tandem_server::shutdown_signal(),
        ));
        match load.await {
            Ok(Ok(())) => eprintln!("ready: http://{local}/v1"),
            Ok(Err(e)) => return Err(e),
            Err(e) => anyhow::bail!("the loading task failed: {e}"),
        }
        server.await.context("the server task failed")??;
        eprintln!("stopped");
        Ok(())
    })
}

fn load(args: &ServeArgs, state: &AppState) -> anyhow::Result<()> {
    let model = Arc::new(load_model(
        args.model.as_deref(),
        &args.common.load_options(),
    )?);
    let template =
        ChatTemplate::of_tokenizer(&model.tokenizer).context("the model's chat template")?;
    let model_ctx = args.ctx_size.unwrap_or(model.config.context_length).max(1);
    let store = open_pool(&model, &args.common, model_ctx)?;
    // The pool is the server's working memory: commit it (fault every
    // page in) on a thread of its own while the server starts, so serving
    // takes no page faults and the resident size does not creep up.
    let pool = Arc::clone(&store);
    let _ = std::thread::Builder::new()
        .name("tandem-kv-commit".into())
        .spawn(move || {
            let t0 = std::time::Instant::now();
            match pool.commit_memory() {
                Ok(()) => {
                    tracing::info!("KV pool committed in {:.1} s", t0.elapsed().as_secs_f64())
                }
                Err(e) => tracing::info!("{e}; its pages are faulted in as they are used"),
            }
        });
    // The GPU worker's threshold: the crossover under `auto`.
    let remote_min = match args.prefill {
        tandem_gpu::PrefillMode::Auto => {
            let files = crate::load::open_files(args.model.as_deref())?;
            let weights = tandem_gpu::weights::ModelWeights::from_files(&files)?;
            let kv_row = store.geometry().row_bytes();
            let cost = tandem_gpu::routing::ModelCost::of(&weights, kv_row);
            let path = tandem_gpu::Profile::default_path()
                .context("--prefill auto: no profile path (set $HOME or $TANDEM_GPU_PROFILE)")?;
            let profile = tandem_gpu::Profile::load(&path).with_context(|| {
                format!(
                    "--prefill auto needs `tandem calibrate` first ({})",
                    path.display()
                )
            })?;
            tandem_gpu::routing::crossover(&profile, &cost, 1 << 20)
        }
        tandem_gpu::PrefillMode::Gpu => Some(args.prefill_remote_min),
        tandem_gpu::PrefillMode::Cpu => None,
    };
    let engine = Engine::start(
        Arc::clone(&model),
        store,
        EngineConfig {
            max_batch: args.max_batch.max(1),
            ctx: model_ctx,
            prefill_chunk: args.common.prefill_chunk as usize,
            prefill_pace: (args.prefill_pace > 0.0).then_some(args.prefill_pace),
            max_queue: args.max_queue,
            remote_min_tokens: remote_min.unwrap_or(args.prefill_remote_min),
            remote_timeout: Duration::from_secs(args.prefill_timeout.max(1)),
        },
    );
    if let (Some(min), mode) = (remote_min, args.prefill) {
        if mode != tandem_gpu::PrefillMode::Cpu {
            let hub = engine
                .worker_hub()
                .context("the engine stopped before the GPU worker joined")?;
            let pool = open_pool(&model, &args.common, model_ctx)?;
            crate::gpu::with_device(
                &args.gpu,
                SpawnGpuWorker {
                    model: args.model.clone(),
                    store: pool,
                    identity: model.identity(),
                    hub,
                },
            )?;
            eprintln!("GPU prefill worker ready: prompts of {min} tokens and more");
        }
    } else if args.prefill == tandem_gpu::PrefillMode::Auto {
        eprintln!("--prefill auto: the CPU prefills this model faster at every length");
    }
    if let Some(addr) = &args.prefill_listen {
        let addr = if addr.contains(':') {
            addr.clone()
        } else {
            format!("127.0.0.1:{addr}")
        };
        let bound = engine
            .listen_prefill(&addr)
            .with_context(|| format!("cannot listen for prefill workers on {addr}"))?;
        eprintln!("prefill workers: tandem prefill-worker --connect {bound}");
    }
    state.set_ready(Ready {
        engine: Arc::new(engine),
        model,
        template,
    });
    Ok(())
}

/// Opens the GPU prefill on the device and joins it to the engine as an
/// in-process prefill worker.
struct SpawnGpuWorker {
    model: Option<PathBuf>,
    store: Arc<tandem_model::KvStore>,
    identity: tandem_kv::ModelIdentity,
    hub: tandem_engine::prefill::WorkerHub,
}

impl crate::gpu::OnDevice for SpawnGpuWorker {
    type Out = ();
    fn run<D: tandem_gpu::Device>(self, dev: D) -> anyhow::Result<()> {
        let files = crate::load::open_files(self.model.as_deref())?;
        let gpu = tandem_gpu::GpuPrefill::new(dev, &files, tandem_gpu::PrefillOptions::default())
            .context("GPU prefill")?;
        let backend = crate::gpu_worker::GpuBackend {
            gpu,
            store: self.store,
            identity: self.identity,
        };
        tandem_engine::prefill::local::spawn(&self.hub, Box::new(backend))
            .context("the engine stopped before the GPU worker joined")?;
        Ok(())
    }
}
