//! AVX2 and AVX-512 primitives: the same loop as `scalar`, several values
//! per instruction and two accumulators, so a dot product sums in another
//! order than the reference (the only difference the tests allow). Both
//! families also have a vector exponential (one Cephes polynomial) and a
//! fused block step for decode (`fused`), which must match their own
//! step-by-step primitives bit for bit.
//!
//! Stored values are widened in registers: f16 with `vcvtph2ps`, bf16 by
//! shifting into the high half of an f32, Q8_0 quants by sign-extending
//! bytes to i32 and converting to f32. Rows whose length is not a multiple
//! of the vector width finish with masked loads (AVX-512) or scalar steps
//! (AVX2).
//!
//! Q8_0 rows are whole 32-value blocks, so their loops go block by block
//! (no tails): `q · k` sums a block's 32 products `q_i · k_i` (integer
//! `k_i`, exact in f32) and multiplies the sum by the block's scale once;
//! `acc += p · v` multiplies `p` by the scale once per block and adds
//! `(p·d) · v_i` with one fused multiply-add. The reference widens every
//! value to `d · q` first; the difference is one rounding per product,
//! within what the tests allow for reassociation.

use std::arch::x86_64::*;

use super::tag::{F16, F32, Q8_0};
use super::{holds, read_value, KvBlock, KvFormat, Prims, SoftmaxState};
use crate::blocks::{Q8_0_BYTES, QK8_0};

/// The AVX-512 primitives; call only when `avx512_available()`. F32, F16
/// and BF16 rows also get block primitives of their own (each stored row
/// widened once for all queries of the tile, accumulators in registers)
/// and a vector exponential.
pub(super) fn avx512_prims(format: KvFormat) -> Prims {
    let mut p = super::prims_of!(format, dot512, axpy512);
    p.exp_sum = exp_sum512;
    match format {
        KvFormat::F32 => {
            p.scores = scores512::<F32>;
            p.accumulate = accumulate512::<F32>;
            p.fused = Some(fused512::<F32>);
        }
        KvFormat::F16 => {
            p.scores = scores512::<F16>;
            p.accumulate = accumulate512::<F16>;
            p.fused = Some(fused512::<F16>);
        }
        KvFormat::BF16 => {
            p.scores = scores512::<{ super::tag::BF16 }>;
            p.accumulate = accumulate512::<{ super::tag::BF16 }>;
            p.fused = Some(fused512::<{ super::tag::BF16 }>);
        }
        KvFormat::Q8_0 => {}
    }
    p
}

/// Bytes `n` rows at `stride` of `hd` values of tag `F` span.
fn block_holds<const F: u8>(buf: &[u8], hd: usize, stride: usize, n: usize) -> bool {
    n == 0 || ((n - 1) * stride < buf.len() && holds::<F>(&buf[(n - 1) * stride..], hd))
}

fn scores512<const F: u8>(
    _: &Prims,
    q: &[f32],
    hd: usize,
    k: &[u8],
    stride: usize,
    n: usize,
    out: &mut [f32],
) {
    assert!(block_holds::<F>(k, hd, stride, n) && hd > 0);
    assert!(out.len() >= q.len() / hd * n);
    // SAFETY: handed out by `avx512_prims` only, after the CPU check; the
    // rows and outputs it touches are in bounds (asserted above).
    unsafe { avx512::scores::<F>(q, hd, k.as_ptr(), stride, n, out) }
}

fn accumulate512<const F: u8>(
    _: &Prims,
    acc: &mut [f32],
    hd: usize,
    p: &[f32],
    v: &[u8],
    stride: usize,
    n: usize,
) {
    assert!(block_holds::<F>(v, hd, stride, n) && hd > 0);
    assert!(p.len() >= acc.len() / hd * n);
    // SAFETY: as in `scores512`.
    unsafe { avx512::accumulate::<F>(acc, hd, p, v.as_ptr(), stride, n) }
}

/// [`avx512::fused`] for blocks of at most 16 rows and heads of 64 or 128
/// values; `false` for any other shape.
fn fused512<const F: u8>(
    q: &[f32],
    hd: usize,
    scale: f32,
    block: &KvBlock<'_>,
    visible: &[usize],
    states: &mut [SoftmaxState],
    acc: &mut [f32],
) -> bool {
    let n = block.n;
    if n > avx512::FUSED_ROWS || !(hd == 64 || hd == 128) {
        return false;
    }
    assert!(block_holds::<F>(block.k, hd, block.stride, n));
    assert!(block_holds::<F>(block.v, hd, block.stride, n));
    let nq = visible.len();
    assert!(q.len() == nq * hd && acc.len() == nq * hd && states.len() == nq);
    assert!(visible.iter().all(|&v| v <= n));
    // SAFETY: handed out by `avx512_prims` only, after the CPU check; the
    // rows, queries, accumulators and states it touches are in bounds
    // (asserted above).
    unsafe { avx512::fused::<F>(q, hd, scale, block, visible, states, acc) };
    true
}

fn exp_sum512(x: &mut [f32], m: f32) -> f32 {
    // SAFETY: handed out by `avx512_prims` only, after the CPU check.
    unsafe { avx512::exp_sum(x, m) }
}

/// The AVX2 primitives; call only when `avx2_available()`.
/// AVX2 also has a vector exponential, and for F32, F16 and BF16 rows a
/// fused step ([`avx2::fused`]).
pub(super) fn avx2_prims(format: KvFormat) -> Prims {
    let mut p = super::prims_of!(format, dot256, axpy256);
    p.exp_sum = exp_sum256;
    p.fused = match format {
        KvFormat::F32 => Some(fused256::<F32>),
        KvFormat::F16 => Some(fused256::<F16>),
        KvFormat::BF16 => Some(fused256::<{ super::tag::BF16 }>),
        KvFormat::Q8_0 => None,
    };
    p
}

fn exp_sum256(x: &mut [f32], m: f32) -> f32 {
    // SAFETY: handed out by `avx2_prims` only, after the CPU check.
    unsafe { avx2::exp_sum(x, m) }
}

/// [`avx2::fused`] for blocks of at most 16 rows and head sizes that are
/// multiples of 16; `false` for any other shape.
fn fused256<const F: u8>(
    q: &[f32],
    hd: usize,
    scale: f32,
    block: &KvBlock<'_>,
    visible: &[usize],
    states: &mut [SoftmaxState],
    acc: &mut [f32],
) -> bool {
    let n = block.n;
    if n > avx2::FUSED_ROWS || hd == 0 || !hd.is_multiple_of(16) {
        return false;
    }
    assert!(block_holds::<F>(block.k, hd, block.stride, n));
    assert!(block_holds::<F>(block.v, hd, block.stride, n));
    let nq = visible.len();
    assert!(q.len() == nq * hd && acc.len() == nq * hd && states.len() == nq);
    assert!(visible.iter().all(|&v| v <= n));
    // SAFETY: handed out by `avx2_prims` only, after the CPU check; what
    // it touches is in bounds (asserted above).
    unsafe { avx2::fused::<F>(q, hd, scale, block, visible, states, acc) };
    true
}

fn dot512<const F: u8>(q: &[f32], k: &[u8]) -> f32 {
    assert!(holds::<F>(k, q.len()));
    // SAFETY: handed out by `avx512_prims` only, after the CPU check; the
    // kernel reads `q.len()` values of both slices (asserted above; for
    // Q8_0 that is whole blocks).
    unsafe { avx512::dot::<F>(q, k.as_ptr()) }
}

fn axpy512<const F: u8>(acc: &mut [f32], p: f32, v: &[u8]) {
    assert!(holds::<F>(v, acc.len()));
    // SAFETY: as in `dot512`.
    unsafe { avx512::axpy::<F>(acc, p, v.as_ptr()) }
}

fn dot256<const F: u8>(q: &[f32], k: &[u8]) -> f32 {
    assert!(holds::<F>(k, q.len()));
    // SAFETY: handed out by `avx2_prims` only, after the CPU check.
    unsafe { avx2::dot::<F>(q, k.as_ptr()) }
}

fn axpy256<const F: u8>(acc: &mut [f32], p: f32, v: &[u8]) {
    assert!(holds::<F>(v, acc.len()));
    // SAFETY: as in `dot256`.
    unsafe { avx2::axpy::<F>(acc, p, v.as_ptr()) }
}

/// The f16 scale at the start of a Q8_0 block, widened with `vcvtph2ps`
/// (exact, like the reference's conversion).
///
/// # Safety
/// F16C must be available; `blk` must hold 2 bytes.
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn q8_0_scale(blk: *const u8) -> f32 {
    let bits = (blk as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

mod avx512 {
    use super::*;

    /// Query rows whose accumulators one pass keeps in registers.
    const GROUP: usize = 8;

    /// `out[i·n + j] = q_i · k_j`: per key row, each 16-value chunk is
    /// widened once and multiplied into up to `GROUP` queries' registers.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; `k` holds `n` rows of `hd` values at `stride`;
    /// `out` holds `q.len() / hd × n` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn scores<const F: u8>(
        q: &[f32],
        hd: usize,
        k: *const u8,
        stride: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let nq = q.len() / hd;
        let mut i0 = 0;
        while i0 < nq {
            let g = GROUP.min(nq - i0);
            match g {
                1 => scores_group::<F, 1>(q, hd, i0, k, stride, n, out),
                2 => scores_group::<F, 2>(q, hd, i0, k, stride, n, out),
                3 => scores_group::<F, 3>(q, hd, i0, k, stride, n, out),
                4 => scores_group::<F, 4>(q, hd, i0, k, stride, n, out),
                5 => scores_group::<F, 5>(q, hd, i0, k, stride, n, out),
                6 => scores_group::<F, 6>(q, hd, i0, k, stride, n, out),
                7 => scores_group::<F, 7>(q, hd, i0, k, stride, n, out),
                _ => scores_group::<F, 8>(q, hd, i0, k, stride, n, out),
            }
            i0 += g;
        }
    }

    /// Scores of `G` queries (from `i0`) against every row: rows in fours
    /// (`G` ≤ 4) or twos, so each widened key chunk feeds `G × R`
    /// independent accumulators and the horizontal sums are shared
    /// ([`hsum4`]); leftover rows one at a time. Every (query, row) sum is
    /// reduced by the same tree whatever `G` and `R`, so a score does not
    /// depend on how many queries or rows were computed with it (decode
    /// and prefill agree bit for bit).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores_group<const F: u8, const G: usize>(
        q: &[f32],
        hd: usize,
        i0: usize,
        k: *const u8,
        stride: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let qp = q.as_ptr().add(i0 * hd);
        let op = out.as_mut_ptr().add(i0 * n);
        let mut j = 0;
        if G <= 4 {
            while j + 4 <= n {
                scores_rows::<F, G, 4>(qp, hd, k, stride, j, n, op);
                j += 4;
            }
        } else {
            while j + 2 <= n {
                scores_rows::<F, G, 2>(qp, hd, k, stride, j, n, op);
                j += 2;
            }
        }
        while j < n {
            scores_rows::<F, G, 1>(qp, hd, k, stride, j, n, op);
            j += 1;
        }
    }

    /// Rows `j..j + R` of [`scores_group`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn scores_rows<const F: u8, const G: usize, const R: usize>(
        qp: *const f32,
        hd: usize,
        k: *const u8,
        stride: usize,
        j: usize,
        n: usize,
        op: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); R]; G];
        let mut c = 0;
        while c < hd {
            let m = tail_mask(hd - c);
            let mut kv = [_mm512_setzero_ps(); R];
            for r in 0..R {
                kv[r] = load::<F>(k.add((j + r) * stride), c, m);
            }
            for g in 0..G {
                let qv = _mm512_maskz_loadu_ps(m, qp.add(g * hd + c));
                for r in 0..R {
                    acc[g][r] = _mm512_fmadd_ps(qv, kv[r], acc[g][r]);
                }
            }
            c += 16;
        }
        let z = _mm512_setzero_ps();
        for g in 0..G {
            let a = &acc[g];
            let at = |r: usize| if r < R { a[r] } else { z };
            let sums = hsum4(at(0), at(1), at(2), at(3));
            let mut lanes = [0f32; 4];
            _mm_storeu_ps(lanes.as_mut_ptr(), sums);
            for r in 0..R {
                *op.add(g * n + j + r) = lanes[r];
            }
        }
    }

    /// `[Σ a0, Σ a1, Σ a2, Σ a3]`: each vector's 16 lanes summed by the same
    /// tree (within each 128-bit lane `(x0 + x2) + (x1 + x3)`, then the
    /// lanes `(l0 + l2) + (l1 + l3)`), sharing the shuffles of four sums.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn hsum4(a0: __m512, a1: __m512, a2: __m512, a3: __m512) -> __m128 {
        // Per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3].
        let t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
        let t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
        // Per lane: [Σx, Σy, Σz, Σw] of that lane.
        let (d0, d1) = (_mm512_castps_pd(t0), _mm512_castps_pd(t1));
        let u = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(d0, d1)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d1)),
        );
        // Lanes (l0 + l2) + (l1 + l3).
        let v = _mm512_add_ps(u, _mm512_shuffle_f32x4::<0b01_00_11_10>(u, u));
        let w = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b10_11_00_01>(v, v));
        _mm512_castps512_ps128(w)
    }

    /// Most rows [`fused`] takes: one score register per query.
    pub(super) const FUSED_ROWS: usize = 16;

    /// `attend_block` in registers for a block of at most [`FUSED_ROWS`]
    /// rows: per group of queries, the scores of all rows (as
    /// [`scores_rows`] computes them), the softmax step on one register per
    /// query, and the weighted sum of the value rows into accumulators
    /// held in registers. Each step is the unfused path's arithmetic in the
    /// same order (the scaled score is rounded before the max, the rescale
    /// factor is `f32::exp`, the block sum is `exp_sum`'s reduction, the
    /// accumulators are rescaled and then take the rows in order), so the
    /// bits do not depend on which path ran.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; `hd` is 64 or 128; the block holds `n ≤ 16` rows
    /// of K and V; `q` and `acc` hold `visible.len() × hd` floats, `states`
    /// `visible.len()` states; every `visible[i] ≤ n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn fused<const F: u8>(
        q: &[f32],
        hd: usize,
        scale: f32,
        block: &KvBlock<'_>,
        visible: &[usize],
        states: &mut [SoftmaxState],
        acc: &mut [f32],
    ) {
        let nq = visible.len();
        // As many queries as `accumulate` keeps in registers at once.
        let per = if hd == 128 { 3 } else { 4 };
        let mut i0 = 0;
        while i0 < nq {
            let g = per.min(nq - i0);
            let (vis, st) = (&visible[i0..i0 + g], &mut states[i0..i0 + g]);
            let (qp, ap) = (q.as_ptr().add(i0 * hd), acc.as_mut_ptr().add(i0 * hd));
            // The first group issues the prefetches.
            let ahead = if i0 == 0 {
                block.ahead
            } else {
                KvBlock::NOTHING_AHEAD
            };
            match (hd, g) {
                (128, 1) => fused_group::<F, 1, 8>(qp, scale, block, ahead, vis, st, ap),
                (128, 2) => fused_group::<F, 2, 8>(qp, scale, block, ahead, vis, st, ap),
                (128, _) => fused_group::<F, 3, 8>(qp, scale, block, ahead, vis, st, ap),
                (_, 1) => fused_group::<F, 1, 4>(qp, scale, block, ahead, vis, st, ap),
                (_, 2) => fused_group::<F, 2, 4>(qp, scale, block, ahead, vis, st, ap),
                (_, 3) => fused_group::<F, 3, 4>(qp, scale, block, ahead, vis, st, ap),
                _ => fused_group::<F, 4, 4>(qp, scale, block, ahead, vis, st, ap),
            }
            i0 += g;
        }
    }

    /// [`fused`] for `G` queries of `C` × 16 values from `qp`, their
    /// accumulators at `ap`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // `g` indexes several arrays
    #[allow(clippy::too_many_arguments)]
    unsafe fn fused_group<const F: u8, const G: usize, const C: usize>(
        qp: *const f32,
        scale: f32,
        block: &KvBlock<'_>,
        ahead: [&[u8]; 2],
        vis: &[usize],
        states: &mut [SoftmaxState],
        ap: *mut f32,
    ) {
        let (hd, n, stride) = (C * 16, block.n, block.stride);
        // Scores, one row of 16 per query (lanes from `n` stay zero).
        let mut s = [[0f32; FUSED_ROWS]; G];
        let sp = s.as_mut_ptr() as *mut f32;
        let k = block.k.as_ptr();
        // `ahead[0]` is prefetched during the scores, `ahead[1]` during the
        // weighted sum: rows `j..j + r` take lines `j·L/n..(j + r)·L/n`.
        let lines = |b: &[u8]| b.len().div_ceil(64);
        let (lk, lv) = (lines(ahead[0]), lines(ahead[1]));
        let mut j = 0;
        while j + 4 <= n {
            prefetch_lines(ahead[0], j * lk / n, (j + 4) * lk / n);
            scores_rows::<F, G, 4>(qp, hd, k, stride, j, FUSED_ROWS, sp);
            j += 4;
        }
        while j < n {
            prefetch_lines(ahead[0], j * lk / n, (j + 1) * lk / n);
            scores_rows::<F, G, 1>(qp, hd, k, stride, j, FUSED_ROWS, sp);
            j += 1;
        }
        // The softmax step: probabilities `p` (zero past `vis`) and each
        // query's rescale factor.
        let mut p = [[0f32; FUSED_ROWS]; G];
        let mut rescale = [None; G];
        for g in 0..G {
            if vis[g] == 0 {
                continue;
            }
            let m_vis = tail_mask(vis[g]);
            let sv = _mm512_mul_ps(_mm512_loadu_ps(s[g].as_ptr()), _mm512_set1_ps(scale));
            let block_max = _mm512_reduce_max_ps(_mm512_mask_mov_ps(
                _mm512_set1_ps(f32::NEG_INFINITY),
                m_vis,
                sv,
            ));
            let st = &mut states[g];
            let m = st.max.max(block_max);
            if m > st.max && st.sum > 0.0 {
                let c = (st.max - m).exp();
                st.sum *= c;
                rescale[g] = Some(c);
            }
            st.max = m;
            let e = _mm512_maskz_mov_ps(m_vis, exp16(_mm512_sub_ps(sv, _mm512_set1_ps(m))));
            st.sum += _mm512_reduce_add_ps(e);
            _mm512_storeu_ps(p[g].as_mut_ptr(), e);
        }
        // `acc_g = acc_g · c_g + Σ_j p_gj · v_j`, rows in order.
        let mut a = [[_mm512_setzero_ps(); C]; G];
        for g in 0..G {
            for c in 0..C {
                let x = _mm512_loadu_ps(ap.add(g * hd + c * 16));
                a[g][c] = match rescale[g] {
                    Some(f) => _mm512_mul_ps(x, _mm512_set1_ps(f)),
                    None => x,
                };
            }
        }
        let v = block.v.as_ptr();
        for j in 0..n {
            prefetch_lines(ahead[1], j * lv / n, (j + 1) * lv / n);
            let row = v.add(j * stride);
            let mut pj = [_mm512_setzero_ps(); G];
            for g in 0..G {
                pj[g] = _mm512_set1_ps(p[g][j]);
            }
            for c in 0..C {
                let vv = load::<F>(row, c * 16, 0xFFFF);
                for g in 0..G {
                    a[g][c] = _mm512_fmadd_ps(pj[g], vv, a[g][c]);
                }
            }
        }
        for g in 0..G {
            for c in 0..C {
                _mm512_storeu_ps(ap.add(g * hd + c * 16), a[g][c]);
            }
        }
    }

    /// Asks for the 64-byte lines `from..to` of `b` (a hint).
    #[inline(always)]
    fn prefetch_lines(b: &[u8], from: usize, to: usize) {
        let p = b.as_ptr();
        for l in from..to.min(b.len().div_ceil(64)) {
            // SAFETY: an address inside `b`; a prefetch cannot fault or
            // change memory.
            unsafe { _mm_prefetch::<PREFETCH_HINT>(p.add(l * 64) as *const i8) };
        }
    }

    /// Cache level the prefetches of [`fused`] aim at: L2, as
    /// `attention::prefetch` (whose docs say why).
    const PREFETCH_HINT: i32 = _MM_HINT_T1;

    /// `acc_i += Σ_j p[i·n + j] · v_j`, chunk by chunk: up to `GROUP`
    /// queries' 16 accumulator values stay in registers while the rows
    /// stream past, each row chunk widened once per group.
    ///
    /// # Safety
    /// As [`scores`], with `p` holding `acc.len() / hd × n` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn accumulate<const F: u8>(
        acc: &mut [f32],
        hd: usize,
        p: &[f32],
        v: *const u8,
        stride: usize,
        n: usize,
    ) {
        let nq = acc.len() / hd;
        // Head sizes of 64 and 128: whole rows in registers (row order,
        // sequential reads of the block, independent FMA chains).
        if hd == 128 || hd == 64 {
            let per = if hd == 128 { 3 } else { 6 };
            let mut i0 = 0;
            while i0 < nq {
                let g = per.min(nq - i0);
                match (hd, g) {
                    (128, 1) => accumulate_rows::<F, 1, 8>(acc, i0, p, v, stride, n),
                    (128, 2) => accumulate_rows::<F, 2, 8>(acc, i0, p, v, stride, n),
                    (128, _) => accumulate_rows::<F, 3, 8>(acc, i0, p, v, stride, n),
                    (_, 1) => accumulate_rows::<F, 1, 4>(acc, i0, p, v, stride, n),
                    (_, 2) => accumulate_rows::<F, 2, 4>(acc, i0, p, v, stride, n),
                    (_, 3) => accumulate_rows::<F, 3, 4>(acc, i0, p, v, stride, n),
                    (_, 4) => accumulate_rows::<F, 4, 4>(acc, i0, p, v, stride, n),
                    (_, 5) => accumulate_rows::<F, 5, 4>(acc, i0, p, v, stride, n),
                    _ => accumulate_rows::<F, 6, 4>(acc, i0, p, v, stride, n),
                }
                i0 += g;
            }
            return;
        }
        let mut i0 = 0;
        while i0 < nq {
            let g = GROUP.min(nq - i0);
            match g {
                1 => accumulate_group::<F, 1>(acc, hd, i0, p, v, stride, n),
                2 => accumulate_group::<F, 2>(acc, hd, i0, p, v, stride, n),
                3 => accumulate_group::<F, 3>(acc, hd, i0, p, v, stride, n),
                4 => accumulate_group::<F, 4>(acc, hd, i0, p, v, stride, n),
                5 => accumulate_group::<F, 5>(acc, hd, i0, p, v, stride, n),
                6 => accumulate_group::<F, 6>(acc, hd, i0, p, v, stride, n),
                7 => accumulate_group::<F, 7>(acc, hd, i0, p, v, stride, n),
                _ => accumulate_group::<F, 8>(acc, hd, i0, p, v, stride, n),
            }
            i0 += g;
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn accumulate_group<const F: u8, const G: usize>(
        acc: &mut [f32],
        hd: usize,
        i0: usize,
        p: &[f32],
        v: *const u8,
        stride: usize,
        n: usize,
    ) {
        let ap = acc.as_mut_ptr().add(i0 * hd);
        let pp = p.as_ptr().add(i0 * n);
        let mut c = 0;
        while c < hd {
            let m = tail_mask(hd - c);
            let mut a = [_mm512_setzero_ps(); G];
            for (g, r) in a.iter_mut().enumerate() {
                *r = _mm512_maskz_loadu_ps(m, ap.add(g * hd + c));
            }
            for j in 0..n {
                let vv = load::<F>(v.add(j * stride), c, m);
                for (g, r) in a.iter_mut().enumerate() {
                    *r = _mm512_fmadd_ps(_mm512_set1_ps(*pp.add(g * n + j)), vv, *r);
                }
            }
            for (g, r) in a.iter().enumerate() {
                _mm512_mask_storeu_ps(ap.add(g * hd + c), m, *r);
            }
            c += 16;
        }
    }

    /// [`accumulate`] for `G` queries of `C` × 16 values, all `G × C`
    /// accumulator registers live across the rows (≤ 24 of the 32).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // `c` indexes the row and `a[g]`
    unsafe fn accumulate_rows<const F: u8, const G: usize, const C: usize>(
        acc: &mut [f32],
        i0: usize,
        p: &[f32],
        v: *const u8,
        stride: usize,
        n: usize,
    ) {
        let hd = C * 16;
        let ap = acc.as_mut_ptr().add(i0 * hd);
        let pp = p.as_ptr().add(i0 * n);
        let mut a = [[_mm512_setzero_ps(); C]; G];
        for (g, ag) in a.iter_mut().enumerate() {
            for (c, r) in ag.iter_mut().enumerate() {
                *r = _mm512_loadu_ps(ap.add(g * hd + c * 16));
            }
        }
        for j in 0..n {
            let row = v.add(j * stride);
            let mut pj = [_mm512_setzero_ps(); G];
            for (g, x) in pj.iter_mut().enumerate() {
                *x = _mm512_set1_ps(*pp.add(g * n + j));
            }
            for c in 0..C {
                let vv = load::<F>(row, c * 16, 0xFFFF);
                for g in 0..G {
                    a[g][c] = _mm512_fmadd_ps(pj[g], vv, a[g][c]);
                }
            }
        }
        for (g, ag) in a.iter().enumerate() {
            for (c, r) in ag.iter().enumerate() {
                _mm512_storeu_ps(ap.add(g * hd + c * 16), *r);
            }
        }
    }

    /// `exp(x)` of 16 lanes: Cephes' `expf` (range reduction by ln 2 in
    /// two parts, degree-6 polynomial) with `vscalefps` for the 2^n, within
    /// 2 ulp of the correctly rounded result on [−87, 88]; smaller inputs
    /// give 0.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn exp16(x: __m512) -> __m512 {
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.336_55));
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.376_26));
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.336_55));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        y = _mm512_fmadd_ps(y, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_maskz_mov_ps(!under, _mm512_scalef_ps(y, n))
    }

    /// `x = exp(x − m)`, returning the sum.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn exp_sum(x: &mut [f32], m: f32) -> f32 {
        let (n, p) = (x.len(), x.as_mut_ptr());
        let mv = _mm512_set1_ps(m);
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let k = tail_mask(n - i);
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), mv));
            let e = _mm512_maskz_mov_ps(k, e);
            _mm512_mask_storeu_ps(p.add(i), k, e);
            sum = _mm512_add_ps(sum, e);
            i += 16;
        }
        _mm512_reduce_add_ps(sum)
    }

    /// 16 values of a stored row from value `i`, as f32; lanes off in
    /// `m` are not read and are zero.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load<const F: u8>(p: *const u8, i: usize, m: __mmask16) -> __m512 {
        match F {
            F32 => _mm512_maskz_loadu_ps(m, p.add(4 * i) as *const f32),
            F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(2 * i) as *const i16)),
            // BF16 (Q8_0 rows are read by blocks, in `q8_0_block_dot`).
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(m, p.add(2 * i) as *const i16),
            ))),
        }
    }

    fn tail_mask(rest: usize) -> __mmask16 {
        if rest >= 16 {
            0xFFFF
        } else {
            ((1u32 << rest) - 1) as __mmask16
        }
    }

    /// 16 Q8_0 quants from `p`, as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn widen_q8(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    /// `acc + d · Σ q_i · k_i` over the 32 values of the Q8_0 block `blk`,
    /// `q` pointing at the block's first query value.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q8_0_block_dot(q: *const f32, blk: *const u8, acc: __m512) -> __m512 {
        let s = _mm512_mul_ps(_mm512_loadu_ps(q), widen_q8(blk.add(2)));
        let s = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(16)), widen_q8(blk.add(18)), s);
        _mm512_fmadd_ps(s, _mm512_set1_ps(q8_0_scale(blk)), acc)
    }

    /// # Safety
    /// As [`dot`]; `q.len()` is a multiple of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn dot_q8_0(q: &[f32], k: *const u8) -> f32 {
        let nb = q.len() / QK8_0;
        let qp = q.as_ptr();
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut b = 0;
        while b + 2 <= nb {
            a0 = q8_0_block_dot(qp.add(b * QK8_0), k.add(b * Q8_0_BYTES), a0);
            a1 = q8_0_block_dot(qp.add((b + 1) * QK8_0), k.add((b + 1) * Q8_0_BYTES), a1);
            b += 2;
        }
        if b < nb {
            a0 = q8_0_block_dot(qp.add(b * QK8_0), k.add(b * Q8_0_BYTES), a0);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    /// # Safety
    /// As [`axpy`]; `acc.len()` is a multiple of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn axpy_q8_0(acc: &mut [f32], p: f32, v: *const u8) {
        let ap = acc.as_mut_ptr();
        for b in 0..acc.len() / QK8_0 {
            let blk = v.add(b * Q8_0_BYTES);
            let pd = _mm512_set1_ps(p * q8_0_scale(blk));
            for h in 0..2 {
                let a = ap.add(b * QK8_0 + 16 * h);
                let x = _mm512_fmadd_ps(pd, widen_q8(blk.add(2 + 16 * h)), _mm512_loadu_ps(a));
                _mm512_storeu_ps(a, x);
            }
        }
    }

    /// # Safety
    /// AVX-512 F/BW/VL must be available; `k` holds `q.len()` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn dot<const F: u8>(q: &[f32], k: *const u8) -> f32 {
        if F == Q8_0 {
            return dot_q8_0(q, k);
        }
        let n = q.len();
        let qp = q.as_ptr();
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(i)), load::<F>(k, i, 0xFFFF), a0);
            a1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(qp.add(i + 16)),
                load::<F>(k, i + 16, 0xFFFF),
                a1,
            );
            i += 32;
        }
        while i < n {
            let m = tail_mask(n - i);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qp.add(i)), load::<F>(k, i, m), a0);
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    /// # Safety
    /// As [`dot`], with `v` holding `acc.len()` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn axpy<const F: u8>(acc: &mut [f32], p: f32, v: *const u8) {
        if F == Q8_0 {
            return axpy_q8_0(acc, p, v);
        }
        let n = acc.len();
        let ap = acc.as_mut_ptr();
        let pv = _mm512_set1_ps(p);
        let mut i = 0;
        while i < n {
            let m = tail_mask(n - i);
            let a = _mm512_maskz_loadu_ps(m, ap.add(i));
            _mm512_mask_storeu_ps(ap.add(i), m, _mm512_fmadd_ps(pv, load::<F>(v, i, m), a));
            i += 16;
        }
    }
}

mod avx2 {
    use super::*;

    /// Most rows [`fused`] takes (two registers of scores per query).
    pub(super) const FUSED_ROWS: usize = 16;

    /// `attend_block` in registers for a block of at most [`FUSED_ROWS`]
    /// rows and a head size that is a multiple of 16, as the AVX-512
    /// `fused` but with AVX2's step-by-step arithmetic: each score is
    /// [`dot`]'s sum (two accumulators, one horizontal sum), the block sum
    /// is [`exp_sum`]'s, and the weighted sum skips zero probabilities and
    /// takes rows in order, as `rows::accumulate` with [`axpy`] does. The
    /// accumulators are kept 16 values at a time (two registers per
    /// query), so each value row is read and widened once.
    ///
    /// # Safety
    /// AVX2/FMA/F16C; `hd` is a multiple of 16; the block holds `n ≤ 16`
    /// rows of K and V; `q` and `acc` hold `visible.len() × hd` floats,
    /// `states` `visible.len()` states; every `visible[i] ≤ n`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn fused<const F: u8>(
        q: &[f32],
        hd: usize,
        scale: f32,
        block: &KvBlock<'_>,
        visible: &[usize],
        states: &mut [SoftmaxState],
        acc: &mut [f32],
    ) {
        let nq = visible.len();
        let mut i0 = 0;
        while i0 < nq {
            let g = 4.min(nq - i0);
            let (vis, st) = (&visible[i0..i0 + g], &mut states[i0..i0 + g]);
            let (qp, ap) = (q.as_ptr().add(i0 * hd), acc.as_mut_ptr().add(i0 * hd));
            // The first group issues the prefetches.
            let ahead = if i0 == 0 {
                block.ahead
            } else {
                KvBlock::NOTHING_AHEAD
            };
            match g {
                1 => fused_group::<F, 1>(qp, hd, scale, block, ahead, vis, st, ap),
                2 => fused_group::<F, 2>(qp, hd, scale, block, ahead, vis, st, ap),
                3 => fused_group::<F, 3>(qp, hd, scale, block, ahead, vis, st, ap),
                _ => fused_group::<F, 4>(qp, hd, scale, block, ahead, vis, st, ap),
            }
            i0 += g;
        }
    }

    /// [`fused`] for `G` queries of `hd` values from `qp`, their
    /// accumulators at `ap`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn fused_group<const F: u8, const G: usize>(
        qp: *const f32,
        hd: usize,
        scale: f32,
        block: &KvBlock<'_>,
        ahead: [&[u8]; 2],
        vis: &[usize],
        states: &mut [SoftmaxState],
        ap: *mut f32,
    ) {
        let (n, stride) = (block.n, block.stride);
        let lines = |b: &[u8]| b.len().div_ceil(64);
        let (lk, lv) = (lines(ahead[0]), lines(ahead[1]));
        // Scores: per row, each 16-value piece of the key widened once for
        // the `G` queries ([`dot`]'s two accumulators per query).
        let mut s = [[0f32; FUSED_ROWS]; G];
        let k = block.k.as_ptr();
        for j in 0..n {
            prefetch_lines(ahead[0], j * lk / n, (j + 1) * lk / n);
            let row = k.add(j * stride);
            let mut a0 = [_mm256_setzero_ps(); G];
            let mut a1 = [_mm256_setzero_ps(); G];
            let mut i = 0;
            while i < hd {
                let (k0, k1) = (load::<F>(row, i), load::<F>(row, i + 8));
                for g in 0..G {
                    let qg = qp.add(g * hd + i);
                    a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qg), k0, a0[g]);
                    a1[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qg.add(8)), k1, a1[g]);
                }
                i += 16;
            }
            for g in 0..G {
                s[g][j] = hsum(_mm256_add_ps(a0[g], a1[g]));
            }
        }
        // The softmax step, as `attend_block` does it.
        let mut p = [[0f32; FUSED_ROWS]; G];
        let mut rescale = [None; G];
        for g in 0..G {
            let seen = &mut s[g][..vis[g]];
            if seen.is_empty() {
                continue;
            }
            let mut block_max = f32::NEG_INFINITY;
            for x in seen.iter_mut() {
                *x *= scale;
                block_max = block_max.max(*x);
            }
            let st = &mut states[g];
            let m = st.max.max(block_max);
            if m > st.max && st.sum > 0.0 {
                let c = (st.max - m).exp();
                st.sum *= c;
                rescale[g] = Some(c);
            }
            st.max = m;
            p[g][..seen.len()].copy_from_slice(seen);
            st.sum += exp_sum(&mut p[g][..seen.len()], m);
        }
        // `acc_g = acc_g · c_g + Σ_j p_gj · v_j` 16 values at a time.
        let v = block.v.as_ptr();
        let mut c = 0;
        while c < hd {
            let mut a = [[_mm256_setzero_ps(); 2]; G];
            for g in 0..G {
                for h in 0..2 {
                    let x = _mm256_loadu_ps(ap.add(g * hd + c + 8 * h));
                    a[g][h] = match rescale[g] {
                        Some(f) => _mm256_mul_ps(x, _mm256_set1_ps(f)),
                        None => x,
                    };
                }
            }
            for j in 0..n {
                if c == 0 {
                    prefetch_lines(ahead[1], j * lv / n, (j + 1) * lv / n);
                }
                let row = v.add(j * stride);
                let (v0, v1) = (load::<F>(row, c), load::<F>(row, c + 8));
                for g in 0..G {
                    let pj = p[g][j];
                    if pj != 0.0 {
                        let pv = _mm256_set1_ps(pj);
                        a[g][0] = _mm256_fmadd_ps(pv, v0, a[g][0]);
                        a[g][1] = _mm256_fmadd_ps(pv, v1, a[g][1]);
                    }
                }
            }
            for g in 0..G {
                for h in 0..2 {
                    _mm256_storeu_ps(ap.add(g * hd + c + 8 * h), a[g][h]);
                }
            }
            c += 16;
        }
    }

    /// Asks for the 64-byte lines `from..to` of `b` (a hint, at the level
    /// `attention::prefetch` uses).
    #[inline(always)]
    fn prefetch_lines(b: &[u8], from: usize, to: usize) {
        let p = b.as_ptr();
        for l in from..to.min(b.len().div_ceil(64)) {
            // SAFETY: an address inside `b`; a prefetch cannot fault or
            // change memory.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(l * 64) as *const i8) };
        }
    }

    /// `exp(x)` of 8 lanes for `x ≤ 88` (softmax passes `x ≤ 0`): the
    /// AVX-512 `exp16`'s Cephes polynomial, with `2^n` built in the
    /// exponent bits (the same product as `vscalefps`, so the same bits);
    /// inputs below −87.34 give 0.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.336_55));
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_55));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        y = _mm256_fmadd_ps(y, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // n ∈ [−126, 127]: 2^n is a normal float.
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_andnot_ps(under, _mm256_mul_ps(y, pow2n))
    }

    /// `x = exp(x − m)`, returning the sum (8 lanes at a time, a partial
    /// last piece padded with −∞, lanes summed by [`hsum`] at the end).
    ///
    /// # Safety
    /// AVX2/FMA/F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn exp_sum(x: &mut [f32], m: f32) -> f32 {
        let mv = _mm256_set1_ps(m);
        let mut sum = _mm256_setzero_ps();
        let mut pieces = x.chunks_exact_mut(8);
        for piece in &mut pieces {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(piece.as_ptr()), mv));
            _mm256_storeu_ps(piece.as_mut_ptr(), e);
            sum = _mm256_add_ps(sum, e);
        }
        let rest = pieces.into_remainder();
        if !rest.is_empty() {
            let mut buf = [f32::NEG_INFINITY; 8];
            buf[..rest.len()].copy_from_slice(rest);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), mv));
            _mm256_storeu_ps(buf.as_mut_ptr(), e);
            rest.copy_from_slice(&buf[..rest.len()]);
            sum = _mm256_add_ps(sum, e);
        }
        hsum(sum)
    }

    /// 8 values of a stored row from value `i`, as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load<const F: u8>(p: *const u8, i: usize) -> __m256 {
        match F {
            F32 => _mm256_loadu_ps(p.add(4 * i) as *const f32),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            // BF16 (Q8_0 rows are read by blocks, in `q8_0_block_dot`).
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.add(2 * i) as *const __m128i),
            ))),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// 8 Q8_0 quants from `p`, as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_q8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// `acc + d · Σ q_i · k_i` over the 32 values of the Q8_0 block `blk`,
    /// `q` pointing at the block's first query value.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_block_dot(q: *const f32, blk: *const u8, acc: __m256) -> __m256 {
        let qs = blk.add(2);
        let s0 = _mm256_mul_ps(_mm256_loadu_ps(q), widen_q8(qs));
        let s1 = _mm256_mul_ps(_mm256_loadu_ps(q.add(8)), widen_q8(qs.add(8)));
        let s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(16)), widen_q8(qs.add(16)), s0);
        let s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(24)), widen_q8(qs.add(24)), s1);
        let d = _mm256_set1_ps(q8_0_scale(blk));
        _mm256_fmadd_ps(_mm256_add_ps(s0, s1), d, acc)
    }

    /// # Safety
    /// As [`dot`]; `q.len()` is a multiple of 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q8_0(q: &[f32], k: *const u8) -> f32 {
        let nb = q.len() / QK8_0;
        let qp = q.as_ptr();
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= nb {
            a0 = q8_0_block_dot(qp.add(b * QK8_0), k.add(b * Q8_0_BYTES), a0);
            a1 = q8_0_block_dot(qp.add((b + 1) * QK8_0), k.add((b + 1) * Q8_0_BYTES), a1);
            b += 2;
        }
        if b < nb {
            a0 = q8_0_block_dot(qp.add(b * QK8_0), k.add(b * Q8_0_BYTES), a0);
        }
        hsum(_mm256_add_ps(a0, a1))
    }

    /// # Safety
    /// As [`axpy`]; `acc.len()` is a multiple of 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_q8_0(acc: &mut [f32], p: f32, v: *const u8) {
        let ap = acc.as_mut_ptr();
        for b in 0..acc.len() / QK8_0 {
            let blk = v.add(b * Q8_0_BYTES);
            let pd = _mm256_set1_ps(p * q8_0_scale(blk));
            for e in 0..4 {
                let a = ap.add(b * QK8_0 + 8 * e);
                let x = _mm256_fmadd_ps(pd, widen_q8(blk.add(2 + 8 * e)), _mm256_loadu_ps(a));
                _mm256_storeu_ps(a, x);
            }
        }
    }

    /// # Safety
    /// AVX2/FMA/F16C must be available; `k` holds `q.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const F: u8>(q: &[f32], k: *const u8) -> f32 {
        if F == Q8_0 {
            return dot_q8_0(q, k);
        }
        let n = q.len();
        let qp = q.as_ptr();
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), load::<F>(k, i), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + 8)), load::<F>(k, i + 8), a1);
            i += 16;
        }
        if i + 8 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), load::<F>(k, i), a0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += q[i] * read_value::<F>(k, i);
            i += 1;
        }
        s
    }

    /// # Safety
    /// As [`dot`], with `v` holding `acc.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy<const F: u8>(acc: &mut [f32], p: f32, v: *const u8) {
        if F == Q8_0 {
            return axpy_q8_0(acc, p, v);
        }
        let n = acc.len();
        let ap = acc.as_mut_ptr();
        let pv = _mm256_set1_ps(p);
        let mut i = 0;
        while i + 8 <= n {
            let a = _mm256_loadu_ps(ap.add(i));
            _mm256_storeu_ps(ap.add(i), _mm256_fmadd_ps(pv, load::<F>(v, i), a));
            i += 8;
        }
        while i < n {
            acc[i] += p * read_value::<F>(v, i);
            i += 1;
        }
    }
}
