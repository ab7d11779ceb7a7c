//! Random weights written directly as ggml blocks.
//!
//! Quantizing random floats would take minutes for an 8B model; instead the
//! quantized fields are random bytes (uniform codes) and only the scales are
//! chosen, so that every format dequantizes to values with mean ≈ 0 and
//! standard deviation ≈ [`WEIGHT_STD`], like a trained model's matrices.
//! A random code `q` uniform on `0..2^b` has standard deviation
//! `sqrt((4^b - 1) / 12)`; each format's scale divides that out. The
//! codebook formats (IQ*, MXFP4, TQ*) and the 1- and 2-bit Q1_0 / Q2_0 take
//! their scale from the measured RMS of random blocks at scale 1
//! ([`unit_rms`]).

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
        GgmlType::Q2_K => {
            // { scales[16]; qs[64]; f16 d; f16 dmin }: w = d·(sc & 15)·q − dmin·(sc >> 4).
            // Scale = min = s per sub-block and dmin = d·mean(q) centre every sub-block.
            let (lo, hi) = (8u8, 15u8);
            let d = WEIGHT_STD / (code_std(2) * uniform_rms(lo.into(), hi.into()));
            rng.fill_bytes(out);
            for b in out.chunks_exact_mut(bb) {
                for s in &mut b[..16] {
                    let v = rng.random_range(lo..=hi);
                    *s = v | (v << 4);
                }
                put_f16(b, 80, d);
                put_f16(b, 82, d * 1.5);
            }
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            // { f16 d; f16 m; (qh[4]); qs }: w = d·q + m, centred by m = −d·mean(q).
            let bits = if ty == GgmlType::Q4_1 { 4 } else { 5 };
            let d = WEIGHT_STD / code_std(bits);
            let mean_q = ((1 << bits) - 1) as f32 / 2.0;
            rng.fill_bytes(out);
            for b in out.chunks_exact_mut(bb) {
                put_f16(b, 0, d);
                put_f16(b, 2, -d * mean_q);
            }
        }
        GgmlType::IQ1_M => {
            // The f16 super-block scale is spread over the top nibbles of the
            // four u16 sub-block scales at bytes 48..56.
            let d = WEIGHT_STD / unit_rms(ty)?;
            let bits = f16::from_f32(d).to_bits();
            rng.fill_bytes(out);
            for b in out.chunks_exact_mut(bb) {
                for i in 0..4 {
                    let at = 48 + 2 * i;
                    let v = u16::from_le_bytes([b[at], b[at + 1]]);
                    let v = (v & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12);
                    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        GgmlType::MXFP4 => {
            // { u8 e (E8M0 exponent); qs[16] }: a power-of-two scale.
            let e = E8M0_UNIT + (WEIGHT_STD / unit_rms(ty)?).log2().round() as i32;
            let e = u8::try_from(e.clamp(1, 254)).unwrap_or(127);
            rng.fill_bytes(out);
            for b in out.chunks_exact_mut(bb) {
                b[0] = e;
            }
        }
        other => {
            // The formats whose only float field is one f16 `d` (every code
            // pattern is valid): random codes, `d` from the measured RMS.
            let Some(at) = d_offset(other) else {
                return Err(BenchError::Invalid(format!(
                    "no random generator for {other}"
                )));
            };
            let d = WEIGHT_STD / unit_rms(other)?;
            rng.fill_bytes(out);
            for b in out.chunks_exact_mut(bb) {
                put_f16(b, at, d);
            }
        }
    }
    Ok(())
}

/// The E8M0 exponent byte that means a scale of 1 in [`unit_rms`]'s blocks.
const E8M0_UNIT: i32 = 127;

/// Byte offset of the single f16 scale `d` in the formats that have nothing
/// else to choose (ggml's block structs).
fn d_offset(ty: GgmlType) -> Option<usize> {
    Some(match ty {
        GgmlType::Q5_0
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ1_S
        | GgmlType::Q1_0
        | GgmlType::Q2_0 => 0,
        GgmlType::Q3_K => 108,
        GgmlType::TQ1_0 => 52,
        GgmlType::TQ2_0 => 64,
        _ => return None,
    })
}

/// RMS of the weights of random blocks of `ty` whose scale is 1 (f16 `d` =
/// 1, or the E8M0 exponent [`E8M0_UNIT`]), measured once by dequantizing
/// them with tandem-kernels: the codebook formats (IQ*, MXFP4) have no
/// closed-form code distribution worth writing down.
fn unit_rms(ty: GgmlType) -> Result<f32, BenchError> {
    use rand::SeedableRng;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<u32, f32>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = cache.lock().ok().and_then(|c| c.get(&ty.id()).copied()) {
        return Ok(v);
    }
    let fmt = tandem_kernels::WeightFormat::from_ggml(ty)
        .ok_or_else(|| BenchError::Invalid(format!("{ty} is not a weight format")))?;
    let bb = fmt.block_bytes();
    let n_blocks = 64;
    let mut raw = vec![0u8; bb * n_blocks];
    let mut rng = SmallRng::seed_from_u64(0x5EED);
    rng.fill_bytes(&mut raw);
    for b in raw.chunks_exact_mut(bb) {
        match ty {
            GgmlType::MXFP4 => b[0] = E8M0_UNIT as u8,
            GgmlType::IQ1_M => {
                let bits = f16::from_f32(1.0).to_bits();
                for i in 0..4 {
                    let at = 48 + 2 * i;
                    let v = u16::from_le_bytes([b[at], b[at + 1]]);
                    let v = (v & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12);
                    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                let at = d_offset(ty)
                    .ok_or_else(|| BenchError::Invalid(format!("no scale offset for {ty}")))?;
                put_f16(b, at, 1.0);
            }
        }
    }
    let mut w = vec![0f32; fmt.block_len() * n_blocks];
    tandem_kernels::dequantize_row(fmt, &raw, &mut w)
        .map_err(|e| BenchError::Invalid(format!("{ty}: {e}")))?;
    let rms = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    if !(rms.is_finite() && rms > 0.0) {
        return Err(BenchError::Invalid(format!(
            "{ty}: random blocks have RMS {rms}"
        )));
    }
    if let Ok(mut c) = cache.lock() {
        c.insert(ty.id(), rms);
    }
    Ok(rms)
}
