//! Q6_K, 8 rows interleaved ("Q6_K x8"), and its scalar reference kernel.
//!
//! One group block holds super-block `i` of 8 rows (8 × 210 = 1680 bytes,
//! ggml's bytes rearranged):
//!
//! | offset | bytes | content |
//! | --- | --- | --- |
//! | 0 | 16 | `d` of rows 0..8 (f16) |
//! | 16 | 128 | the i8 scales, `[j][r]`: sub-block `j` (16 weights) of row `r` |
//! | 144 | 1536 | quants: 8 units of 32 weights, 192 bytes each |
//!
//! **Quants** (6-bit, unsigned `0..64`; the value is `q − 32`). Unit `u`
//! (weights `32u..32u+32`) is 128 bytes of low nibbles in the Q4_K x8
//! arrangement (chunk `c` at `+32c`, byte `4r + t`: low nibble weight
//! `32u + 8c + t`, high nibble `32u + 8c + 4 + t`), then two 32-byte vectors
//! of high bits: vector `v = 2c + h` (`h` = 0 for the low-nibble weight, 1
//! for the high one) keeps its 2 high bits in byte `4r + t` of high-bit
//! vector `v / 4`, at bits `2·(v % 4)`.
//!
//! **Arithmetic** per row, super-block and activation row, exact in i32
//! (|iacc| ≤ 16 · 128 · (16·63·127 + 32·16·127) < 2^29):
//! `iacc = Σ_j sc_j · (Σ_{k∈j} q_k·y_k − 32 · Σ_{k∈j} y_k)` — ggml's integer
//! result — then `acc = fma(f32(iacc), d·yd, acc)`, blocks in order, which
//! the SIMD kernel repeats lane by lane.

use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::convert::read_f16;
use crate::interleaved::GROUP_ROWS;
use crate::reference::k_quants::q6_k_values;

/// Bytes of one group block.
pub(crate) const GROUP_BLOCK: usize = GROUP_ROWS * Q6_K_BYTES;
/// Offset of the scales in a group block.
pub(crate) const SCALES_OFF: usize = 16;
/// Offset of the quants in a group block.
pub(crate) const QS_OFF: usize = 144;
/// Bytes of one 32-weight unit of quants.
pub(crate) const UNIT: usize = 192;

/// Where weight `k` of row `r` lives: (low-nibble byte, its shift, high-bit
/// byte, its shift), offsets within a group block.
fn place(r: usize, k: usize) -> (usize, u32, usize, u32) {
    let (u, c, h, t) = (k / 32, (k % 32) / 8, (k % 8) / 4, k % 4);
    let v = 2 * c + h;
    let base = QS_OFF + UNIT * u;
    (
        base + 32 * c + 4 * r + t,
        4 * h as u32,
        base + 128 + 32 * (v / 4) + 4 * r + t,
        2 * (v % 4) as u32,
    )
}

/// 8 rows (`src`, ggml layout, `rb` bytes each) → one group (`dst`).
pub(crate) fn interleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in dst.chunks_exact_mut(GROUP_BLOCK).enumerate() {
        g.fill(0);
        for r in 0..GROUP_ROWS {
            let blk = &src[r * rb + i * Q6_K_BYTES..r * rb + (i + 1) * Q6_K_BYTES];
            g[2 * r..2 * r + 2].copy_from_slice(&blk[Q6_K_D_OFF..Q6_K_D_OFF + 2]);
            for j in 0..16 {
                g[SCALES_OFF + 8 * j + r] = blk[Q6_K_SCALES_OFF + j];
            }
            for (k, q) in q6_k_values(blk).iter().enumerate() {
                let q = (*q + 32) as u8;
                let (lo, ls, hi, hs) = place(r, k);
                g[lo] |= (q & 0xF) << ls;
                g[hi] |= (q >> 4) << hs;
            }
        }
    }
}

/// Unsigned quant (0..64) of weight `k`, row `r` of group block `g`.
fn quant(g: &[u8], r: usize, k: usize) -> u8 {
    let (lo, ls, hi, hs) = place(r, k);
    ((g[lo] >> ls) & 0xF) | (((g[hi] >> hs) & 3) << 4)
}

/// One group (`src`) → 8 rows in ggml layout (`dst`, `rb` bytes each).
pub(crate) fn deinterleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in src.chunks_exact(GROUP_BLOCK).enumerate() {
        for r in 0..GROUP_ROWS {
            let blk = &mut dst[r * rb + i * Q6_K_BYTES..r * rb + (i + 1) * Q6_K_BYTES];
            blk[Q6_K_D_OFF..Q6_K_D_OFF + 2].copy_from_slice(&g[2 * r..2 * r + 2]);
            for j in 0..16 {
                blk[Q6_K_SCALES_OFF + j] = g[SCALES_OFF + 8 * j + r];
            }
            let a: [u8; QK_K] = std::array::from_fn(|k| quant(g, r, k));
            // Inverse of ggml's 6-bit unpacking (see `q6_k_values`).
            for n in 0..2 {
                let a = &a[128 * n..128 * n + 128];
                for l in 0..32 {
                    blk[64 * n + l] = (a[l] & 0xF) | ((a[l + 64] & 0xF) << 4);
                    blk[64 * n + l + 32] = (a[l + 32] & 0xF) | ((a[l + 96] & 0xF) << 4);
                    blk[Q6_K_QH_OFF + 32 * n + l] = (a[l] >> 4)
                        | ((a[l + 32] >> 4) << 2)
                        | ((a[l + 64] >> 4) << 4)
                        | ((a[l + 96] >> 4) << 6);
                }
            }
        }
    }
}

/// Scalar reference: the 8 rows of one group against activation row `y`.
pub(crate) fn dot_group(g: &[u8], y: Q8KRow<'_>) -> [f32; GROUP_ROWS] {
    let mut acc = [0f32; GROUP_ROWS];
    for (i, b) in g.chunks_exact(GROUP_BLOCK).enumerate() {
        let qy = &y.qs[QK_K * i..QK_K * (i + 1)];
        let bs = &y.bsums[16 * i..16 * (i + 1)];
        let yd = y.d[i];
        for (r, acc) in acc.iter_mut().enumerate() {
            let mut iacc = 0i32;
            for j in 0..16 {
                let mut s: i32 = (16 * j..16 * j + 16)
                    .map(|k| i32::from(quant(b, r, k)) * i32::from(qy[k]))
                    .sum();
                s -= 32 * i32::from(bs[j]);
                iacc += s * i32::from(b[SCALES_OFF + 8 * j + r] as i8);
            }
            let d = read_f16(b, 2 * r);
            *acc = (iacc as f32).mul_add(d * yd, *acc);
        }
    }
    acc
}
