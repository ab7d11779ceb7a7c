//! Q6_K weights × Q8_K activations with 256-bit VNNI (AVX-512VL forms).
//!
//! Same reasoning as `q4_k_ymm`: ggml's Q6_K layout decodes into 256-bit
//! registers without shuffles. Per 128-weight half `h`, from `ql0 = ql[64h..]`,
//! `ql1 = ql[64h+32..]` and `qh = qh[32h..]`:
//!
//! ```text
//! w0 = ql0 & 15        | (qh << 4) & 48     weights 128h +  0..32
//! w1 = ql1 & 15        | (qh << 2) & 48     weights 128h + 32..64
//! w2 = ql0 >> 4 & 15   |  qh       & 48     weights 128h + 64..96
//! w3 = ql1 >> 4 & 15   | (qh >> 2) & 48     weights 128h + 96..128
//! ```
//!
//! (unsigned 0..63; the -32 offset is applied once per block with the
//! activation sums). Per activation row: `vpdpbusd` gives 4 i32 lanes per
//! 16-weight sub-block, each ≤ 4·63·127 < 2^15, so `vpackssdw` of two is
//! exact and `vpdpwssd` with the i8 scales gives ggml's `Σ_j sc_j Σ q·q8`;
//! the offset is `32 · Σ_j sc_j · bsum_j` (`vpmaddwd`). One conversion and
//! one FMA per block; float order fixed per (row, activation row) pair.

use std::arch::x86_64::*;

use super::helpers::{f16_at, hsum8};
use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::QuantizedActivations;

/// `vpermw` indices into the 16 i16 scales for `vpackssdw(dp(w_2k), dp(w_2k+1))`
/// of pair `p` (0..4 over the block): per 128-bit lane, 4 values of one
/// sub-block, then 4 of the sub-block two further on.
const SCALE_IDX: [[i16; 16]; 4] = {
    let mut t = [[0i16; 16]; 4];
    let mut p = 0;
    while p < 4 {
        let mut e = 0;
        while e < 16 {
            t[p][e] = (4 * p + if e % 8 >= 4 { 2 } else { 0 } + if e >= 8 { 1 } else { 0 }) as i16;
            e += 1;
        }
        p += 1;
    }
    t
};

/// `a | (b & c)` bitwise.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn or_and(a: __m256i, b: __m256i, c: __m256i) -> __m256i {
    _mm256_ternarylogic_epi32::<0xF8>(a, b, c)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row<const N: usize>(w: *const u8, nb: usize, ys: &[Q8KRow<'_>; N]) -> [f32; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m48 = _mm256_set1_epi8(0x30);
        let zero = _mm256_setzero_si256();
        let idx = [
            _mm256_loadu_si256(SCALE_IDX[0].as_ptr() as *const __m256i),
            _mm256_loadu_si256(SCALE_IDX[1].as_ptr() as *const __m256i),
            _mm256_loadu_si256(SCALE_IDX[2].as_ptr() as *const __m256i),
            _mm256_loadu_si256(SCALE_IDX[3].as_ptr() as *const __m256i),
        ];
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let blk = w.add(i * Q6_K_BYTES);
            let d = f16_at(blk.add(Q6_K_D_OFF));
            let sc16 =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(Q6_K_SCALES_OFF) as *const __m128i));
            let sc = [
                _mm256_permutexvar_epi16(idx[0], sc16),
                _mm256_permutexvar_epi16(idx[1], sc16),
                _mm256_permutexvar_epi16(idx[2], sc16),
                _mm256_permutexvar_epi16(idx[3], sc16),
            ];
            let ql = blk as *const __m256i;
            let qh = blk.add(Q6_K_QH_OFF) as *const __m256i;
            let mut q = [zero; 8];
            for h in 0..2 {
                let ql0 = _mm256_loadu_si256(ql.add(2 * h));
                let ql1 = _mm256_loadu_si256(ql.add(2 * h + 1));
                let hb = _mm256_loadu_si256(qh.add(h));
                q[4 * h] = or_and(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(hb), m48);
                q[4 * h + 1] = or_and(_mm256_and_si256(ql1, m4), _mm256_slli_epi16::<2>(hb), m48);
                q[4 * h + 2] = or_and(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), hb, m48);
                q[4 * h + 3] = or_and(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_srli_epi16::<2>(hb),
                    m48,
                );
            }
            for k in 0..N {
                let y = ys[k].qs.as_ptr().add(QK_K * i) as *const __m256i;
                let mut s = [zero; 2];
                for p in 0..4 {
                    let a = _mm256_dpbusd_epi32(zero, q[2 * p], _mm256_loadu_si256(y.add(2 * p)));
                    let b = _mm256_dpbusd_epi32(
                        zero,
                        q[2 * p + 1],
                        _mm256_loadu_si256(y.add(2 * p + 1)),
                    );
                    s[p % 2] = _mm256_dpwssd_epi32(s[p % 2], _mm256_packs_epi32(a, b), sc[p]);
                }
                let bsums = _mm256_loadu_si256(ys[k].bsums.as_ptr().add(16 * i) as *const __m256i);
                let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bsums));
                let s = _mm256_sub_epi32(_mm256_add_epi32(s[0], s[1]), off);
                let yd = *ys[k].d.get_unchecked(i);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * yd), acc[k]);
            }
        }
        let mut out = [0.0; N];
        for k in 0..N {
            out[k] = hsum8(acc[k]);
        }
        out
    }
}

/// Tile kernel: `R` weight rows × activation rows `b0..b0+N`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI + AVX2/FMA/F16C must be available; sizes are
/// asserted.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        super::assert_tile(w, rb, Q6_K_BYTES, R, acts, b0, N, out);
        let nb = rb / Q6_K_BYTES;
        let ys: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
        for y in &ys {
            assert!(y.qs.len() == nb * QK_K && y.d.len() == nb && y.bsums.len() == nb * 16);
        }
        let n_b = acts.n_rows();
        for r in 0..R {
            let vals = row::<N>(w.as_ptr().add(r * rb), nb, &ys);
            out[r * n_b + b0..r * n_b + b0 + N].copy_from_slice(&vals);
        }
    }
}
