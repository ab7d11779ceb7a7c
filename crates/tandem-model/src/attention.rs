//! Causal self-attention, one work item per (sequence, KV head), run by the
//! node that owns the KV head (its Q/K/V rows were computed there).
//!
//! An item first finishes the new keys and values of its head (bias,
//! QK-norm, RoPE) and stores them in the sequence's cache, then finishes
//! (a copy of) the group's query heads and attends: tiles of query rows (all heads of
//! the group, several rows) fold the cache block by block into
//! online-softmax states (`tandem_kernels::attention`), so each block of
//! keys and values is read once per tile and the worker's scratch does not
//! grow with the context. In decode, a long context is also split into
//! parts attended by different workers and merged (flash-decoding; the
//! protocol is on [`SplitState`]).
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
use tandem_kernels::attention::{attend_block, encode_row, finish, merge, KvBlock, SoftmaxState};

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
// `tandem-kv` protocol): each item owns one KV head of one sequence.
unsafe impl Send for SeqView {}
unsafe impl Sync for SeqView {}

/// Per-layer parameters the attention items need.
pub(crate) struct AttnLayer<'a> {
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
}

/// Where split attention leaves its partial results, and how the last
/// split of a head learns that it is last.
///
/// # Protocol (flash-decoding)
///
/// A decode step has one query row per sequence, so one work item per
/// (sequence, KV head) leaves threads idle on a machine with more threads
/// per node than KV heads. Each item's context is therefore split into
/// `splits` parts over its pages, each part its own item:
///
/// 1. The last part also finishes the new rows' keys and values and stores
///    them: it is the only part whose pages hold the new positions.
/// 2. Each part finishes its own copy of the query rows, folds its pages
///    into online-softmax states, and writes the states and accumulators
///    to its slot in `partials` (plain stores).
/// 3. It then increments the head's counter in `done` (`AcqRel`). The
///    part that brings the counter to `splits` is the last to finish: the
///    acquire half of its increment sees every other part's slot (their
///    release increments precede it in the counter's modification order).
/// 4. That part merges the slots in split order (so the result does not
///    depend on which thread finished last) and writes the output.
///
/// The driver zeroes `done` before the run; the run's end is the barrier
/// after which the next layer may reuse both buffers.
pub(crate) struct SplitState<'a> {
    pub splits: usize,
    /// `MAX_QUERIES · (head_dim + 2)` floats per (sequence, KV head, split).
    pub partials: SharedOut,
    /// One counter per (sequence, KV head).
    pub done: &'a [std::sync::atomic::AtomicUsize],
}

/// Floats of one split's slot in `SplitState::partials`.
pub(crate) fn partial_slot_len(head_dim: usize) -> usize {
    MAX_QUERIES * (head_dim + 2)
}

/// Context tokens below which a head's context is not split further.
const MIN_SPLIT_TOKENS: usize = 256;

/// How many parts each (sequence, KV head) of a batch is split into: 1
/// unless every sequence's new rows fit in one query tile (decode) and
/// the nodes have more threads than items; then enough parts to give
/// every thread work, none shorter than `MIN_SPLIT_TOKENS`. `forced`
/// (tests) overrides the count, at most one part per page.
///
/// `seqs` gives each sequence's cached positions and new rows.
pub(crate) fn choose_splits(
    seqs: impl Iterator<Item = (usize, usize)> + Clone,
    group: usize,
    page_tokens: usize,
    node_threads_heads: impl Iterator<Item = (usize, usize)>,
    forced: Option<usize>,
) -> usize {
    let tile_rows = (MAX_QUERIES / group.max(1)).max(1);
    let n_seqs = seqs.clone().count();
    if n_seqs == 0 || seqs.clone().any(|(_, rows)| rows > tile_rows) {
        return 1;
    }
    let longest = seqs.map(|(p0, rows)| p0 + rows).max().unwrap_or(1);
    if let Some(f) = forced {
        return f.clamp(1, longest.div_ceil(page_tokens.max(1)).max(1));
    }
    let want = node_threads_heads
        .map(|(threads, heads)| threads.div_ceil((heads * n_seqs).max(1)))
        .max()
        .unwrap_or(1);
    want.min(longest.div_ceil(MIN_SPLIT_TOKENS)).max(1)
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
    split: &SplitState<'_>,
) -> Result<(), ModelError> {
    let hd = c.head_dim;
    let kv_dim = c.n_kv_heads * hd;
    let pairs = rope.table_len();
    let splits = split.splits.max(1);
    for d in split.done {
        d.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    let ctx = ItemCtx {
        c,
        rope,
        layer,
        rope_table,
        q,
        out,
        split,
    };
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let heads = kv_ranges[w.node].clone();
        let per_seq = heads.len() * splits;
        let n_items = per_seq * seqs.len();
        // SAFETY: worker `w.index` is the only user of its scratch.
        let (tmp, rest) = unsafe { scratch.get(w.index).split_at_mut(hd) };
        loop {
            let item = w.claim();
            if item >= n_items {
                return Ok(());
            }
            let si = item / per_seq;
            let (local, part) = ((item % per_seq) / splits, item % splits);
            let (s, kvh) = (&seqs[si], heads.start + local);
            // SAFETY: see `SeqView::seq`.
            let seq = unsafe { &*s.seq };
            if part + 1 == splits {
                let row_bytes = seq.store().geometry().row_bytes();
                let format = seq.store().geometry().format;
                for i in 0..s.n_rows {
                    let row = s.row0 + i;
                    let pos = s.p0 + i;
                    let table = &rope_table[row * pairs..(row + 1) * pairs];
                    // SAFETY: (row, kvh) of K and V belongs to this item only
                    // (the last part of the head).
                    let kr = unsafe { k.slice(row * kv_dim + kvh * hd, hd) };
                    let vr = unsafe { v.slice(row * kv_dim + kvh * hd, hd) };
                    finish_head(
                        kr,
                        layer.bk.map(|b| &b[kvh * hd..(kvh + 1) * hd]),
                        layer.k_norm,
                        c.norm_eps,
                        Some((rope, table)),
                        tmp,
                    );
                    finish_head(
                        vr,
                        layer.bv.map(|b| &b[kvh * hd..(kvh + 1) * hd]),
                        None,
                        c.norm_eps,
                        None,
                        tmp,
                    );
                    for (kv, src) in [(0, &*kr), (1, &*vr)] {
                        // SAFETY: position `pos` was reserved (a private
                        // page) and its row of (layer, kv, kvh) is written
                        // by this item only.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                seq.row_ptr(w.node, s.layer, kv, local, pos),
                                row_bytes,
                            )
                        };
                        encode_row(format, src, dst)
                            .map_err(|e| ModelError::Kernel(e.to_string()))?;
                    }
                }
            }
            let item = Item {
                s,
                si,
                seq,
                node: w.node,
                local,
                kvh,
                part,
            };
            // SAFETY: positions before the part's pages' end were stored,
            // by this item (the last part) or by earlier forward passes,
            // and nothing writes them during the run; the item owns its
            // output slots (one part) or its partial slot (several).
            unsafe { attend_item(&ctx, &item, tmp, rest) }?;
        }
    })
}

/// What every item of one attention run shares.
struct ItemCtx<'a> {
    c: &'a ModelConfig,
    rope: &'a Rope,
    layer: &'a AttnLayer<'a>,
    rope_table: &'a [(f32, f32)],
    q: SharedOut,
    out: SharedOut,
    split: &'a SplitState<'a>,
}

/// One work item: part `part` of (sequence `si`, KV head `kvh`).
struct Item<'a> {
    s: &'a SeqView,
    si: usize,
    seq: &'a KvCache,
    node: usize,
    /// `kvh` within the node's heads.
    local: usize,
    kvh: usize,
    part: usize,
}

/// Query rows attended together: all heads of a KV group, for as many
/// sequence rows as fit (so each K/V page is read once per tile).
pub(crate) const MAX_QUERIES: usize = 64;

/// Per-worker scratch floats attention needs for heads of `head_dim` and
/// pages of `page_tokens`.
pub(crate) fn scratch_len(head_dim: usize, page_tokens: usize) -> usize {
    head_dim + page_tokens + 2 * MAX_QUERIES * head_dim
}

/// The pages part `part` of `splits` reads of a sequence whose rows see
/// positions `0..seen`, the new ones starting at `p0`: the context's pages
/// cut evenly, except that the last part starts no later than the page of
/// `p0` (it alone stored the new rows).
fn part_pages(part: usize, splits: usize, p0: usize, seen: usize, pt: usize) -> (usize, usize) {
    let pages = seen.div_ceil(pt);
    let bound = |j: usize| (j * pages / splits).min(p0 / pt);
    let end = if part + 1 == splits {
        pages
    } else {
        bound(part + 1)
    };
    (bound(part), end)
}

/// `softmax(q·Kᵀ · scale) · V` for every query head of KV head `kvh` and
/// every new row of sequence `s`, causally (row `i` sees positions
/// `0..=p0 + i`), over the item's part of the pages. Rows are taken in
/// tiles of `MAX_QUERIES / group`; each tile folds pages, one block per
/// page, into online-softmax states (`tandem_kernels::attention`). With
/// one part the result goes to the output; with several, to the part's
/// slot, and the last part to finish merges (see [`SplitState`]).
///
/// # Safety
/// Positions below the part's pages' end are stored in the sequence's
/// pages of this head; the caller owns the output slots of (rows of `s`,
/// heads of `kvh`) or, when split, the item's partial slot.
unsafe fn attend_item(
    x: &ItemCtx<'_>,
    it: &Item<'_>,
    tmp: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), ModelError> {
    let (s, seq) = (it.s, it.seq);
    if s.n_rows == 0 {
        return Ok(());
    }
    let c = x.c;
    let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
    let q_dim = c.n_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let pairs = x.rope.table_len();
    let splits = x.split.splits.max(1);
    let kernel_err = |e: tandem_kernels::KernelError| ModelError::Kernel(e.to_string());
    let isa = tandem_kernels::detected_isa();
    let geom = seq.store().geometry();
    let (pt, row_bytes, slab) = (geom.page_tokens, geom.row_bytes(), geom.slab_bytes());
    let (k_off, v_off) = (
        geom.slab_offset(it.node, s.layer, 0, it.local),
        geom.slab_offset(it.node, s.layer, 1, it.local),
    );
    let (scores, rest) = scratch.split_at_mut(pt);
    let (qbuf, acc) = rest.split_at_mut(MAX_QUERIES * hd);
    let mut states = [SoftmaxState::EMPTY; MAX_QUERIES];
    let mut visible = [0usize; MAX_QUERIES];
    let tile_rows = (MAX_QUERIES / group).max(1);
    let gq = group * hd; // a row's query values of this group
    let mut r0 = 0;
    while r0 < s.n_rows {
        let nr = tile_rows.min(s.n_rows - r0);
        // ≤ MAX_QUERIES: `Model::load_with` refuses larger groups.
        let nq = nr * group;
        for r in 0..nr {
            let row = s.row0 + r0 + r;
            let table = &x.rope_table[row * pairs..(row + 1) * pairs];
            let dst = &mut qbuf[r * gq..(r + 1) * gq];
            // Read only: every part finishes its own copy.
            dst.copy_from_slice(x.q.slice(row * q_dim + it.kvh * gq, gq));
            for (h, qh) in dst.chunks_exact_mut(hd).zip(it.kvh * group..) {
                finish_head(
                    h,
                    x.layer.bq.map(|b| &b[qh * hd..(qh + 1) * hd]),
                    x.layer.q_norm,
                    c.norm_eps,
                    Some((x.rope, table)),
                    tmp,
                );
            }
        }
        states[..nq].fill(SoftmaxState::EMPTY);
        acc[..nq * hd].fill(0.0);
        let seen = s.p0 + r0 + nr; // positions the tile's last row sees
        let (first, end) = part_pages(it.part, splits, s.p0, seen, pt);
        for pi in first..end.min(seen.div_ceil(pt)) {
            let page = seq.pages()[pi];
            let b0 = pi * pt;
            let bn = pt.min(seen - b0);
            for r in 0..nr {
                let v = (s.p0 + r0 + r + 1).saturating_sub(b0).min(bn);
                visible[r * group..(r + 1) * group].fill(v);
            }
            let base = seq.store().page_ptr(it.node, page);
            // SAFETY: the head's K and V slabs of this page: `slab` bytes
            // each inside the node's page, rows below `seen` initialised.
            let block = KvBlock {
                format: geom.format,
                k: std::slice::from_raw_parts(base.add(k_off), slab),
                v: std::slice::from_raw_parts(base.add(v_off), slab),
                stride: row_bytes,
                n: bn,
            };
            attend_block(
                isa,
                &qbuf[..nq * hd],
                hd,
                scale,
                &block,
                &visible[..nq],
                &mut states[..nq],
                &mut acc[..nq * hd],
                scores,
            )
            .map_err(kernel_err)?;
        }
        if splits == 1 {
            for r in 0..nr {
                let row = s.row0 + r0 + r;
                let o = x.out.slice(row * q_dim + it.kvh * gq, gq);
                for h in 0..group {
                    let qi = r * group + h;
                    finish(
                        &states[qi],
                        &acc[qi * hd..(qi + 1) * hd],
                        &mut o[h * hd..(h + 1) * hd],
                    )
                    .map_err(kernel_err)?;
                }
            }
        } else {
            // One tile only (`choose_splits`): publish, and merge if last.
            let head = it.si * c.n_kv_heads + it.kvh;
            let slot_len = partial_slot_len(hd);
            let slot = x
                .split
                .partials
                .slice((head * splits + it.part) * slot_len, slot_len);
            for (i, st) in states[..nq].iter().enumerate() {
                slot[2 * i] = st.max;
                slot[2 * i + 1] = st.sum;
            }
            let accs = 2 * MAX_QUERIES;
            slot[accs..accs + nq * hd].copy_from_slice(&acc[..nq * hd]);
            let prev = x.split.done[head].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            if prev + 1 == splits {
                merge_parts(x, it, nq, head, acc)?;
            }
        }
        r0 += nr;
    }
    Ok(())
}

/// Merges the `splits` partial slots of `head` in split order and writes
/// the finished rows to the output (step 4 of [`SplitState`]'s protocol).
///
/// # Safety
/// Every part of `head` has published its slot (the caller saw the
/// counter reach `splits`); the caller owns the head's output slots.
unsafe fn merge_parts(
    x: &ItemCtx<'_>,
    it: &Item<'_>,
    nq: usize,
    head: usize,
    acc: &mut [f32],
) -> Result<(), ModelError> {
    let c = x.c;
    let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
    let (q_dim, gq) = (c.n_heads * hd, group * hd);
    let splits = x.split.splits;
    let slot_len = partial_slot_len(hd);
    let accs = 2 * MAX_QUERIES;
    let kernel_err = |e: tandem_kernels::KernelError| ModelError::Kernel(e.to_string());
    for qi in 0..nq {
        let mut st = SoftmaxState::EMPTY;
        let a = &mut acc[..hd];
        a.fill(0.0);
        for part in 0..splits {
            let slot = x
                .split
                .partials
                .slice((head * splits + part) * slot_len, slot_len);
            let src = SoftmaxState {
                max: slot[2 * qi],
                sum: slot[2 * qi + 1],
            };
            merge(
                &mut st,
                a,
                &src,
                &slot[accs + qi * hd..accs + (qi + 1) * hd],
            )
            .map_err(kernel_err)?;
        }
        let (r, h) = (qi / group, qi % group);
        let row = it.s.row0 + r;
        let o = x.out.slice(row * q_dim + it.kvh * gq + h * hd, hd);
        finish(&st, a, o).map_err(kernel_err)?;
    }
    Ok(())
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

    fn splits(
        seqs: &[(usize, usize)],
        threads: usize,
        heads: usize,
        forced: Option<usize>,
    ) -> usize {
        choose_splits(
            seqs.iter().copied(),
            3,
            16,
            [(threads, heads)].into_iter(),
            forced,
        )
    }

    #[test]
    fn splits_give_idle_threads_work_on_long_decode_contexts_only() {
        // 64 threads, 8 KV heads, one sequence: 8 parts of a 16k context.
        assert_eq!(splits(&[(16384, 1)], 64, 8, None), 8);
        // Short contexts are not cut below MIN_SPLIT_TOKENS.
        assert_eq!(splits(&[(300, 1)], 64, 8, None), 2);
        // Enough items already: two threads, eight heads.
        assert_eq!(splits(&[(16384, 1)], 2, 8, None), 1);
        // Eight sequences fill 64 threads.
        assert_eq!(splits(&[(16384, 1); 8], 64, 8, None), 1);
        // Prefill (rows beyond one query tile) is never split.
        assert_eq!(splits(&[(16384, 100)], 64, 8, None), 1);
        // Forced: at most one part per page.
        assert_eq!(splits(&[(20, 1)], 2, 8, Some(5)), 2);
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
            for splits in 1..9 {
                let mut next = 0;
                for part in 0..splits {
                    let (a, b) = part_pages(part, splits, p0, seen, pt);
                    assert_eq!(a, next, "{p0} {splits} {part}");
                    assert!(b >= a);
                    next = b;
                }
                assert_eq!(next, seen.div_ceil(pt));
                let (last, _) = part_pages(splits - 1, splits, p0, seen, pt);
                assert!(last <= p0 / pt);
            }
        }
    }
}
