//! Unit tests that need crate internals (the per-ISA kernels and
//! quantizers). Fixture and public-API tests live in `tests/`.
//!
//! Tolerance used when comparing the SIMD kernels with the scalar reference
//! (see [`tolerance`]): all compute the same exact integer block sums and
//! differ only in the order of f32 roundings, so
//! `|simd - ref| <= 2^-23 * (n/32 + 16) * Σ|w_i|·|a_i|`, where `Σ|w_i|·|a_i|`
//! bounds every partial sum either order can form (for Q4_K/Q5_K `|w_i|` is
//! split as `|d·sc·q| + |dmin·m|`) and `n/32 + 16` bounds the number of
//! rounded operations on any path. The integer parts are additionally
//! checked *exactly* by `exact_*` tests whose scales are powers of two and
//! whose sums stay below 2^24, where any accumulation order is exact.

mod attention;
mod interleaved;
mod isa;
#[cfg(target_arch = "aarch64")]
mod neon;
mod quantize;
mod reference;
mod simd_vs_reference;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::blocks::*;
use crate::convert::{f32_to_bf16, f32_to_f16};
use crate::{dequantize_row, ActivationFormat, QuantizedActivations, WeightFormat};

pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Magnitude class for the per-block scales of random weights.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Scales {
    /// |d| in [2^-10, 2^-2], random sign.
    Normal,
    /// d = 2^-24 (the smallest f16 subnormal).
    Tiny,
    /// |d| up to 65504 (f16 max).
    Huge,
    /// Every block all-zero bytes.
    ZeroBlocks,
    /// All quant / scale bytes 0xFF (maximum magnitude), normal d.
    MaxQuants,
    /// d = dmin = 2^-4, scales ≤ 7: exact-arithmetic test weights.
    Exact,
}

fn random_scale(rng: &mut StdRng, s: Scales) -> f32 {
    let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
    match s {
        Scales::Normal | Scales::MaxQuants => sign * 2f32.powf(rng.random_range(-10.0..-2.0)),
        Scales::Tiny => sign * 2f32.powi(-24),
        Scales::Huge => sign * rng.random_range(1000.0..65504.0),
        Scales::ZeroBlocks => 0.0,
        Scales::Exact => 0.0625,
    }
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// Random weight matrix (`n_rows * row_bytes(n_cols)` bytes).
pub(crate) fn random_weights(
    rng: &mut StdRng,
    f: WeightFormat,
    n_rows: usize,
    n_cols: usize,
    s: Scales,
) -> Vec<u8> {
    let rb = f.row_bytes(n_cols).unwrap();
    let mut w = vec![0u8; n_rows * rb];
    match f {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            for i in 0..n_rows * n_cols {
                let v = match s {
                    Scales::ZeroBlocks => 0.0,
                    // multiples of 1/16 with |numerator| <= 64: exact in f16 and bf16
                    Scales::Exact => rng.random_range(-64i32..=64) as f32 / 16.0,
                    _ => rng.random_range(-1.0f32..1.0) * random_scale(rng, s).abs(),
                };
                match f {
                    WeightFormat::F32 => w[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes()),
                    WeightFormat::F16 => {
                        w[2 * i..2 * i + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes())
                    }
                    _ => w[2 * i..2 * i + 2].copy_from_slice(&f32_to_bf16(v).to_le_bytes()),
                }
            }
        }
        _ => {
            let bb = f.block_bytes();
            for blk in w.chunks_exact_mut(bb) {
                if s == Scales::ZeroBlocks {
                    continue;
                }
                rng.fill(blk);
                if s == Scales::MaxQuants {
                    blk.fill(0xFF);
                    if f == WeightFormat::Q8_0 {
                        blk[2..].fill(0x80); // -128, the most negative quant
                    }
                }
                let (d, dmin) = (random_scale(rng, s), random_scale(rng, s));
                match f {
                    WeightFormat::Q8_0 | WeightFormat::Q4_0 => put_f16(blk, 0, d),
                    WeightFormat::Q4_K | WeightFormat::Q5_K => {
                        put_f16(blk, 0, d);
                        put_f16(blk, 2, dmin);
                        if s == Scales::Exact {
                            // every 6-bit scale and min <= 7
                            for b in &mut blk[K_SCALES_OFF..K_SCALES_OFF + 12] {
                                *b &= 0x07;
                            }
                        }
                    }
                    WeightFormat::Q6_K => {
                        put_f16(blk, Q6_K_D_OFF, d);
                        if s == Scales::Exact {
                            for b in &mut blk[Q6_K_SCALES_OFF..Q6_K_SCALES_OFF + 16] {
                                *b = (rng.random_range(-7i8..=7)) as u8;
                            }
                        }
                    }
                    _ => set_new_type_scales(rng, f, blk, s, d, dmin),
                }
            }
        }
    }
    w
}

/// Offsets of a block's f16 `d` and (for formats with mins) `dmin` / `m`
/// field, for the formats added with the full type table.
pub(crate) fn scale_fields(f: WeightFormat) -> (Option<usize>, Option<usize>) {
    use WeightFormat::*;
    match f {
        Q4_1 | Q5_1 => (Some(0), Some(2)),
        Q2_K => (Some(Q2_K_D_OFF), Some(Q2_K_D_OFF + 2)),
        Q3_K => (Some(Q3_K_D_OFF), None),
        TQ1_0 => (Some(52), None),
        TQ2_0 => (Some(64), None),
        MXFP4 | IQ1_M => (None, None),
        _ => (Some(0), None),
    }
}

/// Valid random scales for the new formats; `Exact` also shrinks sub-block
/// scales so that every partial sum stays exact in f32 (see the module docs).
fn set_new_type_scales(
    rng: &mut StdRng,
    f: WeightFormat,
    blk: &mut [u8],
    s: Scales,
    d: f32,
    dmin: f32,
) {
    use WeightFormat::*;
    let (df, mf) = scale_fields(f);
    if let Some(o) = df {
        put_f16(blk, o, d);
    }
    if let Some(o) = mf {
        // Exact: no mins, so Q8_1's rounded s never enters the result
        put_f16(blk, o, if s == Scales::Exact { 0.0 } else { dmin });
    }
    match f {
        MXFP4 => {
            blk[0] = match s {
                Scales::Tiny => rng.random_range(0..4),
                Scales::Huge => rng.random_range(140..150),
                Scales::Exact => 124, // d = 2^-4
                _ => rng.random_range(118..126),
            }
        }
        IQ1_M => {
            let bits = f32_to_f16(d);
            for i in 0..4 {
                let o = 48 + 2 * i + 1;
                blk[o] = (blk[o] & 0x0F) | ((((bits >> (4 * i)) & 0xF) as u8) << 4);
            }
        }
        _ => {}
    }
    if s == Scales::Exact {
        match f {
            // sub-block scales: 2·0 + 1
            IQ2_XS => blk[66..74].fill(0),
            IQ2_S => blk[74..82].fill(0),
            IQ3_S => blk[106..110].fill(0),
            IQ2_XXS => (0..8).for_each(|i| blk[2 + 8 * i + 7] &= 0x0F),
            IQ3_XXS => (0..8).for_each(|i| blk[66 + 4 * i + 3] &= 0x0F),
            IQ1_S => (0..8).for_each(|i| blk[34 + 2 * i + 1] &= 0x8F),
            IQ1_M => (48..56).for_each(|o| blk[o] &= if o % 2 == 1 { 0xF0 } else { 0 }),
            IQ4_XS => {
                // ls = 32 + (0 or 1)
                blk[2..4].copy_from_slice(&0xAAAAu16.to_le_bytes());
                (4..8).for_each(|o| blk[o] &= 0x11);
            }
            _ => {}
        }
    }
}

/// Magnitude class for random activations.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Acts {
    Normal,
    Tiny,
    Huge,
    Zero,
    /// Every value ±M for one M per row (all quants ±127).
    MaxMagnitude,
    /// Multiples of 1/8 with the row max 127/8: exact Q8 scales (1/8) and quants.
    Exact,
}

pub(crate) fn random_acts(rng: &mut StdRng, n_rows: usize, n_cols: usize, a: Acts) -> Vec<f32> {
    let mut x = vec![0f32; n_rows * n_cols];
    for row in x.chunks_exact_mut(n_cols.max(1)) {
        let scale = match a {
            Acts::Normal => 2f32.powf(rng.random_range(-6.0..6.0)),
            Acts::Tiny => 1e-20,
            Acts::Huge => 1e4,
            _ => 1.0,
        };
        for v in row.iter_mut() {
            *v = match a {
                Acts::Zero => 0.0,
                Acts::MaxMagnitude => {
                    if rng.random::<bool>() {
                        scale
                    } else {
                        -scale
                    }
                }
                Acts::Exact => rng.random_range(-127i32..=127) as f32 / 8.0,
                _ => rng.random_range(-1.0f32..1.0) * scale,
            };
        }
        if a == Acts::Exact {
            // pin the block maxima so d = 1/8 exactly (Q8_0 every 32, Q8_K every 256; sign alternates)
            for (i, v) in row.iter_mut().enumerate() {
                if i % 32 == 0 {
                    *v = if (i / 32) % 2 == 0 {
                        -127.0 / 8.0
                    } else {
                        127.0 / 8.0
                    };
                }
            }
        }
    }
    x
}

/// Per-weight magnitudes `|d·sc·q| + |dmin·m|` (K-quants with mins) or `|w|`.
pub(crate) fn weight_magnitudes(f: WeightFormat, row: &[u8], n_cols: usize) -> Vec<f64> {
    let deq = |bytes: &[u8]| {
        let mut v = vec![0f32; n_cols];
        dequantize_row(f, bytes, &mut v).unwrap();
        v
    };
    let fields = match f {
        WeightFormat::Q4_K | WeightFormat::Q5_K => Some((0, 2)),
        WeightFormat::Q4_1 | WeightFormat::Q5_1 => Some((0, 2)),
        WeightFormat::Q2_K => Some((Q2_K_D_OFF, Q2_K_D_OFF + 2)),
        _ => None,
    };
    match fields {
        Some((d_off, m_off)) => {
            let bb = f.block_bytes();
            let mut no_min = row.to_vec();
            let mut no_d = row.to_vec();
            for blk in no_min.chunks_exact_mut(bb) {
                blk[m_off..m_off + 2].fill(0);
            }
            for blk in no_d.chunks_exact_mut(bb) {
                blk[d_off..d_off + 2].fill(0);
            }
            deq(&no_min)
                .iter()
                .zip(deq(&no_d))
                .map(|(a, b)| f64::from(a.abs()) + f64::from(b.abs()))
                .collect()
        }
        None => deq(row).iter().map(|v| f64::from(v.abs())).collect(),
    }
}

/// Σ |w_i|·|a_i| for weight row `w` and activation row `b`.
pub(crate) fn magnitude(f: WeightFormat, w: &[u8], acts: &QuantizedActivations, b: usize) -> f64 {
    let n = acts.n_cols();
    let mut a = vec![0f32; n];
    acts.dequantize_row(b, &mut a).unwrap();
    weight_magnitudes(f, w, n)
        .iter()
        .zip(&a)
        .map(|(w, a)| w * f64::from(a.abs()))
        .sum()
}

/// Allowed |simd - reference| difference, see the module docs.
pub(crate) fn tolerance(n_cols: usize, mag: f64) -> f64 {
    2f64.powi(-23) * (n_cols as f64 / 32.0 + 16.0) * mag + 1e-30
}

pub(crate) fn act_format(f: WeightFormat) -> ActivationFormat {
    f.activation_format()
}
