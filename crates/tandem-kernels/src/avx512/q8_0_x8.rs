//! Q8_0 x8 (8 rows interleaved, see `interleaved::q8_0`) × Q8_0 activations.
//!
//! The weights are stored as unsigned `q + 128`, so there is nothing to
//! decode: per block and activation row, 8 `vpdpbusd` with 4 activation
//! bytes broadcast (two chains), minus `128 · Σy`, then one float `fma`
//! per block. Lane `r` is weight row `r`; the float operations are those of
//! `interleaved::q8_0::dot_group`, so the two agree bit for bit.

use std::arch::x86_64::*;

use super::helpers::{bcast4, load128, load256};
use crate::activations::Q8Row;
use crate::blocks::{Q8_0_BYTES, QK8_0};
use crate::interleaved::q8_0::{GROUP_BLOCK, QS_OFF};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn group<const N: usize>(w: *const u8, nb: usize, ys: &[Q8Row<'_>; N]) -> [__m256; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let blk = w.add(i * GROUP_BLOCK);
            let q: [__m256i; 8] = std::array::from_fn(|c| load256(blk.add(QS_OFF + 32 * c)));
            let d = _mm256_cvtph_ps(load128(blk));
            let mut s0 = [zero; N];
            let mut s1 = [zero; N];
            for c in 0..4 {
                for k in 0..N {
                    let y = ys[k].qs.as_ptr().add(QK8_0 * i + 8 * c);
                    s0[k] = _mm256_dpbusd_epi32(s0[k], q[2 * c], bcast4(y));
                    s1[k] = _mm256_dpbusd_epi32(s1[k], q[2 * c + 1], bcast4(y.add(4)));
                }
            }
            for k in 0..N {
                let bias = _mm256_set1_epi32(i32::from(*ys[k].sums.get_unchecked(i)) << 7);
                let s = _mm256_sub_epi32(_mm256_add_epi32(s0[k], s1[k]), bias);
                let yd = _mm256_set1_ps(*ys[k].d.get_unchecked(i));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, yd), acc[k]);
            }
        }
        acc
    }
}

/// Group kernel: the 8 rows of `w` (one group, `rb` bytes per row) times
/// activation rows `b0..b0 + N`, written to `tile[k * 8 + r]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI + AVX2/FMA/F16C must be available; sizes are
/// asserted.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * super::ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= super::ACT_TILE && b0 + N <= acts.n_rows());
        assert!(rb.is_multiple_of(Q8_0_BYTES) && w.len() == GROUP_ROWS * rb);
        let nb = rb / Q8_0_BYTES;
        let ys: [Q8Row<'_>; N] = std::array::from_fn(|k| acts.q8_0_row(b0 + k));
        for y in &ys {
            assert!(y.qs.len() == nb * QK8_0 && y.d.len() == nb && y.sums.len() == nb);
        }
        let acc = group::<N>(w.as_ptr(), nb, &ys);
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile.as_mut_ptr().add(k * GROUP_ROWS), *a);
        }
    }
}
