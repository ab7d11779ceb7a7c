//! Activation quantizers (scalar). Each processes any number of consecutive
//! blocks, so B rows stored back to back are quantized in one call.
//!
//! * [`q8_0_x86`]: ggml-cpu's x86 `quantize_row_q8_0` (what llama.cpp runs on x86).
//! * [`q8_0_ref`]: ggml's `quantize_row_q8_0_ref` (= gguf-py).
//! * [`q8_k`]: ggml's `quantize_row_q8_K_ref` (x86 ggml uses it too).
//!
//! Non-finite inputs give unspecified (but memory-safe, non-panicking) quants.

use crate::activations::{narrow_scale, widen_scale};
use crate::blocks::{QK8_0, QK_K};
use crate::convert::{f32_to_bf16, f32_to_f16};

pub(crate) fn f16_row(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f32_to_f16(v);
    }
}

pub(crate) fn bf16_row(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f32_to_bf16(v);
    }
}

/// `d = amax/127` (stored as f16), `id = 127/amax`, `q = round_half_even(x*id)`.
pub(crate) fn q8_0_x86(x: &[f32], qs: &mut [i8], d_bits: &mut [u16], d: &mut [f32]) {
    let blocks = x.chunks_exact(QK8_0).zip(qs.chunks_exact_mut(QK8_0));
    for (((xb, qb), db), df) in blocks.zip(d_bits.iter_mut()).zip(d.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bits = narrow_scale(amax / 127.0);
        *db = bits;
        *df = widen_scale(bits);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// `d = amax/127` (stored as f16), `id = 1/d`, `q = roundf(x*id)` (half away from zero).
pub(crate) fn q8_0_ref(x: &[f32], qs: &mut [i8], d_bits: &mut [u16], d: &mut [f32]) {
    let blocks = x.chunks_exact(QK8_0).zip(qs.chunks_exact_mut(QK8_0));
    for (((xb, qb), db), df) in blocks.zip(d_bits.iter_mut()).zip(d.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let dd = amax / 127.0;
        let bits = narrow_scale(dd);
        *db = bits;
        *df = widen_scale(bits);
        let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

/// ggml's `nearest_int`: round half to even (the `+ 12582912.f` trick, valid
/// for |x| < 2^22, which `iscale * x` always is).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// `quantize_row_q8_K_ref`: signed max by |x| (first occurrence wins),
/// `iscale = -127/max`, `q = min(127, nearest_int(iscale*x))`, `d = 1/iscale`,
/// `bsums[g] = Σ q[16g..16g+16]`. An all-zero block gives d = 0, q = 0.
pub(crate) fn q8_k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    let blocks = x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K));
    for (((xb, qb), db), bs) in blocks
        .zip(d.iter_mut())
        .zip(bsums.chunks_exact_mut(QK_K / 16))
    {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *db = 0.0;
            qb.fill(0);
            bs.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
        }
        for (s, g) in bs.iter_mut().zip(qb.chunks_exact(16)) {
            *s = g.iter().map(|&q| i16::from(q)).sum();
        }
        *db = 1.0 / iscale;
    }
}
