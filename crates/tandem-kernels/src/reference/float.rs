//! F32 / F16 / BF16 rows: dequantization is a widening copy; the dot products
//! follow ggml's scalar `ggml_vec_dot_{f32,f16,bf16}`: each product rounded
//! in f32, accumulated in f64 (`ggml_float`), the sum rounded to f32 once.

use crate::convert::{bf16_to_f32, f16_to_f32};

#[inline]
fn f32_at(w: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]])
}

#[inline]
fn u16_at(w: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([w[2 * i], w[2 * i + 1]])
}

pub(crate) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = f32_at(src, i);
    }
}

pub(crate) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = f16_to_f32(u16_at(src, i));
    }
}

pub(crate) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = bf16_to_f32(u16_at(src, i));
    }
}

pub(crate) fn dot_f32(w: &[u8], a: &[f32]) -> f32 {
    let mut sumf = 0.0f64;
    for (i, &y) in a.iter().enumerate() {
        sumf += f64::from(f32_at(w, i) * y);
    }
    sumf as f32
}

pub(crate) fn dot_f16(w: &[u8], a: &[u16]) -> f32 {
    let mut sumf = 0.0f64;
    for (i, &y) in a.iter().enumerate() {
        sumf += f64::from(f16_to_f32(u16_at(w, i)) * f16_to_f32(y));
    }
    sumf as f32
}

pub(crate) fn dot_bf16(w: &[u8], a: &[u16]) -> f32 {
    let mut sumf = 0.0f64;
    for (i, &y) in a.iter().enumerate() {
        sumf += f64::from(bf16_to_f32(u16_at(w, i)) * bf16_to_f32(y));
    }
    sumf as f32
}
