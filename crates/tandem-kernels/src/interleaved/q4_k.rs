//! Q4_K, 8 rows interleaved ("Q4_K x8"), and its scalar reference kernel.
//!
//! One group block holds super-block `i` of 8 rows (8 × 144 = 1152 bytes,
//! the same bytes as in ggml's layout, rearranged):
//!
//! | offset | bytes | content |
//! | --- | --- | --- |
//! | 0 | 16 | `d` of rows 0..8 (f16) |
//! | 16 | 16 | `dmin` of rows 0..8 (f16) |
//! | 32 | 96 | the 128 6-bit scales and mins, see below |
//! | 128 | 1024 | quants: sub-block `j` at `128 + 128j`, 4 chunks of 32 bytes |
//!
//! **Quants.** Chunk `c` of sub-block `j` covers weights
//! `k0 = 32j + 8c .. k0 + 8` of each row; its byte `4r + t` holds weight
//! `k0 + t` of row `r` in the low nibble and `k0 + 4 + t` in the high
//! nibble. So `vpdpbusd(low nibbles, broadcast(y[k0..k0+4]))` puts row `r`'s
//! 4-product sum in lane `r`.
//!
//! **Scales.** The 128 values `v` are ordered for the kernel:
//! `v[8j + r]` = scale of sub-block `j`, row `r` (one `vpmovzxbd` per
//! sub-block), and `v[64 + 16p + 2r + e]` = min of sub-block `2p + e`, row
//! `r` (one `vpmovzxbw` gives i16 pairs for `vpmaddwd` against pairs of
//! activation sub-block sums). They are stored as low nibbles
//! `L[t] = v[t] & 15 | (v[t + 64] & 15) << 4` (t < 64) and high bits
//! `H[t] = Σ_s (v[t + 32s] >> 4) << 2s` (t < 32): 96 bytes, the same 768 bits
//! as ggml's 12 bytes per row, decoded with a few byte-wise masks.
//!
//! **Arithmetic** (per row `r`, super-block `i`, activation row `y`), with
//! exact integers and then a fixed float order that the SIMD kernel
//! repeats lane by lane (so the two agree bit for bit):
//! `iacc = Σ_j sc_j · Σ_{k∈j} q_k·y_k` and `macc = Σ_j m_j · Σ_{k∈j} y_k`
//! (i32, exact: |iacc| ≤ 8·63·32·15·127 < 2^25), then
//! `acc += fma(f32(iacc), d·yd, f32(macc) · (−dmin·yd))`, blocks in order.
//! Against ggml this differs by f32 reassociation only.

use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::convert::read_f16;
use crate::interleaved::GROUP_ROWS;

/// Bytes of one group block (8 super-blocks).
pub(crate) const GROUP_BLOCK: usize = GROUP_ROWS * Q4_K_BYTES;
/// Offset of the packed scales in a group block.
pub(crate) const SCALES_OFF: usize = 32;
/// Offset of the quants in a group block.
pub(crate) const QS_OFF: usize = 128;

/// Quant `k` (0..256) of a ggml Q4_K block.
#[inline]
fn quant(blk: &[u8], k: usize) -> u8 {
    let (j, l) = (k / 32, k % 32);
    (blk[Q4_K_QS_OFF + 32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF
}

/// The 128 scale/min values in kernel order from the 8 rows' blocks.
fn scale_values(blocks: &[&[u8]; GROUP_ROWS]) -> [u8; 128] {
    let mut v = [0u8; 128];
    for (r, blk) in blocks.iter().enumerate() {
        let (sc, m) =
            scales_mins_bytes(unpack_scales_mins_k4(&blk[K_SCALES_OFF..K_SCALES_OFF + 12]));
        for j in 0..8 {
            v[8 * j + r] = sc[j];
            v[64 + 16 * (j / 2) + 2 * r + j % 2] = m[j];
        }
    }
    v
}

fn encode_scales(v: &[u8; 128], out: &mut [u8]) {
    for t in 0..64 {
        out[t] = (v[t] & 15) | ((v[t + 64] & 15) << 4);
    }
    for t in 0..32 {
        out[64 + t] = (v[t] >> 4)
            | ((v[t + 32] >> 4) << 2)
            | ((v[t + 64] >> 4) << 4)
            | ((v[t + 96] >> 4) << 6);
    }
}

/// Decodes the 96 packed bytes into the 128 values (kernel order).
pub(crate) fn decode_scales(p: &[u8]) -> [u8; 128] {
    let mut v = [0u8; 128];
    for t in 0..64 {
        v[t] = p[t] & 15;
        v[t + 64] = p[t] >> 4;
    }
    for t in 0..32 {
        let h = p[64 + t];
        for s in 0..4 {
            v[t + 32 * s] |= ((h >> (2 * s)) & 3) << 4;
        }
    }
    v
}

/// 8 rows (`src`, ggml layout, `rb` bytes each) → one group (`dst`).
pub(crate) fn interleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in dst.chunks_exact_mut(GROUP_BLOCK).enumerate() {
        let blocks: [&[u8]; GROUP_ROWS] =
            std::array::from_fn(|r| &src[r * rb + i * Q4_K_BYTES..r * rb + (i + 1) * Q4_K_BYTES]);
        for (r, blk) in blocks.iter().enumerate() {
            g[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
            g[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&blk[2..4]);
        }
        encode_scales(&scale_values(&blocks), &mut g[SCALES_OFF..QS_OFF]);
        for j in 0..8 {
            for c in 0..4 {
                let k0 = 32 * j + 8 * c;
                for (r, blk) in blocks.iter().enumerate() {
                    for t in 0..4 {
                        g[QS_OFF + 128 * j + 32 * c + 4 * r + t] =
                            quant(blk, k0 + t) | (quant(blk, k0 + 4 + t) << 4);
                    }
                }
            }
        }
    }
}

/// One group (`src`) → 8 rows in ggml layout (`dst`, `rb` bytes each).
pub(crate) fn deinterleave(src: &[u8], rb: usize, dst: &mut [u8]) {
    for (i, g) in src.chunks_exact(GROUP_BLOCK).enumerate() {
        let v = decode_scales(&g[SCALES_OFF..QS_OFF]);
        for r in 0..GROUP_ROWS {
            let blk = &mut dst[r * rb + i * Q4_K_BYTES..r * rb + (i + 1) * Q4_K_BYTES];
            blk[0..2].copy_from_slice(&g[2 * r..2 * r + 2]);
            blk[2..4].copy_from_slice(&g[16 + 2 * r..16 + 2 * r + 2]);
            // ggml's 6-bit packing (quantize_row_q4_K_ref).
            let s = &mut blk[K_SCALES_OFF..K_SCALES_OFF + 12];
            s.fill(0);
            for j in 0..8 {
                let ls = v[8 * j + r];
                let lm = v[64 + 16 * (j / 2) + 2 * r + j % 2];
                if j < 4 {
                    s[j] = ls;
                    s[j + 4] = lm;
                } else {
                    s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                    s[j - 4] |= (ls >> 4) << 6;
                    s[j] |= (lm >> 4) << 6;
                }
            }
            let qs = &mut blk[Q4_K_QS_OFF..Q4_K_QS_OFF + 128];
            qs.fill(0);
            for j in 0..8 {
                for c in 0..4 {
                    for t in 0..4 {
                        let byte = g[QS_OFF + 128 * j + 32 * c + 4 * r + t];
                        for (h, q) in [(0, byte & 0xF), (4, byte >> 4)] {
                            let k = 32 * j + 8 * c + h + t;
                            let (sj, l) = (k / 32, k % 32);
                            qs[32 * (sj / 2) + l] |= q << (4 * (sj % 2));
                        }
                    }
                }
            }
        }
    }
}

/// Scalar reference: the 8 rows of one group against activation row `y`.
pub(crate) fn dot_group(g: &[u8], y: Q8KRow<'_>) -> [f32; GROUP_ROWS] {
    let mut acc = [0f32; GROUP_ROWS];
    for (i, b) in g.chunks_exact(GROUP_BLOCK).enumerate() {
        let v = decode_scales(&b[SCALES_OFF..QS_OFF]);
        let qy = &y.qs[QK_K * i..QK_K * (i + 1)];
        let bs = &y.bsums[16 * i..16 * (i + 1)];
        let yd = y.d[i];
        for (r, acc) in acc.iter_mut().enumerate() {
            let mut iacc = 0i32;
            let mut macc = 0i32;
            for j in 0..8 {
                let mut s = 0i32;
                for c in 0..4 {
                    for t in 0..4 {
                        let byte = b[QS_OFF + 128 * j + 32 * c + 4 * r + t];
                        let k = 32 * j + 8 * c + t;
                        s += i32::from(byte & 0xF) * i32::from(qy[k])
                            + i32::from(byte >> 4) * i32::from(qy[k + 4]);
                    }
                }
                iacc += s * i32::from(v[8 * j + r]);
                let m = i32::from(v[64 + 16 * (j / 2) + 2 * r + j % 2]);
                macc += m * (i32::from(bs[2 * j]) + i32::from(bs[2 * j + 1]));
            }
            let d = read_f16(b, 2 * r);
            let dmin = read_f16(b, 16 + 2 * r);
            let t = macc as f32 * (-dmin * yd);
            *acc += (iacc as f32).mul_add(d * yd, t);
        }
    }
    acc
}
