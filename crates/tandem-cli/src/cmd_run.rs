use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tandem_engine::chat::{ChatMessage, ChatTemplate};
use tandem_engine::generate::{generate, GenerateOptions, StopReason};
use tandem_engine::sampler::SamplingParams;

use crate::load::load_model;
use crate::Common;

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, short = 'm', help = crate::model_arg_help())]
    model: Option<PathBuf>,
    /// The prompt (with --chat: the user's message).
    #[arg(long, short = 'p', default_value = "The Python language")]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// 1.0 disables.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// 1.0 disables.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the repeat penalty looks back over.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// RNG seed (default: random).
    #[arg(long)]
    seed: Option<u64>,
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
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed: args.seed.unwrap_or_else(rand_seed),
    };
    sampling.validate()?;
    let model = load_model(args.model.as_deref(), &args.common.load_options())?;
    let tok = &model.tokenizer;

    let (text, add_special) = if args.chat {
        let template = match tok.chat_template() {
            Some(src) => ChatTemplate::new(src, tok.bos_text(), tok.eos_text())
                .context("the model's chat template")?,
            None => {
                tracing::warn!("the model has no chat template; using ChatML");
                ChatTemplate::chatml()
            }
        };
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
        max_tokens: args.max_tokens,
        sampling,
        ..GenerateOptions::default()
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

fn rand_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}
