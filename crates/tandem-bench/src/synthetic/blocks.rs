//! Random weights written directly as ggml blocks.
//!
//! Quantizing random floats would take minutes for an 8B model; instead the
//! quantized fields are random bytes (uniform codes) and only the scales are
//! chosen, so that every format dequantizes to values with mean ≈ 0 and
//! standard deviation ≈ [`WEIGHT_STD`], like a trained model's matrices.
//! A random code `q` uniform on `0..2^b` has standard deviation
//! `sqrt((4^b - 1) / 12)`; each format's scale divides that out.

use half::{bf16, f16};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};
use tandem_gguf::GgmlType;

use crate::BenchError;

/// Target standard deviation of a dequantized weight.
pub const WEIGHT_STD: f32 = 0.02;

/// Standard deviation of a code uniform on `0..2^bits`.
fn code_std(bits: i32) -> f32 {
    ((4f32.powi(bits) - 1.0) / 12.0).sqrt()
}

/// Root mean square of an integer uniform on `lo..=hi`.
fn uniform_rms(lo: f32, hi: f32) -> f32 {
    let n = hi - lo + 1.0;
    let mean = (lo + hi) / 2.0;
    ((n * n - 1.0) / 12.0 + mean * mean).sqrt()
}

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Packs 8 six-bit scales and mins as ggml's `get_scale_min_k4` reads them.
fn pack_scales_k4(sc: &[u8; 8], m: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
}

/// Fills `out` (a whole number of `ty` blocks) with random weights.
pub fn fill(ty: GgmlType, rng: &mut SmallRng, out: &mut [u8]) -> Result<(), BenchError> {
    let bb = usize::try_from(ty.block_bytes()).unwrap_or(usize::MAX);
    if !out.len().is_multiple_of(bb) {
        return Err(BenchError::Invalid(format!(
            "{} bytes is not a whole number of {ty} blocks",
            out.len()
        )));
    }
    match ty {
        GgmlType::F32 => {
            let a = WEIGHT_STD * 3f32.sqrt();
            for w in out.chunks_exact_mut(4) {
                w.copy_from_slice(&rng.random_range(-a..a).to_le_bytes());
            }
        }
        GgmlType::F16 | GgmlType::BF16 => {
            // Uniform on ±a has std a/√3.
            let a = WEIGHT_STD * 3f32.sqrt();
            for w in out.chunks_exact_mut(2) {
                let v = rng.random_range(-a..a);
                let bits = if ty == GgmlType::F16 {
                    f16::from_f32(v).to_bits()
                } else {
                    bf16::from_f32(v).to_bits()
                };
                w.copy_from_slice(&bits.to_le_bytes());
            }
        }
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            // { f16 d; codes }: w = d·q (Q8_0, signed bytes) or d·(q − 8) (Q4_0).
            rng.fill_bytes(out);
            let d = WEIGHT_STD / code_std(if ty == GgmlType::Q8_0 { 8 } else { 4 });
            for b in out.chunks_exact_mut(bb) {
                put_f16(b, 0, d);
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // { f16 d; f16 dmin; scales[12]; (qh[32]); qs }: w = d·sc·q − dmin·m.
            // With m = sc and dmin = d·mean(q) every sub-block is centred.
            let bits = if ty == GgmlType::Q4_K { 4 } else { 5 };
            let mean_q = ((1 << bits) - 1) as f32 / 2.0;
            let (lo, hi) = (32u8, 63u8);
            let d = WEIGHT_STD / (code_std(bits) * uniform_rms(lo.into(), hi.into()));
            rng.fill_bytes(out);
            let mut sc = [0u8; 8];
            for b in out.chunks_exact_mut(bb) {
                put_f16(b, 0, d);
                put_f16(b, 2, d * mean_q);
                sc.iter_mut().for_each(|s| *s = rng.random_range(lo..=hi));
                pack_scales_k4(&sc, &sc, &mut b[4..16]);
            }
        }
        GgmlType::Q6_K => {
            // { ql[128]; qh[64]; i8 scales[16]; f16 d }: w = d·sc·(q − 32).
            let (lo, hi) = (8i8, 15i8);
            let d = WEIGHT_STD / (code_std(6) * uniform_rms(lo.into(), hi.into()));
            rng.fill_bytes(out);
            for b in out.chunks_exact_mut(bb) {
                for s in &mut b[192..208] {
                    let mag = rng.random_range(lo..=hi);
                    *s = (if rng.random::<bool>() { mag } else { -mag }) as u8;
                }
                put_f16(b, 208, d);
            }
        }
        other => {
            return Err(BenchError::Invalid(format!(
                "no random generator for {other}"
            )))
        }
    }
    Ok(())
}
