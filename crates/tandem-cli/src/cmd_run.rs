use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tandem_engine::chat::{ChatMessage, ChatTemplate};
use tandem_engine::generate::{generate, GenerateOptions, StopReason};

use crate::load::load_model;
use crate::sampling_args::SamplingArgs;
use crate::Common;

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, short = 'm', help = crate::model_arg_help())]
    model: Option<PathBuf>,
    /// The prompt (with --chat: the user's message).
    #[arg(long, short = 'p', default_value = "The Python language")]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Apply the model's chat template to the prompt.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long, short = 'c')]
    ctx_size: Option<usize>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let sampling = args.sampling.params()?;
    let model = load_model(args.model.as_deref(), &args.common.load_options())?;
    let tok = &model.tokenizer;

    let (text, add_special) = if args.chat {
        let template = ChatTemplate::of_tokenizer(tok).context("the model's chat template")?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        // Templates write BOS themselves: do not add it again.
        (template.render(&messages, true)?, false)
    } else {
        (args.prompt.clone(), true)
    };
    let prompt = tok.encode(&text, add_special)?;
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let ctx = args
        .ctx_size
        .unwrap_or_else(|| model.config.context_length.min(4096))
        .max(1);
    if prompt.len() >= ctx {
        anyhow::bail!(
            "the prompt is {} tokens, the context holds {ctx} (raise --ctx-size)",
            prompt.len()
        );
    }
    let mut cache = model.new_cache(ctx)?;
    let opts = GenerateOptions {
        max_tokens: args.sampling.max_tokens,
        sampling,
        prefill_batch: args.common.prefill_chunk as usize,
    };
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{}", args.prompt)?;
        out.flush()?;
    }
    let stats = generate(&model, &mut cache, &prompt, &opts, |piece| {
        // A closed stdout (e.g. piped into `head`) is not worth a panic.
        let _ = write!(out, "{piece}").and_then(|_| out.flush());
    })?;
    writeln!(out)?;
    let stop = match stats.stop {
        StopReason::Eos => "end of text",
        StopReason::MaxTokens => "token limit",
        StopReason::ContextFull => "context full",
    };
    eprintln!(
        "prompt: {} tokens, {:.1} tokens/s | generation: {} tokens, {:.1} tokens/s | stopped: {stop}",
        stats.prompt_tokens,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.generation_tokens_per_second(),
    );
    Ok(())
}
