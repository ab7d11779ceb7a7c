//! Q4_0 weights × Q8_0 activations, two 32-weight blocks per 512-bit
//! register (Q8_0 weights have their own kernel, `q8_0_ymm`).
//!
//! Integer part: `vpdpbusd(|x|, sign(y, x))` (the sign moved onto the
//! activation with a masked `0 - y`): 16 i32 lanes, lanes 0..8 = even block,
//! 8..16 = odd block, each the exact sum of 4 products (|x| ≤ 128 and
//! |y| ≤ 127, as ggml's quantizers produce). Float part, per pair:
//! `acc = fma(f32(lanes), dx·dy per lane, acc)`, the odd tail block (if
//! `n_blocks` is odd) in lanes 0..8 only.

use std::arch::x86_64::*;

use super::assert_tile;
use super::helpers::*;
use crate::activations::Q8Row;
use crate::blocks::{Q4_0_BYTES, QK8_0};
use crate::QuantizedActivations;

#[inline]
fn rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8Row<'_>; N] {
    let rows: [Q8Row<'_>; N] = std::array::from_fn(|k| acts.q8_0_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK8_0 && r.d.len() == nb);
    }
    rows
}

/// One decoded weight block pair: `|x|`, the sign mask of x, and the
/// per-lane scales `[d0 ×8, d1 ×8]`.
#[derive(Copy, Clone)]
struct Pair {
    ax: __m512i,
    neg: __mmask64,
    dx: __m512,
}

/// Lane pattern `[0 ×8, 1 ×8]` for `vpermps`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_idx() -> __m512i {
    _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
}

/// `[d(p0) ×8, d(p1) ×8]` from two f16 scales.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales_f16(p0: *const u8, p1: *const u8, idx: __m512i) -> __m512 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let h0 = i32::from(u16::from_le_bytes([*p0, *p0.add(1)]));
        let h1 = i32::from(u16::from_le_bytes([*p1, *p1.add(1)]));
        let d = _mm_cvtph_ps(_mm_cvtsi32_si128(h0 | (h1 << 16)));
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_from(x: __m512i, dx: __m512) -> Pair {
    Pair {
        ax: _mm512_abs_epi8(x),
        neg: _mm512_movepi8_mask(x),
        dx,
    }
}

/// A weight format with 32-weight blocks (static dispatch: closures would
/// not inherit the target features and stay out of line).
trait Legacy {
    const BYTES: usize;
    /// The pair of blocks at `blk` (one block in lanes 0..8 when `tail`).
    unsafe fn decode(blk: *const u8, tail: bool, idx: __m512i) -> Pair;
}

/// Shared tile body.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<L: Legacy, const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert_tile(w, rb, L::BYTES, R, acts, b0, N, out);
        let nb = rb / L::BYTES;
        let ys = rows::<N>(acts, b0, nb);
        let wp = w.as_ptr();
        let idx = pair_idx();
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let mut ib = 0;
        while ib < nb {
            let tail = ib + 1 == nb;
            let mut x = [Pair {
                ax: zero,
                neg: 0,
                dx: _mm512_setzero_ps(),
            }; R];
            for (r, x) in x.iter_mut().enumerate() {
                *x = L::decode(wp.add(r * rb + ib * L::BYTES), tail, idx);
            }
            for k in 0..N {
                let qy = ys[k].qs.as_ptr().add(ib * QK8_0);
                let dyp = ys[k].d.as_ptr().add(ib);
                let (y, dy, mask) = if tail {
                    let y = _mm512_zextsi256_si512(load256(qy));
                    (y, _mm512_set1_ps(*dyp), 0x00FF)
                } else {
                    let d2 = _mm_castsi128_ps(_mm_loadl_epi64(dyp as *const __m128i));
                    let dy = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d2));
                    (load512(qy), dy, 0xFFFF)
                };
                for r in 0..R {
                    let sy = _mm512_mask_sub_epi8(y, x[r].neg, zero, y);
                    let s = _mm512_dpbusd_epi32(zero, x[r].ax, sy);
                    let d = _mm512_mul_ps(x[r].dx, dy);
                    acc[r][k] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[r][k], mask);
                }
            }
            ib += 2;
        }
        let n_b = acts.n_rows();
        for (r, acc) in acc.iter().enumerate() {
            for (k, a) in acc.iter().enumerate() {
                out[r * n_b + b0 + k] = hsum(*a);
            }
        }
    }
}

struct Q4_0;

/// 128-bit lanes `[b0, b0 >> 4, b1, b1 >> 4]` of `t = [b0, b1, ..]`, masked
/// and offset: low nibbles are weights 0..16 of a block, high nibbles 16..32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_0_nibbles(t: __m512i) -> __m512i {
    let z = _mm512_shuffle_i64x2::<0b01_01_00_00>(t, t);
    let z = _mm512_mask_srli_epi16::<4>(z, 0xFF00_FF00, z);
    _mm512_sub_epi8(
        _mm512_and_si512(z, _mm512_set1_epi8(0xF)),
        _mm512_set1_epi8(8),
    )
}

impl Legacy for Q4_0 {
    const BYTES: usize = Q4_0_BYTES;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn decode(blk: *const u8, tail: bool, idx: __m512i) -> Pair {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            if tail {
                let t = _mm512_zextsi128_si512(load128(blk.add(2)));
                pair_from(q4_0_nibbles(t), _mm512_set1_ps(f16_at(blk)))
            } else {
                let nxt = blk.add(Q4_0_BYTES);
                let t = _mm256_inserti128_si256::<1>(
                    _mm256_castsi128_si256(load128(blk.add(2))),
                    load128(nxt.add(2)),
                );
                pair_from(
                    q4_0_nibbles(_mm512_castsi256_si512(t)),
                    scales_f16(blk, nxt, idx),
                )
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_0<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        run::<Q4_0, R, N>(w, rb, acts, b0, out);
    }
}
