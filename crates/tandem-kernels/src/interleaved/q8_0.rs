//! Q8_0, 8 rows interleaved ("Q8_0 x8"), and its scalar reference kernel.
//!
//! One group block holds block `i` (32 weights) of 8 rows: 8 × 34 = 272
//! bytes. Bytes 0..16 are the 8 rows' `d` (f16); chunk `c` (0..8) of the
//! quants at `16 + 32c` holds, in byte `4r + t`, weight `4c + t` of row `r`
//! stored as `q + 128` (unsigned), so `vpdpbusd` (u8 × i8) takes it as is
//! and the offset is removed with the activation block sum:
//! `Σ q·y = Σ (q + 128)·y − 128·Σ y`.
//!
//! Arithmetic per row, block and activation row: `isum = Σ q·y` (exact
//! i32), then `acc = fma(f32(isum), d·yd, acc)`, blocks in order; the SIMD
//! kernel repeats it lane by lane.

use crate::activations::Q8Row;
use crate::blocks::*;
use crate::convert::read_f16;
use crate::interleaved::GROUP_ROWS;

/// Bytes of one group block.
pub(crate) const GROUP_BLOCK: usize = GROUP_ROWS * Q8_0_BYTES;
/// Offset of the quants in a group block.
pub(crate) const QS_OFF: usize = 16;

fn place(r: usize, k: usize) -> usize {
    QS_OFF + 32 * (k / 4) + 4 * r + k % 4
}

/// 8 rows (`src`, ggml layout, `rb` bytes each) → one group (`dst`).
pub(crate) fn interleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in dst.chunks_exact_mut(GROUP_BLOCK).enumerate() {
        for r in 0..GROUP_ROWS {
            let blk = &src[r * rb + i * Q8_0_BYTES..r * rb + (i + 1) * Q8_0_BYTES];
            g[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
            for k in 0..QK8_0 {
                g[place(r, k)] = blk[2 + k] ^ 0x80;
            }
        }
    }
}

/// One group (`src`) → 8 rows in ggml layout (`dst`, `rb` bytes each).
pub(crate) fn deinterleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in src.chunks_exact(GROUP_BLOCK).enumerate() {
        for r in 0..GROUP_ROWS {
            let blk = &mut dst[r * rb + i * Q8_0_BYTES..r * rb + (i + 1) * Q8_0_BYTES];
            blk[..2].copy_from_slice(&g[2 * r..2 * r + 2]);
            for k in 0..QK8_0 {
                blk[2 + k] = g[place(r, k)] ^ 0x80;
            }
        }
    }
}

/// Scalar reference: the 8 rows of one group against activation row `y`.
pub(crate) fn dot_group(g: &[u8], y: Q8Row<'_>) -> [f32; GROUP_ROWS] {
    let mut acc = [0f32; GROUP_ROWS];
    for (i, b) in g.chunks_exact(GROUP_BLOCK).enumerate() {
        let qy = &y.qs[QK8_0 * i..QK8_0 * (i + 1)];
        for (r, acc) in acc.iter_mut().enumerate() {
            let isum: i32 = (0..QK8_0)
                .map(|k| i32::from((b[place(r, k)] ^ 0x80) as i8) * i32::from(qy[k]))
                .sum();
            *acc = (isum as f32).mul_add(read_f16(b, 2 * r) * y.d[i], *acc);
        }
    }
    acc
}
