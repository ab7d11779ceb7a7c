//! AVX2 kernels that reproduce ggml's dot products bit for bit: the shared
//! pieces, and Q5_0, IQ4_NL, MXFP4 (× Q8_0), Q4_1, Q5_1 (× Q8_1) in ggml's
//! *x86* order (what llama.cpp runs here: 8-lane f32 FMA accumulators,
//! `hsum_float_8`; checked against llama.cpp's own results in
//! `tests/fixtures.rs`). The generic-order 32-block body is kept for
//! comparison (`dot_q5_0_generic`).
//!
//! Why bit-identical to the scalar reference rather than ggml's AVX2 order:
//! ggml's generic code for these formats (and for the IQ / Q2_K / Q3_K
//! formats in `exact_k.rs`) sums each block or super-block exactly in
//! integers and only then does a few scalar float operations. SIMD computes
//! those integer sums exactly (bounds below), so doing the same scalar float
//! operations afterwards gives the reference's result exactly, and the tests
//! compare with `==`.
//!
//! Integer bounds: every weight byte is in [-127, 127] and every activation
//! quant in [-127, 127] (both Q8 quantizers clamp to ±127), so a `maddubs`
//! pair sum of `|w|` and `sign(q8, w)` is at most 2·127·127 = 32258 < 2^15,
//! and `madd` with a scale of at most 63 stays far inside i32.

use std::arch::x86_64::*;

use super::helpers::*;
use crate::activations::{Q8Row, Q8_1Row};
use crate::blocks::*;
use crate::grids::{KVALUES_IQ4NL, KVALUES_MXFP4};
use crate::QuantizedActivations;

/// Byte `i` → 8 bytes of 0xFF where bit `j` of `i` is set (sign masks).
pub(super) static BYTE_MASK64: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut j = 0;
        while j < 8 {
            if i & (1 << j) != 0 {
                t[i] |= 0xFF << (8 * j);
            }
            j += 1;
        }
        i += 1;
    }
    t
};

/// ggml's `keven_signs`: `ksigns_iq2xs[i]` expanded to 8 sign-mask bytes.
pub(super) static KSIGNS64: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = BYTE_MASK64[crate::grids::KSIGNS_IQ2XS[i] as usize];
        i += 1;
    }
    t
};

/// Lane j = the sum of the 8 i32 lanes of `v[j]` (exact; 6 `hadd`s).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum8x8v(v: &[__m256i; 8]) -> __m256i {
    let t01 = _mm256_hadd_epi32(v[0], v[1]);
    let t23 = _mm256_hadd_epi32(v[2], v[3]);
    let t45 = _mm256_hadd_epi32(v[4], v[5]);
    let t67 = _mm256_hadd_epi32(v[6], v[7]);
    let u0 = _mm256_hadd_epi32(t01, t23);
    let u1 = _mm256_hadd_epi32(t45, t67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(u0, u1),
        _mm256_permute2x128_si256::<0x31>(u0, u1),
    )
}

/// 8 f32 at the start of `v` (zero past its end).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(v: &[f32]) -> __m256 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        if v.len() >= 8 {
            _mm256_loadu_ps(v.as_ptr())
        } else {
            let mut t = [0f32; 8];
            t[..v.len()].copy_from_slice(v);
            _mm256_loadu_ps(t.as_ptr())
        }
    }
}

/// f16 bits widened with F16C ([`f16_bits`]: exact, and free of the false
/// dependency the intrinsic gets; the library conversion behind
/// `convert::read_f16` costs a call here).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16c(bits: u16) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { f16_bits(bits) }
}

/// Little-endian f16 at byte `off` of `b`, widened with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn read_f16(b: &[u8], off: usize) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { f16c(u16::from_le_bytes([b[off], b[off + 1]])) }
}

/// `maddubs(|w|, sign(q8, w))`: 16 exact i16 pair sums of `w·q8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pairs(w: __m256i, q8: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q8, w))
}

/// 8 i32 partial sums of `Σ w·q8` over 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn sum32(w: __m256i, q8: __m256i) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_madd_epi16(pairs(w, q8), _mm256_set1_epi16(1)) }
}

/// Scale vector for two 16-weight halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scales16(lo: i32, hi: i32) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16))
}

/// 16 packed nibbles → 32 bytes (low nibbles first), as ggml's `bytes_from_nibbles_32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles32(p: *const u8) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let tmp = load128(p);
        _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16::<4>(tmp), tmp),
            _mm256_set1_epi8(0xF),
        )
    }
}

/// ggml's `bytes_from_bits_32`: bit j of `x` → byte j = 0xFF or 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_bits_32(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// A 16-entry i8 table in both 128-bit lanes (for `pshufb` lookups).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn table256(t: &[i8; 16]) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { _mm256_broadcastsi128_si256(load128(t.as_ptr())) }
}

#[inline]
fn q8_rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8Row<'_>; N] {
    let rows: [Q8Row<'_>; N] = std::array::from_fn(|k| acts.q8_0_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK8_0 && r.d.len() == nb);
    }
    rows
}

#[inline]
fn q8_1_rows<const N: usize>(
    acts: &QuantizedActivations,
    b0: usize,
    nb: usize,
) -> [Q8_1Row<'_>; N] {
    let rows: [Q8_1Row<'_>; N] = std::array::from_fn(|k| acts.q8_1_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK8_0 && r.d.len() == nb && r.s.len() == nb);
    }
    rows
}

/// Shared body of the IQ4_NL / MXFP4 kernels in ggml's x86 order
/// (`ggml_vec_dot_{iq4_nl,mxfp4}_q8_0`): blocks in pairs, even blocks FMA-ed
/// into one 8-lane accumulator and odd blocks into another (scale
/// `y.d·x_scale`), `hsum_float_8(acc1 + acc2)`, then a trailing odd block
/// the generic way (`sumf += d·Σ`). Bit-identical to llama.cpp on x86
/// (fixtures `ggml_dot_{IQ4_NL,MXFP4}.f32`).
#[inline(always)]
unsafe fn dot_pairs_ggml<D: Dot, const N: usize>(
    w: &[u8],
    bytes: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
    decode: impl Fn(*const u8) -> (__m256i, f32),
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / bytes;
        assert!(w.len() == nb * bytes && out.len() == N);
        let rows = q8_rows::<N>(acts, b0, nb);
        let mut acc1 = [_mm256_setzero_ps(); N];
        let mut acc2 = [_mm256_setzero_ps(); N];
        let mut ib = 0;
        while ib + 1 < nb {
            let (w1, x1) = decode(w.as_ptr().add(ib * bytes));
            let (w2, x2) = decode(w.as_ptr().add((ib + 1) * bytes));
            for k in 0..N {
                let r = &rows[k];
                let p1 = D::sum32(w1, load256(r.qs.as_ptr().add(ib * QK8_0)));
                let p2 = D::sum32(w2, load256(r.qs.as_ptr().add((ib + 1) * QK8_0)));
                let s1 = _mm256_set1_ps(*r.d.get_unchecked(ib) * x1);
                let s2 = _mm256_set1_ps(*r.d.get_unchecked(ib + 1) * x2);
                acc1[k] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(p1), acc1[k]);
                acc2[k] = _mm256_fmadd_ps(s2, _mm256_cvtepi32_ps(p2), acc2[k]);
            }
            ib += 2;
        }
        for k in 0..N {
            let mut sumf = hsum_float_8(_mm256_add_ps(acc1[k], acc2[k]));
            if ib < nb {
                let (wl, xl) = decode(w.as_ptr().add(ib * bytes));
                let r = &rows[k];
                let sumi = hsum_i32_8(D::sum32(wl, load256(r.qs.as_ptr().add(ib * QK8_0))));
                sumf += (*r.d.get_unchecked(ib) * xl) * sumi as f32;
            }
            out[k] = sumf;
        }
    }
}

/// Shared body of the × Q8_0 kernels: `decode(block) -> (weights, x scale)`,
/// then per activation row `sumf += (xd·yd)·Σ w·q8` (`x_first`: the scale
/// product is written `x·y` in ggml, else `y·x`; the two are equal in IEEE
/// arithmetic, the flag only documents the mirror).
#[inline(always)]
unsafe fn dot_q8_0_blocks<D: Dot, const N: usize>(
    w: &[u8],
    bytes: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
    decode: impl Fn(*const u8) -> (__m256i, f32),
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / bytes;
        assert!(w.len() == nb * bytes && out.len() == N);
        let rows = q8_rows::<N>(acts, b0, nb);
        let mut sumf = [0f32; N];
        let mut wv = [_mm256_setzero_si256(); 8];
        let mut xd = [0f32; 8];
        let mut ib0 = 0;
        while ib0 < nb {
            let m = (nb - ib0).min(8);
            for j in 0..m {
                (wv[j], xd[j]) = decode(w.as_ptr().add((ib0 + j) * bytes));
            }
            for k in 0..N {
                let mut p = [_mm256_setzero_si256(); 8];
                for j in 0..m {
                    p[j] = D::sum32(wv[j], load256(rows[k].qs.as_ptr().add((ib0 + j) * QK8_0)));
                }
                // the reference's per-block products, 8 lanes at once (same
                // IEEE operations per lane), then its sequential sum
                let yd = load8(&rows[k].d[ib0..ib0 + m]);
                let xy = _mm256_mul_ps(_mm256_loadu_ps(xd.as_ptr()), yd);
                let t = _mm256_mul_ps(xy, _mm256_cvtepi32_ps(hsum8x8v(&p)));
                let mut terms = [0f32; 8];
                _mm256_storeu_ps(terms.as_mut_ptr(), t);
                for &t in &terms[..m] {
                    sumf[k] += t;
                }
            }
            ib0 += m;
        }
        out.copy_from_slice(&sumf);
    }
}

/// Q5_0 in ggml's x86 order (`ggml_vec_dot_q5_0_q8_0`, AVX2 and AVX-512
/// VNNI builds alike): per block the eight exact i32 lane sums are
/// converted and FMA-ed with `x.d·y.d` into eight f32 lanes,
/// `hsum_float_8` at the end. Bit-identical to llama.cpp on x86 (fixture
/// `ggml_dot_Q5_0.f32`), not to the generic reference.
#[inline(always)]
pub(super) unsafe fn dot_q5_0<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / Q5_0_BYTES;
        assert!(w.len() == nb * Q5_0_BYTES && out.len() == N);
        let rows = q8_rows::<N>(acts, b0, nb);
        let mut acc = [_mm256_setzero_ps(); N];
        for ib in 0..nb {
            let blk = &w[ib * Q5_0_BYTES..(ib + 1) * Q5_0_BYTES];
            let hi = _mm256_andnot_si256(bytes_from_bits_32(u32_at(blk, 2)), _mm256_set1_epi8(-16));
            let qx = _mm256_or_si256(nibbles32(blk.as_ptr().add(6)), hi);
            let xd = read_f16(blk, 0);
            for k in 0..N {
                let q8 = load256(rows[k].qs.as_ptr().add(ib * QK8_0));
                let d = _mm256_set1_ps(xd * *rows[k].d.get_unchecked(ib));
                let q = _mm256_cvtepi32_ps(D::sum32(qx, q8));
                acc[k] = _mm256_fmadd_ps(d, q, acc[k]);
            }
        }
        for k in 0..N {
            out[k] = hsum_float_8(acc[k]);
        }
    }
}

/// The generic-order Q5_0 body (bit-identical to the scalar reference);
/// kept for comparison, not registered.
#[allow(dead_code)]
#[inline(always)]
pub(super) unsafe fn dot_q5_0_generic<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        dot_q8_0_blocks::<D, N>(w, Q5_0_BYTES, acts, b0, out, |p| {
            let blk = std::slice::from_raw_parts(p, Q5_0_BYTES);
            // nibble | 0xF0 (= nibble - 16) where the high bit is clear
            let hi = _mm256_andnot_si256(bytes_from_bits_32(u32_at(blk, 2)), _mm256_set1_epi8(-16));
            (_mm256_or_si256(nibbles32(p.add(6)), hi), read_f16(blk, 0))
        });
    }
}

#[inline(always)]
pub(super) unsafe fn dot_iq4_nl<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let t = table256(&KVALUES_IQ4NL);
        dot_pairs_ggml::<D, N>(w, IQ4_NL_BYTES, acts, b0, out, |p| {
            let blk = std::slice::from_raw_parts(p, IQ4_NL_BYTES);
            (
                _mm256_shuffle_epi8(t, nibbles32(p.add(2))),
                read_f16(blk, 0),
            )
        });
    }
}

#[inline(always)]
pub(super) unsafe fn dot_mxfp4<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let t = table256(&KVALUES_MXFP4);
        dot_pairs_ggml::<D, N>(w, MXFP4_BYTES, acts, b0, out, |p| {
            (
                _mm256_shuffle_epi8(t, nibbles32(p.add(1))),
                e8m0_to_f32_half(*p),
            )
        });
    }
}

/// Shared body of the × Q8_1 kernels in ggml's x86 order
/// (`ggml_vec_dot_q{4,5}_1_q8_1`): `acc = fma(x.d·y.d, Σ w·q8 (8 lanes), acc)`,
/// `summs += x.m·y.s` in a scalar, `hsum_float_8(acc) + summs` at the end.
/// Bit-identical to llama.cpp on x86 (fixtures `ggml_dot_Q{4,5}_1.f32`).
#[inline(always)]
unsafe fn dot_q8_1_blocks<D: Dot, const N: usize>(
    w: &[u8],
    bytes: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
    decode: impl Fn(*const u8) -> __m256i,
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / bytes;
        assert!(w.len() == nb * bytes && out.len() == N);
        let rows = q8_1_rows::<N>(acts, b0, nb);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut summs = [0f32; N];
        for ib in 0..nb {
            let blk = &w[ib * bytes..(ib + 1) * bytes];
            let qx = decode(blk.as_ptr());
            let (xd, xm) = (read_f16(blk, 0), read_f16(blk, 2));
            for k in 0..N {
                let r = &rows[k];
                summs[k] += xm * *r.s.get_unchecked(ib);
                let d = _mm256_set1_ps(xd * *r.d.get_unchecked(ib));
                // Q4_1 / Q5_1 quants are unsigned (0..32)
                let q = _mm256_cvtepi32_ps(D::sum32_u(qx, load256(r.qs.as_ptr().add(ib * QK8_0))));
                acc[k] = _mm256_fmadd_ps(d, q, acc[k]);
            }
        }
        for k in 0..N {
            out[k] = hsum_float_8(acc[k]) + summs[k];
        }
    }
}

#[inline(always)]
pub(super) unsafe fn dot_q4_1<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        dot_q8_1_blocks::<D, N>(w, Q4_1_BYTES, acts, b0, out, |p| nibbles32(p.add(4)));
    }
}

#[inline(always)]
pub(super) unsafe fn dot_q5_1<D: Dot, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        dot_q8_1_blocks::<D, N>(w, Q5_1_BYTES, acts, b0, out, |p| {
            let blk = std::slice::from_raw_parts(p, Q5_1_BYTES);
            let hi = _mm256_and_si256(bytes_from_bits_32(u32_at(blk, 4)), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nibbles32(p.add(8)), hi)
        });
    }
}

// ---------------------------------------------------------------- backends

/// How a 32-byte group of weights meets 32 activation quants. The kernel
/// bodies above are generic over it and compiled twice (see
/// [`exact_tiles`]): both backends produce the same exact integers.
pub(crate) trait Dot {
    /// 8 i32 lanes, lane m = `Σ w·q8` over bytes 4m..4m+4.
    unsafe fn sum32(w: __m256i, q8: __m256i) -> __m256i;
    /// [`sum32`](Dot::sum32) for weights known to be in 0..128 (no sign trick).
    unsafe fn sum32_u(w: __m256i, q8: __m256i) -> __m256i;
    /// `acc + Σ s·w·q8` with `s` an i16 per byte pair (lanes 0..8: bytes
    /// 0..16, lanes 8..16: bytes 16..32).
    unsafe fn acc_scaled(acc: __m256i, w: __m256i, q8: __m256i, s: __m256i) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { Self::acc_madd(acc, pairs(w, q8), s) }
    }
    /// `acc + madd(p, s)` (i16 pairs times i16 scales into i32 lanes).
    unsafe fn acc_madd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: `maddubs` + `madd` (ggml's AVX2 idiom).
pub(crate) struct Maddubs;

impl Dot for Maddubs {
    #[inline(always)]
    unsafe fn sum32(w: __m256i, q8: __m256i) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { sum32(w, q8) }
    }
    #[inline(always)]
    unsafe fn sum32_u(w: __m256i, q8: __m256i) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(w, q8), _mm256_set1_epi16(1)) }
    }
    #[inline(always)]
    unsafe fn acc_madd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(p, s)) }
    }
}

/// AVX-512 VL + VNNI: `vpdpbusd` sums four byte products straight into i32
/// lanes (same lanes as `maddubs` + `madd`); scales go through `vpdpwssd`,
/// which fuses the accumulation.
pub(crate) struct Vnni;

impl Dot for Vnni {
    #[inline(always)]
    unsafe fn sum32(w: __m256i, q8: __m256i) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(w, w),
                _mm256_sign_epi8(q8, w),
            )
        }
    }
    #[inline(always)]
    unsafe fn sum32_u(w: __m256i, q8: __m256i) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, q8) }
    }
    #[inline(always)]
    unsafe fn acc_madd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm256_dpwssd_epi32(acc, p, s) }
    }
}

/// One exact kernel, callable with either backend.
pub(crate) trait ExactKernel {
    unsafe fn run<D: Dot, const N: usize>(
        w: &[u8],
        acts: &QuantizedActivations,
        b0: usize,
        out: &mut [f32],
    );
}

macro_rules! exact_kernels {
    ($($name:ident => $m:ident :: $f:ident,)*) => {
        $(
            #[allow(non_camel_case_types)]
            pub(crate) struct $name;
            impl ExactKernel for $name {
                #[inline(always)]
                unsafe fn run<D: Dot, const N: usize>(
                    w: &[u8],
                    acts: &QuantizedActivations,
                    b0: usize,
                    out: &mut [f32],
                ) {
                    // SAFETY: the caller upholds `$f`'s contract (it is
                    // this function's, forwarded).
                    unsafe { $m::$f::<D, N>(w, acts, b0, out) }
                }
            }
        )*

        /// The exact kernel tiles for `format` (`vnni`: the AVX-512 VL + VNNI
        /// build, else the AVX2 build); `None` for formats without one.
        pub(crate) fn exact_tiles(format: crate::WeightFormat, vnni: bool) -> Option<[super::TileFn; super::TILE]> {
            use crate::WeightFormat as F;
            macro_rules! pick {
                ($k:ty) => {
                    if vnni {
                        [
                            tile_vnni::<$k, 1> as super::TileFn,
                            tile_vnni::<$k, 2> as super::TileFn,
                            tile_vnni::<$k, 3> as super::TileFn,
                            tile_vnni::<$k, 4> as super::TileFn,
                        ]
                    } else {
                        [
                            tile_avx2::<$k, 1> as super::TileFn,
                            tile_avx2::<$k, 2> as super::TileFn,
                            tile_avx2::<$k, 3> as super::TileFn,
                            tile_avx2::<$k, 4> as super::TileFn,
                        ]
                    }
                };
            }
            Some(match format {
                $( F::$name => pick!($name), )*
                _ => return None,
            })
        }
    };
}

use super::exact_k;

exact_kernels! {
    Q4_1 => self::dot_q4_1,
    Q5_0 => self::dot_q5_0,
    Q5_1 => self::dot_q5_1,
    IQ4_NL => self::dot_iq4_nl,
    MXFP4 => self::dot_mxfp4,
    Q2_K => exact_k::dot_q2_k,
    Q3_K => exact_k::dot_q3_k,
    IQ2_XXS => exact_k::dot_iq2_xxs,
    IQ2_XS => exact_k::dot_iq2_xs,
    IQ2_S => exact_k::dot_iq2_s,
    IQ3_XXS => exact_k::dot_iq3_xxs,
    IQ3_S => exact_k::dot_iq3_s,
    IQ1_S => exact_k::dot_iq1_s,
    IQ1_M => exact_k::dot_iq1_m,
    IQ4_XS => exact_k::dot_iq4_xs,
    TQ2_0 => exact_k::dot_tq2_0,
    TQ1_0 => exact_k::dot_tq1_0,
}

/// The AVX2 build of kernel `K`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<K: ExactKernel, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { K::run::<Maddubs, N>(w, acts, b0, out) }
}

/// The AVX-512 VL + VNNI build of kernel `K` (only called by the AVX-512
/// family, which checks those features).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_vnni<K: ExactKernel, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe { K::run::<Vnni, N>(w, acts, b0, out) }
}
