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
use tandem_kernels::attention::{attend_block, finish, KvBlock, KvFormat, SoftmaxState};

use crate::ModelError;

/// One sequence of the batch as attention sees it.
#[derive(Clone, Copy)]
pub(crate) struct SeqView {
    /// Raw K and V of the current layer (`capacity × kv_dim`).
    pub k: *mut f32,
    pub v: *mut f32,
    pub capacity: usize,
    /// Position of the sequence's first new row.
    pub p0: usize,
    /// The sequence's rows in the batch: `row0..row0 + n_rows`.
    pub row0: usize,
    pub n_rows: usize,
}

// SAFETY: the cache outlives the run; workers write disjoint (position,
// head) slots: each item owns one KV head of one sequence.
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
                debug_assert!(pos < s.capacity);
                // SAFETY: slot (pos, kvh) of this sequence's cache is
                // written by this item only; pos < capacity was checked by
                // the caller.
                unsafe {
                    let off = pos * kv_dim + kvh * hd;
                    std::ptr::copy_nonoverlapping(kr.as_ptr(), s.k.add(off), hd);
                    std::ptr::copy_nonoverlapping(vr.as_ptr(), s.v.add(off), hd);
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
            unsafe { attend_item(s, kvh, group, hd, kv_dim, q_dim, scale, q, out, rest) }?;
        }
    })
}

/// Query rows attended together: all heads of a KV group, for as many
/// sequence rows as fit (so each K/V block is read once per tile).
const MAX_QUERIES: usize = 64;
/// Cached positions per attention block (the score scratch's length).
const BLOCK: usize = 64;

/// Per-worker scratch floats attention needs for heads of `head_dim`.
pub(crate) fn scratch_len(head_dim: usize) -> usize {
    head_dim + BLOCK + 2 * MAX_QUERIES * head_dim
}

/// `out = softmax(q·Kᵀ · scale) · V` for every query head of KV head `kvh`
/// and every new row of sequence `s`, causally: row `i` sees positions
/// `0..=p0 + i`. Rows are taken in tiles of `MAX_QUERIES / group`; each
/// tile folds the cache in blocks of `BLOCK` positions into online-softmax
/// states (`tandem_kernels::attention`).
///
/// # Safety
/// `s.k`/`s.v` hold `p0 + n_rows` initialised rows of `kv_dim` values; the
/// caller owns the Q and output slots of (rows of `s`, heads of `kvh`).
#[allow(clippy::too_many_arguments)]
unsafe fn attend_item(
    s: &SeqView,
    kvh: usize,
    group: usize,
    hd: usize,
    kv_dim: usize,
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
    let (scores, rest) = scratch.split_at_mut(BLOCK);
    let (qbuf, acc) = rest.split_at_mut(MAX_QUERIES * hd);
    let mut states = [SoftmaxState::EMPTY; MAX_QUERIES];
    let mut visible = [0usize; MAX_QUERIES];
    let tile_rows = (MAX_QUERIES / group).max(1);
    let gq = group * hd; // a row's query values of this group
    let n_total = s.p0 + s.n_rows;
    // The head's K/V values start at kvh·hd within each cached row.
    let bytes = |p: *mut f32| {
        std::slice::from_raw_parts(
            p.add(kvh * hd) as *const u8,
            (n_total * kv_dim - kvh * hd) * 4,
        )
    };
    let (k_all, v_all) = (bytes(s.k), bytes(s.v));
    let stride = kv_dim * 4;
    let mut r0 = 0;
    while r0 < s.n_rows {
        let nr = tile_rows.min(s.n_rows - r0);
        let nq = nr * group;
        if nq > MAX_QUERIES {
            // group > MAX_QUERIES: one row's heads in several passes is
            // not implemented; refuse instead of overrunning.
            return Err(ModelError::InvalidHyperparameter {
                key: "head_count / head_count_kv".into(),
                detail: format!("{group} query heads per KV head (at most {MAX_QUERIES})"),
            });
        }
        for r in 0..nr {
            let row = s.row0 + r0 + r;
            qbuf[r * gq..(r + 1) * gq].copy_from_slice(q.slice(row * q_dim + kvh * gq, gq));
        }
        states[..nq].fill(SoftmaxState::EMPTY);
        acc[..nq * hd].fill(0.0);
        let seen = s.p0 + r0 + nr; // positions the tile's last row sees
        let mut b0 = 0;
        while b0 < seen {
            let bn = BLOCK.min(seen - b0);
            for r in 0..nr {
                let v = (s.p0 + r0 + r + 1).saturating_sub(b0).min(bn);
                visible[r * group..(r + 1) * group].fill(v);
            }
            let block = KvBlock {
                format: KvFormat::F32,
                k: &k_all[b0 * stride..],
                v: &v_all[b0 * stride..],
                stride,
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
            b0 += bn;
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
