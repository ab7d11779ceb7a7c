//! Q8_0 and Q4_0 weights (32-weight blocks with one f16 scale) against Q8_0
//! activations: `dequantize_row_q{8,4}_0` and `ggml_vec_dot_q{8,4}_0_q8_0_generic`.
//! The 32 products of a block are summed exactly in an i32, then scaled.

use crate::activations::Q8Row;
use crate::blocks::{Q4_0_BYTES, Q8_0_BYTES, QK8_0};
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
