//! Q4_K x8 (8 rows interleaved, see `interleaved::q4_k`) × Q8_K activations.
//!
//! Lane `r` of every 256-bit register belongs to weight row `r` of the
//! group, so per 32-byte chunk of quants and activation row the work is one
//! `vpand`/`vpsrlw` decode (shared by all activation rows) and two
//! `vpdpbusd` against 4 activation bytes broadcast to all lanes. Per
//! sub-block and activation row the two dpbusd chains are added and scaled
//! with one `vpmulld` into an exact i32 block accumulator; mins use four
//! `vpmaddwd` per block. There is no horizontal reduction at all: the 8
//! lanes of the float accumulator are the 8 outputs.
//!
//! The float operations per (row, activation row) are exactly those of the
//! scalar reference `interleaved::q4_k::dot_group`, lane by lane, so the
//! two agree bit for bit whatever the tile.

use std::arch::x86_64::*;

use super::helpers::{bcast4, load128, load256};
use crate::activations::Q8KRow;
use crate::blocks::QK_K;
use crate::interleaved::q4_k::{GROUP_BLOCK, QS_OFF, SCALES_OFF};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

#[repr(align(64))]
struct Decoded([u8; 128]);

/// The 96 packed scale bytes at `p` → 128 values (kernel order) in `out`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn decode_scales(p: *const u8, out: &mut Decoded) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (l0, l1, h) = (load256(p), load256(p.add(32)), load256(p.add(64)));
        let m0f = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let lo = |x: __m256i| _mm256_and_si256(x, m0f);
        let o0 = _mm256_or_si256(lo(l0), _mm256_and_si256(_mm256_slli_epi16::<4>(h), m30));
        let o1 = _mm256_or_si256(lo(l1), _mm256_and_si256(_mm256_slli_epi16::<2>(h), m30));
        let o2 = _mm256_or_si256(lo(_mm256_srli_epi16::<4>(l0)), _mm256_and_si256(h, m30));
        let o3 = _mm256_or_si256(
            lo(_mm256_srli_epi16::<4>(l1)),
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
                let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    sm.0.as_ptr().add(8 * j) as *const __m128i
                ));
                let qs = blk.add(QS_OFF + 128 * j);
                let mut q = [zero; 8];
                for c in 0..4 {
                    let v = load256(qs.add(32 * c));
                    q[2 * c] = _mm256_and_si256(v, m4);
                    q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                }
                for k in 0..N {
                    let y = ys[k].qs.as_ptr().add(QK_K * i + 32 * j);
                    let mut s0 = _mm256_dpbusd_epi32(zero, q[0], bcast4(y));
                    let mut s1 = _mm256_dpbusd_epi32(zero, q[1], bcast4(y.add(4)));
                    for c in 1..4 {
                        s0 = _mm256_dpbusd_epi32(s0, q[2 * c], bcast4(y.add(8 * c)));
                        s1 = _mm256_dpbusd_epi32(s1, q[2 * c + 1], bcast4(y.add(8 * c + 4)));
                    }
                    let s = _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), sc);
                    iacc[k] = _mm256_add_epi32(iacc[k], s);
                }
            }
            let mins: [__m256i; 4] = std::array::from_fn(|p| {
                _mm256_cvtepu8_epi16(load128(sm.0.as_ptr().add(64 + 16 * p)))
            });
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
/// AVX-512 F/BW/VL/VNNI + AVX2/FMA/F16C must be available; sizes are
/// asserted.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * super::ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= super::ACT_TILE && b0 + N <= acts.n_rows());
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
