//! AVX2 and AVX-512 primitives: the same loop as `scalar`, several values
//! per instruction and two accumulators, so a dot product sums in another
//! order than the reference (the only difference the tests allow).
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
use super::{holds, read_value, KvFormat, Prims};
use crate::blocks::{Q8_0_BYTES, QK8_0};

/// The AVX-512 primitives; call only when `avx512_available()`.
pub(super) fn avx512_prims(format: KvFormat) -> Prims {
    super::prims_of!(format, dot512, axpy512)
}

/// The AVX2 primitives; call only when `avx2_available()`.
pub(super) fn avx2_prims(format: KvFormat) -> Prims {
    super::prims_of!(format, dot256, axpy256)
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
