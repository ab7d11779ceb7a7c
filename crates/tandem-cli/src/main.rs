//! `tandem`: the command-line front end.
//!
//! Subcommands: `run` (generate text), `chat` (a multi-turn REPL on the
//! prefix cache), `perplexity` (llama.cpp-compatible
//! evaluation), `inspect` (what a model file holds), `tokenize` (as
//! llama-tokenize), `bench` (speed and bandwidth; synthetic models),
//! `serve` (the OpenAI API) and `prefill-worker` (a prefill worker
//! process for `serve`). Errors end the
//! process with one line on stderr and a non-zero exit code.

mod bundled;
mod cmd_bench;
mod cmd_bench_gpu;
mod cmd_calibrate;
mod cmd_chat;
mod cmd_inspect;
mod cmd_perplexity;
mod cmd_prefill_worker;
mod cmd_run;
mod cmd_serve;
mod cmd_tokenize;
mod gpu;
mod gpu_worker;
mod kv_pool;
mod load;
mod sampling_args;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Run large language models on the CPU you own."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Worker threads (default: one per usable CPU).
    #[arg(long, short = 't', global = true)]
    pub threads: Option<usize>,
    /// NUMA placement: auto (one engine node per machine node), off, or
    /// virtual:N (act as N nodes; for testing the sharded path).
    #[arg(long, global = true, default_value = "auto")]
    pub numa: tandem_model::NumaMode,
    /// Keep weights in the file's layout instead of re-laying them out for
    /// the kernels at load time (for comparisons; slower).
    #[arg(long, global = true)]
    pub no_repack: bool,
    /// Element type of the KV cache: f16 (as llama.cpp), bf16, f32
    /// (exact, twice the memory), or q8_0 (half of f16's memory, head size
    /// a multiple of 32).
    #[arg(long, global = true, default_value = "f16")]
    pub kv_type: tandem_model::KvFormat,
    /// Tokens per KV cache page (the unit of the block tables and of
    /// prefix sharing).
    #[arg(long, global = true, default_value_t = tandem_model::kv_cache::DEFAULT_PAGE_TOKENS as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub kv_page_tokens: u64,
    /// Memory of the shared KV page pool of `chat` (e.g. 8GiB, 512MB;
    /// default: half the memory available after loading, at most 16 full
    /// contexts).
    #[arg(long, global = true)]
    pub kv_memory: Option<bytesize::ByteSize>,
    /// Directory of the KV cache's disk tier (`chat`): pages evicted from
    /// memory go there, and conversations are saved there at exit, so a
    /// prefix is found again later or after a restart.
    #[arg(long, global = true, value_name = "DIR")]
    pub kv_disk: Option<PathBuf>,
    /// Most bytes the disk tier keeps (oldest pages go first).
    #[arg(long, global = true, default_value = "64GiB")]
    pub kv_disk_size: bytesize::ByteSize,
    /// Prompt tokens per forward pass when prefilling (chunked prefill:
    /// each chunk attends to the cache the earlier ones filled).
    #[arg(long, global = true, default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub prefill_chunk: u64,
}

impl Common {
    pub fn load_options(&self) -> tandem_model::LoadOptions {
        tandem_model::LoadOptions {
            numa: self.numa,
            threads: self.threads,
            pin: true,
            repack: !self.no_repack,
            kv: tandem_model::KvOptions {
                format: self.kv_type,
                page_tokens: self.kv_page_tokens as usize,
            },
            ..tandem_model::LoadOptions::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt (or a chat reply with --chat).
    Run(cmd_run::RunArgs),
    /// Talk with a model, turn by turn (stdin to stdout); turns reuse the
    /// KV cache of the conversation so far through the prefix cache.
    Chat(cmd_chat::ChatArgs),
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(cmd_perplexity::PerplexityArgs),
    /// Show a model's architecture, hyperparameters and tensor types.
    Inspect(cmd_inspect::InspectArgs),
    /// Measure prefill/decode speed and memory bandwidth, or write a synthetic model.
    Bench(cmd_bench::BenchArgs),
    /// Serve the OpenAI API over HTTP (continuous batching).
    Serve(cmd_serve::ServeArgs),
    /// Compute prefills for a `tandem serve --prefill-listen` as a
    /// separate process.
    PrefillWorker(cmd_prefill_worker::PrefillWorkerArgs),
    /// Print the tokens of a text, as llama.cpp's llama-tokenize does.
    Tokenize(cmd_tokenize::TokenizeArgs),
    /// Measure PCIe bandwidth, the GPU's GEMM rate and this CPU's prefill
    /// rate; save the profile `--prefill auto` routes by.
    Calibrate(cmd_calibrate::CalibrateArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TANDEM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(a),
        Command::Chat(a) => cmd_chat::run(a),
        Command::Perplexity(a) => cmd_perplexity::run(a),
        Command::Inspect(a) => cmd_inspect::run(a),
        Command::Bench(a) => cmd_bench::run(a),
        Command::Serve(a) => cmd_serve::run(a),
        Command::PrefillWorker(a) => cmd_prefill_worker::run(a),
        Command::Tokenize(a) => cmd_tokenize::run(a),
        Command::Calibrate(a) => cmd_calibrate::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The chain of causes on one line, skipping causes that an outer message
/// already quotes (many error types print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg.replace('\n', " ")
}

/// `--model PATH`, or the bundled model when absent.
pub fn model_arg_help() -> &'static str {
    "A .gguf file, the first shard of a split GGUF, or a Hugging Face directory (default: the bundled tandem-tiny model)"
}

pub type ModelPath = Option<PathBuf>;
