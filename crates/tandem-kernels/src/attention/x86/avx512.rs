//! The AVX-512 kernels behind `x86`'s safe wrappers.

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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
/// AVX-512 F/BW/VL; `hd` is 64 or 128 (Q8_0: a multiple of 32); the
/// block holds `n ≤ 16` rows of K and V; `q` and `acc` hold `visible.len() × hd` floats, `states`
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
            if F == Q8_0 {
                match g {
                    1 => fused_group_q8_0::<1>(qp, hd, scale, block, ahead, vis, st, ap),
                    2 => fused_group_q8_0::<2>(qp, hd, scale, block, ahead, vis, st, ap),
                    3 => fused_group_q8_0::<3>(qp, hd, scale, block, ahead, vis, st, ap),
                    _ => fused_group_q8_0::<4>(qp, hd, scale, block, ahead, vis, st, ap),
                }
                i0 += g;
                continue;
            }
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (hd, n, stride) = (C * 16, block.n, block.stride);
        // Scores, one row of 16 per query (lanes from `n` stay zero).
        let mut s = [[0f32; FUSED_ROWS]; G];
        let sp = s.as_mut_ptr() as *mut f32;
        let k = block.k.as_ptr();
        // `ahead[0]` is prefetched during the scores, `ahead[1]` during the
        // weighted sum.
        let mut j = 0;
        while j + 4 <= n {
            prefetch_share(ahead[0], j..j + 4, n);
            scores_rows::<F, G, 4>(qp, hd, k, stride, j, FUSED_ROWS, sp);
            j += 4;
        }
        while j < n {
            prefetch_share(ahead[0], j..j + 1, n);
            scores_rows::<F, G, 1>(qp, hd, k, stride, j, FUSED_ROWS, sp);
            j += 1;
        }
        let (p, rescale) = softmax_step(&s, vis, scale, states);
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
            prefetch_share(ahead[1], j..j + 1, n);
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
}

/// The softmax step of the fused paths on `G` queries' scores `s` (lanes
/// from each query's `vis` ignored): updates the states and returns the
/// probabilities (zero past `vis`) and each query's rescale factor, if its
/// max grew.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // `g` indexes several arrays
unsafe fn softmax_step<const G: usize>(
    s: &[[f32; FUSED_ROWS]; G],
    vis: &[usize],
    scale: f32,
    states: &mut [SoftmaxState],
) -> ([[f32; FUSED_ROWS]; G], [Option<f32>; G]) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
        (p, rescale)
    }
}

/// [`fused`] for Q8_0 rows: `G` queries of `hd` values (whole 32-value
/// blocks) from `qp`, their accumulators at `ap`. Scores are
/// [`dot_q8_0`]'s sums (blocks alternately into two accumulators, a
/// block's scale applied once), the weighted sum is
/// [`axpy_q8_0`]'s per row with zero probabilities skipped, as the
/// step-by-step path runs them; each quant block is widened once for all
/// `G` queries, the accumulators kept 32 values at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn fused_group_q8_0<const G: usize>(
    qp: *const f32,
    hd: usize,
    scale: f32,
    block: &KvBlock<'_>,
    ahead: [&[u8]; 2],
    vis: &[usize],
    states: &mut [SoftmaxState],
    ap: *mut f32,
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (n, stride, nb) = (block.n, block.stride, hd / QK8_0);
        let mut s = [[0f32; FUSED_ROWS]; G];
        let k = block.k.as_ptr();
        for j in 0..n {
            prefetch_share(ahead[0], j..j + 1, n);
            let row = k.add(j * stride);
            let mut a = [[_mm512_setzero_ps(); 2]; G];
            for b in 0..nb {
                let blk = row.add(b * Q8_0_BYTES);
                let (lo, hi) = (widen_q8(blk.add(2)), widen_q8(blk.add(18)));
                let d = _mm512_set1_ps(q8_0_scale(blk));
                for g in 0..G {
                    let q = qp.add(g * hd + b * QK8_0);
                    let x = _mm512_mul_ps(_mm512_loadu_ps(q), lo);
                    let x = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(16)), hi, x);
                    a[g][b % 2] = _mm512_fmadd_ps(x, d, a[g][b % 2]);
                }
            }
            for g in 0..G {
                s[g][j] = _mm512_reduce_add_ps(_mm512_add_ps(a[g][0], a[g][1]));
            }
        }
        let (p, rescale) = softmax_step(&s, vis, scale, states);
        let v = block.v.as_ptr();
        for b in 0..nb {
            let mut a = [[_mm512_setzero_ps(); 2]; G];
            for g in 0..G {
                for h in 0..2 {
                    let x = _mm512_loadu_ps(ap.add(g * hd + b * QK8_0 + 16 * h));
                    a[g][h] = match rescale[g] {
                        Some(f) => _mm512_mul_ps(x, _mm512_set1_ps(f)),
                        None => x,
                    };
                }
            }
            for j in 0..n {
                if b == 0 {
                    prefetch_share(ahead[1], j..j + 1, n);
                }
                let blk = v.add(j * stride + b * Q8_0_BYTES);
                let (lo, hi) = (widen_q8(blk.add(2)), widen_q8(blk.add(18)));
                let d = q8_0_scale(blk);
                for g in 0..G {
                    let pj = p[g][j];
                    if pj != 0.0 {
                        let pd = _mm512_set1_ps(pj * d);
                        a[g][0] = _mm512_fmadd_ps(pd, lo, a[g][0]);
                        a[g][1] = _mm512_fmadd_ps(pd, hi, a[g][1]);
                    }
                }
            }
            for g in 0..G {
                for h in 0..2 {
                    _mm512_storeu_ps(ap.add(g * hd + b * QK8_0 + 16 * h), a[g][h]);
                }
            }
        }
    }
}

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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// 16 values of a stored row from value `i`, as f32; lanes off in
/// `m` are not read and are zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn load<const F: u8>(p: *const u8, i: usize, m: __mmask16) -> __m512 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        match F {
            F32 => _mm512_maskz_loadu_ps(m, p.add(4 * i) as *const f32),
            F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(2 * i) as *const i16)),
            // BF16 (Q8_0 rows are read by blocks, in `q8_0_block_dot`).
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(m, p.add(2 * i) as *const i16),
            ))),
        }
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))) }
}

/// `acc + d · Σ q_i · k_i` over the 32 values of the Q8_0 block `blk`,
/// `q` pointing at the block's first query value.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q8_0_block_dot(q: *const f32, blk: *const u8, acc: __m512) -> __m512 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let s = _mm512_mul_ps(_mm512_loadu_ps(q), widen_q8(blk.add(2)));
        let s = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(16)), widen_q8(blk.add(18)), s);
        _mm512_fmadd_ps(s, _mm512_set1_ps(q8_0_scale(blk)), acc)
    }
}

/// # Safety
/// As [`dot`]; `q.len()` is a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dot_q8_0(q: &[f32], k: *const u8) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// # Safety
/// As [`axpy`]; `acc.len()` is a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn axpy_q8_0(acc: &mut [f32], p: f32, v: *const u8) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// # Safety
/// AVX-512 F/BW/VL must be available; `k` holds `q.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn dot<const F: u8>(q: &[f32], k: *const u8) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// # Safety
/// As [`dot`], with `v` holding `acc.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn axpy<const F: u8>(acc: &mut [f32], p: f32, v: *const u8) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
