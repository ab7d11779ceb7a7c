//! The CPU prefill backend: the model's own forward pass, in chunks, over
//! a pool of the worker's own, whose prefix cache spares it the prefixes
//! it has computed before (a worker does not receive the server's cached
//! pages: it recomputes what it lacks below `skip`, and sends only the
//! rows from `skip` on).
//!
//! Chunks start where the worker's cache ends and are `chunk` tokens
//! long, like the in-process scheduler's for a lone request, so the rows
//! and logits are the ones the server would have computed.

use std::sync::Arc;

use tandem_kv::encode_page_image;
use tandem_model::{KvStore, Logits, Model};

use super::{PrefillBackend, PrefillJob};
use crate::EngineError;

pub struct CpuPrefill {
    model: Arc<Model>,
    store: Arc<KvStore>,
    chunk: usize,
}

impl CpuPrefill {
    /// Prefills on `model` in chunks of `chunk` tokens, in `store`'s pool.
    pub fn new(model: Arc<Model>, store: Arc<KvStore>, chunk: usize) -> CpuPrefill {
        CpuPrefill {
            model,
            store,
            chunk: chunk.max(1),
        }
    }
}

impl PrefillBackend for CpuPrefill {
    fn prefill(
        &mut self,
        job: &PrefillJob,
        rows: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let tokens = &job.tokens;
        let end = tokens.len();
        check_job(job, self.store.capacity_tokens())?;
        let identity = self.model.identity();
        // Rows are sent after their chunk commits: a windowed layer's rows
        // behind the window must still be there then.
        let mut seq = self.store.sequence_with_prefix(tokens).keep_window_rows();
        let mut sent = job.skip;
        let mut logits = Vec::new();
        // Sends the rows of `sent..seq.len()`, a page (or page tail) each.
        let mut flush = |seq: &tandem_model::KvCache, sent: &mut usize| {
            send_rows(seq, identity, job.job, sent, &mut *rows)
        };
        while seq.len() < end {
            if !flush(&seq, &mut sent)? {
                return Ok(None);
            }
            let start = seq.len();
            let mut stop = (start + self.chunk).min(end);
            if let Some(r) = seq.resume_at().filter(|&r| r > start) {
                stop = stop.min(r);
            }
            let want = if stop == end {
                Logits::Last
            } else {
                Logits::None
            };
            logits = self.model.forward(&tokens[start..stop], &mut seq, want)?;
        }
        if !flush(&seq, &mut sent)? {
            return Ok(None);
        }
        if logits.is_empty() {
            return Err(EngineError::InvalidArgument(
                "prefill ended without logits".into(),
            ));
        }
        Ok(Some(logits))
    }
}

/// Refuses a job that leaves no token to compute or holds more tokens
/// than a pool of `capacity` tokens (what every backend checks first).
pub fn check_job(job: &PrefillJob, capacity: usize) -> Result<(), EngineError> {
    let end = job.tokens.len();
    if job.skip >= end {
        return Err(EngineError::InvalidArgument(format!(
            "a prefill job must leave a token to compute (skip {} of {end})",
            job.skip
        )));
    }
    if end > capacity {
        return Err(EngineError::PromptTooLong {
            prompt: end,
            ctx: capacity,
        });
    }
    Ok(())
}

/// Hands positions `*sent..seq.len()` to `rows` as page images of stream
/// `job` (one per page, partial pages included), advancing `*sent`.
/// Ok(false): `rows` refused one (cancelled or gone).
pub fn send_rows(
    seq: &tandem_model::KvCache,
    identity: tandem_kv::ModelIdentity,
    job: u64,
    sent: &mut usize,
    rows: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<bool, EngineError> {
    let pt = seq.store().geometry().page_tokens;
    while *sent < seq.len() {
        let n = (pt - *sent % pt).min(seq.len() - *sent);
        let image = encode_page_image(seq, identity, job, *sent, n)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        if !rows(image) {
            return Ok(false);
        }
        *sent += n;
    }
    Ok(true)
}
