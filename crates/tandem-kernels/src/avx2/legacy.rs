//! Q8_0 and Q4_0 weights × Q8_0 activations (ports of ggml's AVX2
//! `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q4_0_q8_0`).
//!
//! Per block: the 32 int8 products are summed into 8 i32 lanes (lane k =
//! bytes 4k..4k+4) with `maddubs` + `madd` (the sign trick makes the
//! unsigned×signed `maddubs` exact: |x| ≤ 128 and |y| ≤ 127, so pair sums
//! never saturate), converted to f32 and FMA-ed with `d_x * d_y` into an
//! 8-lane accumulator; `hsum_float_8` at the end.

use std::arch::x86_64::*;

use super::helpers::*;
use crate::activations::Q8Row;
use crate::blocks::{Q4_0_BYTES, Q8_0_BYTES, QK8_0};
use crate::QuantizedActivations;

#[inline]
fn rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8Row<'_>; N] {
    let rows: [Q8Row<'_>; N] = std::array::from_fn(|k| acts.q8_0_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK8_0 && r.d.len() == nb);
    }
    rows
}

/// ggml `mul_sum_i8_pairs_float` with the weight side (`ax = |x|`) hoisted.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_block(ax: __m256i, qx: __m256i, qy: __m256i) -> __m256 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let sy = _mm256_sign_epi8(qy, qx);
        sum_i16_pairs_float(_mm256_maddubs_epi16(ax, sy))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / Q8_0_BYTES;
        assert!(w.len() == nb * Q8_0_BYTES && out.len() == N);
        let rows = rows::<N>(acts, b0, nb);
        let mut acc = [_mm256_setzero_ps(); N];
        let wp = w.as_ptr();
        for ib in 0..nb {
            let blk = wp.add(ib * Q8_0_BYTES);
            let dx = f16_at(blk);
            let qx = load256(blk.add(2));
            let ax = _mm256_sign_epi8(qx, qx);
            for k in 0..N {
                let qy = load256(rows[k].qs.as_ptr().add(ib * QK8_0));
                let q = dot_block(ax, qx, qy);
                let d = _mm256_set1_ps(dx * *rows[k].d.get_unchecked(ib));
                acc[k] = _mm256_fmadd_ps(d, q, acc[k]);
            }
        }
        for k in 0..N {
            out[k] = hsum_float_8(acc[k]);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_0<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / Q4_0_BYTES;
        assert!(w.len() == nb * Q4_0_BYTES && out.len() == N);
        let rows = rows::<N>(acts, b0, nb);
        let mut acc = [_mm256_setzero_ps(); N];
        let low_mask = _mm256_set1_epi8(0xF);
        let off = _mm256_set1_epi8(8);
        let wp = w.as_ptr();
        for ib in 0..nb {
            let blk = wp.add(ib * Q4_0_BYTES);
            let dx = f16_at(blk);
            // bytes_from_nibbles_32: low nibbles -> bytes 0..16, high nibbles -> 16..32
            let tmp = load128(blk.add(2));
            let bytes = _mm256_set_m128i(_mm_srli_epi16::<4>(tmp), tmp);
            let qx = _mm256_sub_epi8(_mm256_and_si256(low_mask, bytes), off);
            let ax = _mm256_sign_epi8(qx, qx);
            for k in 0..N {
                let qy = load256(rows[k].qs.as_ptr().add(ib * QK8_0));
                let q = dot_block(ax, qx, qy);
                let d = _mm256_set1_ps(dx * *rows[k].d.get_unchecked(ib));
                acc[k] = _mm256_fmadd_ps(d, q, acc[k]);
            }
        }
        for k in 0..N {
            out[k] = hsum_float_8(acc[k]);
        }
    }
}
