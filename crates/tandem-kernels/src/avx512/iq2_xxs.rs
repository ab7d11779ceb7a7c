//! IQ2_XXS × Q8_K with AVX-512 VBMI: the grid and sign lookups in registers.
//!
//! ggml's x86 kernel (and the AVX2 family's) looks up every 8-weight grid
//! point and every sign byte with a scalar load and assembles them with
//! inserts: ~40 operations per 32 weights, so the kernel runs at a fraction
//! of memory speed. Here a super-block's 64 bytes of `qs` are one register
//! and every lookup is a byte permutation:
//!
//! * **signs**: `vpmultishiftqb` cuts the four 7-bit sign indices out of
//!   each sub-block's `aux32` word, `vpermi2b` looks them up in ggml's
//!   128-entry `ksigns_iq2xs` (the 8th bit is the parity), giving one 32-bit
//!   mask per 32 weights; they negate the activations (`vpsubb` under mask);
//! * **grid**: each of the 256 grid points has 8 bytes out of {8, 25, 43},
//!   i.e. a 16-bit code of 2-bit digits ([`GRID_CODES`]). Two `vpermi2b`
//!   per code byte (the 256-entry table as two 128-byte halves, chosen by
//!   the index's top bit) fetch the codes of all 32 grid points;
//!   `vpmultishiftqb` spreads each code's digits to its 8 weight bytes and a
//!   `vpermb` maps digits to values;
//! * `vpmaddubsw` (unsigned grid values × signed activations, pair sums at
//!   most 2·43·127) and `vpdpwssd` against the sub-block scale `2·s + 1`
//!   sum the block exactly in i32.
//!
//! The integer block sum equals ggml's; the float statements after it are
//! the scalar reference's (`sumf += (d·yd)·Σ`, `0.125·sumf` at the end), so
//! the kernel equals the reference bit for bit.

use std::arch::x86_64::*;

use super::helpers::{f16_at, load512};
use crate::activations::Q8KRow;
use crate::blocks::{IQ2_XXS_BYTES, QK_K};
use crate::grids::{IQ2XXS_GRID, KSIGNS_IQ2XS};
use crate::QuantizedActivations;

/// The three byte values of ggml's IQ2_XXS grid, by digit.
const GRID_VALUES: [u8; 3] = [0x08, 0x19, 0x2b];

/// Grid point `e` as a 16-bit code: bits `2j..2j + 2` = the digit of its
/// byte `j` (`GRID_VALUES[digit]`).
static GRID_CODES: [[u8; 256]; 2] = {
    let mut t = [[0u8; 256]; 2];
    let mut e = 0;
    while e < 256 {
        let g = IQ2XXS_GRID[e];
        let mut code = 0u16;
        let mut j = 0;
        while j < 8 {
            let b = ((g >> (8 * j)) & 0xFF) as u8;
            let digit = if b == GRID_VALUES[0] {
                0
            } else if b == GRID_VALUES[1] {
                1
            } else if b == GRID_VALUES[2] {
                2
            } else {
                panic!("IQ2_XXS grid byte outside 8, 25, 43")
            };
            code |= digit << (2 * j);
            j += 1;
        }
        t[0][e] = code as u8;
        t[1][e] = (code >> 8) as u8;
        e += 1;
    }
    t
};

/// `vpermb` table: digit (low 2 bits of the index) → grid value.
static DIGIT_VALUES: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = if i % 4 < 3 { GRID_VALUES[i % 4] } else { 0 };
        i += 1;
    }
    t
};

/// `vpmultishiftqb` control for the sign indices: byte `l < 4` of each
/// qword takes bits `32 + 7l..` (the `aux32` word); bytes 4..8 are unused.
static SIGN_CTRL: [u8; 64] = {
    let mut t = [32u8; 64];
    let mut b = 0;
    while b < 64 {
        if b % 8 < 4 {
            t[b] = 32 + 7 * (b % 8) as u8;
        }
        b += 1;
    }
    t
};

/// `vpmultishiftqb` control spreading codes to weight bytes: qword `m`
/// takes the code of grid point `m % 4`, byte `j` its digit `j` (bits
/// `16·(m % 4) + 2j..`).
static SPREAD_CTRL: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut b = 0;
    while b < 64 {
        t[b] = (16 * ((b / 8) % 4) + 2 * (b % 8)) as u8;
        b += 1;
    }
    t
};

/// Decoded super-block: weights of sub-blocks `2p, 2p + 1` in `w[p]`, their
/// sign masks in `m[p]`, their scales (i16, all lanes of each half) in `s[p]`.
struct Block {
    w: [__m512i; 4],
    m: [__mmask64; 4],
    s: [__m512i; 4],
}

/// Tables kept in registers across blocks.
struct Tables {
    code_lo: [__m512i; 4],
    code_hi: [__m512i; 4],
    signs: [__m512i; 2],
    digits: __m512i,
    sign_ctrl: __m512i,
    spread_ctrl: __m512i,
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tables() -> Tables {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let (lo, hi, s) = (
            GRID_CODES[0].as_ptr(),
            GRID_CODES[1].as_ptr(),
            KSIGNS_IQ2XS.as_ptr(),
        );
        Tables {
            code_lo: [
                load512(lo),
                load512(lo.add(64)),
                load512(lo.add(128)),
                load512(lo.add(192)),
            ],
            code_hi: [
                load512(hi),
                load512(hi.add(64)),
                load512(hi.add(128)),
                load512(hi.add(192)),
            ],
            signs: [load512(s), load512(s.add(64))],
            digits: load512(DIGIT_VALUES.as_ptr()),
            sign_ctrl: load512(SIGN_CTRL.as_ptr()),
            spread_ctrl: load512(SPREAD_CTRL.as_ptr()),
        }
    }
}

/// A 256-entry byte lookup of every byte of `idx` (two 128-entry halves,
/// chosen by the index's top bit).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn lookup256(t: &[__m512i; 4], idx: __m512i, top: __mmask64) -> __m512i {
    let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
    let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
    _mm512_mask_blend_epi8(top, lo, hi)
}

/// Decodes the super-block whose `qs` (64 bytes) start at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn decode(t: &Tables, p: *const u8) -> Block {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        // qword ib = sub-block ib: 4 grid indices, then aux32
        let v = load512(p);
        // sign bytes: byte l of qword ib = ksigns[(aux32 >> 7l) & 127] (l < 4)
        let sidx = _mm512_multishift_epi64_epi8(t.sign_ctrl, v);
        let sbytes = _mm512_permutex2var_epi8(t.signs[0], sidx, t.signs[1]);
        let mut masks = [0u64; 4];
        _mm256_storeu_si256(
            masks.as_mut_ptr() as *mut __m256i,
            _mm512_cvtepi64_epi32(sbytes),
        );
        // grid codes of the 32 indices (bytes 0..4 of each qword)
        let top = _mm512_movepi8_mask(v);
        let clo = lookup256(&t.code_lo, v, top);
        let chi = lookup256(&t.code_hi, v, top);
        // 128-bit lane h: words 0..4 = codes of sub-block 2h (ulo), 2h + 1 (uhi)
        let ulo = _mm512_unpacklo_epi8(clo, chi);
        let uhi = _mm512_unpackhi_epi8(clo, chi);
        let mut b = Block {
            w: [_mm512_setzero_si512(); 4],
            m: masks,
            s: [_mm512_setzero_si512(); 4],
        };
        // sub-block scales 2·(aux32 >> 28) + 1 in both i16 halves of a dword
        let ls = |ib: usize| {
            let aux = std::ptr::read_unaligned(p.add(8 * ib + 4) as *const u32);
            ((2 * (aux >> 28) + 1) * 0x1_0001) as i32
        };
        for h in 0..4 {
            // qwords 0..4: ulo's qword 2h, qwords 4..8: uhi's qword 2h
            let (a, c) = (2 * h as i64, 8 + 2 * h as i64);
            let src = _mm512_permutex2var_epi64(ulo, _mm512_set_epi64(c, c, c, c, a, a, a, a), uhi);
            let digits = _mm512_multishift_epi64_epi8(t.spread_ctrl, src);
            b.w[h] = _mm512_permutexvar_epi8(digits, t.digits);
            b.s[h] = _mm512_mask_set1_epi32(_mm512_set1_epi32(ls(2 * h)), 0xFF00, ls(2 * h + 1));
        }
        b
    }
}

/// One weight row (`nb` blocks at `w`) against `N` activation rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn row<const N: usize>(
    t: &Tables,
    w: *const u8,
    nb: usize,
    ys: &[Q8KRow<'_>; N],
) -> [f32; N] {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let zero = _mm512_setzero_si512();
        let mut sumf = [0f32; N];
        for i in 0..nb {
            let blk = w.add(i * IQ2_XXS_BYTES);
            // A hint only (never faults): the decode starts each block's
            // dependency chain with these bytes.
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(8 * IQ2_XXS_BYTES) as *const i8);
            let b = decode(t, blk.add(2));
            let dx = f16_at(blk);
            for k in 0..N {
                let y = ys[k].qs.as_ptr().add(QK_K * i);
                let mut acc = zero;
                for h in 0..4 {
                    let q = load512(y.add(64 * h));
                    let q = _mm512_mask_sub_epi8(q, b.m[h], zero, q);
                    acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(b.w[h], q), b.s[h]);
                }
                let total = _mm512_reduce_add_epi32(acc);
                sumf[k] += (dx * *ys[k].d.get_unchecked(i)) * total as f32;
            }
        }
        sumf.map(|s| 0.125 * s)
    }
}

/// Tile kernel: `R` weight rows (`rb` bytes each) times activation rows
/// `b0..b0 + N`, writing `out[r * B + b0 + k]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI/VBMI + AVX2/FMA/F16C must be available; sizes are
/// asserted.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
pub(super) unsafe fn dot_iq2_xxs<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        super::assert_tile(w, rb, IQ2_XXS_BYTES, R, acts, b0, N, out);
        let nb = rb / IQ2_XXS_BYTES;
        let ys: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
        for y in &ys {
            assert!(y.qs.len() == nb * QK_K && y.d.len() == nb);
        }
        let t = tables();
        let n_b = acts.n_rows();
        for r in 0..R {
            let vals = row::<N>(&t, w.as_ptr().add(r * rb), nb, &ys);
            out[r * n_b + b0..r * n_b + b0 + N].copy_from_slice(&vals);
        }
    }
}
