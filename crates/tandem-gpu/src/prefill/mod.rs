//! [`GpuPrefill`]: a prompt's layers on a [`Device`], weights streamed
//! from host memory, K/V written back into the sequence's host pages.
//!
//! # Streaming protocol
//!
//! Three streams: **compute**, **copy** (host → device: weights, routed
//! experts, cached K/V blocks) and **write-back** (device → host: the new
//! K/V). Per chunk of tokens (as many as the memory budget allows):
//!
//! 1. Embeddings and RoPE tables are computed on the host (the CPU model's
//!    exact code) and uploaded on the compute stream.
//! 2. *Units* are the layers, then the output head when the chunk needs
//!    logits. Unit `u` uses layer slot `u mod S` (S ≥ 2 slots, each as big
//!    as the largest unit). Units 0..S are uploaded first; after the
//!    compute stream has been given unit `u` (ending with `free[u mod S]`
//!    recorded), the copy stream is given unit `u + S`: it waits on
//!    `free[u mod S]`, uploads, records `up[(u + S) mod S]`, which unit
//!    `u + S` waits on. So the upload of layer i+1 runs while layer i
//!    computes, and a slot is rewritten only after its layer is done.
//!    Uploads read the mapped weights in place when the device could
//!    page-lock all of them (`register_host`); otherwise the host first
//!    copies a unit into page-locked staging of its slot, once that
//!    staging's previous upload (`up` of the same slot) is done.
//! 3. A layer's matrices are dequantized on the device, from the slot
//!    into a scratch of bounded size (row chunks), and multiplied there.
//!    A latent (MLA) layer's new "K/V" are its latent rows (one plane,
//!    one head), which it decompresses into per-head keys and values for
//!    the chunk's attention (`mla.rs`).
//! 4. The new K/V of layer i are encoded in the store's format on the
//!    compute stream into one of two buffers (`kv_ready[i mod 2]`), copied
//!    to page-locked host staging on the write-back stream (`kv_down[i mod 2]`), and
//!    the host scatters them into the pages while the device runs layer
//!    i+1 (the host waits on `kv_down[i-1]` after queueing layer i). The
//!    encoding buffer of layer i is rewritten by layer i+2 only after
//!    `kv_down[i mod 2]`.
//! 5. Attention folds, into online-softmax partials on the device, first
//!    the positions cached before the chunk — pulled from the host pages
//!    block by block: the host copies a block's page runs into one of two
//!    page-locked staging buffers (after `blk_up` of its previous use),
//!    the copy stream uploads it in one copy into one of two device
//!    buffers (after `blk_free`, recorded once the compute stream has
//!    decoded the block before) — then the chunk's own K/V, decoded from
//!    the stored encoding so both paths attend over the same values.
//! 6. An MoE layer's router logits go to the host, which routes each token
//!    with the CPU model's `route_token` and groups tokens by expert; only
//!    the routed experts are uploaded, through two expert slots
//!    (`exp_up`/`exp_free`), each expert's tokens gathered, run through
//!    its gate/up/down (each plus its resident bias, if the model has
//!    expert biases) and scattered back with their weights.
//! 7. At the chunk's end every stream is synchronised and the chunk's
//!    tokens are committed to the sequence.
//!
//! Invariants: a buffer is rewritten only after the event of its last
//! reader; a wait refers to an event already recorded in this call (the
//! CPU device refuses anything else); host memory under a copy stays
//! alive and unchanged until the chunk's final synchronisation.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tandem_kernels::WeightFormat;
use tandem_kv::Sequence;
use tandem_model::{Logits, ModelError, ModelFiles};

use crate::device::{Attend, DType, Device, Gemm, HostMem, Ptr, RopeArgs};
use crate::kv_io;
use crate::weights::{
    align, pack, AttnWeights, FfnWeights, Glu, HostMatrix, LayerVectors, LayerWeights, ModelWeights,
};
use crate::GpuError;

mod attention;
mod layer;
mod mla;
mod moe;

pub use moe::{route, Routes};

/// Operand precision of the GEMMs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 (bf16 for BF16 weights) operands, f32 accumulation: the GPU's
    /// tensor-core path.
    #[default]
    Half,
    /// f32 operands (tests: isolates the protocol from half rounding).
    F32,
}

/// How the prefill uses the device.
#[derive(Clone, Debug)]
pub struct PrefillOptions {
    /// Most tokens per chunk (None: as many as memory allows).
    pub max_chunk: Option<usize>,
    pub precision: Precision,
    /// Layer slots (at least 2).
    pub slots: usize,
    /// Elements of the dequantization scratch (matrices larger than it are
    /// dequantized and multiplied in row chunks).
    pub dequant_elems: usize,
    /// Pages per block of cached K/V pulled from the host.
    pub block_pages: usize,
}

impl Default for PrefillOptions {
    fn default() -> Self {
        PrefillOptions {
            max_chunk: None,
            precision: Precision::Half,
            slots: 2,
            dequant_elems: 32 << 20,
            block_pages: 64,
        }
    }
}

/// What a prefill moved and computed.
#[derive(Clone, Debug, Default)]
pub struct PrefillStats {
    pub tokens: usize,
    pub chunks: usize,
    /// Weight bytes uploaded (layer slots and routed experts).
    pub weight_bytes: usize,
    /// Every host → device byte (weights, cached K/V, activations).
    pub h2d_bytes: usize,
    pub d2h_bytes: usize,
    /// Routed experts uploaded (summed over layers and chunks).
    pub experts_uploaded: usize,
    /// Matrix and attention FLOPs.
    pub flops: f64,
    pub wall: Duration,
}

/// Logits of the positions asked for, and the stats.
#[derive(Clone, Debug, Default)]
pub struct PrefillOutput {
    /// `vocab_size` values per requested position, in order.
    pub logits: Vec<f32>,
    pub stats: PrefillStats,
}

/// The streamed prefill of one model on one device. A worker calls
/// [`GpuPrefill::prefill`] with a sequence of the CPU model's KV store;
/// afterwards the sequence holds the prompt as if the CPU had prefilled
/// it, and decode continues on the CPU.
pub struct GpuPrefill<D: Device> {
    dev: D,
    w: ModelWeights,
    opts: PrefillOptions,
    /// One prefill at a time per device.
    streams: Mutex<Streams<D>>,
    /// Host ranges page-locked by `register_weights` (undone on drop).
    registered: Vec<usize>,
    /// Every weight was page-locked in place (else uploads go through
    /// page-locked staging).
    pinned: bool,
}

impl<D: Device> Drop for GpuPrefill<D> {
    fn drop(&mut self) {
        let s = self.streams.get_mut().unwrap_or_else(|p| p.into_inner());
        for st in [&s.compute, &s.copy, &s.back] {
            let _ = self.dev.sync_stream(st);
        }
        for &p in &self.registered {
            // SAFETY: registered by `register_weights`; every stream is
            // idle, so no copy reads it.
            let _ = unsafe { self.dev.unregister_host(p as *const u8) };
        }
    }
}

struct Streams<D: Device> {
    compute: D::Stream,
    copy: D::Stream,
    back: D::Stream,
}

/// Events of one call, with whether each was recorded in it.
struct Ev<D: Device> {
    ev: Vec<D::Event>,
    recorded: Vec<Cell<bool>>,
}

impl<D: Device> Ev<D> {
    fn new(dev: &D, n: usize) -> Result<Self, GpuError> {
        Ok(Ev {
            ev: (0..n).map(|_| dev.new_event()).collect::<Result<_, _>>()?,
            recorded: (0..n).map(|_| Cell::new(false)).collect(),
        })
    }
    fn record(&self, dev: &D, i: usize, s: &D::Stream) -> Result<(), GpuError> {
        dev.record(&self.ev[i], s)?;
        self.recorded[i].set(true);
        Ok(())
    }
    /// `s` waits for event `i` if it was recorded in this call.
    fn wait(&self, dev: &D, s: &D::Stream, i: usize) -> Result<(), GpuError> {
        match self.recorded[i].get() {
            true => dev.wait(s, &self.ev[i]),
            false => Ok(()),
        }
    }
    fn sync(&self, dev: &D, i: usize) -> Result<(), GpuError> {
        match self.recorded[i].get() {
            true => dev.sync_event(&self.ev[i]),
            false => Ok(()),
        }
    }
}

/// Byte offsets of a layer's resident vectors (order of `LayerVectors::all`).
type VecOffs = [Option<usize>; LayerVectors::COUNT];

/// Device buffers of one call.
struct Bufs<D: Device> {
    resident: D::Buffer,
    vec_offs: Vec<VecOffs>,
    out_norm: usize,
    slots: Vec<D::Buffer>,
    experts: Vec<D::Buffer>,
    deq: D::Buffer,
    /// Activations of one chunk, by name (`Acts`).
    act: D::Buffer,
    a: Acts,
    kvenc: [D::Buffer; 2],
    blk_raw: [D::Buffer; 2],
}

/// Offsets in the activation buffer.
#[derive(Default)]
struct Acts {
    x: usize,
    xn: usize,
    xh: usize,
    q: usize,
    k: usize,
    v: usize,
    qt: usize,
    kt: usize,
    vt: usize,
    kdec: usize,
    vdec: usize,
    states: usize,
    acc: usize,
    ohm: usize,
    attn: usize,
    gate: usize,
    up: usize,
    out: usize,
    tmp: usize,
    y: usize,
    gx: usize,
    rope: usize,
    router: usize,
    idx: usize,
    wts: usize,
    blk_dec: usize,
    blk_t: usize,
    logits: usize,
    /// MLA (`mla.rs`; empty without it): Q's low rank and its norm, a
    /// latent (contiguous) and its norm, the rotated key part, latents in
    /// the GEMM operand type, and decompressed K/V of the chunk and of a
    /// cached block (`[head][token][width]`).
    mla_low: usize,
    mla_lown: usize,
    mla_lat: usize,
    mla_lat2: usize,
    mla_kpe: usize,
    mla_xh: usize,
    mla_k: usize,
    mla_v: usize,
    mla_bk: usize,
    mla_bv: usize,
    total: usize,
}

/// Rows of logits computed at once.
const LOGIT_ROWS: usize = 64;

impl<D: Device> GpuPrefill<D> {
    /// Prepares the prefill of the model in `files` on `dev`: weight views
    /// (shapes checked), every matrix's format checked against the device,
    /// the mapped weights page-locked where the device can.
    pub fn new(dev: D, files: &ModelFiles, opts: PrefillOptions) -> Result<Self, GpuError> {
        let w = ModelWeights::from_files(files)?;
        Self::with_weights(dev, w, opts)
    }

    pub fn with_weights(dev: D, w: ModelWeights, opts: PrefillOptions) -> Result<Self, GpuError> {
        if opts.slots < 2 {
            return Err(GpuError::Shape(
                "the prefill needs at least 2 layer slots".into(),
            ));
        }
        for m in w.all_matrices() {
            if !dev.supports(m.format) {
                return Err(GpuError::Unsupported(format!(
                    "tensor {}: {} weights have no GPU dequantization kernel yet",
                    m.name(),
                    m.format.name()
                )));
            }
        }
        let (registered, pinned) = register_weights(&dev, &w);
        let streams = Streams {
            compute: dev.new_stream()?,
            copy: dev.new_stream()?,
            back: dev.new_stream()?,
        };
        Ok(GpuPrefill {
            dev,
            w,
            opts,
            streams: Mutex::new(streams),
            registered,
            pinned,
        })
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn weights(&self) -> &ModelWeights {
        &self.w
    }

    /// Runs `tokens` at the positions following what `seq` holds, writes
    /// their K/V into `seq`'s pages (reserved here, committed per chunk)
    /// and returns the logits asked for. The sequence must belong to a
    /// store shaped for this model (`Model::kv_geometry`).
    pub fn prefill(
        &self,
        seq: &mut Sequence,
        tokens: &[u32],
        want: Logits,
    ) -> Result<PrefillOutput, GpuError> {
        let t0 = Instant::now();
        let c = &self.w.config;
        let g = seq.store().geometry().clone();
        if g.n_layers != c.n_layers || g.head_dim != c.head_dim || g.n_kv_heads() != c.n_kv_heads {
            return Err(GpuError::Model(ModelError::BadBatch(
                "KV cache made for another model".into(),
            )));
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(GpuError::Model(ModelError::BadToken {
                id,
                vocab: c.vocab_size,
            }));
        }
        let mut out = PrefillOutput::default();
        if tokens.is_empty() {
            return Ok(out);
        }
        seq.reserve(tokens.len()).map_err(|e| match e {
            tandem_kv::KvError::OutOfPages { .. } | tandem_kv::KvError::LimitReached { .. } => {
                GpuError::Model(ModelError::ContextFull {
                    needed: seq.len() + tokens.len(),
                    capacity: seq.capacity(),
                })
            }
            e => GpuError::Kv(e),
        })?;
        let n = tokens.len();
        let first_logit = match want {
            Logits::None => n,
            Logits::Last => n - 1,
            Logits::All => 0,
            Logits::Tail(k) => n - k.clamp(1, n),
        };
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let chunk = self.chunk_tokens(n, &g)?;
        let mut run = Run::new(self, &streams, &g, chunk)?;
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let logit_rows: Vec<usize> = (start.max(first_logit)..end).map(|i| i - start).collect();
            run.chunk(seq, &tokens[start..end], &logit_rows, &mut out)?;
            start = end;
        }
        out.stats.tokens = n;
        out.stats.wall = t0.elapsed();
        Ok(out)
    }

    /// Bytes that do not depend on the chunk: resident vectors, slots,
    /// expert slots, dequantization scratch, cached-K/V staging.
    fn fixed_bytes(&self, g: &tandem_kv::KvGeometry) -> usize {
        let resident: usize = self
            .w
            .layers
            .iter()
            .flat_map(|l| l.vectors.all())
            .flatten()
            .map(|v| align(v.len() * 4))
            .sum::<usize>()
            + align(self.w.out_norm.len() * 4);
        let slot = self.slot_bytes();
        let expert = self.expert_bytes();
        let deq = align(self.deq_elems() * 4);
        let blk_raw = align(2 * self.opts.block_pages * g.n_kv_heads() * g.slab_bytes());
        resident + self.opts.slots * slot + 2 * expert + deq + 2 * blk_raw
    }

    fn slot_bytes(&self) -> usize {
        let layers = self.w.layers.iter().map(|l| pack(&l.slot_matrices()).1);
        layers
            .chain([align(self.w.output.n_bytes())])
            .max()
            .unwrap_or(0)
    }

    fn expert_bytes(&self) -> usize {
        self.w
            .layers
            .iter()
            .filter_map(|l| match &l.ffn {
                FfnWeights::Moe { experts, .. } => experts.first().map(|e| pack(&e.matrices()).1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn deq_elems(&self) -> usize {
        let widest = self
            .w
            .all_matrices()
            .iter()
            .map(|m| m.cols)
            .max()
            .unwrap_or(1);
        self.opts.dequant_elems.max(widest)
    }

    /// Activation layout for a chunk of `n` tokens.
    fn acts(&self, n: usize, g: &tandem_kv::KvGeometry) -> Acts {
        let c = &self.w.config;
        let (h, hd) = (c.hidden, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        let ffn = self
            .w
            .layers
            .iter()
            .map(|l| match &l.ffn {
                FfnWeights::Dense { glu, .. } => glu.gate.rows,
                FfnWeights::Moe { cfg, shared, .. } => cfg
                    .expert_ffn
                    .max(shared.as_ref().map_or(0, |s| s.gate.rows)),
            })
            .max()
            .unwrap_or(0);
        let (ne, topk) = self
            .w
            .layers
            .iter()
            .filter_map(|l| match &l.ffn {
                FfnWeights::Moe { cfg, .. } => Some((cfg.n_experts, cfg.top_k)),
                _ => None,
            })
            .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
        let pairs = self.w.ropes.first().map_or(0, |r| r.table_len());
        let blk_tok = self.opts.block_pages * g.page_tokens;
        // MLA's decompressed heads are `mla::width` wide; its buffers
        // and the query-sized ones grow to hold them.
        let mla = self.w.layers.iter().find_map(|l| match &l.proj {
            AttnWeights::Mla { cfg, .. } => Some(cfg.clone()),
            AttnWeights::Gqa { .. } => None,
        });
        let (ql, lora, rope_w, wide) = mla.as_ref().map_or((0, 0, 0, 0), |m| {
            (
                m.q_lora_rank,
                m.kv_lora_rank,
                m.qk_rope,
                c.n_heads * mla::width(m),
            )
        });
        // A latent model's query-sized buffers hold decompressed heads (its
        // `head_dim` is the cached row, wider than a head).
        let q_dim = if mla.is_some() { wide } else { q_dim };
        let widest_in = h.max(q_dim).max(ffn).max(ql);
        let lat_rows = n.max(blk_tok);
        let mut off = 0;
        let mut take = |bytes: usize| {
            let o = off;
            off += align(bytes);
            o
        };
        let f = 4;
        let mut a = Acts {
            x: take(n * h * f),
            xn: take(n * h * f),
            xh: take(n * widest_in * f),
            q: take(n * q_dim * f),
            k: take(n * kv_dim * f),
            v: take(n * kv_dim * f),
            qt: take(n * q_dim * f),
            kt: take(n * kv_dim * f),
            vt: take(n * kv_dim * f),
            kdec: take(n * kv_dim * f),
            vdec: take(n * kv_dim * f),
            states: take(n * c.n_heads * 2 * f),
            acc: take(n * q_dim * f),
            ohm: take(n * q_dim * f),
            attn: take(n * q_dim * f),
            gate: take(n * ffn * f),
            up: take(n * ffn * f),
            out: take(n * h * f),
            tmp: take(n * h * f),
            y: take(n * h * f),
            gx: take(n * h * f),
            rope: take(self.w.ropes.len() * n * pairs * 2 * f),
            router: take(n * ne * f),
            idx: take(n * (topk + 1) * f),
            wts: take(n * (topk + 1) * f),
            blk_dec: take(2 * blk_tok * kv_dim * f),
            blk_t: take(2 * blk_tok * kv_dim * f),
            logits: take(LOGIT_ROWS * c.vocab_size * f),
            mla_low: take(n * ql * f),
            mla_lown: take(n * ql * f),
            mla_lat: take(lat_rows * lora * f),
            mla_lat2: take(n * lora * f),
            mla_kpe: take(n * rope_w * f),
            mla_xh: take(lat_rows * lora * f),
            mla_k: take(n * wide * f),
            mla_v: take(n * wide * f),
            mla_bk: take(blk_tok * wide * f),
            mla_bv: take(blk_tok * wide * f),
            total: 0,
        };
        a.total = off;
        a
    }

    /// Tokens per chunk: the most that fit the budget beside the fixed
    /// buffers (and `max_chunk`).
    fn chunk_tokens(&self, n: usize, g: &tandem_kv::KvGeometry) -> Result<usize, GpuError> {
        let mem = self.dev.memory();
        let free = mem.budget.saturating_sub(mem.used);
        let fixed = self.fixed_bytes(g);
        let enc = |t: usize| 2 * align(2 * t * g.n_kv_heads() * g.row_bytes());
        let need = |t: usize| fixed + self.acts(t, g).total + enc(t);
        let cap = self.opts.max_chunk.unwrap_or(n).clamp(1, n);
        if need(1) > free {
            return Err(GpuError::OutOfMemory {
                what: "the streamed prefill (layer slots, scratch, one token's activations)".into(),
                bytes: need(1),
                free,
            });
        }
        // Largest t ≤ cap with need(t) ≤ free (need grows with t).
        let (mut lo, mut hi) = (1, cap);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if need(mid) <= free {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }
}

/// Page-locks the mapped weights where the device can (merged page
/// ranges, registered once); returns the starts of the ranges registered,
/// and whether that was all of them.
fn register_weights<D: Device>(dev: &D, w: &ModelWeights) -> (Vec<usize>, bool) {
    const PAGE: usize = 4096;
    let mut ranges: Vec<(usize, usize)> = w
        .all_matrices()
        .iter()
        .map(|m| {
            let b = m.bytes();
            let s = b.as_ptr() as usize;
            (s / PAGE * PAGE, (s + b.len()).div_ceil(PAGE) * PAGE)
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut starts = Vec::new();
    let all = merged.len();
    for (s, e) in merged {
        // SAFETY: the ranges cover mapped tensor bytes (rounded to their
        // pages), which live as long as the weights, owned with the device
        // by the prefill.
        match unsafe { dev.register_host(s as *const u8, e - s) } {
            Ok(true) => {
                done += e - s;
                starts.push(s);
            }
            Ok(false) => failed += 1,
            Err(err) => {
                failed += 1;
                if failed == 1 {
                    tracing::warn!(
                        "weights not page-locked ({err}); uploads go through the driver's staging"
                    );
                }
            }
        }
    }
    if done > 0 {
        tracing::info!("page-locked {} MiB of mapped weights", done >> 20);
    }
    let pinned = starts.len() == all;
    if !pinned {
        // Partly registered ranges would be uploaded twice as fast as the
        // rest for nothing: stage everything.
        for &p in &starts {
            // SAFETY: just registered; nothing queued.
            let _ = unsafe { dev.unregister_host(p as *const u8) };
        }
        starts.clear();
    }
    (starts, pinned)
}

/// One call's state: buffers, events, host staging.
struct Run<'p, D: Device> {
    p: &'p GpuPrefill<D>,
    s: &'p Streams<D>,
    b: Bufs<D>,
    slot_up: Ev<D>,
    slot_free: Ev<D>,
    exp_up: Ev<D>,
    exp_free: Ev<D>,
    blk_up: Ev<D>,
    blk_free: Ev<D>,
    kv_ready: Ev<D>,
    kv_down: Ev<D>,
    host_ev: Ev<D>,
    /// Host copies of each layer's new K/V (`[2][kv heads][n][row]`).
    /// Page-locked, sized for the largest chunk.
    stage: [RefCell<D::Host>; 2],
    /// Page-locked staging of layer slots and expert slots, when the
    /// mapped weights could not be page-locked in place (else empty).
    slot_stage: Vec<RefCell<D::Host>>,
    exp_stage: Vec<RefCell<D::Host>>,
    /// Page-locked staging of cached K/V blocks (pages are copied here by
    /// the host, then uploaded in one copy).
    blk_host: [RefCell<D::Host>; 2],
    /// Host memory under queued uploads, kept until the chunk's sync.
    keep: RefCell<Vec<Vec<u8>>>,
    geom: tandem_kv::KvGeometry,
}

fn ptr<B>(b: &B, off: usize) -> Ptr<'_, B> {
    Ptr { buf: b, off }
}

impl<'p, D: Device> Run<'p, D> {
    fn new(
        p: &'p GpuPrefill<D>,
        s: &'p Streams<D>,
        g: &tandem_kv::KvGeometry,
        chunk: usize,
    ) -> Result<Self, GpuError> {
        let dev = &p.dev;
        let w = &p.w;
        // Resident vectors.
        let mut host: Vec<u8> = Vec::new();
        let mut put = |v: &[f32]| {
            let o = host.len();
            host.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            host.resize(align(host.len()), 0);
            o
        };
        let vec_offs: Vec<VecOffs> = w
            .layers
            .iter()
            .map(|l| l.vectors.all().map(|v| v.map(|v| put(v))))
            .collect();
        let out_norm = put(&w.out_norm);
        let resident = dev.alloc(host.len().max(ALIGN_MIN), "resident norms and biases")?;
        let slots = (0..p.opts.slots)
            .map(|i| dev.alloc(p.slot_bytes(), &format!("layer slot {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let eb = p.expert_bytes();
        let experts = match eb {
            0 => Vec::new(),
            _ => (0..2)
                .map(|i| dev.alloc(eb, &format!("expert slot {i}")))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let deq = dev.alloc(align(p.deq_elems() * 4), "dequantization scratch")?;
        let a = p.acts(chunk, g);
        let act = dev.alloc(a.total, &format!("activations of {chunk} tokens"))?;
        let enc = align(2 * chunk * g.n_kv_heads() * g.row_bytes()).max(ALIGN_MIN);
        let kvenc = [
            dev.alloc(enc, "new K/V (0)")?,
            dev.alloc(enc, "new K/V (1)")?,
        ];
        let blk = align(2 * p.opts.block_pages * g.n_kv_heads() * g.slab_bytes()).max(ALIGN_MIN);
        let blk_raw = [
            dev.alloc(blk, "cached K/V block (0)")?,
            dev.alloc(blk, "cached K/V block (1)")?,
        ];
        let blk_host = [
            RefCell::new(dev.alloc_host(blk)?),
            RefCell::new(dev.alloc_host(blk)?),
        ];
        let (slot_stage, exp_stage) = match p.pinned {
            true => (Vec::new(), Vec::new()),
            false => (
                (0..p.opts.slots)
                    .map(|_| dev.alloc_host(p.slot_bytes()).map(RefCell::new))
                    .collect::<Result<Vec<_>, _>>()?,
                (0..experts.len())
                    .map(|_| dev.alloc_host(eb).map(RefCell::new))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        // SAFETY: `host` lives until the sync below.
        unsafe { dev.h2d(&s.copy, ptr(&resident, 0), host.as_ptr(), host.len())? };
        dev.sync_stream(&s.copy)?;
        let ns = p.opts.slots;
        Ok(Run {
            p,
            s,
            b: Bufs {
                resident,
                vec_offs,
                out_norm,
                slots,
                experts,
                deq,
                act,
                a,
                kvenc,
                blk_raw,
            },
            slot_up: Ev::new(dev, ns)?,
            slot_free: Ev::new(dev, ns)?,
            exp_up: Ev::new(dev, 2)?,
            exp_free: Ev::new(dev, 2)?,
            blk_up: Ev::new(dev, 2)?,
            blk_free: Ev::new(dev, 2)?,
            kv_ready: Ev::new(dev, 2)?,
            kv_down: Ev::new(dev, 2)?,
            host_ev: Ev::new(dev, 1)?,
            stage: [
                RefCell::new(dev.alloc_host(2 * chunk * g.n_kv_heads() * g.row_bytes())?),
                RefCell::new(dev.alloc_host(2 * chunk * g.n_kv_heads() * g.row_bytes())?),
            ],
            keep: Default::default(),
            blk_host,
            slot_stage,
            exp_stage,
            geom: g.clone(),
        })
    }

    fn dev(&self) -> &'p D {
        &self.p.dev
    }

    /// The operand type of a matrix.
    fn ty(&self, m: &HostMatrix) -> DType {
        match (self.p.opts.precision, m.format) {
            (Precision::F32, _) => DType::F32,
            (_, WeightFormat::BF16) => DType::BF16,
            _ => DType::F16,
        }
    }

    /// Queues the upload of unit `u` (layer, or the output head) into its
    /// slot on the copy stream.
    fn upload_unit(&self, u: usize, st: &mut PrefillStats) -> Result<(), GpuError> {
        let dev = self.dev();
        let ns = self.p.opts.slots;
        let si = u % ns;
        let ms: Vec<&HostMatrix> = match self.p.w.layers.get(u) {
            Some(l) => l.slot_matrices(),
            None => vec![&self.p.w.output],
        };
        let (offs, _) = pack(&ms);
        self.slot_free.wait(dev, &self.s.copy, si)?;
        dev.annotate(&self.s.copy, &format!("upload {u} begin"))?;
        let stage = self.slot_stage.get(si);
        self.upload_matrices(&ms, &offs, &self.b.slots[si], stage, &self.slot_up, si, st)?;
        dev.annotate(&self.s.copy, &format!("upload {u} end"))?;
        self.slot_up.record(dev, si, &self.s.copy)
    }

    /// Queues the upload of matrices `ms` at `offs` of `dst` on the copy
    /// stream: straight from the page-locked mapping, or — when the
    /// weights could not be page-locked — through page-locked staging
    /// `stage` (copied by the host once `up`'s previous record, the last
    /// upload from that staging, is done).
    #[allow(clippy::too_many_arguments)]
    fn upload_matrices(
        &self,
        ms: &[&HostMatrix],
        offs: &[usize],
        dst: &D::Buffer,
        stage: Option<&RefCell<D::Host>>,
        up: &Ev<D>,
        ui: usize,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        match stage {
            None => {
                for (m, &o) in ms.iter().zip(offs) {
                    let b = m.bytes();
                    // SAFETY: mapped weights outlive the prefill.
                    unsafe { dev.h2d(&self.s.copy, ptr(dst, o), b.as_ptr(), b.len())? };
                    st.weight_bytes += b.len();
                    st.h2d_bytes += b.len();
                }
            }
            Some(stage) => {
                up.sync(dev, ui)?;
                let mut h = stage.borrow_mut();
                let (base, cap) = (h.as_mut_ptr(), h.len());
                let mut end = 0;
                for (m, &o) in ms.iter().zip(offs) {
                    let b = m.bytes();
                    if o + b.len() > cap {
                        return Err(GpuError::Protocol("weights over their staging".into()));
                    }
                    // SAFETY: in bounds (checked); no queued copy reads the
                    // staging (its last upload was synced above).
                    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), base.add(o), b.len()) };
                    end = end.max(o + b.len());
                    st.weight_bytes += b.len();
                }
                // SAFETY: not written again before `up[ui]` is synced.
                unsafe { dev.h2d(&self.s.copy, ptr(dst, 0), base, end)? };
                st.h2d_bytes += end;
            }
        }
        Ok(())
    }

    /// Uploads host bytes on the compute stream (kept alive until the
    /// chunk's sync).
    fn put(&self, dst: usize, bytes: Vec<u8>, st: &mut PrefillStats) -> Result<(), GpuError> {
        st.h2d_bytes += bytes.len();
        // SAFETY: `bytes` moves into `keep` (its heap buffer does not move)
        // and lives until the chunk's sync.
        unsafe {
            self.dev().h2d(
                &self.s.compute,
                ptr(&self.b.act, dst),
                bytes.as_ptr(),
                bytes.len(),
            )?
        };
        self.keep.borrow_mut().push(bytes);
        Ok(())
    }

    fn chunk(
        &mut self,
        seq: &mut Sequence,
        tokens: &[u32],
        logit_rows: &[usize],
        out: &mut PrefillOutput,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let w = &self.p.w;
        let c = &w.config;
        let n = tokens.len();
        let p0 = seq.len();
        let mut st = std::mem::take(&mut out.stats);
        st.chunks += 1;
        // 1. Embeddings and RoPE tables, as the CPU model computes them.
        let mut x = vec![0f32; n * c.hidden];
        for (row, &t) in x.chunks_exact_mut(c.hidden).zip(tokens) {
            w.embd.row_f32(t as usize, row)?;
            if let Some(sc) = w.embed_scale {
                row.iter_mut().for_each(|v| *v *= sc);
            }
        }
        self.put(self.b.a.x, f32_bytes(&x), &mut st)?;
        let pairs = w.ropes.first().map_or(0, |r| r.table_len());
        let mut table = vec![(0f32, 0f32); pairs];
        let mut rope = Vec::with_capacity(w.ropes.len() * n * pairs * 2);
        for r in &w.ropes {
            for i in 0..n {
                r.table(p0 + i, &mut table);
                rope.extend(table.iter().flat_map(|&(s, c)| [s, c]));
            }
        }
        self.put(self.b.a.rope, f32_bytes(&rope), &mut st)?;
        // 2. Units: layers, then the output head if this chunk has logits.
        let units = w.layers.len() + usize::from(!logit_rows.is_empty());
        let ns = self.p.opts.slots;
        for u in 0..units.min(ns) {
            self.upload_unit(u, &mut st)?;
        }
        let kv_rows = self.geom.planes() * c.n_kv_heads * n * self.geom.row_bytes();
        if self.stage.iter().any(|s| s.borrow().len() < kv_rows) {
            return Err(GpuError::Protocol(
                "write-back staging smaller than a chunk".into(),
            ));
        }
        for u in 0..units {
            let si = u % ns;
            self.slot_up.wait(dev, &self.s.compute, si)?;
            dev.annotate(&self.s.compute, &format!("compute {u} begin"))?;
            match w.layers.get(u) {
                Some(l) => self.layer(u, l, seq, p0, n, &mut st)?,
                None => self.output(logit_rows, n, out, &mut st)?,
            }
            dev.annotate(&self.s.compute, &format!("compute {u} end"))?;
            self.slot_free.record(dev, si, &self.s.compute)?;
            if u + ns < units {
                self.upload_unit(u + ns, &mut st)?;
            }
            // The previous layer's K/V, on the host while this one runs.
            if u >= 1 && u - 1 < w.layers.len() {
                self.write_back(seq, u - 1, p0, n)?;
            }
        }
        if units == w.layers.len() && units > 0 {
            self.write_back(seq, units - 1, p0, n)?;
        }
        for s in [&self.s.compute, &self.s.copy, &self.s.back] {
            dev.sync_stream(s)?;
        }
        self.keep.borrow_mut().clear();
        st.d2h_bytes += kv_rows * w.layers.len();
        seq.commit(tokens)?;
        out.stats = st;
        Ok(())
    }

    /// `n` f32 values of the activation buffer at `at`, once the compute
    /// stream has produced them.
    fn download(&self, at: usize, n: usize) -> Result<Vec<f32>, GpuError> {
        let dev = self.dev();
        let mut v = vec![0f32; n];
        // SAFETY: `v` is neither read nor dropped before the copy is done:
        // the event is synced below, and on an error the stream is synced
        // before `v` goes.
        unsafe {
            dev.d2h(
                &self.s.compute,
                ptr(&self.b.act, at),
                v.as_mut_ptr() as *mut u8,
                n * 4,
            )?
        };
        let r = self
            .host_ev
            .record(dev, 0, &self.s.compute)
            .and_then(|_| self.host_ev.sync(dev, 0));
        if r.is_err() {
            let _ = dev.sync_stream(&self.s.compute);
        }
        r.map(|_| v)
    }

    /// Waits for layer `li`'s K/V on the host and puts them in the pages.
    fn write_back(&self, seq: &Sequence, li: usize, p0: usize, n: usize) -> Result<(), GpuError> {
        self.kv_down.sync(self.dev(), li % 2)?;
        kv_io::scatter_layer(seq, li, p0, n, self.stage[li % 2].borrow().as_slice())
    }

    /// `y = x · mᵀ` for `n` rows: the matrix at `m_off` of `m_buf` (as
    /// stored) dequantized into the scratch in row chunks.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        m: &HostMatrix,
        m_buf: &D::Buffer,
        m_off: usize,
        x: usize,
        ty: DType,
        y: usize,
        n: usize,
        accumulate: bool,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let s = &self.s.compute;
        let row_bytes = m
            .format
            .row_bytes(m.cols)
            .ok_or_else(|| GpuError::Shape(format!("{}: rows are not whole blocks", m.name())))?;
        let per = (self.p.deq_elems() / m.cols).max(1);
        let mut r0 = 0;
        while r0 < m.rows {
            let nr = per.min(m.rows - r0);
            dev.dequantize(
                s,
                m.format,
                ptr(m_buf, m_off + r0 * row_bytes),
                ptr(&self.b.deq, 0),
                ty,
                nr * m.cols,
            )?;
            dev.gemm(
                s,
                &Gemm {
                    w: ptr(&self.b.deq, 0),
                    x: ptr(&self.b.act, x),
                    y: ptr(&self.b.act, y + r0 * 4),
                    ty,
                    n,
                    rows: nr,
                    cols: m.cols,
                    ldy: m.rows,
                    accumulate,
                    w_transposed: false,
                },
            )?;
            r0 += nr;
        }
        st.flops += 2.0 * n as f64 * m.n_elements() as f64;
        Ok(())
    }

    /// `y = src · mᵀ`: `src` (f32, `n × m.cols`) converted to the matrix's
    /// operand type in `xh`, then [`Run::matmul`].
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        m: &HostMatrix,
        m_buf: &D::Buffer,
        m_off: usize,
        src: usize,
        y: usize,
        n: usize,
        force: Option<DType>,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let ty = force.unwrap_or(self.ty(m));
        let b = &self.b.act;
        self.dev().convert(
            &self.s.compute,
            ptr(b, src),
            ptr(b, self.b.a.xh),
            ty,
            n * m.cols,
        )?;
        self.matmul(m, m_buf, m_off, self.b.a.xh, ty, y, n, false, st)
    }

    fn vec_ptr(&self, li: usize, which: usize) -> Option<Ptr<'_, D::Buffer>> {
        self.b
            .vec_offs
            .get(li)
            .and_then(|o| o[which])
            .map(|o| ptr(&self.b.resident, o))
    }

    /// `x += post_norm(y)` over `n` rows.
    fn residual(
        &self,
        y: usize,
        post: Option<Ptr<'_, D::Buffer>>,
        n: usize,
    ) -> Result<(), GpuError> {
        let (dev, s, b, a) = (self.dev(), &self.s.compute, &self.b.act, &self.b.a);
        let h = self.p.w.config.hidden;
        let src = match post {
            Some(wp) => {
                dev.rms_norm(
                    s,
                    ptr(b, y),
                    wp,
                    ptr(b, a.tmp),
                    n,
                    h,
                    self.p.w.config.norm_eps,
                )?;
                a.tmp
            }
            None => y,
        };
        dev.add(s, ptr(b, a.x), ptr(b, src), n * h)
    }

    /// The output head on the rows that want logits.
    fn output(
        &self,
        rows: &[usize],
        n: usize,
        out: &mut PrefillOutput,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let w = &self.p.w;
        let (h, vocab) = (w.config.hidden, w.config.vocab_size);
        let slot = &self.b.slots[w.layers.len() % self.p.opts.slots];
        for group in rows.chunks(LOGIT_ROWS) {
            let m = group.len();
            let idx: Vec<u8> = group
                .iter()
                .flat_map(|&r| (r as u32).to_le_bytes())
                .collect();
            self.put(self.b.a.idx, idx, st)?;
            let (s, b, a) = (&self.s.compute, &self.b.act, &self.b.a);
            dev.gather_rows(s, ptr(b, a.x), n, ptr(b, a.idx), ptr(b, a.gx), m, h)?;
            dev.rms_norm(
                s,
                ptr(b, a.gx),
                ptr(&self.b.resident, self.b.out_norm),
                ptr(b, a.xn),
                m,
                h,
                w.config.norm_eps,
            )?;
            self.project(&w.output, slot, 0, a.xn, a.logits, m, None, st)?;
            let l = self.download(self.b.a.logits, m * vocab)?;
            out.logits.extend_from_slice(&l);
            st.d2h_bytes += m * vocab * 4;
        }
        Ok(())
    }
}

impl<D: Device> Drop for Run<'_, D> {
    /// Queued copies may still use the host staging held here (after an
    /// error): wait for every stream before it goes.
    fn drop(&mut self) {
        for s in [&self.s.compute, &self.s.copy, &self.s.back] {
            let _ = self.p.dev.sync_stream(s);
        }
    }
}

/// At least this many bytes per allocation (no zero-sized buffers).
const ALIGN_MIN: usize = 256;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn attn_flops(n_q: usize, n_k: usize, heads: usize, hd: usize) -> f64 {
    4.0 * n_q as f64 * n_k as f64 * heads as f64 * hd as f64
}
