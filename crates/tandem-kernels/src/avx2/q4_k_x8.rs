//! Q4_K x8 (8 rows interleaved, see `interleaved::q4_k`) × Q8_K activations,
//! AVX2 (no VNNI): the AVX2 counterpart of ggml's repacked `q4_K_8x8` GEMV.
//!
//! Lane `r` of every 256-bit register belongs to weight row `r` of the
//! group. AVX2 has no `vpdpbusd`, so a chunk's products go through
//! `vpmaddubsw` (u8 nibbles × i8 activations → i16 pairs), and the 8
//! `vpmaddubsw` of one sub-block are summed **in i16**: each is at most
//! 2·15·128 = 3840 in magnitude, eight of them 30720 < 2^15, so the sum is
//! exact. One `vpmaddwd` against the sub-block scale (in both i16 halves of
//! lane `r`) then gives `sc · Σ q·y` in i32 per row, exact. Mins are applied
//! as in the AVX-512 kernel (`vpmaddwd` against pairs of activation
//! sub-block sums).
//!
//! The integers equal the scalar reference's (`interleaved::q4_k::dot_group`)
//! and the float operations per (row, activation row) are the same, lane by
//! lane, so the two agree bit for bit whatever the tile.

use std::arch::x86_64::*;

use super::helpers::{load128, load256};
use crate::activations::Q8KRow;
use crate::blocks::QK_K;
use crate::driver::GROUP_ACT_TILE;
use crate::interleaved::q4_k::{GROUP_BLOCK, QS_OFF, SCALES_OFF};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

#[repr(align(64))]
struct Decoded([u8; 128]);

/// 4 activation bytes at `p` broadcast to all 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)) }
}

/// Chunk products of row lanes: `maddubs(q0, y[0..4]) + maddubs(q1,
/// y[4..8])` in i16 (exact, see the module docs).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk_pair(q0: __m256i, q1: __m256i, y: *const i8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        _mm256_add_epi16(
            _mm256_maddubs_epi16(q0, bcast4(y)),
            _mm256_maddubs_epi16(q1, bcast4(y.add(4))),
        )
    }
}

/// The 96 packed scale bytes at `p` → 128 values (kernel order) in `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_scales(p: *const u8, out: &mut Decoded) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (l0, l1, h) = (load256(p), load256(p.add(32)), load256(p.add(64)));
        let m0f = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        // (no closures here: they are not always inlined into target_feature code)
        let o0 = _mm256_or_si256(
            _mm256_and_si256(l0, m0f),
            _mm256_and_si256(_mm256_slli_epi16::<4>(h), m30),
        );
        let o1 = _mm256_or_si256(
            _mm256_and_si256(l1, m0f),
            _mm256_and_si256(_mm256_slli_epi16::<2>(h), m30),
        );
        let o2 = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m0f),
            _mm256_and_si256(h, m30),
        );
        let o3 = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m0f),
            _mm256_and_si256(_mm256_srli_epi16::<2>(h), m30),
        );
        let o = out.0.as_mut_ptr() as *mut __m256i;
        _mm256_store_si256(o, o0);
        _mm256_store_si256(o.add(1), o1);
        _mm256_store_si256(o.add(2), o2);
        _mm256_store_si256(o.add(3), o3);
    }
}

/// The 8 rows of group `w` (`nb` group blocks) against `N` activation rows;
/// lane `r` of result `k` is row `r` · activation row `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group<const N: usize>(w: *const u8, nb: usize, ys: &[Q8KRow<'_>; N]) -> [__m256; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let ones = _mm256_set1_epi16(1);
        let sign = _mm256_set1_ps(-0.0);
        let pair_idx = [
            _mm256_set1_epi32(0),
            _mm256_set1_epi32(1),
            _mm256_set1_epi32(4),
            _mm256_set1_epi32(5),
        ];
        let mut sm = Decoded([0; 128]);
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let blk = w.add(i * GROUP_BLOCK);
            let d = _mm256_cvtph_ps(load128(blk));
            let neg_dmin = _mm256_xor_ps(_mm256_cvtph_ps(load128(blk.add(16))), sign);
            decode_scales(blk.add(SCALES_OFF), &mut sm);
            let mut iacc = [zero; N];
            for j in 0..8 {
                // the sub-block scale of row r in both i16 halves of lane r
                let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    sm.0.as_ptr().add(8 * j) as *const __m128i
                ));
                let sc = _mm256_or_si256(sc, _mm256_slli_epi32::<16>(sc));
                let qs = blk.add(QS_OFF + 128 * j);
                let mut q = [zero; 8];
                for c in 0..4 {
                    let v = load256(qs.add(32 * c));
                    q[2 * c] = _mm256_and_si256(v, m4);
                    q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                }
                for k in 0..N {
                    let y = ys[k].qs.as_ptr().add(QK_K * i + 32 * j);
                    let s = _mm256_add_epi16(
                        _mm256_add_epi16(
                            chunk_pair(q[0], q[1], y),
                            chunk_pair(q[2], q[3], y.add(8)),
                        ),
                        _mm256_add_epi16(
                            chunk_pair(q[4], q[5], y.add(16)),
                            chunk_pair(q[6], q[7], y.add(24)),
                        ),
                    );
                    iacc[k] = _mm256_add_epi32(iacc[k], _mm256_madd_epi16(s, sc));
                }
            }
            let mp = sm.0.as_ptr().add(64);
            let mins: [__m256i; 4] = [
                _mm256_cvtepu8_epi16(load128(mp)),
                _mm256_cvtepu8_epi16(load128(mp.add(16))),
                _mm256_cvtepu8_epi16(load128(mp.add(32))),
                _mm256_cvtepu8_epi16(load128(mp.add(48))),
            ];
            for k in 0..N {
                // Sub-block sums of the activations as i16, pairs (2p, 2p+1) in
                // i32 elements 0, 1, 4, 5.
                let bs = _mm256_madd_epi16(load256(ys[k].bsums.as_ptr().add(16 * i)), ones);
                let bs = _mm256_packs_epi32(bs, bs);
                let mut macc = zero;
                for p in 0..4 {
                    let pair = _mm256_permutevar8x32_epi32(bs, pair_idx[p]);
                    macc = _mm256_add_epi32(macc, _mm256_madd_epi16(mins[p], pair));
                }
                let yd = _mm256_set1_ps(*ys[k].d.get_unchecked(i));
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(macc), _mm256_mul_ps(neg_dmin, yd));
                let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[k]), _mm256_mul_ps(d, yd), t);
                acc[k] = _mm256_add_ps(acc[k], t);
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
pub(super) unsafe fn dot_q4_k_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * GROUP_ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= GROUP_ACT_TILE && b0 + N <= acts.n_rows());
        assert!(rb.is_multiple_of(crate::blocks::Q4_K_BYTES) && w.len() == GROUP_ROWS * rb);
        let nb = rb / crate::blocks::Q4_K_BYTES;
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
