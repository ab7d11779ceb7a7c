//! Activation quantizers with AVX2. Each is bit-identical to its scalar twin
//! in `reference::quantize` for finite inputs (tested).
//!
//! * [`q8_0_x86`]: a straight port of ggml-cpu's x86 `quantize_row_q8_0`.
//! * [`q8_k`]: `quantize_row_q8_K_ref` vectorized (ggml has no SIMD version on
//!   x86): vector max of |x|, first index reaching it (so the signed max is
//!   the same element the scalar loop picks), `round` + `cvtps` (= the
//!   `nearest_int` trick), i32 block sums.
//! * [`f16`]: `vcvtps2ph` with round-to-nearest-even (ggml's F16C path).

use std::arch::x86_64::*;

use super::helpers::*;
use crate::blocks::{QK8_0, QK_K};
use crate::convert::f32_to_f16;

/// Pack 4 × 8 i32 (values in i8 range after saturation) into 32 i8 in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32x32(i0: __m256i, i1: __m256i, i2: __m256i, i3: __m256i) -> __m256i {
    let a = _mm256_packs_epi32(i0, i1);
    let b = _mm256_packs_epi32(i2, i3);
    let c = _mm256_packs_epi16(a, b);
    _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0_x86(x: &[f32], qs: &mut [i8], d_bits: &mut [u16], d: &mut [f32]) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = x.len() / QK8_0;
        assert!(
            x.len() == nb * QK8_0 && qs.len() == x.len() && d_bits.len() == nb && d.len() == nb
        );
        let sign_bit = _mm256_set1_ps(-0.0);
        for i in 0..nb {
            let xp = x.as_ptr().add(i * QK8_0);
            let mut v0 = _mm256_loadu_ps(xp);
            let mut v1 = _mm256_loadu_ps(xp.add(8));
            let mut v2 = _mm256_loadu_ps(xp.add(16));
            let mut v3 = _mm256_loadu_ps(xp.add(24));
            let mut max_abs = _mm256_andnot_ps(sign_bit, v0);
            max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v1));
            max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v2));
            max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v3));
            let mut max4 = _mm_max_ps(
                _mm256_extractf128_ps::<1>(max_abs),
                _mm256_castps256_ps128(max_abs),
            );
            max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
            max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
            let max_scalar = _mm_cvtss_f32(max4);

            let bits =
                _mm_extract_epi16::<0>(_mm_cvtps_ph::<0>(_mm_set_ss(max_scalar / 127.0))) as u16;
            d_bits[i] = bits;
            d[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))));
            let id = if max_scalar != 0.0 {
                127.0 / max_scalar
            } else {
                0.0
            };
            let mul = _mm256_set1_ps(id);
            v0 = _mm256_round_ps::<0>(_mm256_mul_ps(v0, mul));
            v1 = _mm256_round_ps::<0>(_mm256_mul_ps(v1, mul));
            v2 = _mm256_round_ps::<0>(_mm256_mul_ps(v2, mul));
            v3 = _mm256_round_ps::<0>(_mm256_mul_ps(v3, mul));
            let packed = pack_i32x32(
                _mm256_cvtps_epi32(v0),
                _mm256_cvtps_epi32(v1),
                _mm256_cvtps_epi32(v2),
                _mm256_cvtps_epi32(v3),
            );
            _mm256_storeu_si256(qs.as_mut_ptr().add(i * QK8_0) as *mut __m256i, packed);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = x.len() / QK_K;
        assert!(
            x.len() == nb * QK_K && qs.len() == x.len() && d.len() == nb && bsums.len() == nb * 16
        );
        let sign_bit = _mm256_set1_ps(-0.0);
        let max_q = _mm256_set1_epi32(127);
        for i in 0..nb {
            let xb = &x[i * QK_K..(i + 1) * QK_K];
            let xp = xb.as_ptr();
            let mut max_abs = _mm256_setzero_ps();
            for t in 0..QK_K / 8 {
                max_abs = _mm256_max_ps(
                    max_abs,
                    _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(xp.add(8 * t))),
                );
            }
            let mut max4 = _mm_max_ps(
                _mm256_extractf128_ps::<1>(max_abs),
                _mm256_castps256_ps128(max_abs),
            );
            max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
            max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
            let amax = _mm_cvtss_f32(max4);
            let qb = &mut qs[i * QK_K..(i + 1) * QK_K];
            let bs = &mut bsums[i * 16..(i + 1) * 16];
            if amax == 0.0 || amax.is_nan() {
                d[i] = 0.0;
                qb.fill(0);
                bs.fill(0);
                continue;
            }
            // First element whose |x| equals the max: the one the scalar `ax > amax` loop keeps.
            let target = _mm256_set1_ps(amax);
            let mut idx = 0;
            for t in 0..QK_K / 8 {
                let a = _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(xp.add(8 * t)));
                let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, target));
                if m != 0 {
                    idx = 8 * t + m.trailing_zeros() as usize;
                    break;
                }
            }
            let iscale = -127.0 / xb[idx];
            let mul = _mm256_set1_ps(iscale);
            for g in 0..QK_K / 32 {
                let mut v = [_mm256_setzero_si256(); 4];
                for (t, v) in v.iter_mut().enumerate() {
                    let f = _mm256_round_ps::<0>(_mm256_mul_ps(
                        _mm256_loadu_ps(xp.add(32 * g + 8 * t)),
                        mul,
                    ));
                    *v = _mm256_min_epi32(_mm256_cvtps_epi32(f), max_q);
                }
                bs[2 * g] = hsum_i32_8(_mm256_add_epi32(v[0], v[1])) as i16;
                bs[2 * g + 1] = hsum_i32_8(_mm256_add_epi32(v[2], v[3])) as i16;
                let packed = pack_i32x32(v[0], v[1], v[2], v[3]);
                _mm256_storeu_si256(qb.as_mut_ptr().add(32 * g) as *mut __m256i, packed);
            }
            d[i] = 1.0 / iscale;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16(x: &[f32], out: &mut [u16]) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(x.len() == out.len());
        let n8 = x.len() & !7;
        let mut i = 0;
        while i < n8 {
            let h = _mm256_cvtps_ph::<0>(_mm256_loadu_ps(x.as_ptr().add(i)));
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
            i += 8;
        }
        for i in n8..x.len() {
            out[i] = f32_to_f16(x[i]);
        }
    }
}
