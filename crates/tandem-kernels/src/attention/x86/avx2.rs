//! The AVX2 kernels behind `x86`'s safe wrappers.

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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (n, stride) = (block.n, block.stride);
        // Scores: per row, each 16-value piece of the key widened once for
        // the `G` queries ([`dot`]'s two accumulators per query).
        let mut s = [[0f32; FUSED_ROWS]; G];
        let k = block.k.as_ptr();
        for j in 0..n {
            prefetch_share(ahead[0], j..j + 1, n);
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
        // The softmax step, `attend_block`'s own: `s` becomes the
        // probabilities (zero past `vis`).
        let mut rescale = [None; G];
        for g in 0..G {
            s[g][vis[g]..].fill(0.0);
            rescale[g] = row_softmax_step(&mut s[g][..vis[g]], scale, &mut states[g], exp_sum256);
        }
        let p = &s;
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
                    prefetch_share(ahead[1], j..j + 1, n);
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
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// 8 values of a stored row from value `i`, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load<const F: u8>(p: *const u8, i: usize) -> __m256 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        match F {
            F32 => _mm256_loadu_ps(p.add(4 * i) as *const f32),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            // BF16 (Q8_0 rows are read by blocks, in `q8_0_block_dot`).
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.add(2 * i) as *const __m128i),
            ))),
        }
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
}

/// `acc + d · Σ q_i · k_i` over the 32 values of the Q8_0 block `blk`,
/// `q` pointing at the block's first query value.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_block_dot(q: *const f32, blk: *const u8, acc: __m256) -> __m256 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let qs = blk.add(2);
        let s0 = _mm256_mul_ps(_mm256_loadu_ps(q), widen_q8(qs));
        let s1 = _mm256_mul_ps(_mm256_loadu_ps(q.add(8)), widen_q8(qs.add(8)));
        let s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(16)), widen_q8(qs.add(16)), s0);
        let s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(24)), widen_q8(qs.add(24)), s1);
        let d = _mm256_set1_ps(q8_0_scale(blk));
        _mm256_fmadd_ps(_mm256_add_ps(s0, s1), d, acc)
    }
}

/// # Safety
/// As [`dot`]; `q.len()` is a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(q: &[f32], k: *const u8) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// # Safety
/// As [`axpy`]; `acc.len()` is a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_q8_0(acc: &mut [f32], p: f32, v: *const u8) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// # Safety
/// AVX2/FMA/F16C must be available; `k` holds `q.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot<const F: u8>(q: &[f32], k: *const u8) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
}

/// # Safety
/// As [`dot`], with `v` holding `acc.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy<const F: u8>(acc: &mut [f32], p: f32, v: *const u8) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
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
