//! F32 / F16 / BF16 weights × same-format activations (ports of the AVX2
//! branches of ggml's `ggml_vec_dot_{f32,f16,bf16}` in ggml-cpu/vec.cpp).
//!
//! * F32, F16: `GGML_F32_STEP` = 32 values per step in 4 accumulators of 8
//!   lanes (FMA), reduced with `GGML_F32x8_REDUCE` ((s0+s2)+(s1+s3), then
//!   halves, then two `hadd`s); the tail (n mod 32) is added in f32 (F32) or
//!   f64 (F16) like ggml.
//! * BF16: 4 accumulators, `mul` then `add` (no FMA, as in ggml's source),
//!   reduced as `(c1+c3)+(c2+c4)` and `hsum`; the tail is added in f64.

// Index loops mirror ggml's `for (j = 0; j < GGML_F32_ARR; j++)` over both
// the loads and the accumulator arrays.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::helpers::*;
use crate::convert::{bf16_to_f32, f16_to_f32};
use crate::QuantizedActivations;

/// `GGML_F32x8_REDUCE` over four accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn reduce4(s: [__m256; 4]) -> f32 {
    let s0 = _mm256_add_ps(s[0], s[2]);
    let s1 = _mm256_add_ps(s[1], s[3]);
    let s0 = _mm256_add_ps(s0, s1);
    let t0 = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps::<1>(s0));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let n = w.len() / 4;
        assert!(w.len() == 4 * n && out.len() == N);
        let rows: [&[f32]; N] = std::array::from_fn(|k| acts.f32_row(b0 + k));
        for r in &rows {
            assert!(r.len() == n);
        }
        let np = n & !31;
        let wp = w.as_ptr() as *const f32; // read with unaligned loads only
        let mut sum = [[_mm256_setzero_ps(); 4]; N];
        let mut i = 0;
        while i < np {
            for j in 0..4 {
                let ax = _mm256_loadu_ps(wp.add(i + 8 * j));
                for k in 0..N {
                    let ay = _mm256_loadu_ps(rows[k].as_ptr().add(i + 8 * j));
                    sum[k][j] = _mm256_fmadd_ps(ax, ay, sum[k][j]);
                }
            }
            i += 32;
        }
        for k in 0..N {
            let mut sumf = reduce4(sum[k]);
            for i in np..n {
                let x = f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
                sumf += x * rows[k][i];
            }
            out[k] = sumf;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let n = w.len() / 2;
        assert!(w.len() == 2 * n && out.len() == N);
        let rows: [&[u16]; N] = std::array::from_fn(|k| acts.u16_row(b0 + k));
        for r in &rows {
            assert!(r.len() == n);
        }
        let np = n & !31;
        let wp = w.as_ptr();
        let mut sum = [[_mm256_setzero_ps(); 4]; N];
        let mut i = 0;
        while i < np {
            for j in 0..4 {
                let ax = _mm256_cvtph_ps(load128(wp.add(2 * (i + 8 * j))));
                for k in 0..N {
                    let ay = _mm256_cvtph_ps(load128(rows[k].as_ptr().add(i + 8 * j)));
                    sum[k][j] = _mm256_fmadd_ps(ax, ay, sum[k][j]);
                }
            }
            i += 32;
        }
        for k in 0..N {
            let mut sumf = f64::from(reduce4(sum[k]));
            for i in np..n {
                let x = f16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]));
                sumf += f64::from(x * f16_to_f32(rows[k][i]));
            }
            out[k] = sumf as f32;
        }
    }
}

/// 8 bf16 at `p` widened to f32 (ggml's AVX2 `LOAD`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16<T>(p: *const T) -> __m256 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load128(p)))) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let n = w.len() / 2;
        assert!(w.len() == 2 * n && out.len() == N);
        let rows: [&[u16]; N] = std::array::from_fn(|k| acts.u16_row(b0 + k));
        for r in &rows {
            assert!(r.len() == n);
        }
        let np = n & !31;
        let wp = w.as_ptr();
        let mut c = [[_mm256_setzero_ps(); 4]; N];
        let mut i = 0;
        while i < np {
            for j in 0..4 {
                let ax = load_bf16(wp.add(2 * (i + 8 * j)));
                for k in 0..N {
                    let ay = load_bf16(rows[k].as_ptr().add(i + 8 * j));
                    c[k][j] = _mm256_add_ps(_mm256_mul_ps(ax, ay), c[k][j]);
                }
            }
            i += 32;
        }
        for k in 0..N {
            let [c1, c2, c3, c4] = c[k];
            let c1 = _mm256_add_ps(_mm256_add_ps(c1, c3), _mm256_add_ps(c2, c4));
            let mut g = _mm_add_ps(_mm256_extractf128_ps::<1>(c1), _mm256_castps256_ps128(c1));
            g = _mm_add_ps(g, _mm_movehl_ps(g, g));
            g = _mm_add_ss(g, _mm_movehdup_ps(g));
            let mut sumf = f64::from(_mm_cvtss_f32(g));
            for i in np..n {
                let x = bf16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]));
                sumf += f64::from(x * bf16_to_f32(rows[k][i]));
            }
            out[k] = sumf as f32;
        }
    }
}
