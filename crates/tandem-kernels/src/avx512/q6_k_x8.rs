//! Q6_K x8 (8 rows interleaved, see `interleaved::q6_k`) × Q8_K activations.
//!
//! Lane `r` is weight row `r`. Per 32-weight unit the 8 quant vectors are
//! decoded once (low nibble | 2 high bits, a few byte-wise masks) and used
//! by every activation row: two `vpdpbusd` chains per 16-weight sub-block,
//! the `−32` offset removed with the activations' block sums (broadcast
//! from a per-row table of `32·Σy`), the scale applied with one `vpmulld`
//! into an exact i32 accumulator. Per (row, activation row) the float
//! operations are those of `interleaved::q6_k::dot_group`, so the two agree
//! bit for bit.

use std::arch::x86_64::*;

use super::helpers::{bcast4, load128, load256};
use crate::activations::Q8KRow;
use crate::blocks::{Q6_K_BYTES, QK_K};
use crate::interleaved::q6_k::{GROUP_BLOCK, QS_OFF, SCALES_OFF, UNIT};
use crate::interleaved::GROUP_ROWS;
use crate::QuantizedActivations;

/// The 8 quant vectors (index `2c + h`) of the unit at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn decode_unit(p: *const u8) -> [__m256i; 8] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let m0f = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let h = [load256(p.add(128)), load256(p.add(160))];
        // High bits of vector v moved to bits 4..5: shift by 4 − 2·(v % 4).
        let hs = |x: __m256i, s: usize| -> __m256i {
            let y = match s {
                0 => _mm256_slli_epi16::<4>(x),
                1 => _mm256_slli_epi16::<2>(x),
                2 => x,
                _ => _mm256_srli_epi16::<2>(x),
            };
            _mm256_and_si256(y, m30)
        };
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
                q[v] = _mm256_or_si256(_mm256_and_si256(lo, m0f), hs(h[v / 4], v % 4));
            }
        }
        q
    }
}

/// The 8 rows of group `w` (`nb` group blocks) against `N` activation rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
                    let mut s0 = [zero; N];
                    let mut s1 = [zero; N];
                    for cc in 0..2 {
                        let c = 2 * sub + cc;
                        for k in 0..N {
                            let y = ys[k].qs.as_ptr().add(QK_K * i + 32 * u + 8 * c);
                            s0[k] = _mm256_dpbusd_epi32(s0[k], q[2 * c], bcast4(y));
                            s1[k] = _mm256_dpbusd_epi32(s1[k], q[2 * c + 1], bcast4(y.add(4)));
                        }
                    }
                    for k in 0..N {
                        let s = _mm256_sub_epi32(
                            _mm256_add_epi32(s0[k], s1[k]),
                            _mm256_set1_epi32(*bs32[k].get_unchecked(j)),
                        );
                        iacc[k] = _mm256_add_epi32(iacc[k], _mm256_mullo_epi32(s, sc));
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
/// AVX-512 F/BW/VL/VNNI + AVX2/FMA/F16C must be available; sizes are
/// asserted.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k_x8<const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    tile: &mut [f32; GROUP_ROWS * super::ACT_TILE],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert!(N <= super::ACT_TILE && b0 + N <= acts.n_rows());
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
