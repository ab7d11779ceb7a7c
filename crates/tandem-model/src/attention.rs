//! Causal self-attention, one work item per (sequence, KV head), run by the
//! node that owns the KV head (its Q/K/V rows were computed there).
//!
//! An item first finishes the new keys and values of its head (bias,
//! QK-norm, RoPE) and stores them in the sequence's cache, then, for each
//! query head of the group and each new row, attends over the cached
//! positions (scores in the worker's scratch, sized for the longest cache).

use tandem_numa::{Pool, Worker};

use crate::config::ModelConfig;
use crate::ops::Rope;
use crate::workspace::{PerWorker, SharedOut};
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
    pool.run(|w: Worker<'_>| {
        let heads = kv_ranges[w.node].clone();
        let n_items = heads.len() * seqs.len();
        // SAFETY: worker `w.index` is the only user of its scratch.
        let (tmp, scores) = unsafe { scratch.get(w.index).split_at_mut(hd) };
        loop {
            let item = w.claim();
            if item >= n_items {
                return;
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
                    // SAFETY: (row, qh) of Q and of the output belong to this item.
                    let qr = unsafe { q.slice(row * q_dim + qh * hd, hd) };
                    finish_head(
                        qr,
                        layer.bq.map(|b| &b[qh * hd..(qh + 1) * hd]),
                        layer.q_norm,
                        c.norm_eps,
                        Some((rope, table)),
                        tmp,
                    );
                    let o = unsafe { out.slice(row * q_dim + qh * hd, hd) };
                    // SAFETY: positions 0..=p0+i of this head were stored,
                    // by this item or by earlier forward passes.
                    unsafe { attend(qr, s, kvh * hd, kv_dim, s.p0 + i + 1, scale, o, scores) };
                }
            }
        }
    });
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

/// `out = softmax(q·K[0..n]ᵀ · scale) · V[0..n]` for one head whose
/// values sit at `head_off` within each `kv_dim` cache row.
///
/// Two passes over a score buffer, with the softmax's sum in f64: the same
/// arithmetic as llama.cpp's (non-flash) CPU attention. This matters more
/// than it seems: an online softmax differs by a few ulps, and on Q8_0
/// models a few ulps can move an activation across a rounding boundary of
/// the next layer's 8-bit quantization (seen as 5e-3 on tiny-qwen2 Q8_0).
/// The blockwise attention of the paged KV store will have to face this.
///
/// # Safety
/// `s.k`/`s.v` must hold `n` initialised rows of `kv_dim` values.
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    q: &[f32],
    s: &SeqView,
    head_off: usize,
    kv_dim: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let hd = q.len();
    let scores = &mut scores[..n];
    for (j, sc) in scores.iter_mut().enumerate() {
        let kr = std::slice::from_raw_parts(s.k.add(j * kv_dim + head_off), hd);
        *sc = q.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
    }
    crate::ops::softmax(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let vr = std::slice::from_raw_parts(s.v.add(j * kv_dim + head_off), hd);
        out.iter_mut().zip(vr).for_each(|(o, &vv)| *o += p * vv);
    }
}
