//! Perplexity exactly as llama.cpp's `llama-perplexity` defines it, so the
//! numbers compare across tools: tokenize the whole text (BOS per the model,
//! special-token text not parsed), cut it into non-overlapping chunks of
//! `n_ctx` tokens, replace the first token of each chunk by BOS when the
//! model adds BOS, evaluate each chunk from an empty cache, and score only
//! the second half of each chunk (positions `n_ctx/2 ..`).

use tandem_model::{Logits, Model};

use crate::EngineError;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PerplexityResult {
    pub ppl: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens in the whole text.
    pub tokens: usize,
    /// Predictions scored.
    pub scored: usize,
    pub ctx: usize,
    /// Standard error of the estimate of ppl (llama.cpp's "+/-").
    pub ppl_stderr: f64,
}

/// `log p(target)` under `logits`, in f64.
pub fn log_prob(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    f64::from(logits[target] - max) - sum.ln()
}

/// Runs the evaluation; `on_chunk(i, n_chunks, ppl_so_far)` reports progress.
pub fn perplexity(
    model: &Model,
    text: &str,
    n_ctx: usize,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult, EngineError> {
    if n_ctx < 4 {
        return Err(EngineError::InvalidArgument(format!(
            "context {n_ctx} is too small (at least 4)"
        )));
    }
    let tok = &model.tokenizer;
    let tokens = tok.encode_with(text, true, false)?;
    if tokens.len() < 2 * n_ctx {
        return Err(EngineError::TextTooShort {
            tokens: tokens.len(),
            ctx: n_ctx,
            needed: 2 * n_ctx,
        });
    }
    let bos = if tok.adds_bos() { tok.bos_id() } else { None };
    let n_chunks = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let vocab = model.config.vocab_size;
    let mut cache = model.new_cache(n_ctx)?;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut chunk = Vec::with_capacity(n_ctx);
    for i in 0..n_chunks {
        let start = i * n_ctx;
        chunk.clear();
        chunk.extend_from_slice(&tokens[start..start + n_ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        cache.clear();
        // Logits for positions first .. n_ctx-1.
        let logits = model.forward(&chunk, &mut cache, Logits::Tail(n_ctx - first))?;
        for (j, row) in logits
            .chunks_exact(vocab)
            .take(n_ctx - first - 1)
            .enumerate()
        {
            let target = tokens[start + first + j + 1] as usize;
            let lp = -log_prob(row, target);
            nll += lp;
            nll2 += lp * lp;
        }
        count += n_ctx - first - 1;
        on_chunk(i, n_chunks, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_stderr = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PerplexityResult {
        ppl,
        chunks: n_chunks,
        tokens: tokens.len(),
        scored: count,
        ctx: n_ctx,
        ppl_stderr,
    })
}
