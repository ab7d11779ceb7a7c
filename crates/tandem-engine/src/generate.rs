//! Generation: prefill the prompt, then sample token by token, streaming
//! complete UTF-8 text to a callback until EOS, the token limit or the end
//! of the context.
//!
//! The cache handed in may already hold a prefix of the prompt (a sequence
//! started from the prefix cache, or the previous turn of a chat): only the
//! rest is prefilled, and the statistics say how much was reused.

use std::time::{Duration, Instant};

use tandem_model::{KvCache, Logits, Model, SeqInput};
use tandem_tokenizer::IncrementalDecoder;

use crate::sampler::{Sampler, SamplingParams};
use crate::EngineError;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Prompt tokens per forward pass during prefill.
    pub prefill_batch: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            prefill_batch: 512,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    MaxTokens,
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct GenerationStats {
    /// Tokens of the whole prompt.
    pub prompt_tokens: usize,
    /// Of those, tokens the cache already held (not prefilled).
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
    pub stop: StopReason,
    /// The generated ids (EOS excluded).
    pub tokens: Vec<u32>,
}

impl GenerationStats {
    /// Tokens prefilled (the prompt less its cached prefix).
    pub fn prefilled_tokens(&self) -> usize {
        self.prompt_tokens - self.cached_tokens
    }
    /// Prefill speed over the tokens actually prefilled.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prefilled_tokens() as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    pub fn generation_tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// Prefills `prompt` into `cache` (which may already hold a prefix of the
/// conversation) and returns the logits of its last token.
pub fn prefill(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    batch: usize,
) -> Result<Vec<f32>, EngineError> {
    prefill_counted(model, cache, prompt, batch).map(|(logits, _)| logits)
}

/// [`prefill`], also returning how many tokens were computed: fewer than
/// `prompt.len()` when the cache holds pages past a hole
/// (`Sequence::resume_at`): steps end there, and the commit that reaches
/// it moves the cache past those pages, so only the hole is computed.
fn prefill_counted(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    batch: usize,
) -> Result<(Vec<f32>, usize), EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if cache.len() + prompt.len() > cache.capacity() {
        return Err(EngineError::PromptTooLong {
            prompt: cache.len() + prompt.len(),
            ctx: cache.capacity(),
        });
    }
    let batch = batch.max(1);
    let base = cache.len();
    let end = base + prompt.len();
    let mut logits = Vec::new();
    let mut computed = 0;
    while cache.len() < end {
        let start = cache.len();
        let mut stop = (start + batch).min(end);
        if let Some(r) = cache.resume_at().filter(|&r| r > start) {
            stop = stop.min(r);
        }
        let want = if stop == end {
            Logits::Last
        } else {
            Logits::None
        };
        logits = model.forward(&prompt[start - base..stop - base], cache, want)?;
        computed += stop - start;
    }
    if logits.is_empty() {
        // Cached pages never cover a prompt's last token.
        return Err(EngineError::CacheMismatch {
            cached: cache.len(),
            prompt: end,
        });
    }
    Ok((logits, computed))
}

/// Generates after `prompt`, calling `on_text` with each new piece of text.
///
/// `cache` holds a prefix of `prompt` (possibly empty, never all of it):
/// its tokens must be the prompt's first `cache.len()` tokens, and only
/// the rest is prefilled (less the pages it holds past a hole).
pub fn generate(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<GenerationStats, EngineError> {
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let cached = cache.len();
    if cached >= prompt.len() || cache.tokens() != &prompt[..cached] {
        return Err(EngineError::CacheMismatch {
            cached,
            prompt: prompt.len(),
        });
    }
    let t0 = Instant::now();
    let (mut logits, computed) =
        prefill_counted(model, cache, &prompt[cached..], opts.prefill_batch)?;
    let prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let tok = &model.tokenizer;
    let mut decoder = IncrementalDecoder::with_context(prompt);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut generated = Vec::new();
    let stop = loop {
        if generated.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        let id = sampler.sample(&logits, &history)?;
        if tok.is_eog(id) {
            break StopReason::Eos;
        }
        generated.push(id);
        history.push(id);
        if let Some(text) = decoder.push(tok, id)? {
            on_text(&text);
        }
        if generated.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() >= cache.capacity() {
            break StopReason::ContextFull;
        }
        // Reuses the logits buffer: a decode step allocates nothing.
        model.forward_batch(
            &mut [SeqInput {
                tokens: &[id],
                cache: &mut *cache,
                want: Logits::Last,
            }],
            &mut logits,
        )?;
    };
    Ok(GenerationStats {
        prompt_tokens: prompt.len(),
        cached_tokens: prompt.len() - computed,
        generated_tokens: generated.len(),
        prompt_time,
        generation_time: t1.elapsed(),
        stop,
        tokens: generated,
    })
}
