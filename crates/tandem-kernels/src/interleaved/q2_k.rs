//! Q2_K, 8 rows interleaved ("Q2_K x8"), and its scalar reference kernel.
//!
//! One group block holds super-block `i` of 8 rows (8 × 84 = 672 bytes,
//! ggml's bytes rearranged):
//!
//! | offset | bytes | content |
//! | --- | --- | --- |
//! | 0 | 16 | `d` of rows 0..8 (f16) |
//! | 16 | 16 | `dmin` of rows 0..8 (f16) |
//! | 32 | 128 | the scale bytes (low nibble scale, high nibble min), `[j][r]`: sub-block `j` (16 weights) of row `r` |
//! | 160 | 512 | quants: sub-block `j` at `160 + 32j` |
//!
//! **Quants** (2-bit, `0..4`). The 32 bytes of sub-block `j` hold its 16
//! weights of each of the 8 rows: byte `4r + t`, bits `2s..2s + 2`, is
//! weight `16j + 4s + t` of row `r`. So `(v >> 2s) & 3` puts 4 consecutive
//! weights of row `r` in lane `r`, ready for `vpdpbusd` / `vpmaddubsw`
//! against 4 broadcast activation bytes.
//!
//! **Arithmetic** per row, super-block and activation row is ggml's
//! (`ggml_vec_dot_q2_K_q8_K_generic`, the row-major reference): exact
//! integers `isum = Σ_j sc_j · Σ_{k∈j} q_k·y_k` and
//! `summs = Σ_j m_j · bsums_j`, then
//! `sumf += (yd·d)·isum − (yd·dmin)·summs`, blocks in order. The SIMD
//! kernels repeat these float operations lane by lane, so the interleaved
//! kernels equal the row-major scalar reference bit for bit (not only
//! within reassociation, unlike Q4_K / Q6_K / Q8_0 x8).

use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::convert::read_f16;
use crate::interleaved::GROUP_ROWS;

/// Bytes of one group block.
pub(crate) const GROUP_BLOCK: usize = GROUP_ROWS * Q2_K_BYTES;
/// Offset of the `dmin` values in a group block.
pub(crate) const DMIN_OFF: usize = 16;
/// Offset of the scale bytes in a group block.
pub(crate) const SCALES_OFF: usize = 32;
/// Offset of the quants in a group block.
pub(crate) const QS_OFF: usize = 160;

/// Quant `k` (0..256) of a ggml Q2_K block.
#[inline]
fn quant(blk: &[u8], k: usize) -> u8 {
    let (n, s, l) = (k / 128, (k % 128) / 32, k % 32);
    (blk[Q2_K_QS_OFF + 32 * n + l] >> (2 * s)) & 3
}

/// Where weight `k` of row `r` lives in a group block: (byte, shift).
#[inline]
fn place(r: usize, k: usize) -> (usize, u32) {
    let (j, s, t) = (k / 16, (k % 16) / 4, k % 4);
    (QS_OFF + 32 * j + 4 * r + t, 2 * s as u32)
}

/// 8 rows (`src`, ggml layout, `rb` bytes each) → one group (`dst`).
pub(crate) fn interleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in dst.chunks_exact_mut(GROUP_BLOCK).enumerate() {
        g.fill(0);
        for r in 0..GROUP_ROWS {
            let blk = &src[r * rb + i * Q2_K_BYTES..r * rb + (i + 1) * Q2_K_BYTES];
            g[2 * r..2 * r + 2].copy_from_slice(&blk[Q2_K_D_OFF..Q2_K_D_OFF + 2]);
            g[DMIN_OFF + 2 * r..DMIN_OFF + 2 * r + 2]
                .copy_from_slice(&blk[Q2_K_D_OFF + 2..Q2_K_D_OFF + 4]);
            for j in 0..16 {
                g[SCALES_OFF + 8 * j + r] = blk[j];
            }
            for k in 0..QK_K {
                let (b, s) = place(r, k);
                g[b] |= quant(blk, k) << s;
            }
        }
    }
}

/// Quant (0..4) of weight `k`, row `r` of group block `g`.
#[inline]
fn group_quant(g: &[u8], r: usize, k: usize) -> u8 {
    let (b, s) = place(r, k);
    (g[b] >> s) & 3
}

/// One group (`src`) → 8 rows in ggml layout (`dst`, `rb` bytes each).
pub(crate) fn deinterleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in src.chunks_exact(GROUP_BLOCK).enumerate() {
        for r in 0..GROUP_ROWS {
            let blk = &mut dst[r * rb + i * Q2_K_BYTES..r * rb + (i + 1) * Q2_K_BYTES];
            blk[Q2_K_D_OFF..Q2_K_D_OFF + 2].copy_from_slice(&g[2 * r..2 * r + 2]);
            blk[Q2_K_D_OFF + 2..Q2_K_D_OFF + 4]
                .copy_from_slice(&g[DMIN_OFF + 2 * r..DMIN_OFF + 2 * r + 2]);
            for j in 0..16 {
                blk[j] = g[SCALES_OFF + 8 * j + r];
            }
            blk[Q2_K_QS_OFF..Q2_K_QS_OFF + 64].fill(0);
            for k in 0..QK_K {
                let (n, s, l) = (k / 128, (k % 128) / 32, k % 32);
                blk[Q2_K_QS_OFF + 32 * n + l] |= group_quant(g, r, k) << (2 * s);
            }
        }
    }
}

/// Scalar reference: the 8 rows of one group against activation row `y`
/// (ggml's generic Q2_K dot, per row).
pub(crate) fn dot_group(g: &[u8], y: Q8KRow<'_>) -> [f32; GROUP_ROWS] {
    let mut acc = [0f32; GROUP_ROWS];
    for (i, b) in g.chunks_exact(GROUP_BLOCK).enumerate() {
        let qy = &y.qs[QK_K * i..QK_K * (i + 1)];
        let bs = &y.bsums[16 * i..16 * (i + 1)];
        for (r, sumf) in acc.iter_mut().enumerate() {
            let (mut isum, mut summs) = (0i32, 0i32);
            for j in 0..16 {
                let sc = b[SCALES_OFF + 8 * j + r];
                summs += i32::from(bs[j]) * i32::from(sc >> 4);
                let s: i32 = (16 * j..16 * j + 16)
                    .map(|k| i32::from(group_quant(b, r, k)) * i32::from(qy[k]))
                    .sum();
                isum += i32::from(sc & 0xF) * s;
            }
            let dall = y.d[i] * read_f16(b, 2 * r);
            let dmin = y.d[i] * read_f16(b, DMIN_OFF + 2 * r);
            *sumf += dall * isum as f32 - dmin * summs as f32;
        }
    }
    acc
}
