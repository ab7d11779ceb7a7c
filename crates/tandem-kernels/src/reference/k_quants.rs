//! Q4_K / Q5_K / Q6_K super-blocks (256 weights) against Q8_K activations:
//! `dequantize_row_q{4,5,6}_K` (ggml-quants.c) and
//! `ggml_vec_dot_q{4,5,6}_K_q8_K_generic` (ggml-cpu/quants.c).
//!
//! The dot products keep ggml's structure: per super-block the products are
//! accumulated exactly in eight i32 lanes (`aux32[l]` collects positions
//! `≡ l mod 8`), scaled into eight f32 lanes `sums[l]`; the min correction
//! (`dmin * Σ bsums·mins`, exact integer sum) is subtracted from a separate
//! f32 accumulator, and the eight lanes are added to it at the very end.

use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::convert::read_f16;

pub(crate) fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(Q4_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(blk, 0);
        let min = read_f16(blk, 2);
        let scales = &blk[K_SCALES_OFF..K_SCALES_OFF + 12];
        let qs = &blk[Q4_K_QS_OFF..Q4_K_QS_OFF + 128];
        for j in 0..QK_K / 64 {
            let (sc, m) = get_scale_min_k4(2 * j, scales);
            let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
            let (sc, m) = get_scale_min_k4(2 * j + 1, scales);
            let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
            let q = &qs[32 * j..32 * j + 32];
            for l in 0..32 {
                y[64 * j + l] = d1 * f32::from(q[l] & 0xF) - m1;
                y[64 * j + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

pub(crate) fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(Q5_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(blk, 0);
        let min = read_f16(blk, 2);
        let scales = &blk[K_SCALES_OFF..K_SCALES_OFF + 12];
        let qh = &blk[Q5_K_QH_OFF..Q5_K_QH_OFF + 32];
        let ql = &blk[Q5_K_QS_OFF..Q5_K_QS_OFF + 128];
        let (mut u1, mut u2) = (1u8, 2u8);
        for j in 0..QK_K / 64 {
            let (sc, m) = get_scale_min_k4(2 * j, scales);
            let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
            let (sc, m) = get_scale_min_k4(2 * j + 1, scales);
            let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
            let q = &ql[32 * j..32 * j + 32];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[64 * j + l] = d1 * f32::from((q[l] & 0xF) + h1) - m1;
                y[64 * j + 32 + l] = d2 * f32::from((q[l] >> 4) + h2) - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/// The 256 signed 6-bit quants of a Q6_K block, in weight order.
#[inline]
pub(crate) fn q6_k_values(blk: &[u8]) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for n in 0..QK_K / 128 {
        let ql = &blk[64 * n..64 * n + 64];
        let qh = &blk[Q6_K_QH_OFF + 32 * n..Q6_K_QH_OFF + 32 * n + 32];
        let a = &mut a[128 * n..128 * n + 128];
        for l in 0..32 {
            a[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

pub(crate) fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(Q6_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(blk, Q6_K_D_OFF);
        let q = q6_k_values(blk);
        for (i, y) in y.iter_mut().enumerate() {
            // ggml: d * sc[is] * q, evaluated left to right; sub-block of 16 = i / 16
            let sc = blk[Q6_K_SCALES_OFF + i / 16] as i8;
            *y = d * f32::from(sc) * f32::from(q[i]);
        }
    }
}

/// `aux32[l] += scale * (q8[k] * a[k])` over one run of 8 values, as ggml's
/// generic code does (the i16 product cannot overflow: |q8| ≤ 128, |a| ≤ 32).
#[inline]
fn acc8(aux32: &mut [i32; 8], scale: i32, q8: &[i8], a: &[i8]) {
    for l in 0..8 {
        let aux16 = i16::from(q8[l]) * i16::from(a[l]);
        aux32[l] += scale * i32::from(aux16);
    }
}

/// Shared body of the Q4_K / Q5_K dot: `a` holds the unsigned quants.
#[inline]
fn dot_k4_block(
    blk: &[u8],
    a: &[i8; QK_K],
    y: Q8KRow<'_>,
    i: usize,
    sums: &mut [f32; 8],
    sumf: &mut f32,
) {
    let (scales, mins) =
        scales_mins_bytes(unpack_scales_mins_k4(&blk[K_SCALES_OFF..K_SCALES_OFF + 12]));
    let bsums = &y.bsums[16 * i..16 * i + 16];
    let mut sumi = 0i32;
    for j in 0..QK_K / 16 {
        sumi += i32::from(bsums[j]) * i32::from(mins[j / 2]);
    }
    let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
    let mut aux32 = [0i32; 8];
    for (j, &scale) in scales.iter().enumerate() {
        let scale = i32::from(scale);
        for k in 0..4 {
            let o = 32 * j + 8 * k;
            acc8(&mut aux32, scale, &q8[o..o + 8], &a[o..o + 8]);
        }
    }
    let d = read_f16(blk, 0) * y.d[i];
    for l in 0..8 {
        sums[l] += d * aux32[l] as f32;
    }
    let dmin = read_f16(blk, 2) * y.d[i];
    *sumf -= dmin * sumi as f32;
}

pub(crate) fn dot_q4_k_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    let mut a = [0i8; QK_K];
    for (i, blk) in w.chunks_exact(Q4_K_BYTES).enumerate() {
        let q4 = &blk[Q4_K_QS_OFF..Q4_K_QS_OFF + 128];
        for j in 0..QK_K / 64 {
            for l in 0..32 {
                a[64 * j + l] = (q4[32 * j + l] & 0xF) as i8;
                a[64 * j + 32 + l] = (q4[32 * j + l] >> 4) as i8;
            }
        }
        dot_k4_block(blk, &a, y, i, &mut sums, &mut sumf);
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

pub(crate) fn dot_q5_k_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    let mut a = [0i8; QK_K];
    for (i, blk) in w.chunks_exact(Q5_K_BYTES).enumerate() {
        let q4 = &blk[Q5_K_QS_OFF..Q5_K_QS_OFF + 128];
        let hm = &blk[Q5_K_QH_OFF..Q5_K_QH_OFF + 32];
        let mut m = 1u8;
        for j in 0..QK_K / 64 {
            for l in 0..32 {
                let h = if hm[l] & m != 0 { 16 } else { 0 };
                a[64 * j + l] = (q4[32 * j + l] & 0xF) as i8 + h;
            }
            m <<= 1;
            for l in 0..32 {
                let h = if hm[l] & m != 0 { 16 } else { 0 };
                a[64 * j + 32 + l] = (q4[32 * j + l] >> 4) as i8 + h;
            }
            m = m.wrapping_shl(1);
        }
        dot_k4_block(blk, &a, y, i, &mut sums, &mut sumf);
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

pub(crate) fn dot_q6_k_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(Q6_K_BYTES).enumerate() {
        let a = q6_k_values(blk);
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut aux32 = [0i32; 8];
        for j in 0..QK_K / 16 {
            let scale = i32::from(blk[Q6_K_SCALES_OFF + j] as i8);
            for k in 0..2 {
                let o = 16 * j + 8 * k;
                acc8(&mut aux32, scale, &q8[o..o + 8], &a[o..o + 8]);
            }
        }
        let d = read_f16(blk, Q6_K_D_OFF) * y.d[i];
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    for s in sums {
        sumf += s;
    }
    sumf
}
