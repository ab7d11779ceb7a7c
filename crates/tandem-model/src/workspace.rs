//! Buffers of a forward pass, kept between calls so that a decode step
//! allocates nothing once the batch shape has been seen, and the two small
//! wrappers that let pool workers write disjoint parts of a shared buffer.

use std::cell::UnsafeCell;

use tandem_kernels::{ActivationFormat, QuantizedActivations};

use crate::ModelError;

/// Activations quantized once per format, reused by every matrix that
/// reads the same input.
#[derive(Default)]
pub(crate) struct ActsCache {
    slots: Vec<(ActivationFormat, QuantizedActivations, bool)>,
}

impl ActsCache {
    /// Marks the input as changed.
    pub(crate) fn invalidate(&mut self) {
        for s in &mut self.slots {
            s.2 = false;
        }
    }

    /// Quantizes `x` (`n` rows of `cols`) into `fmt` unless already done.
    pub(crate) fn prepare(
        &mut self,
        fmt: ActivationFormat,
        x: &[f32],
        n: usize,
        cols: usize,
    ) -> Result<(), ModelError> {
        let idx = match self.slots.iter().position(|s| s.0 == fmt) {
            Some(i) => i,
            None => {
                self.slots
                    .push((fmt, QuantizedActivations::new(fmt), false));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        if !slot.2 {
            slot.1
                .quantize(x, n, cols)
                .map_err(|e| ModelError::Kernel(e.to_string()))?;
            slot.2 = true;
        }
        Ok(())
    }

    /// The prepared activations in `fmt`.
    pub(crate) fn get(&self, fmt: ActivationFormat) -> Result<&QuantizedActivations, ModelError> {
        self.slots
            .iter()
            .find(|s| s.0 == fmt && s.2)
            .map(|s| &s.1)
            .ok_or_else(|| ModelError::Kernel(format!("activations in {fmt:?} not prepared")))
    }
}

/// Per-forward buffers (token-major: row `i` of a `[n × d]` buffer is
/// `buf[i*d..(i+1)*d]`).
#[derive(Default)]
pub(crate) struct Workspace {
    pub x: Vec<f32>,
    pub xn: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub attn: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    /// Per node: partial sums `[n × hidden]` of column-split matrices.
    pub partial: Vec<Vec<f32>>,
    /// Gathered columns of one node before quantizing them.
    pub gather: Vec<f32>,
    /// Activations of the replicated input (normed x).
    pub acts: ActsCache,
    /// Per node: activations of that node's column slice.
    pub node_acts: Vec<ActsCache>,
    /// Per row: RoPE (sin, cos) table.
    pub rope: Vec<(f32, f32)>,
    /// Rows whose logits are wanted.
    pub logit_rows: Vec<usize>,
    pub normed_out: Vec<f32>,
    /// Per node: `partial` as shared outputs of the current run.
    pub partial_outs: Vec<SharedOut>,
    /// Per sequence: its cache as attention sees it.
    pub seq_views: Vec<crate::attention::SeqView>,
    /// Per worker scratch (matmul transposes, attention scores).
    pub scratch: PerWorker<Vec<f32>>,
    /// Per worker online-softmax states of attention items.
    pub attn_states: PerWorker<Vec<tandem_kernels::attention::SoftmaxState>>,
    /// Split attention's partial results and per-head counters
    /// (`attention::SplitState`).
    pub attn_partials: Vec<f32>,
    pub attn_done: tandem_numa::Arrivals,
    /// Mixture-of-experts buffers (`crate::moe`).
    pub moe: MoeBuffers,
    /// Latent attention buffers (`crate::mla`).
    pub mla: MlaBuffers,
    /// MLA layers: each sequence's batch rows and whether it prefills
    /// expanded (`crate::mla_expanded`), set per layer by the forward pass.
    pub mla_rows: Vec<(std::ops::Range<usize>, bool)>,
}

/// The MLA block's buffers (token-major).
#[derive(Default)]
pub(crate) struct MlaBuffers {
    /// `[n × n_heads·qk_head]` queries before absorption.
    pub q: Vec<f32>,
    /// `[n × q_lora_rank]` Q's low-rank projection, then normed.
    pub low: Vec<f32>,
    pub low_n: Vec<f32>,
    /// `[n × (kv_lora_rank + rope)]` latent and key rope part.
    pub kva: Vec<f32>,
    /// `[n × n_heads·v_head]` attention output after `v_b`.
    pub o: Vec<f32>,
    /// Per worker: one head's gathered and quantized inputs.
    pub heads: PerWorker<HeadScratch>,
    /// Expanded prefill (`crate::mla_expanded`).
    pub expanded: ExpandedBuffers,
    pub expanded_scratch: PerWorker<Vec<f32>>,
}

/// One sequence's decompressed cache for the expanded MLA prefill.
#[derive(Default)]
pub(crate) struct ExpandedBuffers {
    /// `[window × kv_lora_rank]` latents and `[window × qk_rope]`
    /// rotated key parts, decoded from the pages.
    pub lat: Vec<f32>,
    pub kpe: Vec<f32>,
    /// One decoded row.
    pub row: Vec<f32>,
    /// `[window × n_heads·qk_nope]` keys without RoPE and `[window ×
    /// n_heads·v_head]` values.
    pub kn: Vec<f32>,
    pub v: Vec<f32>,
    /// Per (query row, head): online-softmax (max, sum) and accumulator,
    /// kept across windows.
    pub states: Vec<f32>,
    pub acc: Vec<f32>,
}

/// A worker's buffers for one head's matmul (`parallel::per_head`).
#[derive(Default)]
pub(crate) struct HeadScratch {
    pub gather: Vec<f32>,
    pub acts: ActsCache,
}

/// The MoE block's buffers: router logits, each token's routes, the batch
/// grouped by expert (slots), and the slots' activations.
#[derive(Default)]
pub(crate) struct MoeBuffers {
    /// `[n × n_experts]` router logits.
    pub logits: Vec<f32>,
    /// Routing scratch (`n_experts` each).
    pub probs: Vec<f32>,
    pub choice: Vec<f32>,
    /// `[n × top_k]` (expert, weight) per token.
    pub routes: Vec<(u32, f32)>,
    /// Per expert: first entry of its tokens, then a cursor while filling.
    pub starts: Vec<usize>,
    pub cursor: Vec<usize>,
    /// Token index and weight of each entry, grouped by slot.
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
    pub slots: Vec<crate::moe::Slot>,
    /// Slots' gate (then SwiGLU) and up values.
    pub g: Vec<f32>,
    pub u: Vec<f32>,
    /// Per slot: quantized input rows, quantized SwiGLU rows.
    pub acts: Vec<ActsCache>,
    pub h_acts: Vec<ActsCache>,
    /// Per worker: a slot's gathered input rows.
    pub gather: PerWorker<Vec<f32>>,
}

/// Elements that pool workers take one at a time: each index is claimed
/// by exactly one worker of a run, which alone touches that element.
pub(crate) struct Claimed<'a, T> {
    ptr: *mut T,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: an element is only reached through `get`, whose contract gives
// each index to one worker at a time; the slice outlives the run.
unsafe impl<T: Send> Sync for Claimed<'_, T> {}

impl<'a, T> Claimed<'a, T> {
    pub(crate) fn new(items: &'a mut [T]) -> Self {
        Claimed {
            ptr: items.as_mut_ptr(),
            len: items.len(),
            _life: std::marker::PhantomData,
        }
    }

    /// Element `i`, or None past the end.
    ///
    /// # Safety
    /// The caller claimed index `i` in the current run (no other worker
    /// touches it until the run ends).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self, i: usize) -> Option<&mut T> {
        // SAFETY: in bounds, and exclusive by the caller's claim.
        (i < self.len).then(|| unsafe { &mut *self.ptr.add(i) })
    }
}

/// Grows `v` to `n` values (never shrinks; allocates only when growing).
pub(crate) fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Geometry the workspace must hold.
pub(crate) struct Dims {
    pub hidden: usize,
    pub q_dim: usize,
    pub kv_dim: usize,
    pub ffn: usize,
    pub rope_pairs: usize,
    pub n_nodes: usize,
    pub n_threads: usize,
    pub scratch: usize,
    pub attn_states: usize,
}

impl Workspace {
    pub(crate) fn ensure(&mut self, n: usize, d: &Dims) {
        grow(&mut self.x, n * d.hidden);
        grow(&mut self.xn, n * d.hidden);
        grow(&mut self.q, n * d.q_dim);
        grow(&mut self.k, n * d.kv_dim);
        grow(&mut self.v, n * d.kv_dim);
        grow(&mut self.attn, n * d.q_dim);
        grow(&mut self.gate, n * d.ffn);
        grow(&mut self.up, n * d.ffn);
        grow(&mut self.gather, n * d.ffn.max(d.q_dim));
        grow(&mut self.normed_out, n * d.hidden);
        if self.partial.len() < d.n_nodes {
            self.partial.resize_with(d.n_nodes, Vec::new);
        }
        for p in &mut self.partial {
            grow(p, n * d.hidden);
        }
        if self.node_acts.len() < d.n_nodes {
            self.node_acts.resize_with(d.n_nodes, ActsCache::default);
        }
        if self.rope.len() < n * d.rope_pairs {
            self.rope.resize(n * d.rope_pairs, (0.0, 1.0));
        }
        if self.partial_outs.capacity() < d.n_nodes {
            self.partial_outs.reserve(d.n_nodes);
        }
        if self.logit_rows.capacity() < n {
            self.logit_rows.reserve(n - self.logit_rows.len());
        }
        self.scratch.ensure(d.n_threads, d.scratch);
        self.attn_states.ensure(d.n_threads, d.attn_states);
    }
}

/// One value per pool worker, each touched only by its own worker.
#[derive(Default)]
pub(crate) struct PerWorker<T>(Vec<UnsafeCell<T>>);

// SAFETY: worker `i` only ever accesses element `i` (see `get`).
unsafe impl<T: Send> Sync for PerWorker<T> {}

impl<T: Clone + Default> PerWorker<Vec<T>> {
    /// At least `n_workers` vectors of at least `len` values (allocates
    /// only when growing).
    pub(crate) fn ensure(&mut self, n_workers: usize, len: usize) {
        if self.0.len() < n_workers {
            self.0
                .resize_with(n_workers, || UnsafeCell::new(Vec::new()));
        }
        for cell in &mut self.0 {
            let v = cell.get_mut();
            if v.len() < len {
                v.resize(len, T::default());
            }
        }
    }
}

impl<T: Default> PerWorker<T> {
    /// At least `n_workers` elements (new ones default).
    pub(crate) fn ensure_workers(&mut self, n_workers: usize) {
        if self.0.len() < n_workers {
            self.0
                .resize_with(n_workers, || UnsafeCell::new(T::default()));
        }
    }
}

impl<T> PerWorker<T> {
    /// Worker `i`'s element.
    ///
    /// # Safety
    /// Only worker `i` of the current pool run may call this with `i`, and
    /// at most once at a time.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self, i: usize) -> &mut T {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { &mut *self.0[i].get() }
    }
}

/// A buffer that pool workers write in disjoint parts.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: writers promise disjoint ranges (see `slice`); the buffer
// outlives the pool run it is used in.
unsafe impl Send for SharedOut {}
// SAFETY: as for `Send` above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buf: &mut [f32]) -> SharedOut {
        SharedOut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// `buf[start..start+len]`.
    ///
    /// # Safety
    /// No other worker may access any part of this range during the run,
    /// and the underlying buffer must outlive the returned slice.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            self.check(start, len);
            std::slice::from_raw_parts_mut(self.ptr.add(start), len)
        }
    }

    /// `buf[start..start+len]`, shared: for ranges several workers read
    /// during a run (flash-decoding's parts all read their heads' query
    /// rows), where a `&mut` from [`slice`](Self::slice) would alias.
    ///
    /// # Safety
    /// No worker may write any part of this range during the run, and the
    /// underlying buffer must outlive the returned slice.
    pub(crate) unsafe fn read(&self, start: usize, len: usize) -> &[f32] {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            self.check(start, len);
            std::slice::from_raw_parts(self.ptr.add(start), len)
        }
    }

    fn check(&self, start: usize, len: usize) {
        assert!(
            start + len <= self.len,
            "SharedOut range {start}+{len} outside {}",
            self.len
        );
    }
}
