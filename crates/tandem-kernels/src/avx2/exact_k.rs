//! AVX2 kernels for the 256-weight formats whose ggml generic dot sums each
//! super-block exactly in integers before any float operation: Q2_K, Q3_K,
//! IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0
//! (× Q8_K); and IQ4_XS in ggml's x86 order (see its doc). Each super-block is decoded once into 8 registers of 32 signed
//! weight bytes plus per-16 i16 scales (IQ2_XXS: unsigned grid bytes and
//! sign vectors for the activations, as ggml's x86 kernel) and used against
//! every activation row of the tile; the integer sums are exact (bounds in `exact.rs`), and
//! the float statements after them are the scalar reference's, so results
//! equal the reference bit for bit (Q3_K keeps ggml's eight i32 / f32 lanes,
//! lane = position mod 8, for the same reason). IQ2_XXS is the exception:
//! at batch 1 it is compute-bound, and it sums super-blocks in f32 lanes
//! as ggml's AVX2 kernel does (tested within tolerance).

use std::arch::x86_64::*;

use super::exact::*;
use super::helpers::*;
use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::grids::*;
use crate::QuantizedActivations;

type Regs = [__m256i; 8];

#[inline]
fn k_rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8KRow<'_>; N] {
    let rows: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK_K && r.d.len() == nb && r.bsums.len() == nb * 16);
    }
    rows
}

/// `Σ_g Σ s_g·w_g·q8_g` over a super-block (exact).
#[inline(always)]
unsafe fn block_total<D: Dot>(w: &Regs, sc: &Regs, q8: *const i8) -> i32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let mut acc = _mm256_setzero_si256();
        for g in 0..8 {
            acc = D::acc_scaled(acc, w[g], load256(q8.add(32 * g)), sc[g]);
        }
        hsum_i32_8(acc)
    }
}

/// Shared body: `decode(block, w, scales)`, then per activation row
/// `sumf = update(block, row, i, total, sumf)`; `out = factor · sumf`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_total<D: Dot, const N: usize>(
    w: &[u8],
    bytes: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
    factor: Option<f32>,
    decode: impl Fn(&[u8], &mut Regs, &mut Regs),
    update: impl Fn(&[u8], &Q8KRow<'_>, usize, i32, f32) -> f32,
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / bytes;
        assert!(w.len() == nb * bytes && out.len() == N);
        let rows = k_rows::<N>(acts, b0, nb);
        let mut sumf = [0f32; N];
        let mut wv = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        for i in 0..nb {
            let blk = &w[i * bytes..(i + 1) * bytes];
            decode(blk, &mut wv, &mut sc);
            for k in 0..N {
                let total = block_total::<D>(&wv, &sc, rows[k].qs.as_ptr().add(i * QK_K));
                sumf[k] = update(blk, &rows[k], i, total, sumf[k]);
            }
        }
        for k in 0..N {
            out[k] = match factor {
                Some(f) => f * sumf[k],
                None => sumf[k],
            };
        }
    }
}

/// ggml's `get_scale_shuffle_q3k`: picks i16 lanes (2g, 2g+1) of a
/// duplicated 128-bit half into the low / high halves.
static SCALE_SHUFFLE: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut g = 0;
    while g < 4 {
        let mut b = 0;
        while b < 16 {
            t[g][b] = (4 * g + b % 2) as u8;
            t[g][16 + b] = (4 * g + 2 + b % 2) as u8;
            b += 1;
        }
        g += 1;
    }
    t
};

/// Per-group scale vectors from 16 i16 sub-block scales (lane j = sub-block
/// j of 16 weights): group g gets scale 2g on bytes 0..16, 2g+1 on 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn spread_scales(sc16: __m256i, sc: &mut Regs) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let lo = _mm256_permute2x128_si256::<0x00>(sc16, sc16);
        let hi = _mm256_permute2x128_si256::<0x11>(sc16, sc16);
        for g in 0..4 {
            let k = load256(SCALE_SHUFFLE[g].as_ptr());
            sc[g] = _mm256_shuffle_epi8(lo, k);
            sc[g + 4] = _mm256_shuffle_epi8(hi, k);
        }
    }
}

/// 8 packed nibble-pair bytes → 16 i16 scales `2·nibble + 1` (low nibble first).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn odd_scales16(p: *const u8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let b = _mm_loadl_epi64(p as *const __m128i);
        let m = _mm_set1_epi8(0xF);
        let n = _mm_unpacklo_epi8(
            _mm_and_si128(b, m),
            _mm_and_si128(_mm_srli_epi16::<4>(b), m),
        );
        let s = _mm256_cvtepu8_epi16(n);
        _mm256_add_epi16(_mm256_add_epi16(s, s), _mm256_set1_epi16(1))
    }
}

/// `sumf + (x.d · y.d) · total`, the IQ2 / IQ3 update.
#[inline]
fn plain_update(blk: &[u8], y: &Q8KRow<'_>, i: usize, total: i32, sumf: f32) -> f32 {
    // SAFETY: only passed to the kernels of this file, which run after the
    // family checked AVX2/F16C.
    let dx = unsafe { read_f16(blk, 0) };
    sumf + (dx * y.d[i]) * total as f32
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_grid(g: [u64; 4], s: [u64; 4]) -> __m256i {
    let g = _mm256_set_epi64x(g[3] as i64, g[2] as i64, g[1] as i64, g[0] as i64);
    let s = _mm256_set_epi64x(s[3] as i64, s[2] as i64, s[1] as i64, s[0] as i64);
    _mm256_sub_epi8(_mm256_xor_si256(g, s), s)
}

#[inline]
fn ksign_mask(bits7: u32) -> u64 {
    KSIGNS64[(bits7 & 127) as usize]
}

/// Popcount of a nibble (`vpshufb` table).
static POPCNT16: [i8; 16] = [0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4];

/// Where [`iq2_xxs_signs`] leaves sub-block `ib`'s dword.
const IQ2_XXS_POS: [i32; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

/// The sign vectors (bytes of +1 / -1, for `vpsignb` on the activations)
/// and scales `2·s + 1` (i16, every lane) of the 8 sub-blocks of the
/// IQ2_XXS block whose `qs` start at `qs`. ggml looks each sign byte up in
/// `ksigns_iq2xs` (7 bits and their parity) with a scalar load; here the 32
/// sign bytes of a block are computed at once: the 7-bit fields cut out of
/// the eight `aux32` words, their parity from a nibble popcount, then each
/// sub-block's 4 bytes spread to 32 byte masks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq2_xxs_signs(qs: *const u8, sv: &mut Regs, sc: &mut Regs) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (a, b) = (load256(qs), load256(qs.add(32)));
        // odd dwords (the aux32 words); dword p is sub-block IQ2_XXS_POS^-1[p]
        let aux = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(
            _mm256_castsi256_ps(a),
            _mm256_castsi256_ps(b),
        ));
        let m7 = _mm256_set1_epi32(127);
        let f1 = _mm256_and_si256(_mm256_srli_epi32::<7>(aux), m7);
        let f2 = _mm256_and_si256(_mm256_srli_epi32::<14>(aux), m7);
        let f3 = _mm256_and_si256(_mm256_srli_epi32::<21>(aux), m7);
        let idx = _mm256_or_si256(
            _mm256_or_si256(_mm256_and_si256(aux, m7), _mm256_slli_epi32::<8>(f1)),
            _mm256_or_si256(_mm256_slli_epi32::<16>(f2), _mm256_slli_epi32::<24>(f3)),
        );
        // byte l of dword p: 7 sign bits of group l; bit 7 = their parity
        let m0f = _mm256_set1_epi8(0x0F);
        let pc_t = _mm256_broadcastsi128_si256(load128(POPCNT16.as_ptr()));
        let pc = _mm256_add_epi8(
            _mm256_shuffle_epi8(pc_t, _mm256_and_si256(idx, m0f)),
            _mm256_shuffle_epi8(pc_t, _mm256_and_si256(_mm256_srli_epi16::<4>(idx), m0f)),
        );
        let par = _mm256_slli_epi16::<7>(_mm256_and_si256(pc, _mm256_set1_epi8(1)));
        let signs = _mm256_or_si256(idx, par);
        let ls = _mm256_add_epi32(
            _mm256_slli_epi32::<1>(_mm256_srli_epi32::<28>(aux)),
            _mm256_set1_epi32(1),
        );
        let ls = _mm256_or_si256(ls, _mm256_slli_epi32::<16>(ls));
        // byte b of a sub-block's vector: sign byte b / 8, bit b % 8
        let rep = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let one = _mm256_set1_epi8(1);
        for ib in 0..8 {
            let p = _mm256_set1_epi32(IQ2_XXS_POS[ib]);
            let s = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(signs, p), rep);
            let m = _mm256_cmpeq_epi8(_mm256_and_si256(s, bits), bits);
            sv[ib] = _mm256_or_si256(m, one);
            sc[ib] = _mm256_permutevar8x32_epi32(ls, p);
        }
    }
}

/// IQ2_XXS as ggml's x86 kernel decodes it (unsigned grid bytes, the signs
/// applied to the activations with `vpsignb`, `vpmaddubsw`, then the scale
/// `2·s + 1`; signs from [`iq2_xxs_signs`]), with the block total exact in
/// i32 and the reference's float statements after it.
#[inline(always)]
pub(super) unsafe fn dot_iq2_xxs<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / IQ2_XXS_BYTES;
        assert!(w.len() == nb * IQ2_XXS_BYTES && out.len() == N);
        let rows = k_rows::<N>(acts, b0, nb);
        // Eight f32 lanes per row, summed once at the end (as ggml's AVX2
        // kernel), not a horizontal integer sum per super-block: that sum
        // was a fifth of the kernel at batch 1. The lanes' integer parts
        // stay exact (|lane| < 2^23, bounds in `exact.rs`); only the float
        // order differs from the reference (tested within tolerance).
        let mut sumf = [_mm256_setzero_ps(); N];
        let mut gv = [_mm256_setzero_si256(); 8];
        let mut sv = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        for i in 0..nb {
            let blk = w.as_ptr().add(i * IQ2_XXS_BYTES);
            // A hint only (never faults): the loads below start each
            // block's dependency chain.
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(8 * IQ2_XXS_BYTES) as *const i8);
            for (ib, g) in gv.iter_mut().enumerate() {
                let a = blk.add(2 + 8 * ib);
                let e = |l: usize| IQ2XXS_GRID[usize::from(*a.add(l))] as i64;
                *g = _mm256_set_epi64x(e(3), e(2), e(1), e(0));
            }
            iq2_xxs_signs(blk.add(2), &mut sv, &mut sc);
            let dx = f16c(std::ptr::read_unaligned(blk as *const u16));
            for k in 0..N {
                let q8 = rows[k].qs.as_ptr().add(i * QK_K);
                let mut acc = _mm256_setzero_si256();
                for ib in 0..8 {
                    let q = _mm256_sign_epi8(load256(q8.add(32 * ib)), sv[ib]);
                    acc = D::acc_madd(acc, _mm256_maddubs_epi16(gv[ib], q), sc[ib]);
                }
                sumf[k] = _mm256_fmadd_ps(
                    _mm256_set1_ps(dx * rows[k].d[i]),
                    _mm256_cvtepi32_ps(acc),
                    sumf[k],
                );
            }
        }
        for k in 0..N {
            out[k] = 0.125 * hsum_float_8(sumf[k]);
        }
    }
}

#[inline(always)]
pub(super) unsafe fn dot_iq2_xs<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            for (ib, v) in wv.iter_mut().enumerate() {
                let q: [u16; 4] = std::array::from_fn(|l| u16_at(blk, 2 + 2 * (4 * ib + l)));
                let g = q.map(|q| IQ2XS_GRID[usize::from(q & 511)]);
                let s = q.map(|q| ksign_mask(u32::from(q >> 9)));
                *v = signed_grid(g, s);
            }
            spread_scales(odd_scales16(blk.as_ptr().add(66)), sc);
        };
        dot_total::<D, N>(
            w,
            IQ2_XS_BYTES,
            acts,
            b0,
            out,
            Some(0.125),
            decode,
            plain_update,
        );
    }
}

#[inline(always)]
pub(super) unsafe fn dot_iq2_s<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            for ib in 0..8 {
                let qh = usize::from(blk[66 + ib]);
                let g = std::array::from_fn(|l| {
                    IQ2S_GRID[usize::from(blk[2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)]
                });
                let s = std::array::from_fn(|l| BYTE_MASK64[usize::from(blk[34 + 4 * ib + l])]);
                wv[ib] = signed_grid(g, s);
            }
            spread_scales(odd_scales16(blk.as_ptr().add(74)), sc);
        };
        dot_total::<D, N>(
            w,
            IQ2_S_BYTES,
            acts,
            b0,
            out,
            Some(0.125),
            decode,
            plain_update,
        );
    }
}

/// Four groups of 8 built from pairs of 4-wide grid points, with sign masks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_grid4(g: [u32; 8], s: [u64; 4]) -> __m256i {
    let g = _mm256_set_epi32(
        g[7] as i32,
        g[6] as i32,
        g[5] as i32,
        g[4] as i32,
        g[3] as i32,
        g[2] as i32,
        g[1] as i32,
        g[0] as i32,
    );
    let s = _mm256_set_epi64x(s[3] as i64, s[2] as i64, s[1] as i64, s[0] as i64);
    _mm256_sub_epi8(_mm256_xor_si256(g, s), s)
}

#[inline(always)]
pub(super) unsafe fn dot_iq3_xxs<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            for ib in 0..8 {
                let qs = &blk[2 + 8 * ib..2 + 8 * ib + 8];
                let aux32 = u32_at(blk, 66 + 4 * ib);
                let g = std::array::from_fn(|j| IQ3XXS_GRID[usize::from(qs[j])]);
                let s = std::array::from_fn(|l| ksign_mask(aux32 >> (7 * l)));
                wv[ib] = signed_grid4(g, s);
                sc[ib] = _mm256_set1_epi16((2 * (aux32 >> 28) + 1) as i16);
            }
        };
        dot_total::<D, N>(
            w,
            IQ3_XXS_BYTES,
            acts,
            b0,
            out,
            Some(0.25),
            decode,
            plain_update,
        );
    }
}

#[inline(always)]
pub(super) unsafe fn dot_iq3_s<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            for ib in 0..8 {
                let qs = &blk[2 + 8 * ib..2 + 8 * ib + 8];
                let qh = usize::from(blk[66 + ib]);
                let g = std::array::from_fn(|j| {
                    let (l, hi) = (j / 2, j % 2);
                    IQ3S_GRID[usize::from(qs[j]) | ((qh << (8 - 2 * l - hi)) & 256)]
                });
                let s = std::array::from_fn(|l| BYTE_MASK64[usize::from(blk[74 + 4 * ib + l])]);
                wv[ib] = signed_grid4(g, s);
                let b = blk[106 + ib / 2] >> (4 * (ib % 2));
                sc[ib] = _mm256_set1_epi16(2 * i16::from(b & 0xf) + 1);
            }
        };
        dot_total::<D, N>(w, IQ3_S_BYTES, acts, b0, out, None, decode, plain_update);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn grid_i8(g: [u64; 4]) -> __m256i {
    _mm256_set_epi64x(g[3] as i64, g[2] as i64, g[1] as i64, g[0] as i64)
}

#[inline(always)]
pub(super) unsafe fn dot_iq1_s<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            for ib in 0..8 {
                let qh = usize::from(u16_at(blk, 34 + 2 * ib));
                let g = std::array::from_fn(|l| {
                    IQ1S_GRID[usize::from(blk[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)]
                });
                wv[ib] = grid_i8(g);
                sc[ib] = _mm256_set1_epi16((2 * ((qh >> 12) & 7) + 1) as i16);
            }
        };
        let update = |blk: &[u8], y: &Q8KRow<'_>, i: usize, sumi: i32, sumf: f32| {
            let bsums = &y.bsums[16 * i..16 * i + 16];
            // coefficient of bsums[j]: ls·delta of sub-block j / 2
            let qh = _mm_loadu_si128(blk.as_ptr().add(34) as *const __m128i);
            let ls = _mm_or_si128(
                _mm_and_si128(_mm_srli_epi16::<11>(qh), _mm_set1_epi16(14)),
                _mm_set1_epi16(1),
            );
            let neg = _mm_srai_epi16::<15>(qh);
            let c = _mm_sub_epi16(_mm_xor_si128(ls, neg), neg);
            let c = _mm256_set_m128i(_mm_unpackhi_epi16(c, c), _mm_unpacklo_epi16(c, c));
            let sumi1 = hsum_i32_8(_mm256_madd_epi16(c, load256(bsums.as_ptr())));
            sumf + read_f16(blk, 0) * y.d[i] * (sumi as f32 + IQ1S_DELTA * sumi1 as f32)
        };
        dot_total::<D, N>(w, IQ1_S_BYTES, acts, b0, out, None, decode, update);
    }
}

#[inline(always)]
pub(super) unsafe fn dot_iq1_m<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / IQ1_M_BYTES;
        assert!(w.len() == nb * IQ1_M_BYTES && out.len() == N);
        let rows = k_rows::<N>(acts, b0, nb);
        let mut sumf = [0f32; N];
        let mut wv = [_mm256_setzero_si256(); 8];
        let mut dv = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        for i in 0..nb {
            let blk = &w[i * IQ1_M_BYTES..(i + 1) * IQ1_M_BYTES];
            for ib in 0..8 {
                let qs = &blk[4 * ib..4 * ib + 4];
                let (h0, h1) = (usize::from(blk[32 + 2 * ib]), usize::from(blk[33 + 2 * ib]));
                let idx = [
                    usize::from(qs[0]) | ((h0 << 8) & 0x700),
                    usize::from(qs[1]) | ((h0 << 4) & 0x700),
                    usize::from(qs[2]) | ((h1 << 8) & 0x700),
                    usize::from(qs[3]) | ((h1 << 4) & 0x700),
                ];
                let neg = [h0 & 0x08, h0 & 0x80, h1 & 0x08, h1 & 0x80];
                wv[ib] = grid_i8(idx.map(|j| IQ1S_GRID[j]));
                let s = u16_at(blk, 48 + 2 * (ib / 2));
                let ls = |k: usize| 2 * i32::from((s >> (6 * (ib % 2) + k)) & 0x7) + 1;
                let (ls1, ls2) = (ls(0), ls(3));
                sc[ib] = scales16(ls1, ls2);
                // sumi2's coefficient of each pair of q8 bytes: ls(half)·delta(group of 8)
                let c: [u64; 4] = std::array::from_fn(|l| {
                    let v = if l < 2 { ls1 } else { ls2 } * if neg[l] != 0 { -1 } else { 1 };
                    u64::from(v as i16 as u16) * 0x0001_0001_0001_0001
                });
                dv[ib] = grid_i8(c);
            }
            let d = f16c(iq1_m_scale_bits(&blk[48..56]));
            for k in 0..N {
                let q8 = rows[k].qs.as_ptr().add(i * QK_K);
                let sumi1 = block_total::<D>(&wv, &sc, q8);
                // Σ_l ls·delta_l·Σ q8 over group l: pair sums of q8, times coefficients
                let mut acc2 = _mm256_setzero_si256();
                for (g, &c) in dv.iter().enumerate() {
                    let p = _mm256_maddubs_epi16(_mm256_set1_epi8(1), load256(q8.add(32 * g)));
                    acc2 = D::acc_madd(acc2, p, c);
                }
                let sumi2 = hsum_i32_8(acc2);
                sumf[k] += d * rows[k].d[i] * (sumi1 as f32 + IQ1S_DELTA * sumi2 as f32);
            }
        }
        out.copy_from_slice(&sumf);
    }
}

#[inline(always)]
pub(super) unsafe fn dot_q2_k<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            let m3 = _mm256_set1_epi8(3);
            for n in 0..2 {
                let bits = load256(blk.as_ptr().add(Q2_K_QS_OFF + 32 * n));
                let sh = [
                    bits,
                    _mm256_srli_epi16::<2>(bits),
                    _mm256_srli_epi16::<4>(bits),
                    _mm256_srli_epi16::<6>(bits),
                ];
                for (j, &shj) in sh.iter().enumerate() {
                    wv[4 * n + j] = _mm256_and_si256(shj, m3);
                }
            }
            let s = _mm_and_si128(load128(blk.as_ptr()), _mm_set1_epi8(0xF));
            spread_scales(_mm256_cvtepu8_epi16(s), sc);
        };
        let update = |blk: &[u8], y: &Q8KRow<'_>, i: usize, isum: i32, sumf: f32| {
            let bsums = &y.bsums[16 * i..16 * i + 16];
            let mins = _mm_and_si128(
                _mm_srli_epi16::<4>(load128(blk.as_ptr())),
                _mm_set1_epi8(0xF),
            );
            let summs = hsum_i32_8(_mm256_madd_epi16(
                _mm256_cvtepu8_epi16(mins),
                load256(bsums.as_ptr()),
            ));
            let dall = y.d[i] * read_f16(blk, Q2_K_D_OFF);
            let dmin = y.d[i] * read_f16(blk, Q2_K_D_OFF + 2);
            sumf + (dall * isum as f32 - dmin * summs as f32)
        };
        dot_total::<D, N>(w, Q2_K_BYTES, acts, b0, out, None, decode, update);
    }
}

#[inline(always)]
pub(super) unsafe fn dot_tq2_0<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            let (m3, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
            for j in 0..2 {
                let bits = load256(blk.as_ptr().add(32 * j));
                let sh = [
                    bits,
                    _mm256_srli_epi16::<2>(bits),
                    _mm256_srli_epi16::<4>(bits),
                    _mm256_srli_epi16::<6>(bits),
                ];
                for l in 0..4 {
                    wv[4 * j + l] = _mm256_sub_epi8(_mm256_and_si256(sh[l], m3), one);
                    sc[4 * j + l] = _mm256_set1_epi16(1);
                }
            }
        };
        let update = |blk: &[u8], y: &Q8KRow<'_>, i: usize, sumi: i32, sumf: f32| {
            sumf + sumi as f32 * (y.d[i] * read_f16(blk, 64))
        };
        dot_total::<D, N>(w, TQ2_0_BYTES, acts, b0, out, None, decode, update);
    }
}

/// IQ4_XS in ggml's x86 order (`ggml_vec_dot_iq4_xs_q8_K`): per
/// super-block the eight exact i32 lanes of `Σ (ls - 32)·w·q8` are converted
/// and FMA-ed with `x.d·y.d` into an 8-lane accumulator, `hsum_float_8` at
/// the end. Bit-identical to llama.cpp on x86 (fixture `ggml_dot_IQ4_XS.f32`).
#[inline(always)]
pub(super) unsafe fn dot_iq4_xs<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / IQ4_XS_BYTES;
        assert!(w.len() == nb * IQ4_XS_BYTES && out.len() == N);
        let rows = k_rows::<N>(acts, b0, nb);
        let t = table256(&KVALUES_IQ4NL);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut wv = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        for i in 0..nb {
            let blk = &w[i * IQ4_XS_BYTES..(i + 1) * IQ4_XS_BYTES];
            for ib in 0..8 {
                wv[ib] = _mm256_shuffle_epi8(t, nibbles32(blk.as_ptr().add(8 + 16 * ib)));
                let ls = crate::reference::nonlinear::iq4_xs_scale(blk, ib) - 32;
                sc[ib] = _mm256_set1_epi16(ls as i16);
            }
            let dx = read_f16(blk, 0);
            for k in 0..N {
                let q8 = rows[k].qs.as_ptr().add(i * QK_K);
                let mut sumi = _mm256_setzero_si256();
                for g in 0..8 {
                    sumi = D::acc_scaled(sumi, wv[g], load256(q8.add(32 * g)), sc[g]);
                }
                let d = _mm256_set1_ps(dx * rows[k].d[i]);
                acc[k] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[k]);
            }
        }
        for k in 0..N {
            out[k] = hsum_float_8(acc[k]);
        }
    }
}

/// Within each 16-byte chunk, pair position `l` with `l + 8` (both `≡ l mod 8`)
/// so that a `maddubs` i16 lane holds exactly the two products of one
/// `aux32[l]` term.
static Q3_PAIR: [u8; 32] = [
    0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13,
    6, 14, 7, 15,
];

/// Q3_K: ggml's generic dot keeps eight i32 lanes, lane `l` collecting the
/// positions `≡ l (mod 8)` (`aux32[l]`), then `sums[l] += d·aux32[l]`; to be
/// bit-identical this kernel computes those eight lanes exactly. Weights
/// `q - 4·!hbit` are decoded once per block with the bytes of each 16-byte
/// chunk reordered to pairs `(l, l + 8)`, so `maddubs` yields one i16 per
/// `(chunk, l)` (≤ 2·4·127); two groups' outputs are interleaved with
/// `unpack{lo,hi}_epi16` and `madd`-ed with their two scales `(sc - 32)`, so
/// every i32 lane stays one `l` (lanes l < 4 from `unpacklo`, l ≥ 4 from
/// `unpackhi`, each in both 128-bit halves), summed at the end.
#[inline(always)]
pub(super) unsafe fn dot_q3_k<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / Q3_K_BYTES;
        assert!(w.len() == nb * Q3_K_BYTES && out.len() == N);
        let rows = k_rows::<N>(acts, b0, nb);
        let mut sums = [_mm256_setzero_ps(); N];
        let mut wv = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        let (m3, four) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
        let pair = load256(Q3_PAIR.as_ptr());
        for i in 0..nb {
            let blk = &w[i * Q3_K_BYTES..(i + 1) * Q3_K_BYTES];
            let hm = load256(blk.as_ptr());
            for n in 0..2 {
                let bits = load256(blk.as_ptr().add(Q3_K_QS_OFF + 32 * n));
                let sh = [
                    bits,
                    _mm256_srli_epi16::<2>(bits),
                    _mm256_srli_epi16::<4>(bits),
                    _mm256_srli_epi16::<6>(bits),
                ];
                for (k, &shk) in sh.iter().enumerate() {
                    let g = 4 * n + k;
                    let bit = _mm256_set1_epi8((1u8 << g) as i8);
                    let clear =
                        _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), _mm256_setzero_si256());
                    let a =
                        _mm256_sub_epi8(_mm256_and_si256(shk, m3), _mm256_and_si256(clear, four));
                    wv[g] = _mm256_shuffle_epi8(a, pair);
                }
            }
            // i16 scales - 32, lane j = sub-block j; group g: 2g on bytes 0..16, 2g+1 on 16..32
            let s = unpack_q3_k_scales(&blk[Q3_K_SCALES_OFF..Q3_K_SCALES_OFF + 12]);
            let s16 = _mm256_sub_epi16(
                _mm256_cvtepu8_epi16(load128(s.as_ptr())),
                _mm256_set1_epi16(32),
            );
            spread_scales(s16, &mut sc);
            // scales for the interleaved pairs of groups (g, g + 1)
            let sp: [__m256i; 4] =
                std::array::from_fn(|h| _mm256_unpacklo_epi16(sc[2 * h], sc[2 * h + 1]));
            let dx = read_f16(blk, Q3_K_D_OFF);
            for k in 0..N {
                let q8 = rows[k].qs.as_ptr().add(i * QK_K);
                let mut lo = _mm256_setzero_si256();
                let mut hi = _mm256_setzero_si256();
                for (h, &sph) in sp.iter().enumerate() {
                    let (g0, g1) = (2 * h, 2 * h + 1);
                    let x = pairs(wv[g0], _mm256_shuffle_epi8(load256(q8.add(32 * g0)), pair));
                    let y = pairs(wv[g1], _mm256_shuffle_epi8(load256(q8.add(32 * g1)), pair));
                    lo = D::acc_madd(lo, _mm256_unpacklo_epi16(x, y), sph);
                    hi = D::acc_madd(hi, _mm256_unpackhi_epi16(x, y), sph);
                }
                // lanes: lo = l 0..4 (both halves), hi = l 4..8 (both halves)
                let aux32 = _mm256_add_epi32(
                    _mm256_permute2x128_si256::<0x20>(lo, hi),
                    _mm256_permute2x128_si256::<0x31>(lo, hi),
                );
                let d = _mm256_set1_ps(dx * rows[k].d[i]);
                sums[k] = _mm256_add_ps(sums[k], _mm256_mul_ps(d, _mm256_cvtepi32_ps(aux32)));
            }
        }
        for k in 0..N {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), sums[k]);
            let mut sumf = 0f32;
            for l in lanes {
                sumf += l;
            }
            out[k] = sumf;
        }
    }
}

/// 32 TQ1_0 trits minus one: byte k of `lo` (k < 16) / `hi` times the u16
/// multiplier of its lane, mod 256, then `(q·3) >> 8` (ggml's trit
/// extraction), as i8 in byte order lo, hi.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn trits32(lo: __m128i, hi: __m128i, mlo: __m256i, mhi: __m256i) -> __m256i {
    let byte = _mm256_set1_epi16(0xFF);
    let three = _mm256_set1_epi16(3);
    let t = |x: __m128i, m: __m256i| {
        let q = _mm256_and_si256(_mm256_mullo_epi16(_mm256_cvtepu8_epi16(x), m), byte);
        _mm256_srli_epi16::<8>(_mm256_mullo_epi16(q, three))
    };
    // packs interleaves 128-bit halves: restore byte order with a 64-bit permute
    let packed = _mm256_packs_epi16(t(lo, mlo), t(hi, mhi));
    let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
    _mm256_sub_epi8(ordered, _mm256_set1_epi8(1))
}

#[inline(always)]
pub(super) unsafe fn dot_tq1_0<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let decode = |blk: &[u8], wv: &mut Regs, sc: &mut Regs| {
            const POW3: [i16; 5] = [1, 3, 9, 27, 81];
            let p = blk.as_ptr();
            let (q0, q1, q2) = (load128(p), load128(p.add(16)), load128(p.add(32)));
            for n in 0..5 {
                let m = _mm256_set1_epi16(POW3[n]);
                wv[n] = trits32(q0, q1, m, m);
            }
            let m = |n: usize| _mm256_set1_epi16(POW3[n]);
            wv[5] = trits32(q2, q2, m(0), m(1));
            wv[6] = trits32(q2, q2, m(2), m(3));
            // weights 240..256: qh byte j, trit n at 240 + 4n + j
            let qh = _mm_set1_epi32(u32_at(blk, 48) as i32);
            let mqh = _mm256_set_epi16(27, 27, 27, 27, 9, 9, 9, 9, 3, 3, 3, 3, 1, 1, 1, 1);
            wv[7] = trits32(q2, qh, m(4), mqh);
            sc.fill(_mm256_set1_epi16(1));
        };
        let update = |blk: &[u8], y: &Q8KRow<'_>, i: usize, sum: i32, sumf: f32| {
            sumf + sum as f32 * (read_f16(blk, 52) * y.d[i])
        };
        dot_total::<D, N>(w, TQ1_0_BYTES, acts, b0, out, None, decode, update);
    }
}
