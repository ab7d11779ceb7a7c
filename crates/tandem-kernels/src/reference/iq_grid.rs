//! The grid ("i-quant") formats: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S,
//! IQ1_S, IQ1_M (256-weight super-blocks, Q8_K activations). Groups of 8 (or
//! 4) weights are an index into a fixed grid of byte vectors (`grids.rs`,
//! copied from ggml-common.h) plus, for IQ2/IQ3, 8 sign bits (`ksigns_iq2xs`
//! expands 7 stored bits to 8 with even parity). Mirrors
//! `dequantize_row_iq*` (ggml-quants.c) and `ggml_vec_dot_iq*_q8_K_generic`
//! (ggml-cpu/quants.c) statement by statement: integer sums are exact, the
//! float expressions keep ggml's order, including the final `0.125f *` /
//! `0.25f *` factors of the IQ2 / IQ3_XXS dots.

use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::convert::{f16_to_f32, read_f16};
use crate::grids::*;

#[inline]
fn sign(signs: u8, j: usize) -> f32 {
    if signs & KMASK_IQ2XS[j] != 0 {
        -1.0
    } else {
        1.0
    }
}

#[inline]
fn isign(signs: u8, j: usize) -> i32 {
    if signs & KMASK_IQ2XS[j] != 0 {
        -1
    } else {
        1
    }
}

#[inline]
fn g8(entry: u64) -> [u8; 8] {
    entry.to_le_bytes()
}

#[inline]
fn g4(entry: u32) -> [u8; 4] {
    entry.to_le_bytes()
}

/// `Σ_j grid[j]·q8[j]·sign_j` over one group of 8.
#[inline]
fn signed_dot8(grid: [u8; 8], signs: u8, q8: &[i8]) -> i32 {
    let mut s = 0;
    for j in 0..8 {
        s += i32::from(grid[j]) * i32::from(q8[j]) * isign(signs, j);
    }
    s
}

// ---------------------------------------------------------------- IQ2_XXS

pub(crate) fn dequantize_iq2_xxs(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ2_XXS_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 0);
        for ib32 in 0..QK_K / 32 {
            let aux0 = &blk[2 + 8 * ib32..2 + 8 * ib32 + 4];
            let aux1 = u32_at(blk, 2 + 8 * ib32 + 4);
            let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
            for l in 0..4 {
                let grid = g8(IQ2XXS_GRID[usize::from(aux0[l])]);
                let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..8 {
                    y[j] = db * f32::from(grid[j]) * sign(signs, j);
                }
            }
        }
    }
}

pub(crate) fn dot_iq2_xxs_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(IQ2_XXS_BYTES).enumerate() {
        let d = read_f16(blk, 0) * y.d[i];
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut bsum = 0i32;
        for ib32 in 0..QK_K / 32 {
            let aux0 = &blk[2 + 8 * ib32..2 + 8 * ib32 + 4];
            let aux1 = u32_at(blk, 2 + 8 * ib32 + 4);
            let ls = 2 * (aux1 >> 28) as i32 + 1;
            let mut sumi = 0i32;
            for l in 0..4 {
                let grid = g8(IQ2XXS_GRID[usize::from(aux0[l])]);
                let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                sumi += signed_dot8(grid, signs, &q8[32 * ib32 + 8 * l..]);
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

// ---------------------------------------------------------------- IQ2_XS

pub(crate) fn dequantize_iq2_xs(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ2_XS_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 0);
        for ib32 in 0..QK_K / 32 {
            let sc = blk[66 + ib32];
            let db = [
                d * (0.5 + f32::from(sc & 0xf)) * 0.25,
                d * (0.5 + f32::from(sc >> 4)) * 0.25,
            ];
            for l in 0..4 {
                let q = u16_at(blk, 2 + 2 * (4 * ib32 + l));
                let grid = g8(IQ2XS_GRID[usize::from(q & 511)]);
                let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..8 {
                    y[j] = db[l / 2] * f32::from(grid[j]) * sign(signs, j);
                }
            }
        }
    }
}

pub(crate) fn dot_iq2_xs_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(IQ2_XS_BYTES).enumerate() {
        let d = read_f16(blk, 0) * y.d[i];
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut bsum = 0i32;
        for ib32 in 0..QK_K / 32 {
            let sc = blk[66 + ib32];
            let ls = [2 * i32::from(sc & 0xf) + 1, 2 * i32::from(sc >> 4) + 1];
            for (half, ls) in ls.into_iter().enumerate() {
                let mut sumi = 0i32;
                for l in 2 * half..2 * half + 2 {
                    let q = u16_at(blk, 2 + 2 * (4 * ib32 + l));
                    let grid = g8(IQ2XS_GRID[usize::from(q & 511)]);
                    let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
                    sumi += signed_dot8(grid, signs, &q8[32 * ib32 + 8 * l..]);
                }
                bsum += sumi * ls;
            }
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

// ---------------------------------------------------------------- IQ2_S

/// IQ2_S grid index of group `l` (0..4) of sub-block `ib32`.
#[inline]
fn iq2_s_index(blk: &[u8], ib32: usize, l: usize) -> usize {
    let qs = usize::from(blk[2 + 4 * ib32 + l]);
    let qh = usize::from(blk[66 + ib32]);
    qs | ((qh << (8 - 2 * l)) & 0x300)
}

pub(crate) fn dequantize_iq2_s(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ2_S_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 0);
        for ib32 in 0..QK_K / 32 {
            let sc = blk[74 + ib32];
            let db = [
                d * (0.5 + f32::from(sc & 0xf)) * 0.25,
                d * (0.5 + f32::from(sc >> 4)) * 0.25,
            ];
            for l in 0..4 {
                let dl = db[l / 2];
                let grid = g8(IQ2S_GRID[iq2_s_index(blk, ib32, l)]);
                let signs = blk[34 + 4 * ib32 + l];
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..8 {
                    y[j] = dl * f32::from(grid[j]) * sign(signs, j);
                }
            }
        }
    }
}

pub(crate) fn dot_iq2_s_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(IQ2_S_BYTES).enumerate() {
        let d = read_f16(blk, 0) * y.d[i];
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut bsum = 0i32;
        for ib32 in 0..QK_K / 32 {
            let sc = blk[74 + ib32];
            let ls1 = 1 + 2 * i32::from(sc & 0xf);
            let ls2 = 1 + 2 * i32::from(sc >> 4);
            let mut sumi = [0i32; 2];
            for l in 0..4 {
                let grid = g8(IQ2S_GRID[iq2_s_index(blk, ib32, l)]);
                let signs = blk[34 + 4 * ib32 + l];
                sumi[l / 2] += signed_dot8(grid, signs, &q8[32 * ib32 + 8 * l..]);
            }
            bsum += ls1 * sumi[0] + ls2 * sumi[1];
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

// ---------------------------------------------------------------- IQ3_XXS

pub(crate) fn dequantize_iq3_xxs(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ3_XXS_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 0);
        for ib32 in 0..QK_K / 32 {
            let qs = &blk[2 + 8 * ib32..2 + 8 * ib32 + 8];
            let aux32 = u32_at(blk, 66 + 4 * ib32);
            let db = d * (0.5 + (aux32 >> 28) as f32) * 0.5;
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux32 >> (7 * l)) & 127) as usize];
                let grid1 = g4(IQ3XXS_GRID[usize::from(qs[2 * l])]);
                let grid2 = g4(IQ3XXS_GRID[usize::from(qs[2 * l + 1])]);
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..4 {
                    y[j] = db * f32::from(grid1[j]) * sign(signs, j);
                    y[j + 4] = db * f32::from(grid2[j]) * sign(signs, j + 4);
                }
            }
        }
    }
}

/// `Σ` over one group of 8 built from two 4-wide grid points.
#[inline]
fn signed_dot4x2(grid1: [u8; 4], grid2: [u8; 4], signs: u8, q8: &[i8]) -> i32 {
    let mut s = 0;
    for j in 0..4 {
        s += i32::from(grid1[j]) * i32::from(q8[j]) * isign(signs, j);
        s += i32::from(grid2[j]) * i32::from(q8[j + 4]) * isign(signs, j + 4);
    }
    s
}

pub(crate) fn dot_iq3_xxs_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(IQ3_XXS_BYTES).enumerate() {
        let d = read_f16(blk, 0) * y.d[i];
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut bsum = 0i32;
        for ib32 in 0..QK_K / 32 {
            let qs = &blk[2 + 8 * ib32..2 + 8 * ib32 + 8];
            let aux32 = u32_at(blk, 66 + 4 * ib32);
            let ls = 2 * (aux32 >> 28) as i32 + 1;
            let mut sumi = 0i32;
            for l in 0..4 {
                let grid1 = g4(IQ3XXS_GRID[usize::from(qs[2 * l])]);
                let grid2 = g4(IQ3XXS_GRID[usize::from(qs[2 * l + 1])]);
                let signs = KSIGNS_IQ2XS[((aux32 >> (7 * l)) & 127) as usize];
                sumi += signed_dot4x2(grid1, grid2, signs, &q8[32 * ib32 + 8 * l..]);
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    0.25 * sumf
}

// ---------------------------------------------------------------- IQ3_S

/// IQ3_S grid indices of group `l` (0..4) of sub-block `ib32`.
#[inline]
fn iq3_s_indices(blk: &[u8], ib32: usize, l: usize) -> (usize, usize) {
    let qs = &blk[2 + 8 * ib32..2 + 8 * ib32 + 8];
    let qh = usize::from(blk[66 + ib32]);
    (
        usize::from(qs[2 * l]) | ((qh << (8 - 2 * l)) & 256),
        usize::from(qs[2 * l + 1]) | ((qh << (7 - 2 * l)) & 256),
    )
}

pub(crate) fn dequantize_iq3_s(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ3_S_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 0);
        for ib32 in 0..QK_K / 32 {
            let sc = blk[106 + ib32 / 2] >> (4 * (ib32 % 2));
            let db = d * (1 + 2 * i32::from(sc & 0xf)) as f32;
            for l in 0..4 {
                let (i1, i2) = iq3_s_indices(blk, ib32, l);
                let (grid1, grid2) = (g4(IQ3S_GRID[i1]), g4(IQ3S_GRID[i2]));
                let signs = blk[74 + 4 * ib32 + l];
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..4 {
                    y[j] = db * f32::from(grid1[j]) * sign(signs, j);
                    y[j + 4] = db * f32::from(grid2[j]) * sign(signs, j + 4);
                }
            }
        }
    }
}

pub(crate) fn dot_iq3_s_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(IQ3_S_BYTES).enumerate() {
        let d = read_f16(blk, 0) * y.d[i];
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut bsum = 0i32;
        for ib32 in 0..QK_K / 32 {
            let sc = blk[106 + ib32 / 2] >> (4 * (ib32 % 2));
            let ls = 2 * i32::from(sc & 0xf) + 1;
            let mut sumi = 0i32;
            for l in 0..4 {
                let (i1, i2) = iq3_s_indices(blk, ib32, l);
                let signs = blk[74 + 4 * ib32 + l];
                sumi += signed_dot4x2(
                    g4(IQ3S_GRID[i1]),
                    g4(IQ3S_GRID[i2]),
                    signs,
                    &q8[32 * ib32 + 8 * l..],
                );
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    sumf
}

// ---------------------------------------------------------------- IQ1_S

/// IQ1_S grid index of group `l` of sub-block `ib` (11 bits).
#[inline]
fn iq1_s_index(blk: &[u8], ib: usize, l: usize) -> usize {
    let qh = usize::from(u16_at(blk, 34 + 2 * ib));
    usize::from(blk[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
}

#[inline]
fn g8s(entry: u64) -> [i8; 8] {
    entry.to_le_bytes().map(|b| b as i8)
}

pub(crate) fn dequantize_iq1_s(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ1_S_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 0);
        for ib in 0..QK_K / 32 {
            let qh = u16_at(blk, 34 + 2 * ib);
            let dl = d * (2 * i32::from((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            for l in 0..4 {
                let grid = g8s(IQ1S_GRID[iq1_s_index(blk, ib, l)]);
                let y = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                for j in 0..8 {
                    y[j] = dl * (f32::from(grid[j]) + delta);
                }
            }
        }
    }
}

pub(crate) fn dot_iq1_s_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(IQ1_S_BYTES).enumerate() {
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let bsums = &y.bsums[16 * i..16 * i + 16];
        let (mut sumi, mut sumi1) = (0i32, 0i32);
        for ib in 0..QK_K / 32 {
            let qh = u16_at(blk, 34 + 2 * ib);
            let ls = 2 * i32::from((qh >> 12) & 7) + 1;
            let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
            let mut lsum = 0i32;
            for l in 0..4 {
                let grid = g8s(IQ1S_GRID[iq1_s_index(blk, ib, l)]);
                let q8 = &q8[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                for j in 0..8 {
                    lsum += i32::from(q8[j]) * i32::from(grid[j]);
                }
            }
            sumi += ls * lsum;
            sumi1 += ls * delta * (i32::from(bsums[2 * ib]) + i32::from(bsums[2 * ib + 1]));
        }
        sumf += read_f16(blk, 0) * y.d[i] * (sumi as f32 + IQ1S_DELTA * sumi1 as f32);
    }
    sumf
}

// ---------------------------------------------------------------- IQ1_M

/// IQ1_M grid indices and delta signs of sub-block `ib`.
#[inline]
fn iq1_m_groups(blk: &[u8], ib: usize) -> ([usize; 4], [bool; 4]) {
    let qs = &blk[4 * ib..4 * ib + 4];
    let qh = &blk[32 + 2 * ib..32 + 2 * ib + 2];
    let (h0, h1) = (usize::from(qh[0]), usize::from(qh[1]));
    (
        [
            usize::from(qs[0]) | ((h0 << 8) & 0x700),
            usize::from(qs[1]) | ((h0 << 4) & 0x700),
            usize::from(qs[2]) | ((h1 << 8) & 0x700),
            usize::from(qs[3]) | ((h1 << 4) & 0x700),
        ],
        [
            h0 & 0x08 != 0,
            h0 & 0x80 != 0,
            h1 & 0x08 != 0,
            h1 & 0x80 != 0,
        ],
    )
}

/// IQ1_M's two 3-bit scales of sub-block `ib`, as `2s + 1`.
#[inline]
fn iq1_m_scales(blk: &[u8], ib: usize) -> (i32, i32) {
    let sc = u16_at(blk, 48 + 2 * (ib / 2));
    let s = |k: usize| 2 * i32::from((sc >> (6 * (ib % 2) + k)) & 0x7) + 1;
    (s(0), s(3))
}

pub(crate) fn dequantize_iq1_m(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ1_M_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f16_to_f32(iq1_m_scale_bits(&blk[48..56]));
        for ib in 0..QK_K / 32 {
            let (s1, s2) = iq1_m_scales(blk, ib);
            let (dl1, dl2) = (d * s1 as f32, d * s2 as f32);
            let (idx, neg) = iq1_m_groups(blk, ib);
            for l in 0..4 {
                let dl = if l < 2 { dl1 } else { dl2 };
                let delta = if neg[l] { -IQ1S_DELTA } else { IQ1S_DELTA };
                let grid = g8s(IQ1S_GRID[idx[l]]);
                let y = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                for j in 0..8 {
                    y[j] = dl * (f32::from(grid[j]) + delta);
                }
            }
        }
    }
}

pub(crate) fn dot_iq1_m_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(IQ1_M_BYTES).enumerate() {
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let d = f16_to_f32(iq1_m_scale_bits(&blk[48..56]));
        let (mut sumi1, mut sumi2) = (0i32, 0i32);
        for ib in 0..QK_K / 32 {
            let (idx, neg) = iq1_m_groups(blk, ib);
            let (mut sum1, mut sum2) = ([0i32; 2], [0i32; 2]);
            for l in 0..4 {
                let grid = g8s(IQ1S_GRID[idx[l]]);
                let q8 = &q8[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                let (mut lsum1, mut lsum2) = (0i32, 0i32);
                for j in 0..8 {
                    lsum1 += i32::from(q8[j]) * i32::from(grid[j]);
                    lsum2 += i32::from(q8[j]);
                }
                sum1[l / 2] += lsum1;
                sum2[l / 2] += lsum2 * if neg[l] { -1 } else { 1 };
            }
            let (ls1, ls2) = iq1_m_scales(blk, ib);
            sumi1 += sum1[0] * ls1 + sum1[1] * ls2;
            sumi2 += sum2[0] * ls1 + sum2[1] * ls2;
        }
        sumf += d * y.d[i] * (sumi1 as f32 + IQ1S_DELTA * sumi2 as f32);
    }
    sumf
}
