//! Q4_K / Q5_K / Q6_K weights × Q8_K activations (after ggml's NEON
//! `ggml_vec_dot_q{4,5,6}_K_q8_K`).
//!
//! Per super-block and activation row, everything up to one f32 update is
//! exact integer arithmetic:
//!
//! * products: one [`Dot`] per 16 weights into a fresh i32x4, then
//!   `isum = mla(isum, dot, scale)` (Q4_K/Q5_K: both halves of a 32-weight
//!   sub-block, then its 6-bit scale; Q6_K: per 16-weight sub-block, its i8
//!   scale). Lane bounds: Q4_K 8 sub-blocks · 63 · 8·15·128 < 2^23, Q5_K
//!   (31 instead of 15) < 2^24, Q6_K 16 · 128 · 4·63·128 < 2^27.
//! * mins: `summ = Σ_sub mins[s] · (bsums[2s] + bsums[2s+1])` (Q4_K/Q5_K,
//!   |pair| ≤ 2·16·128 fits i16) or `Σ scales[s] · bsums[s]` (Q6_K, for the
//!   `-32` offset of its quants, which are used unsigned 0..63 here).
//! * `sumi = vaddvq_s32(isum)`; Q6_K: `sumi - 32·summ` (|·| < 2^28 + 2^27).
//!
//! Float: `sumf -= dmin·summ; sumf += d·sumi` (Q4_K/Q5_K) or
//! `sumf += d·(sumi - 32·summ)` (Q6_K), with `d = x.d·y.d`, `dmin = x.dmin·y.d`.

use std::arch::aarch64::*;

use super::helpers::*;
use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::QuantizedActivations;

/// The N activation rows of a tile, each checked to hold `nb` super-blocks.
#[inline(always)]
fn rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8KRow<'_>; N] {
    let rows: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK_K && r.d.len() == nb && r.bsums.len() == nb * 16);
    }
    rows
}

/// Σ mins[s] · (bsums[2s] + bsums[2s+1]) over the 8 sub-blocks of super-block `i`.
///
/// # Safety
/// `row` holds super-block `i` (checked by [`rows`]).
#[inline(always)]
unsafe fn mins_sum(mins: int16x8_t, row: &Q8KRow<'_>, i: usize) -> i32 {
    let bs = row.bsums.as_ptr().add(16 * i);
    let q8sums = vpaddq_s16(vld1q_s16(bs), vld1q_s16(bs.add(8)));
    let prod = vaddq_s32(
        vmull_s16(vget_low_s16(q8sums), vget_low_s16(mins)),
        vmull_high_s16(q8sums, mins),
    );
    vaddvq_s32(prod)
}

/// Scales (as i32) and mins (as i16x8) of a Q4_K / Q5_K block.
///
/// # Safety
/// `blk` points at a whole block.
#[inline(always)]
unsafe fn scales_mins(blk: *const u8) -> ([u8; 8], int16x8_t) {
    let s = std::slice::from_raw_parts(blk.add(K_SCALES_OFF), 12);
    let (scales, mins) = scales_mins_bytes(unpack_scales_mins_k4(s));
    let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mins.as_ptr())));
    (scales, mins)
}

/// `isum + scale · (dot(a0, y[0..16]) + dot(a1, y[16..32]))`.
///
/// # Safety
/// `y` points at 32 readable bytes; `D` is usable.
#[inline(always)]
unsafe fn sub32<D: Dot>(
    isum: int32x4_t,
    a0: int8x16_t,
    a1: int8x16_t,
    y: *const i8,
    scale: u8,
) -> int32x4_t {
    let p = D::dot(vdupq_n_s32(0), a0, load_s8(y));
    let p = D::dot(p, a1, load_s8(y.add(16)));
    vmlaq_n_s32(isum, p, i32::from(scale))
}

/// Shared Q4_K / Q5_K loop. `quants(blk, j)` gives the 64 unsigned quants
/// of weights `64j..64j+64` as four i8x16 (low-nibble half first).
///
/// # Safety
/// `D` is usable; `quants` reads inside the block only.
#[inline(always)]
unsafe fn dot_k4<K: K4, D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    let nb = w.len() / K::BYTES;
    assert!(w.len() == nb * K::BYTES && out.len() == N);
    let rows = rows::<N>(acts, b0, nb);
    let wp = w.as_ptr();
    let mut sumf = [0.0f32; N];
    for i in 0..nb {
        let blk = wp.add(i * K::BYTES);
        let (scales, mins) = scales_mins(blk);
        let mut isum = [vdupq_n_s32(0); N];
        let mut hbits = K::high_bits(blk);
        for j in 0..QK_K / 64 {
            let [l0, l1, h0, h1] = K::quants(blk, j, &mut hbits);
            for k in 0..N {
                let y = rows[k].qs.as_ptr().add(QK_K * i + 64 * j);
                isum[k] = sub32::<D>(isum[k], l0, l1, y, scales[2 * j]);
                isum[k] = sub32::<D>(isum[k], h0, h1, y.add(32), scales[2 * j + 1]);
            }
        }
        let xd = f16_at(blk);
        let xdmin = f16_at(blk.add(2));
        for k in 0..N {
            let yd = *rows[k].d.get_unchecked(i);
            let summ = mins_sum(mins, &rows[k], i);
            let sumi = vaddvq_s32(isum[k]);
            sumf[k] -= xdmin * yd * summ as f32;
            sumf[k] += xd * yd * sumi as f32;
        }
    }
    out.copy_from_slice(&sumf);
}

/// Q4_K / Q5_K quant decoding.
trait K4 {
    const BYTES: usize;
    /// The high-bit state carried across `j` (Q5_K's `qh`).
    ///
    /// # Safety
    /// `blk` points at a whole block.
    unsafe fn high_bits(blk: *const u8) -> [uint8x16_t; 2];
    /// Weights `64j..64j+32` (two i8x16) then `64j+32..64j+64`.
    ///
    /// # Safety
    /// `blk` points at a whole block, `j < 4`, `hbits` from [`K4::high_bits`]
    /// and the previous `j`s.
    unsafe fn quants(blk: *const u8, j: usize, hbits: &mut [uint8x16_t; 2]) -> [int8x16_t; 4];
}

/// Q4_K weights.
pub(crate) struct Q4K;

impl K4 for Q4K {
    const BYTES: usize = Q4_K_BYTES;

    #[inline(always)]
    unsafe fn high_bits(_: *const u8) -> [uint8x16_t; 2] {
        [vdupq_n_u8(0); 2]
    }

    #[inline(always)]
    unsafe fn quants(blk: *const u8, j: usize, _: &mut [uint8x16_t; 2]) -> [int8x16_t; 4] {
        let m4 = vdupq_n_u8(0xF);
        let q = blk.add(Q4_K_QS_OFF + 32 * j);
        let (b0, b1) = (load_u8(q), load_u8(q.add(16)));
        [
            vreinterpretq_s8_u8(vandq_u8(b0, m4)),
            vreinterpretq_s8_u8(vandq_u8(b1, m4)),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(b0)),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(b1)),
        ]
    }
}

impl QuantKernel for Q4K {
    #[inline(always)]
    unsafe fn run<D: Dot, const N: usize>(
        w: &[u8],
        acts: &QuantizedActivations,
        b0: usize,
        out: &mut [f32],
    ) {
        dot_k4::<Self, D, N>(w, acts, b0, out)
    }
}

/// Q5_K weights.
pub(crate) struct Q5K;

impl K4 for Q5K {
    const BYTES: usize = Q5_K_BYTES;

    #[inline(always)]
    unsafe fn high_bits(blk: *const u8) -> [uint8x16_t; 2] {
        let qh = blk.add(Q5_K_QH_OFF);
        [load_u8(qh), load_u8(qh.add(16))]
    }

    /// Bit `2j` of `qh[l]` is the fifth bit of weight `64j + l`, bit `2j+1`
    /// that of weight `64j + 32 + l`; `hbits` is shifted right by 2 per `j`.
    #[inline(always)]
    unsafe fn quants(blk: *const u8, j: usize, hbits: &mut [uint8x16_t; 2]) -> [int8x16_t; 4] {
        let m4 = vdupq_n_u8(0xF);
        let (m1, m2) = (vdupq_n_u8(1), vdupq_n_u8(2));
        let q = blk.add(Q5_K_QS_OFF + 32 * j);
        let (b0, b1) = (load_u8(q), load_u8(q.add(16)));
        let [qh0, qh1] = *hbits;
        let out = [
            vorrq_u8(vandq_u8(b0, m4), vshlq_n_u8::<4>(vandq_u8(qh0, m1))),
            vorrq_u8(vandq_u8(b1, m4), vshlq_n_u8::<4>(vandq_u8(qh1, m1))),
            vorrq_u8(vshrq_n_u8::<4>(b0), vshlq_n_u8::<3>(vandq_u8(qh0, m2))),
            vorrq_u8(vshrq_n_u8::<4>(b1), vshlq_n_u8::<3>(vandq_u8(qh1, m2))),
        ];
        *hbits = [vshrq_n_u8::<2>(qh0), vshrq_n_u8::<2>(qh1)];
        out.map(|v| vreinterpretq_s8_u8(v))
    }
}

impl QuantKernel for Q5K {
    #[inline(always)]
    unsafe fn run<D: Dot, const N: usize>(
        w: &[u8],
        acts: &QuantizedActivations,
        b0: usize,
        out: &mut [f32],
    ) {
        dot_k4::<Self, D, N>(w, acts, b0, out)
    }
}

/// Q6_K weights.
pub(crate) struct Q6K;

impl QuantKernel for Q6K {
    #[inline(always)]
    unsafe fn run<D: Dot, const N: usize>(
        w: &[u8],
        acts: &QuantizedActivations,
        b0: usize,
        out: &mut [f32],
    ) {
        let nb = w.len() / Q6_K_BYTES;
        assert!(w.len() == nb * Q6_K_BYTES && out.len() == N);
        let rows = rows::<N>(acts, b0, nb);
        let m4 = vdupq_n_u8(0xF);
        let m3 = vdupq_n_u8(3);
        let wp = w.as_ptr();
        let mut sumf = [0.0f32; N];
        for i in 0..nb {
            let blk = wp.add(i * Q6_K_BYTES);
            let sc_ptr = blk.add(Q6_K_SCALES_OFF) as *const i8;
            let sc = vld1q_s8(sc_ptr);
            let (sc_lo, sc_hi) = (vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc));
            let mut isum = [vdupq_n_s32(0); N];
            for n in 0..QK_K / 128 {
                let ql = blk.add(64 * n);
                let qh = blk.add(Q6_K_QH_OFF + 32 * n);
                let (qh0, qh1) = (load_u8(qh), load_u8(qh.add(16)));
                let ql: [uint8x16_t; 4] = std::array::from_fn(|t| load_u8(ql.add(16 * t)));
                // high 2 bits of the four 32-weight groups, at bit 4
                let hi = |s: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(s, m3));
                let q: [int8x16_t; 8] = [
                    vorrq_u8(vandq_u8(ql[0], m4), hi(qh0)),
                    vorrq_u8(vandq_u8(ql[1], m4), hi(qh1)),
                    vorrq_u8(vandq_u8(ql[2], m4), hi(vshrq_n_u8::<2>(qh0))),
                    vorrq_u8(vandq_u8(ql[3], m4), hi(vshrq_n_u8::<2>(qh1))),
                    vorrq_u8(vshrq_n_u8::<4>(ql[0]), hi(vshrq_n_u8::<4>(qh0))),
                    vorrq_u8(vshrq_n_u8::<4>(ql[1]), hi(vshrq_n_u8::<4>(qh1))),
                    vorrq_u8(
                        vshrq_n_u8::<4>(ql[2]),
                        vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh0)),
                    ),
                    vorrq_u8(
                        vshrq_n_u8::<4>(ql[3]),
                        vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh1)),
                    ),
                ]
                .map(|v| vreinterpretq_s8_u8(v));
                for k in 0..N {
                    let y = rows[k].qs.as_ptr().add(QK_K * i + 128 * n);
                    for (t, &qt) in q.iter().enumerate() {
                        let p = D::dot(vdupq_n_s32(0), qt, load_s8(y.add(16 * t)));
                        let s = i32::from(*sc_ptr.add(8 * n + t));
                        isum[k] = vmlaq_n_s32(isum[k], p, s);
                    }
                }
            }
            let xd = f16_at(blk.add(Q6_K_D_OFF));
            for k in 0..N {
                let bs = rows[k].bsums.as_ptr().add(16 * i);
                let (bs0, bs1) = (vld1q_s16(bs), vld1q_s16(bs.add(8)));
                let prod = vaddq_s32(
                    vaddq_s32(
                        vmull_s16(vget_low_s16(bs0), vget_low_s16(sc_lo)),
                        vmull_high_s16(bs0, sc_lo),
                    ),
                    vaddq_s32(
                        vmull_s16(vget_low_s16(bs1), vget_low_s16(sc_hi)),
                        vmull_high_s16(bs1, sc_hi),
                    ),
                );
                let summ = vaddvq_s32(prod);
                let sumi = vaddvq_s32(isum[k]) - 32 * summ;
                let d = xd * *rows[k].d.get_unchecked(i);
                sumf[k] += d * sumi as f32;
            }
        }
        out.copy_from_slice(&sumf);
    }
}
