//! Ternary formats TQ1_0 (base-3 packed, 5 or 4 trits per byte) and TQ2_0
//! (2 bits per weight) against Q8_K activations: `dequantize_row_tq{1,2}_0`
//! and `ggml_vec_dot_tq{1,2}_0_q8_K_generic`. Weights are `d·(t - 1)` with
//! `t ∈ {0, 1, 2}`; the dot is one exact i32 sum per super-block.

use crate::activations::Q8KRow;
use crate::blocks::{QK_K, TQ1_0_BYTES, TQ2_0_BYTES};
use crate::convert::read_f16;

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// Trit `n` of a packed byte: `((q·3^n mod 256)·3) >> 8`.
#[inline]
fn trit(q: u8, n: usize) -> i32 {
    let q = q.wrapping_mul(POW3[n]);
    i32::from((u16::from(q) * 3) >> 8)
}

/// The 256 ternary values (`t - 1`) of a TQ1_0 block, in weight order.
#[inline]
#[allow(clippy::needless_range_loop)] // index loops mirror ggml's
pub(crate) fn tq1_0_values(blk: &[u8]) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    let mut o = 0;
    // qs[0..32]: 5 trits each, weights n·32 + m
    for n in 0..5 {
        for m in 0..32 {
            v[o] = (trit(blk[m], n) - 1) as i8;
            o += 1;
        }
    }
    // qs[32..48]: 5 trits each, weights 160 + n·16 + m
    for n in 0..5 {
        for m in 0..16 {
            v[o] = (trit(blk[32 + m], n) - 1) as i8;
            o += 1;
        }
    }
    // qh[0..4]: 4 trits each, weights 240 + n·4 + j
    for n in 0..4 {
        for j in 0..4 {
            v[o] = (trit(blk[48 + j], n) - 1) as i8;
            o += 1;
        }
    }
    v
}

/// The 256 values (`q - 1`) of a TQ2_0 block, in weight order.
#[inline]
pub(crate) fn tq2_0_values(blk: &[u8]) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    for j in 0..2 {
        for l in 0..4 {
            for m in 0..32 {
                v[128 * j + 32 * l + m] = ((blk[32 * j + m] >> (2 * l)) & 3) as i8 - 1;
            }
        }
    }
    v
}

pub(crate) fn dequantize_tq1_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(TQ1_0_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 52);
        for (y, v) in y.iter_mut().zip(tq1_0_values(blk)) {
            *y = f32::from(v) * d;
        }
    }
}

pub(crate) fn dequantize_tq2_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(TQ2_0_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 64);
        for (y, v) in y.iter_mut().zip(tq2_0_values(blk)) {
            *y = f32::from(v) * d;
        }
    }
}

#[inline]
fn isum(v: &[i8; QK_K], q8: &[i8]) -> i32 {
    v.iter()
        .zip(q8)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

pub(crate) fn dot_tq1_0_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(TQ1_0_BYTES).enumerate() {
        let sum = isum(&tq1_0_values(blk), &y.qs[QK_K * i..QK_K * (i + 1)]);
        sumf += sum as f32 * (read_f16(blk, 52) * y.d[i]);
    }
    sumf
}

pub(crate) fn dot_tq2_0_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(TQ2_0_BYTES).enumerate() {
        let sumi = isum(&tq2_0_values(blk), &y.qs[QK_K * i..QK_K * (i + 1)]);
        let d = y.d[i] * read_f16(blk, 64);
        sumf += sumi as f32 * d;
    }
    sumf
}
