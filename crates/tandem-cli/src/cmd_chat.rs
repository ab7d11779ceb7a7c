//! `tandem chat`: a multi-turn conversation on stdin/stdout.
//!
//! Every turn renders the whole conversation with the model's chat
//! template and starts a new sequence from the prefix cache
//! (`KvStore::sequence_with_prefix`): the pages the previous turns filled
//! are found by their chained hashes and only the new tokens — the last
//! reply's end, the user's message, the assistant header — are prefilled
//! (plus the previous turn's partial last page: only full pages are
//! shared).
//!
//! The turn's tokens are the previous prompt's tokens, the reply's tokens
//! as generated, and the tokens of the text the template adds after them,
//! as llama.cpp's conversation mode does: re-encoding the whole rendering
//! would tokenize the reply anew, which often differs from the sampled ids
//! and would miss the cache from the reply on. Where the template rewrites
//! earlier text (some trim replies), the whole rendering is encoded.
//! The same path serves a conversation that resumes after other traffic
//! evicted part of it: whatever full pages are still cached are reused,
//! the rest is recomputed. Per turn, stderr gets one line of statistics.
//!
//! With `--kv-disk DIR`, pages evicted from memory are written there and
//! found again by the same lookup, and every cached page is saved at exit:
//! piping the same conversation into a new process prefills only its new
//! turn.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tandem_engine::chat::{ChatMessage, ChatTemplate};
use tandem_engine::generate::{generate, GenerateOptions, GenerationStats, StopReason};
use tandem_engine::EngineError;
use tandem_model::{KvCache, ModelError};

use crate::kv_pool::open_pool;
use crate::load::load_model;
use crate::sampling_args::SamplingArgs;
use crate::Common;

#[derive(Args)]
pub struct ChatArgs {
    #[arg(long, short = 'm', help = crate::model_arg_help())]
    model: Option<PathBuf>,
    /// System message that starts the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Tokens a conversation may hold (default: the model's context, at
    /// most what the KV pool holds).
    #[arg(long, short = 'c')]
    ctx_size: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let sampling = args.sampling.params()?;
    let model = load_model(args.model.as_deref(), &args.common.load_options())?;
    let tok = &model.tokenizer;
    let template = ChatTemplate::of_tokenizer(tok).context("the model's chat template")?;
    let model_ctx = args.ctx_size.unwrap_or(model.config.context_length).max(1);
    let store = open_pool(&model, &args.common, model_ctx)?;
    let ctx = model_ctx.min(store.capacity_tokens());
    let opts = GenerateOptions {
        max_tokens: args.sampling.max_tokens,
        sampling,
        prefill_batch: args.common.prefill_chunk as usize,
    };

    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!("context {ctx} tokens; /reset starts over, /exit or Ctrl-D quits");
    }
    let system: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    let mut messages = system.clone();
    let mut seq: Option<KvCache> = None;
    // What the cache's conversation is: its text and tokens (the last
    // prompt followed by the reply as generated).
    let mut history = History::default();
    let mut turn = 0;
    let mut line = String::new();
    let mut out = std::io::stdout().lock();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.clone_from(&system);
                seq = None;
                history = History::default();
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: text.to_string(),
        });
        let rendered = template.render(&messages, true)?;
        let prompt = match rendered.strip_prefix(history.text.as_str()) {
            Some(added) if !history.tokens.is_empty() => {
                [history.tokens.as_slice(), &tok.encode(added, false)?].concat()
            }
            // Templates write BOS themselves: do not add it again.
            _ => tok.encode(&rendered, false)?,
        };
        if prompt.len() >= ctx {
            eprintln!(
                "the conversation is {} tokens and the context holds {ctx}: /reset to start over",
                prompt.len()
            );
            messages.pop();
            continue;
        }
        turn += 1;
        let read_before = store.disk().map_or(0, |d| d.stats().read);
        let mut next = store.sequence_with_prefix(&prompt).with_limit(ctx);
        let from_disk = store.disk().map_or(0, |d| d.stats().read) - read_before;
        // The previous turn's pages are now either shared with `next` or
        // cached (indexed) or free (its partial last page).
        drop(seq.take());
        let result = generate(&model, &mut next, &prompt, &opts, |piece| {
            // A closed stdout (e.g. piped into `head`) is not worth a panic.
            let _ = write!(out, "{piece}").and_then(|_| out.flush());
        });
        writeln!(out)?;
        let stats = match result {
            Ok(stats) => stats,
            Err(EngineError::Model(ModelError::ContextFull { .. })) => {
                eprintln!("the KV pool is full (raise --kv-memory, or /reset)");
                messages.pop();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let reply = tok.decode(&stats.tokens)?;
        history = History {
            text: rendered + &reply,
            tokens: [prompt, stats.tokens.clone()].concat(),
        };
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: reply,
        });
        eprintln!(
            "{}",
            turn_line(
                turn,
                &stats,
                from_disk as usize * store.geometry().page_tokens
            )
        );
        seq = Some(next);
    }
    drop(seq);
    if store.disk().is_some() {
        let n = store.persist();
        eprintln!("KV disk tier: saved {n} new pages");
    }
    Ok(())
}

/// The conversation as the cache holds it.
#[derive(Default)]
struct History {
    text: String,
    tokens: Vec<u32>,
}

/// The per-turn statistics line.
fn turn_line(turn: usize, s: &GenerationStats, from_disk: usize) -> String {
    let stop = match s.stop {
        StopReason::Eos => "end of turn",
        StopReason::MaxTokens => "token limit",
        StopReason::ContextFull => "context full",
    };
    format!(
        "[turn {turn}] prompt {} tokens: {} from cache ({from_disk} from disk), {} prefilled at {:.1} tokens/s ({:.3} s) | reply {} tokens at {:.1} tokens/s | stopped: {stop}",
        s.prompt_tokens,
        s.cached_tokens,
        s.prefilled_tokens(),
        s.prompt_tokens_per_second(),
        s.prompt_time.as_secs_f64(),
        s.generated_tokens,
        s.generation_tokens_per_second(),
    )
}
