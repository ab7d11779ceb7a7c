//! Q5_K weights × Q8_K activations (Q4_K has its own 256-bit kernel in
//! `q4_k_ymm`, measured faster on Zen 4; this 512-bit layout is what Q5_K
//! still uses).
//!
//! Per super-block and weight row, the 4-bit (5-bit) quants are decoded once
//! into four registers of 64 unsigned bytes in weight order (a 32-byte
//! `qs` run broadcast to both halves, the upper half shifted by 4; Q5_K adds
//! 16 where the `qh` bit is set, via `vptestmb`). Per activation row:
//!
//! * `vpdpbusd(q, q8)` from zero: 16 i32 lanes, 8 per 32-weight sub-block,
//!   each a sum of 4 products ≤ 4·31·128 < 2^15, so `vpackssdw` of two such
//!   registers is exact, and `vpdpwssd` with the 6-bit scales laid out to
//!   match (see [`SCALE_IDX`]) gives 16 i32 lanes whose total is ggml's exact
//!   `Σ scale_j · Σ q·q8` (each lane < 2^24, so converting it is exact);
//! * mins: `vpmaddwd(mins, bsums)` = 8 exact i32 lanes `m_j·(bsum_2j + bsum_2j+1)`;
//! * float, per pair: `acc = fma(f32(sumi), d·yd, acc)`, then lanes 0..8:
//!   `acc = fma(f32(mins), -dmin·yd, acc)`.

use std::arch::x86_64::*;

use super::assert_tile;
use super::helpers::*;
use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::QuantizedActivations;

#[inline]
fn rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8KRow<'_>; N] {
    let rows: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK_K && r.d.len() == nb && r.bsums.len() == nb * 16);
    }
    rows
}

/// `vpermw` indices into `[sc0..sc8, m0..m8]` (i16) giving, for
/// `vpackssdw(p_a, p_b)` of the dpbusd results of weights `128h..128h+64`
/// (`p_a`) and `128h+64..128h+128` (`p_b`), the scale of each i16 element:
/// element e of 128-bit lane L comes from `p_a` (e%8 < 4) or `p_b`, lanes
/// 0..2 of each are the even sub-block, 2..4 the odd one.
const SCALE_IDX: [[i16; 32]; 2] = {
    let mut t = [[0i16; 32]; 2];
    let mut h = 0;
    while h < 2 {
        let mut e = 0;
        while e < 32 {
            let lane = e / 8;
            let from_b = (e % 8) >= 4;
            t[h][e] = (4 * h + if from_b { 2 } else { 0 } + if lane >= 2 { 1 } else { 0 }) as i16;
            e += 1;
        }
        h += 1;
    }
    t
};

/// `[m0, m0, m1, m1, .., m7, m7]` from `[sc0..sc8, m0..m8]`.
const MIN_IDX: [i16; 16] = [8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15];

/// One decoded super-block of one weight row.
#[derive(Copy, Clone)]
struct Block {
    q: [__m512i; 4],
    scales: [__m512i; 2],
    mins: __m256i,
    d: f32,
    dmin: f32,
}

/// Scales and mins of a Q4_K/Q5_K block (the 12 packed bytes at `blk + 4`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales_mins(blk: *const u8) -> ([__m512i; 2], __m256i) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let s = std::slice::from_raw_parts(blk.add(K_SCALES_OFF), 12);
        let u = unpack_scales_mins_k4(s);
        let sm = _mm256_cvtepu8_epi16(_mm_set_epi32(
            u[3] as i32,
            u[2] as i32,
            u[1] as i32,
            u[0] as i32,
        ));
        let sm512 = _mm512_castsi256_si512(sm);
        let s0 = _mm512_permutexvar_epi16(load512(SCALE_IDX[0].as_ptr()), sm512);
        let s1 = _mm512_permutexvar_epi16(load512(SCALE_IDX[1].as_ptr()), sm512);
        let mins = _mm256_permutexvar_epi16(load256(MIN_IDX.as_ptr()), sm);
        ([s0, s1], mins)
    }
}

/// The 64 low-nibble/high-nibble quants of `qs[32j..32j+32]` in weight order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8, m4: __m512i) -> __m512i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let z = bcast256(qs);
        // (a masked shift compiles to the slower variable-count vpsrlvw)
        let z = _mm512_mask_blend_epi64(0xF0, z, _mm512_srli_epi16::<4>(z));
        _mm512_and_si512(z, m4)
    }
}

/// A K-quant format with 4-bit + optional 5th-bit quants (static dispatch:
/// closures would not inherit the target features and stay out of line).
trait KDecode {
    const BYTES: usize;
    unsafe fn decode(blk: *const u8) -> Block;
}

struct Q5K;

impl KDecode for Q5K {
    const BYTES: usize = Q5_K_BYTES;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn decode(blk: *const u8) -> Block {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { decode_q5_k(blk) }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn decode_q5_k(blk: *const u8) -> Block {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let m4 = _mm512_set1_epi8(0xF);
        let m16 = _mm512_set1_epi8(16);
        let (scales, mins) = scales_mins(blk);
        let qs = blk.add(Q5_K_QS_OFF);
        let qh = bcast256(blk.add(Q5_K_QH_OFF));
        let mut q = [m4; 4];
        for (j, q) in q.iter_mut().enumerate() {
            // weights 64j..64j+32 take bit 2j of qh, 64j+32..64j+64 bit 2j+1
            let lo = (0x0101_0101_0101_0101u64 << (2 * j)) as i64;
            let hi = (0x0202_0202_0202_0202u64 << (2 * j)) as i64;
            let bits = _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo);
            let n = nibbles(qs.add(32 * j), m4);
            *q = _mm512_mask_add_epi8(n, _mm512_test_epi8_mask(qh, bits), n, m16);
        }
        Block {
            q,
            scales,
            mins,
            d: f16_at(blk),
            dmin: f16_at(blk.add(2)),
        }
    }
}

/// Shared tile body for Q4_K and Q5_K.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<K: KDecode, const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let block_bytes = K::BYTES;
        assert_tile(w, rb, block_bytes, R, acts, b0, N, out);
        let nb = rb / block_bytes;
        let ys = rows::<N>(acts, b0, nb);
        let wp = w.as_ptr();
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        for i in 0..nb {
            let empty = Block {
                q: [zero; 4],
                scales: [zero; 2],
                mins: _mm256_setzero_si256(),
                d: 0.0,
                dmin: 0.0,
            };
            let mut x = [empty; R];
            for (r, x) in x.iter_mut().enumerate() {
                *x = K::decode(wp.add(r * rb + i * block_bytes));
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
                    let b = &x[r];
                    let p0 = _mm512_dpbusd_epi32(zero, b.q[0], y[0]);
                    let p1 = _mm512_dpbusd_epi32(zero, b.q[1], y[1]);
                    let p2 = _mm512_dpbusd_epi32(zero, b.q[2], y[2]);
                    let p3 = _mm512_dpbusd_epi32(zero, b.q[3], y[3]);
                    let s = _mm512_dpwssd_epi32(zero, _mm512_packs_epi32(p0, p1), b.scales[0]);
                    let s = _mm512_dpwssd_epi32(s, _mm512_packs_epi32(p2, p3), b.scales[1]);
                    let m = _mm512_zextsi256_si512(_mm256_madd_epi16(b.mins, bsums));
                    let a =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(b.d * yd), acc[r][k]);
                    acc[r][k] = _mm512_mask3_fmadd_ps(
                        _mm512_cvtepi32_ps(m),
                        _mm512_set1_ps(-b.dmin * yd),
                        a,
                        0x00FF,
                    );
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
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        run::<Q5K, R, N>(w, rb, acts, b0, out);
    }
}
