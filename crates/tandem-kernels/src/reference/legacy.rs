//! The legacy 32-weight blocks: Q8_0, Q4_0, Q5_0 against Q8_0 activations and
//! Q4_1, Q5_1 (scale and min) against Q8_1: `dequantize_row_*` and
//! `ggml_vec_dot_*_generic`. The 32 products of a block are summed exactly in
//! an i32, then scaled; Q4_1/Q5_1 add `m·s` (the activation block's `d·Σq`).

use crate::activations::{Q8Row, Q8_1Row};
use crate::blocks::{u32_at, Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES, QK8_0};
use crate::convert::read_f16;

pub(crate) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(Q8_0_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let d = read_f16(blk, 0);
        for (j, y) in y.iter_mut().enumerate() {
            *y = f32::from(blk[2 + j] as i8) * d;
        }
    }
}

pub(crate) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(Q4_0_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let d = read_f16(blk, 0);
        for j in 0..QK8_0 / 2 {
            let x0 = i32::from(blk[2 + j] & 0x0F) - 8;
            let x1 = i32::from(blk[2 + j] >> 4) - 8;
            y[j] = x0 as f32 * d;
            y[j + QK8_0 / 2] = x1 as f32 * d;
        }
    }
}

pub(crate) fn dot_q8_0_q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ib, blk) in w.chunks_exact(Q8_0_BYTES).enumerate() {
        let q8 = &a.qs[ib * QK8_0..(ib + 1) * QK8_0];
        let mut sumi = 0i32;
        for j in 0..QK8_0 {
            sumi += i32::from(blk[2 + j] as i8) * i32::from(q8[j]);
        }
        // sumi*(GGML_FP16_TO_FP32(x.d)*GGML_FP16_TO_FP32(y.d))
        sumf += sumi as f32 * (read_f16(blk, 0) * a.d[ib]);
    }
    sumf
}

pub(crate) fn dot_q4_0_q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ib, blk) in w.chunks_exact(Q4_0_BYTES).enumerate() {
        let q8 = &a.qs[ib * QK8_0..(ib + 1) * QK8_0];
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK8_0 / 2 {
            let v0 = i32::from(blk[2 + j] & 0x0F) - 8;
            let v1 = i32::from(blk[2 + j] >> 4) - 8;
            sumi0 += v0 * i32::from(q8[j]);
            sumi1 += v1 * i32::from(q8[j + QK8_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        // sumi*GGML_FP16_TO_FP32(x.d)*GGML_FP16_TO_FP32(y.d), left to right
        sumf += sumi as f32 * read_f16(blk, 0) * a.d[ib];
    }
    sumf
}

// ---- Q4_1, Q5_0, Q5_1 (ggml-quants.c dequantize_row_*, ggml-cpu/quants.c *_generic) ----

/// High bit `j` of a Q5 block's `qh` moved to bit 4, as ggml's
/// `((qh >> j) << 4) & 0x10` (weights 0..16) / `(qh >> (j + 12)) & 0x10` (16..32).
#[inline]
fn q5_high(qh: u32, j: usize) -> (u8, u8) {
    (
        (((qh >> j) << 4) & 0x10) as u8,
        ((qh >> (j + 12)) & 0x10) as u8,
    )
}

pub(crate) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(Q4_1_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let (d, m) = (read_f16(blk, 0), read_f16(blk, 2));
        for j in 0..QK8_0 / 2 {
            let x0 = i32::from(blk[4 + j] & 0x0F);
            let x1 = i32::from(blk[4 + j] >> 4);
            y[j] = x0 as f32 * d + m;
            y[j + QK8_0 / 2] = x1 as f32 * d + m;
        }
    }
}

pub(crate) fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(Q5_0_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let d = read_f16(blk, 0);
        let qh = u32_at(blk, 2);
        for j in 0..QK8_0 / 2 {
            let (h0, h1) = q5_high(qh, j);
            let x0 = i32::from((blk[6 + j] & 0x0F) | h0) - 16;
            let x1 = i32::from((blk[6 + j] >> 4) | h1) - 16;
            y[j] = x0 as f32 * d;
            y[j + QK8_0 / 2] = x1 as f32 * d;
        }
    }
}

pub(crate) fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(Q5_1_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let (d, m) = (read_f16(blk, 0), read_f16(blk, 2));
        let qh = u32_at(blk, 4);
        for j in 0..QK8_0 / 2 {
            let (h0, h1) = q5_high(qh, j);
            let x0 = i32::from((blk[8 + j] & 0x0F) | h0);
            let x1 = i32::from((blk[8 + j] >> 4) | h1);
            y[j] = x0 as f32 * d + m;
            y[j + QK8_0 / 2] = x1 as f32 * d + m;
        }
    }
}

pub(crate) fn dot_q4_1_q8_1(w: &[u8], a: Q8_1Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ib, blk) in w.chunks_exact(Q4_1_BYTES).enumerate() {
        let q8 = &a.qs[ib * QK8_0..(ib + 1) * QK8_0];
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK8_0 / 2 {
            sumi0 += i32::from(blk[4 + j] & 0x0F) * i32::from(q8[j]);
            sumi1 += i32::from(blk[4 + j] >> 4) * i32::from(q8[j + QK8_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        // (x.d*y.d)*sumi + x.m*y.s
        sumf += (read_f16(blk, 0) * a.d[ib]) * sumi as f32 + read_f16(blk, 2) * a.s[ib];
    }
    sumf
}

pub(crate) fn dot_q5_0_q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ib, blk) in w.chunks_exact(Q5_0_BYTES).enumerate() {
        let q8 = &a.qs[ib * QK8_0..(ib + 1) * QK8_0];
        let qh = u32_at(blk, 2);
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK8_0 / 2 {
            let (h0, h1) = q5_high(qh, j);
            let x0 = i32::from((blk[6 + j] & 0x0F) | h0) - 16;
            let x1 = i32::from((blk[6 + j] >> 4) | h1) - 16;
            sumi0 += x0 * i32::from(q8[j]);
            sumi1 += x1 * i32::from(q8[j + QK8_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (read_f16(blk, 0) * a.d[ib]) * sumi as f32;
    }
    sumf
}

pub(crate) fn dot_q5_1_q8_1(w: &[u8], a: Q8_1Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ib, blk) in w.chunks_exact(Q5_1_BYTES).enumerate() {
        let q8 = &a.qs[ib * QK8_0..(ib + 1) * QK8_0];
        let qh = u32_at(blk, 4);
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK8_0 / 2 {
            let (h0, h1) = q5_high(qh, j);
            sumi0 += i32::from((blk[8 + j] & 0x0F) | h0) * i32::from(q8[j]);
            sumi1 += i32::from((blk[8 + j] >> 4) | h1) * i32::from(q8[j + QK8_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (read_f16(blk, 0) * a.d[ib]) * sumi as f32 + read_f16(blk, 2) * a.s[ib];
    }
    sumf
}
