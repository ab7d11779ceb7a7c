//! Q6_K weights × Q8_K activations.
//!
//! Per super-block and weight row, the unsigned 6-bit quants `u = q + 32`
//! (0..64) are decoded once into four registers of 64 bytes in weight order
//! (`ql` nibbles of one 64-byte load, the two `qh` bits of a 32-byte run
//! broadcast to both halves). Per activation row:
//!
//! * `vpdpbusd(u, q8)` from zero: each 128-bit lane is one 16-weight
//!   sub-block, each i32 lane a sum of 4 products ≤ 4·63·128 < 2^15, so
//!   `vpackssdw` is exact and `vpdpwssd` with the signed scales (laid out by
//!   [`SCALE_IDX`]) gives `Σ sc·Σ u·q8` exactly in 16 lanes;
//! * the `-32` offset, `32·Σ sc·bsum`, comes from the Q8_K block sums
//!   (`vpmaddwd`), and is subtracted from lanes 0..8 in integers, so the
//!   lanes total ggml's exact `Σ sc·Σ q·q8` (every lane < 2^24);
//! * float, per pair: `acc = fma(f32(lanes), d·yd, acc)`.

use std::arch::x86_64::*;

use super::assert_tile;
use super::helpers::*;
use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::QuantizedActivations;

/// `vpermw` indices into the 16 scales (i16) for `vpackssdw(p_a, p_b)`,
/// `p_a` = weights `128h..128h+64` (sub-blocks 8h + lane), `p_b` = the next
/// 64 (sub-blocks 8h + 4 + lane).
const SCALE_IDX: [[i16; 32]; 2] = {
    let mut t = [[0i16; 32]; 2];
    let mut h = 0;
    while h < 2 {
        let mut e = 0;
        while e < 32 {
            let lane = e / 8;
            let from_b = (e % 8) >= 4;
            t[h][e] = (8 * h + lane + if from_b { 4 } else { 0 }) as i16;
            e += 1;
        }
        h += 1;
    }
    t
};

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    assert_tile(w, rb, Q6_K_BYTES, R, acts, b0, N, out);
    let nb = rb / Q6_K_BYTES;
    let ys: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
    for r in &ys {
        assert!(r.qs.len() == nb * QK_K && r.d.len() == nb && r.bsums.len() == nb * 16);
    }
    let wp = w.as_ptr();
    let zero = _mm512_setzero_si512();
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    let idx0 = load512(SCALE_IDX[0].as_ptr());
    let idx1 = load512(SCALE_IDX[1].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    for i in 0..nb {
        let mut q = [[zero; 4]; R];
        let mut sc = [[zero; 2]; R];
        let mut sc16 = [_mm256_setzero_si256(); R];
        let mut d = [0f32; R];
        for r in 0..R {
            let blk = wp.add(r * rb + i * Q6_K_BYTES);
            for h in 0..2 {
                let ql = load512(blk.add(64 * h));
                let qh = bcast256(blk.add(Q6_K_QH_OFF + 32 * h));
                // lower half: qh bits 0-1 (then 4-5), upper half: bits 2-3 (then 6-7), at bits 4-5
                let h01 = _mm512_mask_slli_epi16::<4>(_mm512_slli_epi16::<2>(qh), 0x0000_FFFF, qh);
                let h23 = _mm512_mask_srli_epi16::<2>(qh, 0xFFFF_0000, qh);
                q[r][2 * h] = _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_and_si512(h01, m30),
                );
                q[r][2 * h + 1] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                    _mm512_and_si512(h23, m30),
                );
            }
            let s16 = _mm256_cvtepi8_epi16(load128(blk.add(Q6_K_SCALES_OFF)));
            let s512 = _mm512_castsi256_si512(s16);
            sc[r] = [
                _mm512_permutexvar_epi16(idx0, s512),
                _mm512_permutexvar_epi16(idx1, s512),
            ];
            sc16[r] = _mm256_slli_epi16::<5>(s16);
            d[r] = f16_at(blk.add(Q6_K_D_OFF));
        }
        for k in 0..N {
            let q8 = ys[k].qs.as_ptr().add(QK_K * i);
            let y = [
                load512(q8),
                load512(q8.add(64)),
                load512(q8.add(128)),
                load512(q8.add(192)),
            ];
            let bsums = load256(ys[k].bsums.as_ptr().add(16 * i));
            let yd = *ys[k].d.get_unchecked(i);
            for r in 0..R {
                let p0 = _mm512_dpbusd_epi32(zero, q[r][0], y[0]);
                let p1 = _mm512_dpbusd_epi32(zero, q[r][1], y[1]);
                let p2 = _mm512_dpbusd_epi32(zero, q[r][2], y[2]);
                let p3 = _mm512_dpbusd_epi32(zero, q[r][3], y[3]);
                // 32·sc·bsum (|32·sc| ≤ 4096 fits i16; pair sums fit i32)
                let corr = _mm512_zextsi256_si512(_mm256_madd_epi16(sc16[r], bsums));
                let s = _mm512_dpwssd_epi32(zero, _mm512_packs_epi32(p0, p1), sc[r][0]);
                let s = _mm512_dpwssd_epi32(s, _mm512_packs_epi32(p2, p3), sc[r][1]);
                let s = _mm512_sub_epi32(s, corr);
                acc[r][k] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(d[r] * yd), acc[r][k]);
            }
        }
    }
    let n_b = acts.n_rows();
    for (r, acc) in acc.iter().enumerate() {
        for (k, a) in acc.iter().enumerate() {
            out[r * n_b + b0 + k] = hsum(*a);
        }
    }
}
