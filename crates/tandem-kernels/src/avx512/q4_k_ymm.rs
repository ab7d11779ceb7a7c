//! Q4_K weights × Q8_K activations with 256-bit VNNI (AVX-512VL forms).
//!
//! Why 256-bit: Zen 4 runs a 512-bit operation as two 256-bit halves, so
//! wide registers buy nothing there, while ggml's Q4_K layout maps onto
//! 256-bit registers with no shuffling at all: the 32 bytes `qs[32j..]`
//! hold sub-block `2j` in their low nibbles and `2j+1` in their high ones,
//! and the matching 32 activations of each sub-block are contiguous. Per
//! super-block and activation row:
//!
//! * 8 × `vpdpbusd(0, nibbles, q8)`: 8 i32 lanes per sub-block, each a sum of
//!   4 products ≤ 4·15·127 < 2^15;
//! * 4 × `vpackssdw` of sub-block pairs (exact) and `vpdpwssd` with the
//!   6-bit scales laid out to match: 8 i32 lanes whose total is ggml's exact
//!   `Σ_j scale_j · Σ q·q8`;
//! * mins: `vpmaddwd([m0,m0,m1,m1,..], bsums)`: 8 exact i32 lanes;
//! * float: `acc += fma(f32(sumi), d·yd, f32(mins) · -dmin·yd)`.
//!
//! The 12 packed scale bytes are unpacked with a handful of 128-bit
//! shuffles (no scalar round trip). Per (weight row, activation row) pair the
//! float order is fixed (8-lane accumulator, blocks in order, then a fixed
//! reduction tree), so results do not depend on B or on the tile.

use std::arch::x86_64::*;

use super::helpers::{f16_at, hsum8};
use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::QuantizedActivations;

/// `vpermw` indices into `[sc0..sc8, m0..m8]` (i16) giving the scale of
/// each i16 of `vpackssdw(p_2k, p_2k+1)`: per 128-bit lane, 4 values of
/// sub-block 2k then 4 of 2k+1.
const SCALE_IDX: [[i16; 16]; 4] = {
    let mut t = [[0i16; 16]; 4];
    let mut k = 0;
    while k < 4 {
        let mut e = 0;
        while e < 16 {
            t[k][e] = (2 * k + (e % 8) / 4) as i16;
            e += 1;
        }
        k += 1;
    }
    t
};

/// `[m0, m0, m1, m1, .., m7, m7]` from `[sc0..sc8, m0..m8]`.
const MIN_IDX: [i16; 16] = [8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15];

/// Byte shuffles for the scale unpacking (see `scales_mins`).
const SHUF_A: [i8; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11];
const SHUF_B: [i8; 16] = [
    -128, -128, -128, -128, 0, 1, 2, 3, -128, -128, -128, -128, 4, 5, 6, 7,
];
const MASK_A: [u8; 16] = [
    63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15,
];

/// `[sc0..sc8, m0..m8]` as i16 from the 12 packed bytes at `p` (ggml's
/// `get_scale_min_k4` for all 8 sub-blocks at once). Reads 16 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales_mins(p: *const u8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let x = _mm_loadu_si128(p as *const __m128i);
        // a = [s0..3, s8..11, s4..7, s8..11]: sc0..3 | sc4..7 low | m0..3 | m4..7 low
        let a = _mm_shuffle_epi8(x, _mm_loadu_si128(SHUF_A.as_ptr() as *const __m128i));
        // m4..7 low bits are the high nibbles of s8..11.
        let a = _mm_mask_blend_epi8(0xF000, a, _mm_srli_epi16::<4>(a));
        let a = _mm_and_si128(a, _mm_loadu_si128(MASK_A.as_ptr() as *const __m128i));
        // High 2 bits of sc4..7 / m4..7: the top bits of s0..3 / s4..7, moved to bits 4..5.
        let b = _mm_shuffle_epi8(x, _mm_loadu_si128(SHUF_B.as_ptr() as *const __m128i));
        let b = _mm_srli_epi16::<2>(_mm_and_si128(b, _mm_set1_epi8(0xC0u8 as i8)));
        _mm256_cvtepu8_epi16(_mm_or_si128(a, b))
    }
}

/// One weight row (`nb` super-blocks at `w`) against `N` activation rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row<const N: usize>(w: *const u8, nb: usize, ys: &[Q8KRow<'_>; N]) -> [f32; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let idx = [
            _mm256_loadu_si256(SCALE_IDX[0].as_ptr() as *const __m256i),
            _mm256_loadu_si256(SCALE_IDX[1].as_ptr() as *const __m256i),
            _mm256_loadu_si256(SCALE_IDX[2].as_ptr() as *const __m256i),
            _mm256_loadu_si256(SCALE_IDX[3].as_ptr() as *const __m256i),
        ];
        let min_idx = _mm256_loadu_si256(MIN_IDX.as_ptr() as *const __m256i);
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let blk = w.add(i * Q4_K_BYTES);
            let d = f16_at(blk);
            let dmin = f16_at(blk.add(2));
            let sm = scales_mins(blk.add(K_SCALES_OFF));
            let sc = [
                _mm256_permutexvar_epi16(idx[0], sm),
                _mm256_permutexvar_epi16(idx[1], sm),
                _mm256_permutexvar_epi16(idx[2], sm),
                _mm256_permutexvar_epi16(idx[3], sm),
            ];
            let mins = _mm256_permutexvar_epi16(min_idx, sm);
            let qs = blk.add(Q4_K_QS_OFF) as *const __m256i;
            let mut q = [zero; 8];
            for j in 0..4 {
                let v = _mm256_loadu_si256(qs.add(j));
                q[2 * j] = _mm256_and_si256(v, m4);
                q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            }
            for k in 0..N {
                let y = ys[k].qs.as_ptr().add(QK_K * i) as *const __m256i;
                // Two independent integer chains (latency), joined once.
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
                let s = _mm256_add_epi32(s[0], s[1]);
                let bsums = _mm256_loadu_si256(ys[k].bsums.as_ptr().add(16 * i) as *const __m256i);
                let m = _mm256_madd_epi16(mins, bsums);
                let yd = *ys[k].d.get_unchecked(i);
                // Only one add on the loop-carried chain.
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(-dmin * yd));
                let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * yd), t);
                acc[k] = _mm256_add_ps(acc[k], t);
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
pub(super) unsafe fn dot_q4_k<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        super::assert_tile(w, rb, Q4_K_BYTES, R, acts, b0, N, out);
        let nb = rb / Q4_K_BYTES;
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
