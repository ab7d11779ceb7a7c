//! Q2_K x8 (8 rows interleaved, see `interleaved::q2_k`) × Q8_K activations.
//!
//! Lane `r` is weight row `r`. A 16-weight sub-block of the 8 rows is one
//! 32-byte load; `(v >> 2s) & 3` (s = 0..4) gives its four quant vectors,
//! decoded once and used by every activation row: a chain of four
//! `vpdpbusd` against broadcast activation bytes gives `Σ q·y` per row
//! (|·| ≤ 16·3·127 = 6096, exact). Two sub-blocks' sums are packed into the
//! i16 halves of each lane and one `vpdpwssd` against their two scales adds
//! `sc·Σ q·y` to the exact i32 `isum`; the mins meet pairs of activation
//! block sums the same way (`summs`). The float operations per (row,
//! activation row) are ggml's generic ones (`interleaved::q2_k::dot_group`),
//! lane by lane, so the kernel equals the scalar references bit for bit.

use std::arch::x86_64::*;

use super::helpers::{bcast4, load128, load256};
use crate::activations::Q8KRow;
use crate::blocks::{Q2_K_BYTES, QK_K};
use crate::interleaved::q2_k::{DMIN_OFF, GROUP_BLOCK, QS_OFF, SCALES_OFF};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

/// The four quant vectors of the sub-block at `p`: vector `s` holds weights
/// `4s..4s + 4` of each row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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

/// `Σ q·y` per row lane over one sub-block (`y` its 16 activations).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn sub_sum(q: &[__m256i; 4], y: *const i8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let a = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q[0], bcast4(y));
        let a = _mm256_dpbusd_epi32(a, q[1], bcast4(y.add(4)));
        let b = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q[2], bcast4(y.add(8)));
        let b = _mm256_dpbusd_epi32(b, q[3], bcast4(y.add(12)));
        _mm256_add_epi32(a, b)
    }
}

/// The 8 rows of group `w` (`nb` group blocks) against `N` activation rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
                // i16 lanes (2r, 2r + 1): scale bytes of sub-blocks 2p, 2p + 1, row r
                let x = load128(blk.add(SCALES_OFF + 16 * p));
                let sb = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, _mm_srli_si128::<8>(x)));
                let sc = _mm256_and_si256(sb, m0f);
                let mn = _mm256_srli_epi16::<4>(sb);
                let q0 = decode_sub(blk.add(QS_OFF + 64 * p));
                let q1 = decode_sub(blk.add(QS_OFF + 64 * p + 32));
                for k in 0..N {
                    let y = ys[k].qs.as_ptr().add(QK_K * i + 32 * p);
                    let s0 = sub_sum(&q0, y);
                    let s1 = sub_sum(&q1, y.add(16));
                    let s = _mm256_blend_epi16::<0xAA>(s0, _mm256_slli_epi32::<16>(s1));
                    isum[k] = _mm256_dpwssd_epi32(isum[k], s, sc);
                    let b = ys[k].bsums.as_ptr().add(16 * i + 2 * p);
                    let bp = _mm256_set1_epi32(std::ptr::read_unaligned(b as *const i32));
                    summs[k] = _mm256_dpwssd_epi32(summs[k], mn, bp);
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
/// AVX-512 F/BW/VL/VNNI + AVX2/FMA/F16C must be available; sizes are
/// asserted.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q2_k_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * super::ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= super::ACT_TILE && b0 + N <= acts.n_rows());
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
