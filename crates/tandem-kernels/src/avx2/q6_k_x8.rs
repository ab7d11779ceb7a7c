//! Q6_K x8 (8 rows interleaved, see `interleaved::q6_k`) × Q8_K activations,
//! AVX2 (no VNNI): the AVX-512 kernel's structure with `vpmaddubsw` in
//! place of `vpdpbusd`.
//!
//! Lane `r` is weight row `r`. Per 32-weight unit the 8 quant vectors
//! (unsigned 6-bit) are decoded once and used by every activation row. Per
//! 16-weight sub-block and activation row: four `vpmaddubsw` (u6 × i8 → i16
//! pairs, each at most 2·63·128 = 16128), added two by two in i16 (< 2^15,
//! exact), two `vpmaddwd` against the sub-block scale (i8, in both i16
//! halves of lane `r`) give `sc · Σ q·y` in i32, and `sc · 32·Σy` is
//! subtracted: ggml's integer result, exact. Per (row, activation row) the
//! float operations are those of `interleaved::q6_k::dot_group`, so the two
//! agree bit for bit.

use std::arch::x86_64::*;

use super::helpers::{load128, load256};
use crate::activations::Q8KRow;
use crate::blocks::{Q6_K_BYTES, QK_K};
use crate::driver::GROUP_ACT_TILE;
use crate::interleaved::q6_k::{GROUP_BLOCK, QS_OFF, SCALES_OFF, UNIT};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

/// High bits of vector `v` (`s = v % 4`) moved to bits 4..5: shift by
/// 4 − 2·s. (A plain function, not a closure: closures are not always
/// inlined into `target_feature` code, and a call per unit costs.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_bits(x: __m256i, s: usize, m30: __m256i) -> __m256i {
    let y = match s {
        0 => _mm256_slli_epi16::<4>(x),
        1 => _mm256_slli_epi16::<2>(x),
        2 => x,
        _ => _mm256_srli_epi16::<2>(x),
    };
    _mm256_and_si256(y, m30)
}

/// Two chunk products of row lanes: `maddubs(q0, y[0..4]) + maddubs(q1,
/// y[4..8])`, exact in i16 (see the module docs).
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

/// The 8 quant vectors (index `2c + h`) of the unit at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_unit(p: *const u8) -> [__m256i; 8] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let m0f = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let h = [load256(p.add(128)), load256(p.add(160))];
        let mut q = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let l = load256(p.add(32 * c));
            for hh in 0..2 {
                let v = 2 * c + hh;
                let lo = if hh == 0 {
                    l
                } else {
                    _mm256_srli_epi16::<4>(l)
                };
                q[v] = _mm256_or_si256(_mm256_and_si256(lo, m0f), high_bits(h[v / 4], v % 4, m30));
            }
        }
        q
    }
}

/// The 8 rows of group `w` (`nb` group blocks) against `N` activation rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group<const N: usize>(w: *const u8, nb: usize, ys: &[Q8KRow<'_>; N]) -> [__m256; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); N];
        // 32 · (sum of each 16 activations), per activation row.
        let mut bs32 = [[0i32; 16]; N];
        for i in 0..nb {
            let blk = w.add(i * GROUP_BLOCK);
            for k in 0..N {
                let b = ys[k].bsums.as_ptr().add(16 * i);
                let lo = _mm256_slli_epi32::<5>(_mm256_cvtepi16_epi32(load128(b)));
                let hi = _mm256_slli_epi32::<5>(_mm256_cvtepi16_epi32(load128(b.add(8))));
                _mm256_storeu_si256(bs32[k].as_mut_ptr() as *mut __m256i, lo);
                _mm256_storeu_si256(bs32[k].as_mut_ptr().add(8) as *mut __m256i, hi);
            }
            let mut iacc = [zero; N];
            for u in 0..8 {
                let q = decode_unit(blk.add(QS_OFF + UNIT * u));
                for sub in 0..2 {
                    let j = 2 * u + sub;
                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        blk.add(SCALES_OFF + 8 * j) as *const __m128i
                    ));
                    // the sub-block scale of row r in both i16 halves of lane r
                    let sc16 = _mm256_or_si256(
                        _mm256_and_si256(sc, _mm256_set1_epi32(0xFFFF)),
                        _mm256_slli_epi32::<16>(sc),
                    );
                    for k in 0..N {
                        // per chunk c: two vpmaddubsw, each |lane| <= 2*63*128,
                        // their sum < 2^15: exact in i16
                        let y = ys[k].qs.as_ptr().add(QK_K * i + 32 * u + 16 * sub);
                        let p0 = chunk_pair(q[4 * sub], q[4 * sub + 1], y);
                        let p1 = chunk_pair(q[4 * sub + 2], q[4 * sub + 3], y.add(8));
                        let s = _mm256_add_epi32(
                            _mm256_madd_epi16(p0, sc16),
                            _mm256_madd_epi16(p1, sc16),
                        );
                        let off =
                            _mm256_mullo_epi32(_mm256_set1_epi32(*bs32[k].get_unchecked(j)), sc);
                        iacc[k] = _mm256_add_epi32(iacc[k], _mm256_sub_epi32(s, off));
                    }
                }
            }
            let d = _mm256_cvtph_ps(load128(blk));
            for k in 0..N {
                let yd = _mm256_set1_ps(*ys[k].d.get_unchecked(i));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[k]), _mm256_mul_ps(d, yd), acc[k]);
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
pub(super) unsafe fn dot_q6_k_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * GROUP_ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= GROUP_ACT_TILE && b0 + N <= acts.n_rows());
        assert!(rb.is_multiple_of(Q6_K_BYTES) && w.len() == GROUP_ROWS * rb);
        let nb = rb / Q6_K_BYTES;
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

/// 4 activation bytes at `p` broadcast to all 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)) }
}
