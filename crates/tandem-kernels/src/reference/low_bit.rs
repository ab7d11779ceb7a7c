//! The 1- and 2-bit blocks Q1_0 (128 weights, `±d`) and Q2_0 (64 weights,
//! `(q - 1)·d` with `q ∈ 0..4`) against Q8_0 activations:
//! `dequantize_row_q{1,2}_0` (ggml-quants.c) and
//! `ggml_vec_dot_q{1,2}_0_q8_0_generic` (ggml-cpu/quants.c).
//!
//! A weight block spans several 32-value activation blocks (four for Q1_0,
//! two for Q2_0), so unlike the legacy formats the dot keeps two float
//! levels, exactly as ggml writes them: an exact i32 sum per activation
//! block, scaled by that block's `d1` and added to a per-weight-block f32
//! (`sumi += d1 * sumi_block`), which is then scaled by the weight block's
//! `d0` (`sumf += d0 * sumi`).
//!
//! llama.cpp's x86 build runs this generic code for Q2_0; for Q1_0 its AVX2
//! kernel (`ggml_vec_dot_q1_0_q8_0` in arch/x86/quants.c) keeps eight lane
//! partial sums per weight block and FMAs them, a different f32 order (the
//! logits tests bound the difference). Neither type has a SIMD kernel here:
//! every family falls back to this reference (see `registry.rs`).

use crate::activations::Q8Row;
use crate::blocks::{Q1_0_BYTES, Q2_0_BYTES, QK1_0, QK2_0, QK8_0};
use crate::convert::read_f16;

pub(crate) fn dequantize_q1_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(Q1_0_BYTES)
        .zip(dst.chunks_exact_mut(QK1_0))
    {
        let d = read_f16(blk, 0);
        let neg_d = -d;
        for (j, y) in y.iter_mut().enumerate() {
            let bit = (blk[2 + j / 8] >> (j % 8)) & 1;
            *y = if bit != 0 { d } else { neg_d };
        }
    }
}

pub(crate) fn dequantize_q2_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(Q2_0_BYTES)
        .zip(dst.chunks_exact_mut(QK2_0))
    {
        let d = read_f16(blk, 0);
        for (j, y) in y.iter_mut().enumerate() {
            let q = (blk[2 + j / 4] >> (2 * (j % 4))) & 0x03;
            // 00 = -1, 01 = 0, 10 = +1, 11 = +2
            *y = (i32::from(q) - 1) as f32 * d;
        }
    }
}

pub(crate) fn dot_q1_0_q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(Q1_0_BYTES).enumerate() {
        let d0 = read_f16(blk, 0);
        let mut sumi = 0.0f32;
        for k in 0..QK1_0 / QK8_0 {
            let ib = i * (QK1_0 / QK8_0) + k;
            let d1 = a.d[ib];
            let qy = &a.qs[ib * QK8_0..(ib + 1) * QK8_0];
            let bits = &blk[2 + 4 * k..2 + 4 * k + 4];
            let mut sumi_block = 0i32;
            for (b, &mask) in bits.iter().enumerate() {
                for (l, &q) in qy[8 * b..8 * b + 8].iter().enumerate() {
                    let q = i32::from(q);
                    sumi_block += if (mask >> l) & 1 != 0 { q } else { -q };
                }
            }
            sumi += d1 * sumi_block as f32;
        }
        sumf += d0 * sumi;
    }
    sumf
}

pub(crate) fn dot_q2_0_q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(Q2_0_BYTES).enumerate() {
        let d0 = read_f16(blk, 0);
        let mut sumi = 0.0f32;
        // one Q2_0 block (64 weights) maps to two Q8_0 blocks
        for k in 0..QK2_0 / QK8_0 {
            let ib = i * (QK2_0 / QK8_0) + k;
            let d1 = a.d[ib];
            let qy = &a.qs[ib * QK8_0..(ib + 1) * QK8_0];
            let qs = &blk[2 + 8 * k..2 + 8 * k + 8];
            let mut sumi_block = 0i32;
            for (b, &byte) in qs.iter().enumerate() {
                for l in 0..4 {
                    let v = i32::from((byte >> (2 * l)) & 3) - 1;
                    sumi_block += v * i32::from(qy[4 * b + l]);
                }
            }
            sumi += d1 * sumi_block as f32;
        }
        sumf += d0 * sumi;
    }
    sumf
}
