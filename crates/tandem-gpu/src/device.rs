//! The device interface the streamed prefill runs against.
//!
//! A [`Device`] has memory of its own with a budget (`--gpu-memory`), an
//! asynchronous copy engine (host ↔ device copies enqueued on a stream),
//! streams that run their work in order, events that order work across
//! streams and let the host wait, and the compute ops the model's layer
//! kinds need. Everything is enqueued: an op returns once it is queued,
//! and its effect is visible to later work on the same stream, to other
//! streams after they [`wait`](Device::wait) on an event recorded after it,
//! and to the host after [`sync_event`](Device::sync_event).
//!
//! Event semantics are CUDA's: `wait` and `sync_event` refer to the event's
//! most recent `record` *at the time of the call*; recording again later
//! does not affect earlier waits. [`crate::cpu::CpuDevice`] implements the
//! same semantics with threads (and refuses to wait on an event that was
//! never recorded, a silent no-op on CUDA that hides ordering bugs).
//!
//! Buffers are untyped bytes; ops name element types ([`DType`]) and take
//! [`Ptr`]s (a buffer and a byte offset). Memory used by queued work must
//! stay alive until that work is done: the CPU device keeps buffers alive
//! by reference counting, the CUDA device frees only after synchronising.
//! Host memory given to [`h2d`](Device::h2d)/[`d2h`](Device::d2h) is the
//! caller's responsibility (those calls are `unsafe`).

use tandem_kernels::attention::KvFormat;
use tandem_kernels::WeightFormat;
use tandem_model::spec::Activation;
use tandem_model::RopeLayout;

use crate::GpuError;

/// Element type of a device array.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// A device buffer and a byte offset into it.
pub struct Ptr<'a, B> {
    pub buf: &'a B,
    pub off: usize,
}

impl<B> Clone for Ptr<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Ptr<'_, B> {}

impl<'a, B> Ptr<'a, B> {
    pub fn new(buf: &'a B) -> Self {
        Ptr { buf, off: 0 }
    }
    /// `bytes` further into the buffer.
    pub fn offset(self, bytes: usize) -> Self {
        Ptr {
            buf: self.buf,
            off: self.off + bytes,
        }
    }
}

/// Memory a device may use and has allocated.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MemInfo {
    pub budget: usize,
    pub used: usize,
}

/// `y[t][r] (+)= Σ_c x[t][c] · w[r][c]` for `n` tokens: a weight matrix of
/// `rows × cols` (row-major, element type `ty`; stored `cols × rows` when
/// `w_transposed`) times `n` activation rows of the same type, f32
/// accumulation, f32 output rows `ldy` apart.
pub struct Gemm<'a, B> {
    pub w: Ptr<'a, B>,
    pub x: Ptr<'a, B>,
    pub y: Ptr<'a, B>,
    pub ty: DType,
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub ldy: usize,
    /// Add to `y` instead of overwriting it.
    pub accumulate: bool,
    /// `w` is stored as its transpose, `w[c][r]` at `c · rows + r` (MLA's
    /// per-head `k_b`, which decompresses latents into keys).
    pub w_transposed: bool,
}

/// Folds one block of keys/values into online-softmax partials.
///
/// Layouts (f32): `q` is `[kv_heads][n_q][group][head_dim]` (the query heads
/// of one KV head next to each other), `states` `[kv_heads][n_q·group][2]`
/// (running max, running sum), `acc` like `q`; `k` and `v` are
/// `[kv_heads]` runs of `n_k` rows of `head_dim`, `k_head_stride` elements
/// apart. Query token `t` sits at position `q_pos0 + t`, key `j` at
/// `k_pos0 + j`; a query sees a key at or before its position and, with a
/// window `w`, after `position - w`. Scores are `q·k · scale`, soft-capped
/// as `cap · tanh(s / cap)` when asked.
pub struct Attend<'a, B> {
    pub q: Ptr<'a, B>,
    pub k: Ptr<'a, B>,
    pub v: Ptr<'a, B>,
    pub states: Ptr<'a, B>,
    pub acc: Ptr<'a, B>,
    pub kv_heads: usize,
    pub group: usize,
    pub head_dim: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub k_head_stride: usize,
    pub q_pos0: usize,
    pub k_pos0: usize,
    pub scale: f32,
    pub window: Option<usize>,
    pub softcap: Option<f32>,
}

/// RoPE of `rows × heads` heads in place: row `r` uses the `pairs`
/// (sin, cos) entries at `table + r·pairs` (f32 pairs, computed on the host
/// by `tandem_model::ops::Rope::table`, so both paths use the same angles).
/// Pair `i` rotates elements (2i, 2i+1) (interleaved) or (i, i + pairs)
/// (halves); elements past `2·pairs` are left alone (partial rotary).
pub struct RopeArgs<'a, B> {
    pub x: Ptr<'a, B>,
    pub table: Ptr<'a, B>,
    pub rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub pairs: usize,
    pub layout: RopeLayout,
}

/// Host memory a device copies from/to at full speed (page-locked on a
/// GPU; plain heap memory on the CPU stand-in).
pub trait HostMem: Send {
    fn as_mut_ptr(&mut self) -> *mut u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes. Only while no queued copy writes them.
    fn as_slice(&self) -> &[u8];
}

/// Heap memory as [`HostMem`].
pub struct HeapMem(pub Vec<u8>);

impl HostMem for HeapMem {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

/// What a device is: memory, copies, streams, events, and compute ops.
pub trait Device: Send + Sync + 'static {
    /// Device memory; dropping it returns its bytes to the budget (once
    /// the work using it is done).
    type Buffer: Send + Sync;
    type Stream: Send + Sync;
    type Event: Send + Sync;
    /// Page-locked host memory ([`Device::alloc_host`]).
    type Host: HostMem;

    /// One line: what the device is.
    fn describe(&self) -> String;
    /// Marks a point of `stream` with `label` (the CPU device's trace;
    /// nothing elsewhere).
    fn annotate(&self, _stream: &Self::Stream, _label: &str) -> Result<(), GpuError> {
        Ok(())
    }
    fn memory(&self) -> MemInfo;
    /// `bytes` of device memory (not initialised), counted against the
    /// budget; over it is [`GpuError::OutOfMemory`] naming `what`.
    fn alloc(&self, bytes: usize, what: &str) -> Result<Self::Buffer, GpuError>;
    fn new_stream(&self) -> Result<Self::Stream, GpuError>;
    fn new_event(&self) -> Result<Self::Event, GpuError>;
    /// The event completes when `stream` reaches this point.
    fn record(&self, ev: &Self::Event, stream: &Self::Stream) -> Result<(), GpuError>;
    /// Later work on `stream` starts after the event's latest record.
    fn wait(&self, stream: &Self::Stream, ev: &Self::Event) -> Result<(), GpuError>;
    /// The host waits for the event's latest record.
    fn sync_event(&self, ev: &Self::Event) -> Result<(), GpuError>;
    /// The host waits for everything queued on `stream`.
    fn sync_stream(&self, stream: &Self::Stream) -> Result<(), GpuError>;

    /// Page-locks host memory in place so copies from it run at full speed
    /// (CUDA: `cuMemHostRegister`, read-only). Ok(false): not done (the
    /// device has no such notion, or refused); copies still work.
    ///
    /// # Safety
    /// `ptr..ptr + len` is mapped for as long as the device lives.
    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Result<bool, GpuError>;

    /// `bytes` of host memory copies run at full speed from and to
    /// (CUDA: `cuMemHostAlloc`), zeroed.
    fn alloc_host(&self, bytes: usize) -> Result<Self::Host, GpuError>;

    /// Undoes [`register_host`](Device::register_host) of the range
    /// starting at `ptr`.
    ///
    /// # Safety
    /// No queued copy reads the range any more.
    unsafe fn unregister_host(&self, _ptr: *const u8) -> Result<(), GpuError> {
        Ok(())
    }

    /// Copies `len` host bytes into `dst` (copy engine, in `stream`'s order).
    ///
    /// # Safety
    /// The host bytes stay valid and unchanged until the copy is done
    /// (an event recorded after it completes).
    unsafe fn h2d(
        &self,
        stream: &Self::Stream,
        dst: Ptr<'_, Self::Buffer>,
        src: *const u8,
        len: usize,
    ) -> Result<(), GpuError>;

    /// Copies `len` device bytes to host memory.
    ///
    /// # Safety
    /// The host bytes stay valid, and are neither read nor written by
    /// anyone else, until the copy is done.
    unsafe fn d2h(
        &self,
        stream: &Self::Stream,
        src: Ptr<'_, Self::Buffer>,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), GpuError>;

    /// Fills `n` f32 values with `value`.
    fn fill_f32(
        &self,
        s: &Self::Stream,
        dst: Ptr<'_, Self::Buffer>,
        n: usize,
        value: f32,
    ) -> Result<(), GpuError>;

    /// Whether [`dequantize`](Device::dequantize) runs `format`.
    fn supports(&self, format: WeightFormat) -> bool;

    /// `n` elements stored as `format` blocks (as in the file) to `ty`.
    fn dequantize(
        &self,
        s: &Self::Stream,
        format: WeightFormat,
        src: Ptr<'_, Self::Buffer>,
        dst: Ptr<'_, Self::Buffer>,
        ty: DType,
        n: usize,
    ) -> Result<(), GpuError>;

    /// `n` f32 values to `ty` (round to nearest even).
    fn convert(
        &self,
        s: &Self::Stream,
        src: Ptr<'_, Self::Buffer>,
        dst: Ptr<'_, Self::Buffer>,
        ty: DType,
        n: usize,
    ) -> Result<(), GpuError>;

    fn gemm(&self, s: &Self::Stream, g: &Gemm<'_, Self::Buffer>) -> Result<(), GpuError>;

    /// `out = x / rms(x) · w` over `rows` rows of `dim` (f32).
    #[allow(clippy::too_many_arguments)]
    fn rms_norm(
        &self,
        s: &Self::Stream,
        x: Ptr<'_, Self::Buffer>,
        w: Ptr<'_, Self::Buffer>,
        out: Ptr<'_, Self::Buffer>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), GpuError>;

    fn rope(&self, s: &Self::Stream, r: &RopeArgs<'_, Self::Buffer>) -> Result<(), GpuError>;

    /// `x[r] += b` for `rows` rows of `dim` (f32).
    fn add_bias(
        &self,
        s: &Self::Stream,
        x: Ptr<'_, Self::Buffer>,
        b: Ptr<'_, Self::Buffer>,
        rows: usize,
        dim: usize,
    ) -> Result<(), GpuError>;

    /// `x += y`, `n` f32 values.
    fn add(
        &self,
        s: &Self::Stream,
        x: Ptr<'_, Self::Buffer>,
        y: Ptr<'_, Self::Buffer>,
        n: usize,
    ) -> Result<(), GpuError>;

    /// `gate = act(gate) · up`, `n` f32 values.
    fn glu(
        &self,
        s: &Self::Stream,
        act: Activation,
        gate: Ptr<'_, Self::Buffer>,
        up: Ptr<'_, Self::Buffer>,
        n: usize,
    ) -> Result<(), GpuError>;

    /// `dst[r·dst_stride + c] = src[r·src_stride + c]` for `rows` rows of
    /// `cols` f32 values (strided views: a slice of each row, or rows
    /// placed inside wider ones). Regions must not overlap.
    #[allow(clippy::too_many_arguments)]
    fn copy_cols(
        &self,
        s: &Self::Stream,
        src: Ptr<'_, Self::Buffer>,
        src_stride: usize,
        dst: Ptr<'_, Self::Buffer>,
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<(), GpuError>;

    /// `[a][b][elem]` to `[b][a][elem]`, `elem` bytes per item.
    fn transpose(
        &self,
        s: &Self::Stream,
        src: Ptr<'_, Self::Buffer>,
        dst: Ptr<'_, Self::Buffer>,
        a: usize,
        b: usize,
        elem: usize,
    ) -> Result<(), GpuError>;

    /// `dst[i] = src[idx[i]]`, rows of `dim` f32 (`src` has `src_rows`),
    /// `idx` u32; an index past `src_rows` leaves its row alone.
    #[allow(clippy::too_many_arguments)]
    fn gather_rows(
        &self,
        s: &Self::Stream,
        src: Ptr<'_, Self::Buffer>,
        src_rows: usize,
        idx: Ptr<'_, Self::Buffer>,
        dst: Ptr<'_, Self::Buffer>,
        n: usize,
        dim: usize,
    ) -> Result<(), GpuError>;

    /// `dst[idx[i]] += w[i] · src[i]` (`dst` has `dst_rows` rows); the `n`
    /// indices are distinct; one past `dst_rows` is skipped.
    #[allow(clippy::too_many_arguments)]
    fn scatter_add_rows(
        &self,
        s: &Self::Stream,
        src: Ptr<'_, Self::Buffer>,
        idx: Ptr<'_, Self::Buffer>,
        weights: Ptr<'_, Self::Buffer>,
        dst: Ptr<'_, Self::Buffer>,
        dst_rows: usize,
        n: usize,
        dim: usize,
    ) -> Result<(), GpuError>;

    /// `rows` f32 rows of `head_dim` stored as the KV store's rows of
    /// `format` (`tandem_kernels::attention::encode_row`'s bytes).
    fn encode_kv(
        &self,
        s: &Self::Stream,
        format: KvFormat,
        src: Ptr<'_, Self::Buffer>,
        dst: Ptr<'_, Self::Buffer>,
        rows: usize,
        head_dim: usize,
    ) -> Result<(), GpuError>;

    /// Sets `rows` softmax states to empty and their accumulators to 0.
    fn attn_init(
        &self,
        s: &Self::Stream,
        states: Ptr<'_, Self::Buffer>,
        acc: Ptr<'_, Self::Buffer>,
        rows: usize,
        head_dim: usize,
    ) -> Result<(), GpuError>;

    fn attend(&self, s: &Self::Stream, a: &Attend<'_, Self::Buffer>) -> Result<(), GpuError>;

    /// `out = acc / sum` per query row (zeros for a row that saw nothing),
    /// after folding in the sink logit of its query head (`sinks[g·group +
    /// h]` for row `(g, t, h)`) when given. Layouts as [`Attend`].
    #[allow(clippy::too_many_arguments)]
    fn attn_finish(
        &self,
        s: &Self::Stream,
        states: Ptr<'_, Self::Buffer>,
        acc: Ptr<'_, Self::Buffer>,
        sinks: Option<Ptr<'_, Self::Buffer>>,
        out: Ptr<'_, Self::Buffer>,
        kv_heads: usize,
        n_q: usize,
        group: usize,
        head_dim: usize,
    ) -> Result<(), GpuError>;
}

/// The bytes [`Device::copy_cols`] reads and writes (`(source,
/// destination)` spans from each pointer), or why the shapes are wrong.
pub fn copy_cols_spans(
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst_stride: usize,
) -> Result<(usize, usize), GpuError> {
    if cols > src_stride || cols > dst_stride {
        return Err(GpuError::Shape(
            "copy_cols: a row wider than its stride".into(),
        ));
    }
    let span = |stride: usize| match rows {
        0 => 0,
        _ => ((rows - 1) * stride + cols) * 4,
    };
    Ok((span(src_stride), span(dst_stride)))
}
