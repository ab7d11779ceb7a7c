//! Q2_K x8 (8 rows interleaved, see `interleaved::q2_k`) × Q8_K activations,
//! AVX2 (no VNNI).
//!
//! Lane `r` of every 256-bit register belongs to weight row `r`. A
//! 16-weight sub-block of the 8 rows is one 32-byte load, decoded once into
//! four quant vectors (`(v >> 2s) & 3`) for every activation row. The four
//! `vpmaddubsw` of a sub-block (u8 quants × i8 activations) are summed in
//! i16: each pair sum is at most 2·3·128 = 768 in magnitude, four of them
//! 3072 < 2^15, exact. One `vpmaddwd` against the sub-block's scale (in both
//! i16 halves of lane `r`) adds `sc·Σ q·y` to the exact i32 `isum`; the
//! mins meet pairs of activation block sums with `vpmaddwd` (`summs`). The
//! float operations per (row, activation row) are ggml's generic ones, lane
//! by lane, so the kernel equals the scalar references bit for bit.

use std::arch::x86_64::*;

use super::helpers::{load128, load256};
use crate::activations::Q8KRow;
use crate::blocks::{Q2_K_BYTES, QK_K};
use crate::driver::GROUP_ACT_TILE;
use crate::interleaved::q2_k::{DMIN_OFF, GROUP_BLOCK, QS_OFF, SCALES_OFF};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

/// 4 activation bytes at `p` broadcast to all 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)) }
}

/// The four quant vectors of the sub-block at `p`: vector `s` holds weights
/// `4s..4s + 4` of each row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_sub(p: *const u8) -> [__m256i; 4] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let v = load256(p);
        [
            _mm256_and_si256(v, m3),
            _mm256_and_si256(_mm256_srli_epi16::<2>(v), m3),
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m3),
            _mm256_and_si256(_mm256_srli_epi16::<6>(v), m3),
        ]
    }
}

/// `Σ q·y` of one sub-block as i16 pairs (both halves of lane `r`: row `r`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sub_pairs(q: &[__m256i; 4], y: *const i8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let a = _mm256_add_epi16(
            _mm256_maddubs_epi16(q[0], bcast4(y)),
            _mm256_maddubs_epi16(q[1], bcast4(y.add(4))),
        );
        let b = _mm256_add_epi16(
            _mm256_maddubs_epi16(q[2], bcast4(y.add(8))),
            _mm256_maddubs_epi16(q[3], bcast4(y.add(12))),
        );
        _mm256_add_epi16(a, b)
    }
}

/// The 8 row scales of a sub-block (bytes at `p`) in both i16 halves of
/// each lane: (low nibble scale, high nibble min).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_of(p: *const u8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        _mm256_or_si256(b, _mm256_slli_epi32::<16>(b))
    }
}

/// The 8 rows of group `w` (`nb` group blocks) against `N` activation rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group<const N: usize>(w: *const u8, nb: usize, ys: &[Q8KRow<'_>; N]) -> [__m256; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let zero = _mm256_setzero_si256();
        let m0f = _mm256_set1_epi16(0xF);
        let mut sumf = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let blk = w.add(i * GROUP_BLOCK);
            let mut isum = [zero; N];
            let mut summs = [zero; N];
            for p in 0..8 {
                // mins: i16 lanes (2r, 2r + 1) = sub-blocks 2p, 2p + 1 of row r
                let x = load128(blk.add(SCALES_OFF + 16 * p));
                let sb = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, _mm_srli_si128::<8>(x)));
                let mn = _mm256_srli_epi16::<4>(sb);
                for h in 0..2 {
                    let j = 2 * p + h;
                    let sc = _mm256_and_si256(scales_of(blk.add(SCALES_OFF + 8 * j)), m0f);
                    let q = decode_sub(blk.add(QS_OFF + 32 * j));
                    for k in 0..N {
                        let y = ys[k].qs.as_ptr().add(QK_K * i + 16 * j);
                        let s = sub_pairs(&q, y);
                        isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(s, sc));
                    }
                }
                for k in 0..N {
                    let b = ys[k].bsums.as_ptr().add(16 * i + 2 * p);
                    let bp = _mm256_set1_epi32(std::ptr::read_unaligned(b as *const i32));
                    summs[k] = _mm256_add_epi32(summs[k], _mm256_madd_epi16(mn, bp));
                }
            }
            let d = _mm256_cvtph_ps(load128(blk));
            let dm = _mm256_cvtph_ps(load128(blk.add(DMIN_OFF)));
            for k in 0..N {
                let yd = _mm256_set1_ps(*ys[k].d.get_unchecked(i));
                let t = _mm256_sub_ps(
                    _mm256_mul_ps(_mm256_mul_ps(yd, d), _mm256_cvtepi32_ps(isum[k])),
                    _mm256_mul_ps(_mm256_mul_ps(yd, dm), _mm256_cvtepi32_ps(summs[k])),
                );
                sumf[k] = _mm256_add_ps(sumf[k], t);
            }
        }
        sumf
    }
}

/// Group kernel: the 8 rows of `w` (one group, `rb` bytes per row) times
/// activation rows `b0..b0 + N`, written to `tile[k * 8 + r]`.
///
/// # Safety
/// AVX2/FMA/F16C must be available; sizes are asserted.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q2_k_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * GROUP_ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= GROUP_ACT_TILE && b0 + N <= acts.n_rows());
        assert!(rb.is_multiple_of(Q2_K_BYTES) && w.len() == GROUP_ROWS * rb);
        let nb = rb / Q2_K_BYTES;
        let ys: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
        for y in &ys {
            assert!(y.qs.len() == nb * QK_K && y.d.len() == nb && y.bsums.len() == nb * 16);
        }
        let acc = group::<N>(w.as_ptr(), nb, &ys);
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile.as_mut_ptr().add(k * GROUP_ROWS), *a);
        }
    }
}
