//! The GPU prefill as a prefill worker of `tandem serve` (`--prefill gpu`
//! or `auto`): [`GpuBackend`] implements the engine's `PrefillBackend`
//! with `tandem_gpu::GpuPrefill`, in a pool of its own with the server's
//! KV geometry, and runs in the server's process on the worker thread of
//! `tandem_engine::prefill::local`, or in a process of its own
//! (`tandem prefill-worker --gpu`, `tandem_engine::prefill::worker`). The engine hands it a prompt when at
//! least `remote_min_tokens` are left to compute; under `auto` that
//! threshold is the calibrated crossover (`tandem calibrate`), so a chat
//! turn stays on the CPU and a document goes to the GPU.

use std::sync::Arc;

use tandem_engine::prefill::cpu::{check_job, send_rows};
use tandem_engine::prefill::{PrefillBackend, PrefillJob};
use tandem_engine::EngineError;
use tandem_gpu::{Device, GpuPrefill};
use tandem_kv::ModelIdentity;
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
        check_job(job, self.store.capacity_tokens())?;
        // Rows are sent after the whole prefill: a windowed layer's rows
        // behind the window must still be there then.
        let mut seq = self.store.sequence_with_prefix(tokens).keep_window_rows();
        let start = seq.len();
        let out = self
            .gpu
            .prefill(&mut seq, &tokens[start..], Logits::Last)
            .map_err(|e| EngineError::InvalidArgument(format!("GPU prefill: {e}")))?;
        let mut sent = job.skip;
        if !send_rows(&seq, self.identity, job.job, &mut sent, rows)? {
            return Ok(None);
        }
        Ok(Some(out.logits))
    }
}
