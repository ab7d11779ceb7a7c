//! Q2_K and Q3_K super-blocks (256 weights, 16 sub-blocks of 16) against
//! Q8_K activations: `dequantize_row_q{2,3}_K` (ggml-quants.c) and
//! `ggml_vec_dot_q{2,3}_K_q8_K_generic` (ggml-cpu/quants.c).
//!
//! Q2_K: `w = d·sc·q - dmin·m` with 4-bit `sc`/`m`; the dot sums
//! `Σ sc·Σ q8·q` exactly in one i32 and subtracts `dmin·Σ bsums·m`.
//! Q3_K: `w = d·(sc - 32)·(q - 4·!hbit)`; the dot keeps ggml's eight i32 /
//! f32 lanes like Q6_K.

use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::convert::read_f16;

pub(crate) fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(Q2_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(blk, Q2_K_D_OFF);
        let min = read_f16(blk, Q2_K_D_OFF + 2);
        let mut is = 0;
        let mut o = 0;
        for n in 0..QK_K / 128 {
            let q = &blk[Q2_K_QS_OFF + 32 * n..Q2_K_QS_OFF + 32 * n + 32];
            for shift in [0, 2, 4, 6] {
                for half in 0..2 {
                    let sc = blk[is];
                    is += 1;
                    let dl = d * f32::from(sc & 0xF);
                    let ml = min * f32::from(sc >> 4);
                    for l in 0..16 {
                        y[o] = dl * f32::from((q[16 * half + l] >> shift) & 3) - ml;
                        o += 1;
                    }
                }
            }
        }
    }
}

/// The 256 signed Q3_K quants of a block (`q - 4` where the high bit is clear).
#[inline]
pub(crate) fn q3_k_values(blk: &[u8]) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    let hm = &blk[..32];
    let mut m = 1u8;
    for n in 0..QK_K / 128 {
        let q3 = &blk[Q3_K_QS_OFF + 32 * n..Q3_K_QS_OFF + 32 * n + 32];
        for (k, shift) in [0, 2, 4, 6].into_iter().enumerate() {
            let a = &mut a[128 * n + 32 * k..128 * n + 32 * k + 32];
            for l in 0..32 {
                a[l] = ((q3[l] >> shift) & 3) as i8 - if hm[l] & m != 0 { 0 } else { 4 };
            }
            m = m.wrapping_shl(1);
        }
    }
    a
}

pub(crate) fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(Q3_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = read_f16(blk, Q3_K_D_OFF);
        let scales = unpack_q3_k_scales(&blk[Q3_K_SCALES_OFF..Q3_K_SCALES_OFF + 12]);
        let a = q3_k_values(blk);
        for (i, y) in y.iter_mut().enumerate() {
            let dl = d_all * (i32::from(scales[i / 16]) - 32) as f32;
            *y = dl * f32::from(a[i]);
        }
    }
}

pub(crate) fn dot_q2_k_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (i, blk) in w.chunks_exact(Q2_K_BYTES).enumerate() {
        let sc = &blk[..16];
        let bsums = &y.bsums[16 * i..16 * i + 16];
        let mut summs = 0i32;
        for j in 0..16 {
            summs += i32::from(bsums[j]) * i32::from(sc[j] >> 4);
        }
        let dall = y.d[i] * read_f16(blk, Q2_K_D_OFF);
        let dmin = y.d[i] * read_f16(blk, Q2_K_D_OFF + 2);
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut isum = 0i32;
        let mut is = 0;
        for k in 0..QK_K / 128 {
            let q2 = &blk[Q2_K_QS_OFF + 32 * k..Q2_K_QS_OFF + 32 * k + 32];
            for (j, shift) in [0, 2, 4, 6].into_iter().enumerate() {
                let q8 = &q8[128 * k + 32 * j..128 * k + 32 * j + 32];
                for half in 0..2 {
                    let d = i32::from(sc[is] & 0xF);
                    is += 1;
                    let mut isuml = 0i32;
                    for l in 16 * half..16 * half + 16 {
                        isuml += i32::from(q8[l]) * i32::from((q2[l] >> shift) & 3);
                    }
                    isum += d * isuml;
                }
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

#[allow(clippy::needless_range_loop)] // index loops mirror ggml's
pub(crate) fn dot_q3_k_q8_k(w: &[u8], y: Q8KRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    for (i, blk) in w.chunks_exact(Q3_K_BYTES).enumerate() {
        let a = q3_k_values(blk);
        let scales = unpack_q3_k_scales(&blk[Q3_K_SCALES_OFF..Q3_K_SCALES_OFF + 12]);
        let q8 = &y.qs[QK_K * i..QK_K * (i + 1)];
        let mut aux32 = [0i32; 8];
        for j in 0..QK_K / 16 {
            let scale = i32::from(scales[j] as i8) - 32;
            for k in 0..2 {
                let o = 16 * j + 8 * k;
                for l in 0..8 {
                    let aux16 = i16::from(q8[o + l]) * i16::from(a[o + l]);
                    aux32[l] += scale * i32::from(aux16);
                }
            }
        }
        let d = read_f16(blk, Q3_K_D_OFF) * y.d[i];
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}
