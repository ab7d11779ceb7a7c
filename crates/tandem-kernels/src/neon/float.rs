//! F32 / F16 / BF16 weights × same-format activations.
//!
//! 32 values per step into eight 4-lane f32 accumulators per activation
//! row (`vfmaq_f32`), reduced as `((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7))`
//! and `vaddvq_f32`; the `n mod 32` tail is added in f64 with exact
//! products (an f32 × f32 product fits an f64) and the total is rounded to
//! f32 once. F16 weights are widened with `fcvtl` (exact) and multiplied
//! with the activations' exact f32 copy; BF16 values are widened by a
//! 16-bit shift (exact).

// Index loops run over the 8 accumulators and the N rows together.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use super::helpers::*;
use crate::convert::{bf16_to_f32, f16_to_f32};
use crate::QuantizedActivations;

/// Values per step.
const STEP: usize = 32;

/// Fixed reduction of the eight accumulators.
#[inline(always)]
unsafe fn reduce8(a: [float32x4_t; 8]) -> f32 {
    let s01 = vaddq_f32(a[0], a[1]);
    let s23 = vaddq_f32(a[2], a[3]);
    let s45 = vaddq_f32(a[4], a[5]);
    let s67 = vaddq_f32(a[6], a[7]);
    vaddvq_f32(vaddq_f32(vaddq_f32(s01, s23), vaddq_f32(s45, s67)))
}

/// The shared step loop: `load_w(i)` / `load_a(k, i)` give values `i..i+8`
/// of the weights / activation row `k` as two f32x4; `tail(k, i)` gives
/// the f64 product of value `i`.
///
/// # Safety
/// `n` values are readable through both loaders (asserted by the callers).
#[inline(always)]
unsafe fn dot_steps<const N: usize>(
    n: usize,
    out: &mut [f32],
    load_w: impl Fn(usize) -> [float32x4_t; 2],
    load_a: impl Fn(usize, usize) -> [float32x4_t; 2],
    tail: impl Fn(usize, usize) -> f64,
) {
    assert!(out.len() == N);
    let np = n - n % STEP;
    let mut acc = [[vdupq_n_f32(0.0); 8]; N];
    let mut i = 0;
    while i < np {
        for j in 0..4 {
            let [w0, w1] = load_w(i + 8 * j);
            for k in 0..N {
                let [a0, a1] = load_a(k, i + 8 * j);
                acc[k][2 * j] = vfmaq_f32(acc[k][2 * j], w0, a0);
                acc[k][2 * j + 1] = vfmaq_f32(acc[k][2 * j + 1], w1, a1);
            }
        }
        i += STEP;
    }
    for k in 0..N {
        let mut sum = f64::from(reduce8(acc[k]));
        for i in np..n {
            sum += tail(k, i);
        }
        out[k] = sum as f32;
    }
}

/// # Safety
/// NEON available.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_f32<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    let n = w.len() / 4;
    assert!(w.len() == 4 * n);
    let rows: [&[f32]; N] = std::array::from_fn(|k| acts.f32_row(b0 + k));
    for r in &rows {
        assert!(r.len() == n);
    }
    let wp = w.as_ptr();
    // weights are unaligned bytes: load u8 and reinterpret (little-endian)
    let load_w = |i: usize| {
        let p = wp.add(4 * i);
        [
            vreinterpretq_f32_u8(load_u8(p)),
            vreinterpretq_f32_u8(load_u8(p.add(16))),
        ]
    };
    let load_a = |k: usize, i: usize| {
        let p = rows[k].as_ptr().add(i);
        [vld1q_f32(p), vld1q_f32(p.add(4))]
    };
    let tail = |k: usize, i: usize| {
        let x = f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
        f64::from(x) * f64::from(rows[k][i])
    };
    dot_steps::<N>(n, out, load_w, load_a, tail)
}

/// # Safety
/// NEON available.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_f16<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    let n = w.len() / 2;
    assert!(w.len() == 2 * n);
    // F16 activations keep an exact f32 copy (`f32_row`).
    let rows: [&[f32]; N] = std::array::from_fn(|k| acts.f32_row(b0 + k));
    for r in &rows {
        assert!(r.len() == n);
    }
    let wp = w.as_ptr();
    let load_w = |i: usize| {
        let h = vreinterpretq_u16_u8(load_u8(wp.add(2 * i)));
        [cvt_f16_lo(h), cvt_f16_hi(h)]
    };
    let load_a = |k: usize, i: usize| {
        let p = rows[k].as_ptr().add(i);
        [vld1q_f32(p), vld1q_f32(p.add(4))]
    };
    let tail = |k: usize, i: usize| {
        let x = f16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]));
        f64::from(x) * f64::from(rows[k][i])
    };
    dot_steps::<N>(n, out, load_w, load_a, tail)
}

/// 8 bf16 widened to f32 (`x << 16`, exact).
#[inline(always)]
unsafe fn widen_bf16(x: uint16x8_t) -> [float32x4_t; 2] {
    let z = vdupq_n_u16(0);
    [
        vreinterpretq_f32_u16(vzip1q_u16(z, x)),
        vreinterpretq_f32_u16(vzip2q_u16(z, x)),
    ]
}

/// # Safety
/// NEON available.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_bf16<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    let n = w.len() / 2;
    assert!(w.len() == 2 * n);
    let rows: [&[u16]; N] = std::array::from_fn(|k| acts.u16_row(b0 + k));
    for r in &rows {
        assert!(r.len() == n);
    }
    let wp = w.as_ptr();
    let load_w = |i: usize| widen_bf16(vreinterpretq_u16_u8(load_u8(wp.add(2 * i))));
    let load_a = |k: usize, i: usize| widen_bf16(vld1q_u16(rows[k].as_ptr().add(i)));
    let tail = |k: usize, i: usize| {
        let x = bf16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]));
        f64::from(x) * f64::from(bf16_to_f32(rows[k][i]))
    };
    dot_steps::<N>(n, out, load_w, load_a, tail)
}
