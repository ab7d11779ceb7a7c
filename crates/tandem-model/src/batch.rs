//! Batched decode: one step for B independent sequences.
//!
//! PLACEHOLDER. This is the API the NUMA decode engine implements properly
//! (one pass over the weights for all B tokens); here it is a plain loop over
//! [`Model::forward`], one sequence at a time, so that callers (`tandem
//! bench`'s batch decode) can be written against the final signature today.
//! The engine replaces this file.

use crate::{KvCache, Logits, Model, ModelError};

impl Model {
    /// Appends `tokens[b]` to `caches[b]` for every b and writes each
    /// sequence's next-token logits to `logits[b * vocab_size..][..vocab_size]`.
    /// `tokens.len() == caches.len()` and `logits.len() == B * vocab_size`.
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [KvCache],
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        let vocab = self.config.vocab_size;
        if tokens.len() != caches.len() || logits.len() != tokens.len() * vocab {
            return Err(ModelError::Kernel(format!(
                "decode_batch: {} tokens, {} caches, {} logits (vocab {vocab})",
                tokens.len(),
                caches.len(),
                logits.len()
            )));
        }
        for ((&tok, cache), out) in tokens
            .iter()
            .zip(caches.iter_mut())
            .zip(logits.chunks_exact_mut(vocab.max(1)))
        {
            let l = self.forward(&[tok], cache, Logits::Last)?;
            out.copy_from_slice(&l);
        }
        Ok(())
    }
}
