use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::load::load_model;
use crate::Common;

#[derive(Args)]
pub struct PerplexityArgs {
    #[arg(long, short = 'm', help = crate::model_arg_help())]
    model: Option<PathBuf>,
    /// The text to evaluate.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long, short = 'c', default_value_t = 512)]
    ctx: usize,
    /// Print {"ppl": ..., "chunks": ..., "tokens": ...} as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let model = load_model(args.model.as_deref(), &args.common.load_options())?;
    let t0 = Instant::now();
    let show = std::io::stderr().is_terminal() && !args.json;
    let r = tandem_engine::perplexity::perplexity(&model, &text, args.ctx, |i, n, ppl| {
        if show {
            eprint!("\r[{}/{}] ppl {:.4}", i + 1, n, ppl);
        }
    })?;
    if show {
        eprintln!();
    }
    let secs = t0.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"ppl": r.ppl, "chunks": r.chunks, "tokens": r.tokens, "ctx": r.ctx, "scored": r.scored, "ppl_stderr": r.ppl_stderr})
        );
    } else {
        println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_stderr);
        println!(
            "{} chunks of {} tokens, {} tokens in the text",
            r.chunks, r.ctx, r.tokens
        );
    }
    eprintln!(
        "evaluated {} tokens in {:.2}s ({:.1} tokens/s)",
        r.chunks * r.ctx,
        secs,
        (r.chunks * r.ctx) as f64 / secs.max(1e-9)
    );
    Ok(())
}
