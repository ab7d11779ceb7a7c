//! 4-bit lookup-table formats: IQ4_NL and MXFP4 (32-weight blocks, Q8_0
//! activations) and IQ4_XS (256-weight super-blocks, Q8_K activations).
//! Each nibble indexes a 16-entry table of i8 values (`kvalues_iq4nl`,
//! `kvalues_mxfp4` = doubled E2M1); mirrors `dequantize_row_*` and
//! `ggml_vec_dot_{iq4_nl,mxfp4}_q8_0_generic`, `ggml_vec_dot_iq4_xs_q8_K_generic`.

use crate::activations::{Q8KRow, Q8Row};
use crate::blocks::{e8m0_to_f32_half, IQ4_NL_BYTES, IQ4_XS_BYTES, MXFP4_BYTES, QK8_0, QK_K};
use crate::convert::read_f16;
use crate::grids::{KVALUES_IQ4NL, KVALUES_MXFP4};

#[inline]
fn kv(table: &[i8; 16], nibble: u8) -> i8 {
    table[usize::from(nibble & 0xF)]
}

pub(crate) fn dequantize_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ4_NL_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let d = read_f16(blk, 0);
        for j in 0..QK8_0 / 2 {
            y[j] = d * f32::from(kv(&KVALUES_IQ4NL, blk[2 + j]));
            y[j + QK8_0 / 2] = d * f32::from(kv(&KVALUES_IQ4NL, blk[2 + j] >> 4));
        }
    }
}

pub(crate) fn dequantize_mxfp4(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(MXFP4_BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let d = e8m0_to_f32_half(blk[0]);
        for j in 0..QK8_0 / 2 {
            y[j] = f32::from(kv(&KVALUES_MXFP4, blk[1 + j])) * d;
            y[j + QK8_0 / 2] = f32::from(kv(&KVALUES_MXFP4, blk[1 + j] >> 4)) * d;
        }
    }
}

/// IQ4_XS sub-block `ib`'s 6-bit scale (0..64; the kernels subtract 32).
#[inline]
pub(crate) fn iq4_xs_scale(blk: &[u8], ib: usize) -> i32 {
    let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
    let lo = (blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
    i32::from(lo) | ((i32::from(scales_h >> (2 * ib)) & 3) << 4)
}

pub(crate) fn dequantize_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src
        .chunks_exact(IQ4_XS_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = read_f16(blk, 0);
        for ib in 0..QK_K / 32 {
            let dl = d * (iq4_xs_scale(blk, ib) - 32) as f32;
            let qs = &blk[8 + 16 * ib..8 + 16 * ib + 16];
            let y = &mut y[32 * ib..32 * ib + 32];
            for j in 0..16 {
                y[j] = dl * f32::from(kv(&KVALUES_IQ4NL, qs[j]));
                y[j + 16] = dl * f32::from(kv(&KVALUES_IQ4NL, qs[j] >> 4));
            }
        }
    }
}

/// `(Σ q8[j]·kv[lo nibble j], Σ q8[j+16]·kv[hi nibble j])` over 16 bytes.
#[inline]
fn table_sums(table: &[i8; 16], qs: &[u8], q8: &[i8]) -> (i32, i32) {
    let (mut s1, mut s2) = (0i32, 0i32);
    for j in 0..16 {
        s1 += i32::from(q8[j]) * i32::from(kv(table, qs[j]));
        s2 += i32::from(q8[j + 16]) * i32::from(kv(table, qs[j] >> 4));
    }
    (s1, s2)
}

pub(crate) fn dot_iq4_nl_q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ib, blk) in w.chunks_exact(IQ4_NL_BYTES).enumerate() {
        let d = a.d[ib] * read_f16(blk, 0);
        let (s1, s2) = table_sums(&KVALUES_IQ4NL, &blk[2..18], &a.qs[32 * ib..32 * ib + 32]);
        sumf += d * (s1 + s2) as f32;
    }
    sumf
}

pub(crate) fn dot_mxfp4_q8_0(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ib, blk) in w.chunks_exact(MXFP4_BYTES).enumerate() {
        let d = a.d[ib] * e8m0_to_f32_half(blk[0]);
        let (s1, s2) = table_sums(&KVALUES_MXFP4, &blk[1..17], &a.qs[32 * ib..32 * ib + 32]);
        sumf += d * (s1 + s2) as f32;
    }
    sumf
}

pub(crate) fn dot_iq4_xs_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (ibl, blk) in w.chunks_exact(IQ4_XS_BYTES).enumerate() {
        let d4d8 = read_f16(blk, 0) * y.d[ibl];
        let q8 = &y.qs[QK_K * ibl..QK_K * (ibl + 1)];
        for ib in 0..QK_K / 32 {
            let dl = d4d8 * (iq4_xs_scale(blk, ib) - 32) as f32;
            let (s1, s2) = table_sums(
                &KVALUES_IQ4NL,
                &blk[8 + 16 * ib..8 + 16 * ib + 16],
                &q8[32 * ib..32 * ib + 32],
            );
            sumf += dl * (s1 + s2) as f32;
        }
    }
    sumf
}
