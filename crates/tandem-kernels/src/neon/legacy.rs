//! Q8_0 and Q4_0 weights × Q8_0 activations (after ggml's NEON
//! `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q4_0_q8_0`).
//!
//! Per block: the 32 int8 products are summed exactly into 4 i32 lanes with
//! two [`Dot`]s (|Σ| ≤ 8·128·128 per lane), converted to f32 and FMA-ed with
//! `dx * dy` into the even- or odd-block accumulator of the pair; at the end
//! `vaddvq_f32(acc_even + acc_odd)`. Q4_0 quants are unpacked to `q - 8` in
//! i8 (low nibbles = weights 0..16, high = 16..32).

use std::arch::aarch64::*;

use super::helpers::*;
use crate::activations::Q8Row;
use crate::blocks::{Q4_0_BYTES, Q8_0_BYTES, QK8_0};
use crate::QuantizedActivations;

/// The N activation rows of a tile, each checked to hold `nb` blocks.
#[inline(always)]
fn rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8Row<'_>; N] {
    let rows: [Q8Row<'_>; N] = std::array::from_fn(|k| acts.q8_0_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK8_0 && r.d.len() == nb);
    }
    rows
}

/// A legacy (32-weight) block format.
trait Block {
    const BYTES: usize;
    /// The block's scale and its 32 signed quants as two i8x16.
    ///
    /// # Safety
    /// `blk` must point at a whole block.
    unsafe fn decode(blk: *const u8) -> (f32, int8x16_t, int8x16_t);
}

/// One block against the N rows of the tile, into accumulators `acc`.
///
/// # Safety
/// `blk` points at block `ib`, every row holds block `ib`, `D` is usable.
#[inline(always)]
unsafe fn step<B: Block, D: Dot, const N: usize>(
    acc: &mut [float32x4_t; N],
    blk: *const u8,
    rows: &[Q8Row<'_>; N],
    ib: usize,
) {
    let (dx, x0, x1) = B::decode(blk);
    for k in 0..N {
        let y = rows[k].qs.as_ptr().add(ib * QK8_0);
        let p = D::dot(vdupq_n_s32(0), x0, load_s8(y));
        let p = D::dot(p, x1, load_s8(y.add(16)));
        let d = dx * *rows[k].d.get_unchecked(ib);
        acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(p), d);
    }
}

/// The block loop shared by Q8_0 and Q4_0.
///
/// # Safety
/// `D` must be usable (see [`QuantKernel::run`]).
#[inline(always)]
unsafe fn dot_blocks<B: Block, D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    let nb = w.len() / B::BYTES;
    assert!(w.len() == nb * B::BYTES && out.len() == N);
    let rows = rows::<N>(acts, b0, nb);
    let wp = w.as_ptr();
    let mut acc0 = [vdupq_n_f32(0.0); N]; // even blocks
    let mut acc1 = [vdupq_n_f32(0.0); N]; // odd blocks
    let mut ib = 0;
    while ib + 1 < nb {
        step::<B, D, N>(&mut acc0, wp.add(ib * B::BYTES), &rows, ib);
        step::<B, D, N>(&mut acc1, wp.add((ib + 1) * B::BYTES), &rows, ib + 1);
        ib += 2;
    }
    if ib < nb {
        step::<B, D, N>(&mut acc0, wp.add(ib * B::BYTES), &rows, ib);
    }
    for k in 0..N {
        out[k] = vaddvq_f32(vaddq_f32(acc0[k], acc1[k]));
    }
}

/// Q8_0 weights.
pub(crate) struct Q8_0;

impl Block for Q8_0 {
    const BYTES: usize = Q8_0_BYTES;

    /// block_q8_0: f16 d at 0, i8 qs[32] at 2.
    #[inline(always)]
    unsafe fn decode(blk: *const u8) -> (f32, int8x16_t, int8x16_t) {
        let x0 = load_s8(blk.add(2) as *const i8);
        let x1 = load_s8(blk.add(18) as *const i8);
        (f16_at(blk), x0, x1)
    }
}

impl QuantKernel for Q8_0 {
    #[inline(always)]
    unsafe fn run<D: Dot, const N: usize>(
        w: &[u8],
        acts: &QuantizedActivations,
        b0: usize,
        out: &mut [f32],
    ) {
        dot_blocks::<Self, D, N>(w, acts, b0, out)
    }
}

/// Q4_0 weights.
pub(crate) struct Q4_0;

impl Block for Q4_0 {
    const BYTES: usize = Q4_0_BYTES;

    /// block_q4_0: f16 d at 0, u8 qs[16] at 2; weights `nibble - 8`.
    #[inline(always)]
    unsafe fn decode(blk: *const u8) -> (f32, int8x16_t, int8x16_t) {
        let v = load_u8(blk.add(2));
        let s8 = vdupq_n_s8(8);
        let x0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0xF))), s8);
        let x1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), s8);
        (f16_at(blk), x0, x1)
    }
}

impl QuantKernel for Q4_0 {
    #[inline(always)]
    unsafe fn run<D: Dot, const N: usize>(
        w: &[u8],
        acts: &QuantizedActivations,
        b0: usize,
        out: &mut [f32],
    ) {
        dot_blocks::<Self, D, N>(w, acts, b0, out)
    }
}
