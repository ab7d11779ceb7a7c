//! Causal self-attention, run by the node that owns each KV head (its
//! Q/K/V rows were computed there).
//!
//! A work item covers some KV heads of one sequence over some of its
//! pages. It finishes the new keys and values of its heads (bias,
//! QK-norm, RoPE) and stores them in the sequence's cache (if its pages
//! hold the new positions), finishes a copy of the heads' query rows, and
//! attends: tiles of query rows (all heads of a group, several rows) fold
//! the cache page by page into online-softmax states
//! (`tandem_kernels::attention`), so each page is read once per tile and
//! the worker's scratch does not grow with the context.
//!
//! The items are cut one of two ways ([`AttnPlan`]):
//!
//! - **Prefill** (a sequence has more new rows than one tile): a first run
//!   stores every new row's K/V (one item per sequence and KV head), then
//!   one item per (sequence, KV head, query tile) attends, the last tiles
//!   (which see the most positions) claimed first. Cutting by tile keeps
//!   every thread busy where a sequence has fewer KV heads than the node
//!   has threads: MLA has one latent head, so one item per head left a
//!   whole prompt's attention to one thread.
//! - **Decode**: one item per (sequence, part of the pages), over all the
//!   node's KV heads. A page of one layer holds the node's heads' keys and
//!   then their values as two contiguous runs, so an item streams whole
//!   runs instead of one head's 4 KiB slabs scattered over the pool (which
//!   left decode at a third of the memory bandwidth on long contexts).
//!   With several parts (flash-decoding: threads share a long context),
//!   the parts' states are merged per head (protocol on [`SplitState`]).
//!
//! A head is attended by the node that holds it, except a latent (MLA)
//! cache's one head: with several nodes its items, prefill and decode
//! alike, are dealt round-robin to every node's threads, which read the
//! home node's pool (interleaved over all memory nodes by `tandem-kv`).
//!
//! Numerics: the online softmax and the SIMD dot products reach llama.cpp's
//! two-pass (non-flash) attention only up to a few ulps. On tiny quantized
//! fixtures a few ulps can move an activation across a rounding boundary of
//! the next layer's 8-bit quantization, which the reference tests' 1e-2
//! bound for quantized files absorbs (see `tandem-engine/tests/reference.rs`).

use tandem_numa::{Pool, Worker};

use crate::config::ModelConfig;
use crate::ops::Rope;
use crate::workspace::{PerWorker, SharedOut};
use tandem_kernels::attention::{
    add_sink, attend_block_limited, encode_row, finish, merge, KvBlock, ScoreLimits, SoftmaxState,
};

use crate::kv_cache::KvCache;

use crate::ModelError;

/// One sequence of the batch as attention sees it.
#[derive(Clone, Copy)]
pub(crate) struct SeqView {
    /// The sequence's block table (pages reserved for the new rows). A raw
    /// pointer so the workspace can keep the views' buffer across calls;
    /// valid for the forward pass that built it.
    pub seq: *const KvCache,
    /// The layer being computed.
    pub layer: usize,
    /// Position of the sequence's first new row.
    pub p0: usize,
    /// The sequence's rows in the batch: `row0..row0 + n_rows`.
    pub row0: usize,
    pub n_rows: usize,
}

// SAFETY: the sequence outlives the run and is not changed during it;
// workers write disjoint (position, head) rows of its private pages (the
// `tandem-kv` protocol): the last part of each (sequence, KV head) writes
// that head's new rows, and no other item does.
unsafe impl Send for SeqView {}
// SAFETY: as for `Send` above.
unsafe impl Sync for SeqView {}

/// Per-layer parameters the attention items need.
pub(crate) struct AttnLayer<'a> {
    /// Scale, window, soft-cap of the scores.
    pub spec: &'a crate::spec::AttnSpec,
    /// Sink logit per query head (`spec.sinks`).
    pub sinks: Option<&'a [f32]>,
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    /// RoPE the new queries and keys here (false: they arrive rotated,
    /// as MLA's do).
    pub rotate: bool,
}

/// How a layer's attention is cut into work items (module docs).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct AttnPlan {
    /// Items over all of a node's heads (decode) instead of one head.
    pub all_heads: bool,
    /// Parts each sequence's pages are split into (1 for prefill).
    pub parts: usize,
}

/// Where split attention leaves its partial results, and how the last
/// part of a head learns that it is last.
///
/// # Protocol (flash-decoding)
///
/// With `parts > 1`, each (sequence, KV head) is attended by `parts`
/// items, each over its share of the pages:
///
/// 1. The last part also finishes the new rows' keys and values and stores
///    them: it is the only part whose pages hold the new positions.
/// 2. Each part finishes its own copy of the query rows, folds its pages
///    into online-softmax states, and writes the states and accumulators
///    to its slot in `partials` (plain stores).
/// 3. It then arrives at the head's counter in `done`
///    ([`tandem_numa::Arrivals`], checked with loom): the part that brings
///    the counter to `parts` is the last to finish and sees every other
///    part's slot.
/// 4. That part merges the slots in part order (so the result does not
///    depend on which thread finished last) and writes the output.
///
/// The driver zeroes `done` before the run; the run's end is the barrier
/// after which the next layer may reuse both buffers.
pub(crate) struct SplitState<'a> {
    pub plan: AttnPlan,
    /// `MAX_QUERIES · (head_dim + 2)` floats per (sequence, KV head, part).
    pub partials: SharedOut,
    /// One counter per (sequence, KV head).
    pub done: &'a tandem_numa::Arrivals,
}

/// Values per head of attention's output: the head size, or for MLA the
/// latent's width (the value is the cached row's latent prefix; the rest
/// of the head's output row is not written, and `mla::output` reads only
/// the latent).
pub(crate) fn value_dim(c: &ModelConfig) -> usize {
    c.mla
        .as_ref()
        .map_or(c.head_dim, |m| m.kv_lora_rank.min(c.head_dim))
}

/// Floats of one part's slot in `SplitState::partials`.
pub(crate) fn partial_slot_len(head_dim: usize) -> usize {
    MAX_QUERIES * (head_dim + 2)
}

/// Context tokens below which a sequence's pages are not split further.
const MIN_SPLIT_TOKENS: usize = 256;

/// The plan for a batch: decode items (all heads) when every sequence's
/// new rows fit in one query tile, with enough parts per sequence to give
/// every thread of the busiest node work, none shorter than
/// `MIN_SPLIT_TOKENS`; prefill items otherwise. `forced` (tests) sets the
/// decode parts, at most one per page.
///
/// `seqs` gives each sequence's cached positions and new rows.
pub(crate) fn choose_plan(
    seqs: impl Iterator<Item = (usize, usize)> + Clone,
    group: usize,
    page_tokens: usize,
    node_threads: impl Iterator<Item = usize>,
    forced: Option<usize>,
) -> AttnPlan {
    let tile_rows = (MAX_QUERIES / group.max(1)).max(1);
    let n_seqs = seqs.clone().count();
    if n_seqs == 0 || seqs.clone().any(|(_, rows)| rows > tile_rows) {
        return AttnPlan {
            all_heads: false,
            parts: 1,
        };
    }
    let longest = seqs.map(|(p0, rows)| p0 + rows).max().unwrap_or(1);
    let parts = match forced {
        Some(f) => f.clamp(1, longest.div_ceil(page_tokens.max(1)).max(1)),
        None => {
            let want = node_threads.map(|t| t.div_ceil(n_seqs)).max().unwrap_or(1);
            want.min(longest.div_ceil(MIN_SPLIT_TOKENS)).max(1)
        }
    };
    AttnPlan {
        all_heads: true,
        parts,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    pool: &Pool,
    c: &ModelConfig,
    rope: &Rope,
    layer: &AttnLayer<'_>,
    kv_ranges: &[std::ops::Range<usize>],
    seqs: &[SeqView],
    q: SharedOut,
    k: SharedOut,
    v: SharedOut,
    out: SharedOut,
    rope_table: &[(f32, f32)],
    scratch: &PerWorker<Vec<f32>>,
    states: &PerWorker<Vec<SoftmaxState>>,
    split: &SplitState<'_>,
) -> Result<(), ModelError> {
    let plan = split.plan;
    split.done.reset();
    let ctx = ItemCtx {
        c,
        rope,
        layer,
        rope_table,
        q,
        k,
        v,
        out,
        split,
    };
    let shared = shared_home(kv_ranges, seqs);
    // Which node's heads (and memory) worker `w` attends, and its claims'
    // mapping to item numbers: a latent cache's items are dealt out
    // round-robin over every node (each node claims its own residue).
    let homes = |w: &Worker<'_>| match shared {
        Some(home) => (home, w.n_nodes, w.node),
        None => (w.node, 1, 0),
    };
    if !plan.all_heads {
        // Prefill: every new row is stored before any tile reads it (a
        // tile sees the rows of the tiles before it).
        pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
            let (home, stride, offset) = homes(&w);
            let heads = kv_ranges[home].clone();
            let n_items = heads.len() * seqs.len();
            // SAFETY: worker `w.index` is the only user of its scratch.
            let scratch = unsafe { scratch.get(w.index) };
            loop {
                let item = w.claim() * stride + offset;
                if item >= n_items {
                    return Ok(());
                }
                let (si, local) = (item / heads.len(), item % heads.len());
                let it = ctx.item(seqs, si, home, heads.start, local..local + 1, 0);
                // SAFETY: the item owns this head's new rows of this
                // sequence and their reserved positions.
                unsafe { store_new_rows(&ctx, &it, local, &mut scratch[..c.head_dim]) }?;
            }
        })?;
    }
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let (home, stride, offset) = homes(&w);
        let heads = kv_ranges[home].clone();
        let nh = heads.len();
        let tile_rows = (MAX_QUERIES / (c.n_heads / c.n_kv_heads).max(1)).max(1);
        // Items per sequence: decode, its parts (all heads each);
        // prefill, one per (KV head, query tile).
        let per_seq = |s: &SeqView| {
            if plan.all_heads {
                plan.parts
            } else {
                nh * s.n_rows.div_ceil(tile_rows)
            }
        };
        let n_items: usize = seqs.iter().map(per_seq).sum();
        // SAFETY: worker `w.index` is the only user of its scratch.
        let (scratch, states) = unsafe { (scratch.get(w.index), states.get(w.index)) };
        let (mut si, mut first) = (0, 0); // the sequence of the last claim
        loop {
            let item = w.claim() * stride + offset;
            if item >= n_items {
                return Ok(());
            }
            // Claims only grow: walk forward to the item's sequence.
            while item >= first + per_seq(&seqs[si]) {
                first += per_seq(&seqs[si]);
                si += 1;
            }
            let j = item - first;
            let it = if plan.all_heads {
                ctx.item(seqs, si, home, heads.start, 0..nh, j % plan.parts)
            } else {
                // Last tiles first: they see the most positions, so the
                // longest items start earliest.
                let tiles = seqs[si].n_rows.div_ceil(tile_rows);
                let (tile, h) = (tiles - 1 - j / nh, j % nh);
                let mut it = ctx.item(seqs, si, home, heads.start, h..h + 1, 0);
                it.rows = tile * tile_rows..((tile + 1) * tile_rows).min(it.s.n_rows);
                it
            };
            // SAFETY: positions below the part's pages' end were stored,
            // by this run's first phase (prefill), by this item (the
            // last part of a decode) or by earlier forward passes, and
            // nothing else writes them during the run; the item owns its
            // heads' new K/V rows (last decode part), their output slots
            // (one part) or its partial slots (several).
            unsafe { run_item(&ctx, &it, scratch, states) }?;
        }
    })
}

impl<'a> ItemCtx<'a> {
    /// The item of sequence `si` over heads `local` of node `home`, part
    /// `part`, all of the sequence's new rows.
    fn item<'s>(
        &self,
        seqs: &'s [SeqView],
        si: usize,
        home: usize,
        head0: usize,
        local: std::ops::Range<usize>,
        part: usize,
    ) -> Item<'s> {
        let s = &seqs[si];
        Item {
            s,
            si,
            // SAFETY: see `SeqView::seq`.
            seq: unsafe { &*s.seq },
            node: home,
            head0,
            local,
            part,
            rows: 0..s.n_rows,
        }
    }
}

/// The node holding a latent cache's one head when the pool has several
/// nodes: then every node's threads attend over it (its memory is spread
/// over all nodes, `tandem-kv`), instead of one node doing all of a
/// layer's attention while the others wait. None otherwise.
fn shared_home(kv_ranges: &[std::ops::Range<usize>], seqs: &[SeqView]) -> Option<usize> {
    let first = seqs.first()?;
    // SAFETY: see `SeqView::seq`.
    let geom = unsafe { &*first.seq }.store().geometry();
    if kv_ranges.len() < 2 || geom.values != tandem_kv::KvValues::InKeys {
        return None;
    }
    kv_ranges.iter().position(|r| !r.is_empty())
}

/// What every item of one attention run shares.
struct ItemCtx<'a> {
    c: &'a ModelConfig,
    rope: &'a Rope,
    layer: &'a AttnLayer<'a>,
    rope_table: &'a [(f32, f32)],
    q: SharedOut,
    k: SharedOut,
    v: SharedOut,
    out: SharedOut,
    split: &'a SplitState<'a>,
}

/// One work item: node-local KV heads `local` of sequence `si`, part
/// `part` of its pages.
struct Item<'a> {
    s: &'a SeqView,
    si: usize,
    seq: &'a KvCache,
    /// The node whose pool holds the item's heads (the worker's own,
    /// except for a latent cache, which every node attends).
    node: usize,
    /// Global index of the node's first KV head.
    head0: usize,
    local: std::ops::Range<usize>,
    part: usize,
    /// The new rows (of `0..s.n_rows`) it attends for: all of them in
    /// decode, one query tile in prefill.
    rows: std::ops::Range<usize>,
}

/// Query rows attended together: all heads of a KV group, for as many
/// sequence rows as fit (so each K/V page is read once per tile). 128:
/// MLA attends all of DeepSeek-V3's 128 heads with its one latent head.
pub(crate) const MAX_QUERIES: usize = 128;

/// How many blocks (one head's K and V slabs of a page) ahead of the one
/// it reads attention prefetches. Pages sit anywhere in the pool and a
/// slab is one 4 KiB page of memory, so the hardware prefetchers, which
/// stop at 4 KiB boundaries, start every slab cold; the kernel spreads the
/// prefetches of the block this far ahead over its rows. Measured on the
/// 3B model at 16k context, 2 threads (tok/s): none 4.6, 1 ahead 6.7,
/// 2–4 ahead 7.0–7.8, 6 ahead 6.8–7.1; 3 is in the middle of the plateau.
const AHEAD_BLOCKS: usize = 3;

/// Per-worker scratch floats attention needs for heads of `head_dim`,
/// pages of `page_tokens` and items of up to `heads` KV heads.
pub(crate) fn scratch_len(head_dim: usize, page_tokens: usize, heads: usize) -> usize {
    head_dim + MAX_QUERIES * (page_tokens + 2 * heads.max(1) * head_dim)
}

/// Per-worker softmax states for items of up to `heads` KV heads.
pub(crate) fn states_len(heads: usize) -> usize {
    heads.max(1) * MAX_QUERIES
}

/// The pages part `part` of `parts` reads of a sequence whose rows see
/// positions `0..seen`, the new ones starting at `p0`: the context's pages
/// cut evenly, except that the last part starts no later than the page of
/// `p0` (it alone stored the new rows).
fn part_pages(part: usize, parts: usize, p0: usize, seen: usize, pt: usize) -> (usize, usize) {
    let pages = seen.div_ceil(pt);
    let bound = |j: usize| (j * pages / parts).min(p0 / pt);
    let end = if part + 1 == parts {
        pages
    } else {
        bound(part + 1)
    };
    (bound(part), end)
}

/// Finishes and stores the new rows' keys and values of node-local head
/// `local` (global `kvh`).
///
/// # Safety
/// The item owns these K/V rows and their reserved cache positions.
unsafe fn store_new_rows(
    x: &ItemCtx<'_>,
    it: &Item<'_>,
    local: usize,
    tmp: &mut [f32],
) -> Result<(), ModelError> {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (c, s, seq) = (x.c, it.s, it.seq);
        let hd = c.head_dim;
        let kv_dim = c.n_kv_heads * hd;
        let kvh = it.head0 + local;
        let pairs = x.rope.table_len();
        let geom = seq.store().geometry();
        let (row_bytes, format) = (geom.row_bytes(), geom.format);
        for i in 0..s.n_rows {
            let row = s.row0 + i;
            let table = &x.rope_table[row * pairs..(row + 1) * pairs];
            let kr = x.k.slice(row * kv_dim + kvh * hd, hd);
            let vr = x.v.slice(row * kv_dim + kvh * hd, hd);
            finish_head(
                kr,
                x.layer.bk.map(|b| &b[kvh * hd..(kvh + 1) * hd]),
                x.layer.k_norm,
                c.norm_eps,
                x.layer.rotate.then_some((x.rope, table)),
                tmp,
            );
            finish_head(
                vr,
                x.layer.bv.map(|b| &b[kvh * hd..(kvh + 1) * hd]),
                None,
                c.norm_eps,
                None,
                tmp,
            );
            // Without value slabs (MLA), the key row holds the value.
            for (kv, src) in [(0, &*kr), (1, &*vr)].into_iter().take(geom.planes()) {
                // Position s.p0 + i was reserved (a private page); its row of
                // (layer, kv, head) is written by this item only.
                let ptr = seq
                    .row_ptr(it.node, s.layer, kv, local, s.p0 + i)
                    .map_err(|e| ModelError::Kernel(e.to_string()))?;
                let dst = std::slice::from_raw_parts_mut(ptr, row_bytes);
                encode_row(format, src, dst).map_err(|e| ModelError::Kernel(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// `softmax(q·Kᵀ · scale) · V` for every query head of the item's KV heads
/// and every new row of its sequence, causally (row `i` sees positions
/// `0..=p0 + i`), over the item's part of the pages. Rows are taken in
/// tiles of `MAX_QUERIES / group`; each tile folds pages — per page, each
/// head's block — into online-softmax states. With one part the result
/// goes to the output; with several, to the part's slots, and the last
/// part of a head to finish merges it (see [`SplitState`]).
///
/// # Safety
/// As in [`attention`]'s call.
unsafe fn run_item(
    x: &ItemCtx<'_>,
    it: &Item<'_>,
    scratch: &mut [f32],
    states: &mut [SoftmaxState],
) -> Result<(), ModelError> {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (s, seq, c) = (it.s, it.seq, x.c);
        let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
        let vd = value_dim(c);
        let parts = x.split.plan.parts;
        let (tmp, scratch) = scratch.split_at_mut(hd);
        // Decode's last part stores the new rows (prefill stored them in
        // a phase of their own).
        if x.split.plan.all_heads && it.part + 1 == parts {
            for local in it.local.clone() {
                store_new_rows(x, it, local, tmp)?;
            }
        }
        if it.rows.is_empty() {
            return Ok(());
        }
        let q_dim = c.n_heads * hd;
        let spec = x.layer.spec;
        let scale = spec.scale;
        let pairs = x.rope.table_len();
        let kernel_err = |e: tandem_kernels::KernelError| ModelError::Kernel(e.to_string());
        let isa = tandem_kernels::detected_isa();
        let geom = seq.store().geometry();
        let (pt, row_bytes, slab) = (geom.page_tokens, geom.row_bytes(), geom.slab_bytes());
        let nh = it.local.len();
        let (scores, rest) = scratch.split_at_mut(MAX_QUERIES * pt);
        let (qbuf, rest) = rest.split_at_mut(nh * MAX_QUERIES * hd);
        let acc = &mut rest[..nh * MAX_QUERIES * vd];
        // The heads' K slabs of a page are one run, and so are their V slabs.
        let k_run = seq.store().slab_offset(it.node, s.layer, 0, it.local.start);
        let v_run = seq.store().slab_offset(it.node, s.layer, 1, it.local.start);
        let mut visible = [0usize; MAX_QUERIES];
        let mut starts = [0usize; MAX_QUERIES];
        let tile_rows = (MAX_QUERIES / group).max(1);
        let gq = group * hd; // a row's query values of one group
        let mut r0 = it.rows.start;
        while r0 < it.rows.end {
            let nr = tile_rows.min(it.rows.end - r0);
            // ≤ MAX_QUERIES: `Model::load_with` refuses larger groups.
            let nq = nr * group;
            for (hi, local) in it.local.clone().enumerate() {
                let kvh = it.head0 + local;
                let qh = &mut qbuf[hi * nq * hd..(hi + 1) * nq * hd];
                for r in 0..nr {
                    let row = s.row0 + r0 + r;
                    let table = &x.rope_table[row * pairs..(row + 1) * pairs];
                    let dst = &mut qh[r * gq..(r + 1) * gq];
                    // Read only: every part finishes its own copy.
                    dst.copy_from_slice(x.q.read(row * q_dim + kvh * gq, gq));
                    for (h, qi) in dst.chunks_exact_mut(hd).zip(kvh * group..) {
                        finish_head(
                            h,
                            x.layer.bq.map(|b| &b[qi * hd..(qi + 1) * hd]),
                            x.layer.q_norm,
                            c.norm_eps,
                            x.layer.rotate.then_some((x.rope, table)),
                            tmp,
                        );
                    }
                }
            }
            states[..nh * nq].fill(SoftmaxState::EMPTY);
            acc[..nh * nq * vd].fill(0.0);
            let seen = s.p0 + r0 + nr; // positions the tile's last row sees
                                       // A window: the tile's first row sees nothing before `w0`.
            let w0 = spec.window.map_or(0, |w| (s.p0 + r0 + 1).saturating_sub(w));
            let (first, end) = part_pages(it.part, parts, s.p0, seen, pt);
            let first = first.max(w0 / pt);
            let last = end.min(seen.div_ceil(pt));
            // The layer's page group; a windowed group's pages before
            // `w0` may be released, and none of them is read.
            let (pages, _) = seq.layer_pages(s.layer);
            let page = |pi: usize| seq.store().page_ptr(it.node, pages[pi]);
            // The block read `AHEAD_BLOCKS` blocks after (pi, hi), in the
            // order they are read (page by page, head by head).
            let ahead = |pi: usize, hi: usize| -> [&[u8]; 2] {
                let t = (pi - first) * nh + hi + AHEAD_BLOCKS;
                let (pa, ha) = (first + t / nh, t % nh);
                if pa >= last {
                    return KvBlock::NOTHING_AHEAD;
                }
                let base = page(pa);
                // That head's K and V slabs, inside the node's page.
                [
                    std::slice::from_raw_parts(base.add(k_run + ha * slab), slab),
                    std::slice::from_raw_parts(base.add(v_run + ha * slab), slab),
                ]
            };
            for pi in first..last {
                let base = page(pi);
                let b0 = pi * pt;
                let bn = pt.min(seen - b0);
                for r in 0..nr {
                    let v = (s.p0 + r0 + r + 1).saturating_sub(b0).min(bn);
                    visible[r * group..(r + 1) * group].fill(v);
                    if let Some(w) = spec.window {
                        let st = (s.p0 + r0 + r + 1)
                            .saturating_sub(w)
                            .saturating_sub(b0)
                            .min(bn);
                        starts[r * group..(r + 1) * group].fill(st);
                    }
                }
                let limits = ScoreLimits {
                    starts: spec.window.map(|_| &starts[..nq]),
                    softcap: spec.softcap,
                };
                for hi in 0..nh {
                    // This head's K and V slabs of the page: `slab` bytes each
                    // inside the node's page, rows below `seen` initialised.
                    let block = KvBlock {
                        format: geom.format,
                        k: std::slice::from_raw_parts(base.add(k_run + hi * slab), slab),
                        v: std::slice::from_raw_parts(base.add(v_run + hi * slab), slab),
                        v_dim: vd,
                        stride: row_bytes,
                        n: bn,
                        ahead: ahead(pi, hi),
                    };
                    let (q0, q1) = (hi * nq, (hi + 1) * nq);
                    attend_block_limited(
                        isa,
                        &qbuf[q0 * hd..q1 * hd],
                        hd,
                        scale,
                        &block,
                        &visible[..nq],
                        limits,
                        &mut states[q0..q1],
                        &mut acc[q0 * vd..q1 * vd],
                        scores,
                    )
                    .map_err(kernel_err)?;
                }
            }
            for (hi, local) in it.local.clone().enumerate() {
                let kvh = it.head0 + local;
                let (q0, q1) = (hi * nq, (hi + 1) * nq);
                let st = &states[q0..q1];
                if parts == 1 {
                    for r in 0..nr {
                        let row = s.row0 + r0 + r;
                        let o = x.out.slice(row * q_dim + kvh * gq, gq);
                        for h in 0..group {
                            let qi = r * group + h;
                            let (mut stq, acq) =
                                (st[qi], &mut acc[(q0 + qi) * vd..(q0 + qi + 1) * vd]);
                            if let Some(sk) = x.layer.sinks {
                                add_sink(&mut stq, acq, sk[kvh * group + h]);
                            }
                            finish(&stq, acq, &mut o[h * hd..h * hd + vd]).map_err(kernel_err)?;
                        }
                    }
                } else {
                    // One tile only (`choose_plan`): publish, and merge if last.
                    let head = it.si * c.n_kv_heads + kvh;
                    let slot_len = partial_slot_len(hd);
                    let slot = x
                        .split
                        .partials
                        .slice((head * parts + it.part) * slot_len, slot_len);
                    for (i, sti) in st.iter().enumerate() {
                        slot[2 * i] = sti.max;
                        slot[2 * i + 1] = sti.sum;
                    }
                    let accs = 2 * MAX_QUERIES;
                    slot[accs..accs + nq * vd].copy_from_slice(&acc[q0 * vd..q1 * vd]);
                    if x.split.done.arrive(head, parts) {
                        merge_parts(x, it.s, kvh, nq, head, tmp)?;
                    }
                }
            }
            r0 += nr;
        }
        Ok(())
    }
}

/// Merges the `parts` partial slots of `head` (sequence × KV head index)
/// in part order and writes the finished rows of KV head `kvh` to the
/// output (step 4 of [`SplitState`]'s protocol).
///
/// # Safety
/// Every part of `head` has published its slot (the caller saw the
/// counter reach `parts`); the caller owns the head's output slots.
unsafe fn merge_parts(
    x: &ItemCtx<'_>,
    s: &SeqView,
    kvh: usize,
    nq: usize,
    head: usize,
    a: &mut [f32],
) -> Result<(), ModelError> {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let c = x.c;
        let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
        let vd = value_dim(c);
        let a = &mut a[..vd];
        let (q_dim, gq) = (c.n_heads * hd, group * hd);
        let parts = x.split.plan.parts;
        let slot_len = partial_slot_len(hd);
        let accs = 2 * MAX_QUERIES;
        let kernel_err = |e: tandem_kernels::KernelError| ModelError::Kernel(e.to_string());
        for qi in 0..nq {
            let mut st = SoftmaxState::EMPTY;
            a.fill(0.0);
            for part in 0..parts {
                // Read only: every part published its slot and is done.
                let slot = x
                    .split
                    .partials
                    .read((head * parts + part) * slot_len, slot_len);
                let src = SoftmaxState {
                    max: slot[2 * qi],
                    sum: slot[2 * qi + 1],
                };
                merge(
                    &mut st,
                    a,
                    &src,
                    &slot[accs + qi * vd..accs + (qi + 1) * vd],
                )
                .map_err(kernel_err)?;
            }
            let (r, h) = (qi / group, qi % group);
            if let Some(sk) = x.layer.sinks {
                add_sink(&mut st, a, sk[kvh * group + h]);
            }
            let row = s.row0 + r;
            let o = x.out.slice(row * q_dim + kvh * gq + h * hd, vd);
            finish(&st, a, o).map_err(kernel_err)?;
        }
        Ok(())
    }
}

/// Bias, RMS norm and RoPE of one head, in place.
fn finish_head(
    x: &mut [f32],
    bias: Option<&[f32]>,
    norm: Option<&[f32]>,
    eps: f32,
    rope: Option<(&Rope, &[(f32, f32)])>,
    tmp: &mut [f32],
) {
    if let Some(b) = bias {
        x.iter_mut().zip(b).for_each(|(y, &bb)| *y += bb);
    }
    if let Some(w) = norm {
        tmp.copy_from_slice(x);
        crate::ops::rms_norm(tmp, w, eps, x);
    }
    if let Some((rope, table)) = rope {
        rope.apply_with(x, table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seqs: &[(usize, usize)], threads: usize, forced: Option<usize>) -> AttnPlan {
        choose_plan(seqs.iter().copied(), 3, 16, [threads].into_iter(), forced)
    }

    fn decode(parts: usize) -> AttnPlan {
        AttnPlan {
            all_heads: true,
            parts,
        }
    }

    #[test]
    fn decode_items_cover_all_heads_and_long_contexts_give_every_thread_a_part() {
        // 64 threads, one sequence: 64 parts of a 16k context.
        assert_eq!(plan(&[(16384, 1)], 64, None), decode(64));
        // Short contexts are not cut below MIN_SPLIT_TOKENS.
        assert_eq!(plan(&[(300, 1)], 64, None), decode(2));
        assert_eq!(plan(&[(30, 1)], 2, None), decode(1));
        // Two threads, one sequence: two halves.
        assert_eq!(plan(&[(16384, 1)], 2, None), decode(2));
        // Eight sequences on eight threads: one item each.
        assert_eq!(plan(&[(16384, 1); 8], 8, None), decode(1));
        // Prefill (rows beyond one query tile): one item per head.
        assert_eq!(
            plan(&[(16384, 100)], 64, None),
            AttnPlan {
                all_heads: false,
                parts: 1
            }
        );
        // Forced: at most one part per page.
        assert_eq!(plan(&[(20, 1)], 2, Some(5)), decode(2));
    }

    #[test]
    fn parts_cover_the_pages_once_and_the_last_holds_the_new_rows() {
        for (p0, rows, pt) in [
            (203, 1, 16),
            (0, 1, 16),
            (95, 2, 16),
            (160, 1, 16),
            (33, 1, 5),
        ] {
            let seen = p0 + rows;
            for parts in 1..9 {
                let mut next = 0;
                for part in 0..parts {
                    let (a, b) = part_pages(part, parts, p0, seen, pt);
                    assert_eq!(a, next, "{p0} {parts} {part}");
                    assert!(b >= a);
                    next = b;
                }
                assert_eq!(next, seen.div_ceil(pt));
                let (last, _) = part_pages(parts - 1, parts, p0, seen, pt);
                assert!(last <= p0 / pt);
            }
        }
    }
}
