//! The GPU prefill as a prefill worker of `tandem serve` (`--prefill gpu`
//! or `auto`): [`GpuBackend`] implements the engine's `PrefillBackend`
//! with `tandem_gpu::GpuPrefill`, in a pool of its own with the server's
//! KV geometry, and runs in the server's process on the worker thread of
//! `tandem_engine::prefill::local`. The engine hands it a prompt when at
//! least `remote_min_tokens` are left to compute; under `auto` that
//! threshold is the calibrated crossover (`tandem calibrate`), so a chat
//! turn stays on the CPU and a document goes to the GPU.

use std::sync::Arc;

use tandem_engine::prefill::{PrefillBackend, PrefillJob};
use tandem_engine::EngineError;
use tandem_gpu::{Device, GpuPrefill};
use tandem_kv::{encode_page_image, ModelIdentity};
use tandem_model::{KvStore, Logits};

/// A prefill worker that computes on a GPU (or its CPU stand-in).
pub struct GpuBackend<D: Device> {
    pub gpu: GpuPrefill<D>,
    /// The worker's own pool (the server's geometry), whose prefix cache
    /// spares recomputing a prompt's start the worker saw before.
    pub store: Arc<KvStore>,
    pub identity: ModelIdentity,
}

impl<D: Device + Send> PrefillBackend for GpuBackend<D> {
    fn prefill(
        &mut self,
        job: &PrefillJob,
        rows: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let tokens = &job.tokens;
        let end = tokens.len();
        if job.skip >= end {
            return Err(EngineError::InvalidArgument(format!(
                "a prefill job must leave a token to compute (skip {} of {end})",
                job.skip
            )));
        }
        if end > self.store.capacity_tokens() {
            return Err(EngineError::PromptTooLong {
                prompt: end,
                ctx: self.store.capacity_tokens(),
            });
        }
        let mut seq = self.store.sequence_with_prefix(tokens);
        let start = seq.len();
        let out = self
            .gpu
            .prefill(&mut seq, &tokens[start..], Logits::Last)
            .map_err(|e| EngineError::InvalidArgument(format!("GPU prefill: {e}")))?;
        let pt = self.store.geometry().page_tokens;
        let mut sent = job.skip;
        while sent < seq.len() {
            let n = (pt - sent % pt).min(seq.len() - sent);
            let image = encode_page_image(&seq, self.identity, job.job, sent, n)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
            if !rows(image) {
                return Ok(None);
            }
            sent += n;
        }
        Ok(Some(out.logits))
    }
}
