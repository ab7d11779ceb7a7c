//! Q8_0 weights × Q8_0 activations with 256-bit VNNI (AVX-512VL forms).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes; Q8_0 weights are signed.
//! Flipping their sign bit turns `w` into the unsigned `w + 128`, and
//! `Σ (w+128)·a = Σ w·a + 128·Σ a`, where `Σ a` per block is stored with the
//! activations. So a block costs one XOR (shared by every activation row)
//! and one `vpdpbusd` per activation row. Eight blocks are then reduced
//! together (`vphaddd` tree) into one vector of eight exact block sums, and
//! a single conversion and FMA applies the eight `d_w · d_a` scales.
//!
//! Float order, fixed per (weight row, activation row) pair: an 8-lane
//! accumulator over groups of 8 blocks, the tail blocks (fewer than 8)
//! added one at a time to a scalar, then `hsum(acc) + tail`.

use std::arch::x86_64::*;

use super::helpers::{f16_at, hsum8};
use crate::activations::Q8Row;
use crate::blocks::*;
use crate::QuantizedActivations;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn hsum_i32(x: __m256i) -> i32 {
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x));
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2));
    _mm_cvtsi128_si32(s1)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f16_bits(p: *const u8) -> i16 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { i16::from_le_bytes([*p, *p.add(1)]) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row<const N: usize>(w: *const u8, nb: usize, ys: &[Q8Row<'_>; N]) -> [f32; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let flip = _mm256_set1_epi8(i8::MIN);
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); N];
        let groups = nb / 8;
        for g in 0..groups {
            let base = w.add(g * 8 * Q8_0_BYTES);
            let blk = |j: usize| base.add(j * Q8_0_BYTES);
            let dw = _mm256_cvtph_ps(_mm_set_epi16(
                f16_bits(blk(7)),
                f16_bits(blk(6)),
                f16_bits(blk(5)),
                f16_bits(blk(4)),
                f16_bits(blk(3)),
                f16_bits(blk(2)),
                f16_bits(blk(1)),
                f16_bits(blk(0)),
            ));
            let mut q = [zero; 8];
            for (j, q) in q.iter_mut().enumerate() {
                *q = _mm256_xor_si256(_mm256_loadu_si256(blk(j).add(2) as *const __m256i), flip);
            }
            for k in 0..N {
                let y = ys[k].qs.as_ptr().add(QK8_0 * 8 * g) as *const __m256i;
                let mut p = [zero; 8];
                for j in 0..8 {
                    p[j] = _mm256_dpbusd_epi32(zero, q[j], _mm256_loadu_si256(y.add(j)));
                }
                let t0 = _mm256_hadd_epi32(p[0], p[1]);
                let t1 = _mm256_hadd_epi32(p[2], p[3]);
                let t2 = _mm256_hadd_epi32(p[4], p[5]);
                let t3 = _mm256_hadd_epi32(p[6], p[7]);
                let u0 = _mm256_hadd_epi32(t0, t1);
                let u1 = _mm256_hadd_epi32(t2, t3);
                let s = _mm256_add_epi32(
                    _mm256_permute2x128_si256::<0x20>(u0, u1),
                    _mm256_permute2x128_si256::<0x31>(u0, u1),
                );
                let asum = _mm256_cvtepi16_epi32(_mm_loadu_si128(
                    ys[k].sums.as_ptr().add(8 * g) as *const __m128i
                ));
                let s = _mm256_sub_epi32(s, _mm256_slli_epi32::<7>(asum));
                let da = _mm256_loadu_ps(ys[k].d.as_ptr().add(8 * g));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da), acc[k]);
            }
        }
        let mut tail = [0.0f32; N];
        for i in groups * 8..nb {
            let blk = w.add(i * Q8_0_BYTES);
            let dw = f16_at(blk);
            let q = _mm256_xor_si256(_mm256_loadu_si256(blk.add(2) as *const __m256i), flip);
            for k in 0..N {
                let y = ys[k].qs.as_ptr().add(QK8_0 * i) as *const __m256i;
                let s = hsum_i32(_mm256_dpbusd_epi32(zero, q, _mm256_loadu_si256(y)))
                    - 128 * i32::from(ys[k].sums[i]);
                tail[k] += s as f32 * (dw * ys[k].d[i]);
            }
        }
        let mut out = [0.0; N];
        for k in 0..N {
            out[k] = hsum8(acc[k]) + tail[k];
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
pub(super) unsafe fn dot_q8_0<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        super::assert_tile(w, rb, Q8_0_BYTES, R, acts, b0, N, out);
        let nb = rb / Q8_0_BYTES;
        let ys: [Q8Row<'_>; N] = std::array::from_fn(|k| acts.q8_0_row(b0 + k));
        for y in &ys {
            assert!(y.qs.len() == nb * QK8_0 && y.d.len() == nb && y.sums.len() == nb);
        }
        let n_b = acts.n_rows();
        for r in 0..R {
            let vals = row::<N>(w.as_ptr().add(r * rb), nb, &ys);
            out[r * n_b + b0..r * n_b + b0 + N].copy_from_slice(&vals);
        }
    }
}
