//! Causal self-attention, one work item per (sequence, KV head), run by the
//! node that owns the KV head (its Q/K/V rows were computed there).
//!
//! An item first finishes the new keys and values of its head (bias,
//! QK-norm, RoPE) and stores them in the sequence's cache, then finishes
//! the group's query heads and attends: tiles of query rows (all heads of
//! the group, several rows) fold the cache block by block into
//! online-softmax states (`tandem_kernels::attention`), so each block of
//! keys and values is read once per tile and the worker's scratch does not
//! grow with the context.
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
use tandem_kernels::attention::{attend_block, encode_row, finish, KvBlock, SoftmaxState};

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
) -> Result<(), ModelError> {
    let hd = c.head_dim;
    let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
    let group = c.n_heads / c.n_kv_heads;
    let pairs = rope.table_len();
    let scale = 1.0 / (hd as f32).sqrt();
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let heads = kv_ranges[w.node].clone();
        let n_items = heads.len() * seqs.len();
        // SAFETY: worker `w.index` is the only user of its scratch.
        let (tmp, rest) = unsafe { scratch.get(w.index).split_at_mut(hd) };
        loop {
            let item = w.claim();
            if item >= n_items {
                return Ok(());
            }
            let (s, kvh) = (&seqs[item / heads.len()], heads.start + item % heads.len());
            let local = kvh - heads.start;
            // SAFETY: see `SeqView::seq`.
            let seq = unsafe { &*s.seq };
            let row_bytes = seq.store().geometry().row_bytes();
            let format = seq.store().geometry().format;
            for i in 0..s.n_rows {
                let row = s.row0 + i;
                let pos = s.p0 + i;
                let table = &rope_table[row * pairs..(row + 1) * pairs];
                // SAFETY: (row, kvh) of K and V belongs to this item only.
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
                    // SAFETY: position `pos` was reserved (a private page)
                    // and its row of (layer, kv, kvh) is written by this
                    // item only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            seq.row_ptr(w.node, s.layer, kv, local, pos),
                            row_bytes,
                        )
                    };
                    encode_row(format, src, dst).map_err(|e| ModelError::Kernel(e.to_string()))?;
                }
            }
            for qh in kvh * group..(kvh + 1) * group {
                for i in 0..s.n_rows {
                    let row = s.row0 + i;
                    let table = &rope_table[row * pairs..(row + 1) * pairs];
                    // SAFETY: (row, qh) of Q belongs to this item.
                    let qr = unsafe { q.slice(row * q_dim + qh * hd, hd) };
                    finish_head(
                        qr,
                        layer.bq.map(|b| &b[qh * hd..(qh + 1) * hd]),
                        layer.q_norm,
                        c.norm_eps,
                        Some((rope, table)),
                        tmp,
                    );
                }
            }
            // SAFETY: positions 0..p0 + n_rows of this head were stored, by
            // this item or by earlier forward passes; the item owns the
            // (row, head) slots of Q and of the output it touches.
            unsafe {
                attend_item(
                    s, seq, w.node, local, kvh, group, hd, q_dim, scale, q, out, rest,
                )
            }?;
        }
    })
}

/// Query rows attended together: all heads of a KV group, for as many
/// sequence rows as fit (so each K/V page is read once per tile).
pub(crate) const MAX_QUERIES: usize = 64;

/// Per-worker scratch floats attention needs for heads of `head_dim` and
/// pages of `page_tokens`.
pub(crate) fn scratch_len(head_dim: usize, page_tokens: usize) -> usize {
    head_dim + page_tokens + 2 * MAX_QUERIES * head_dim
}

/// `out = softmax(q·Kᵀ · scale) · V` for every query head of KV head `kvh`
/// (node-local head `local` of `node`) and every new row of sequence `s`,
/// causally: row `i` sees positions `0..=p0 + i`. Rows are taken in tiles
/// of `MAX_QUERIES / group`; each tile folds the sequence's pages, one
/// block per page, into online-softmax states (`tandem_kernels::attention`).
///
/// # Safety
/// Positions `0..p0 + n_rows` of this head are stored in `seq`'s pages;
/// the caller owns the Q and output slots of (rows of `s`, heads of `kvh`).
#[allow(clippy::too_many_arguments)]
unsafe fn attend_item(
    s: &SeqView,
    seq: &KvCache,
    node: usize,
    local: usize,
    kvh: usize,
    group: usize,
    hd: usize,
    q_dim: usize,
    scale: f32,
    q: SharedOut,
    out: SharedOut,
    scratch: &mut [f32],
) -> Result<(), ModelError> {
    if s.n_rows == 0 {
        return Ok(());
    }
    let isa = tandem_kernels::detected_isa();
    let geom = seq.store().geometry();
    let (pt, row_bytes, slab) = (geom.page_tokens, geom.row_bytes(), geom.slab_bytes());
    let (k_off, v_off) = (
        geom.slab_offset(node, s.layer, 0, local),
        geom.slab_offset(node, s.layer, 1, local),
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
            qbuf[r * gq..(r + 1) * gq].copy_from_slice(q.slice(row * q_dim + kvh * gq, gq));
        }
        states[..nq].fill(SoftmaxState::EMPTY);
        acc[..nq * hd].fill(0.0);
        let seen = s.p0 + r0 + nr; // positions the tile's last row sees
        for (pi, &page) in seq.pages().iter().enumerate().take(seen.div_ceil(pt)) {
            let b0 = pi * pt;
            let bn = pt.min(seen - b0);
            for r in 0..nr {
                let v = (s.p0 + r0 + r + 1).saturating_sub(b0).min(bn);
                visible[r * group..(r + 1) * group].fill(v);
            }
            let base = seq.store().page_ptr(node, page);
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
            .map_err(|e| ModelError::Kernel(e.to_string()))?;
        }
        for r in 0..nr {
            let row = s.row0 + r0 + r;
            let o = out.slice(row * q_dim + kvh * gq, gq);
            for h in 0..group {
                let qi = r * group + h;
                finish(
                    &states[qi],
                    &acc[qi * hd..(qi + 1) * hd],
                    &mut o[h * hd..(h + 1) * hd],
                )
                .map_err(|e| ModelError::Kernel(e.to_string()))?;
            }
        }
        r0 += nr;
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
