//! Q8_0 x8 (8 rows interleaved, see `interleaved::q8_0`) × Q8_0 activations,
//! AVX2 (no VNNI).
//!
//! The layout stores `q + 128` for `vpdpbusd`; `vpmaddubsw` would saturate
//! on it (2·255·127 > 2^15), so this kernel flips the top bit back to the
//! signed `q` and uses ggml's sign trick: `|q|` (once per chunk, shared by
//! every activation row) times `sign(y, q)` per activation row, each pair
//! sum at most 2·128·127 < 2^15, widened with `vpmaddwd` and summed in i32:
//! `Σ q·y` exactly. Lane `r` is weight row `r`; per block one float `fma`,
//! the operations of `interleaved::q8_0::dot_group`, so the two agree bit
//! for bit.

use std::arch::x86_64::*;

use super::helpers::{load128, load256};
use crate::activations::Q8Row;
use crate::blocks::{Q8_0_BYTES, QK8_0};
use crate::driver::GROUP_ACT_TILE;
use crate::interleaved::q8_0::{GROUP_BLOCK, QS_OFF};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

/// 4 activation bytes at `p` broadcast to all 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group<const N: usize>(w: *const u8, nb: usize, ys: &[Q8Row<'_>; N]) -> [__m256; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let zero = _mm256_setzero_si256();
        let ones = _mm256_set1_epi16(1);
        let top = _mm256_set1_epi8(-128);
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let blk = w.add(i * GROUP_BLOCK);
            let d = _mm256_cvtph_ps(load128(blk));
            let mut s = [zero; N];
            for c in 0..8 {
                let q = _mm256_xor_si256(load256(blk.add(QS_OFF + 32 * c)), top);
                let aq = _mm256_abs_epi8(q);
                for k in 0..N {
                    let y = bcast4(ys[k].qs.as_ptr().add(QK8_0 * i + 4 * c));
                    let p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(y, q));
                    s[k] = _mm256_add_epi32(s[k], _mm256_madd_epi16(p, ones));
                }
            }
            for k in 0..N {
                let yd = _mm256_set1_ps(*ys[k].d.get_unchecked(i));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[k]), _mm256_mul_ps(d, yd), acc[k]);
            }
        }
        acc
    }
}

/// Group kernel: the 8 rows of `w` (one group, `rb` bytes per row) times
/// activation rows `b0..b0 + N`, written to `tile[k * 8 + r]`.
///
/// # Safety
/// AVX2/FMA/F16C must be available; sizes are asserted.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * GROUP_ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= GROUP_ACT_TILE && b0 + N <= acts.n_rows());
        assert!(rb.is_multiple_of(Q8_0_BYTES) && w.len() == GROUP_ROWS * rb);
        let nb = rb / Q8_0_BYTES;
        let ys: [Q8Row<'_>; N] = std::array::from_fn(|k| acts.q8_0_row(b0 + k));
        for y in &ys {
            assert!(y.qs.len() == nb * QK8_0 && y.d.len() == nb);
        }
        let acc = group::<N>(w.as_ptr(), nb, &ys);
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile.as_mut_ptr().add(k * GROUP_ROWS), *a);
        }
    }
}
