//! AVX2 + FMA + F16C kernels (x86-64).
//!
//! Each dot kernel ports ggml's AVX2 `ggml_vec_dot_*` (ggml-cpu/arch/x86/quants.c
//! and vec.cpp) with the same integer lane layout and the same float
//! accumulation order per (weight row, activation row) pair, so every output
//! equals what ggml's single-row AVX2 kernel computes for that pair. On top
//! of that the kernels are *tiled over activation rows*: a call handles up to
//! [`TILE`] activation rows, decoding each weight block once and using it
//! against every row of the tile (batched decode / prefill read the weight
//! row from memory once, then from L1). Results do not depend on the tile
//! size or on B.
//!
//! Files: [`legacy`] (Q8_0, Q4_0), [`k_quants`] (Q4_K, Q5_K, Q6_K),
//! [`float`] (F32, F16, BF16), [`quantize`] (activation quantizers);
//! [`exact`] (Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4) and IQ4_XS (in [`exact_k`])
//! in ggml's x86 order, bit-identical to llama.cpp's own `vec_dot` (tested
//! against fixtures made with libggml-cpu); [`exact_k`] (Q2_K, Q3_K, IQ1_S,
//! IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, TQ1_0, TQ2_0): these formats' ggml
//! generic dots sum blocks exactly in integers before any float operation,
//! so these kernels compute the same integers with SIMD and then the
//! reference's float statements: bit-identical to the scalar reference
//! (and ggml's generic code), tested with `==`. Both files are compiled
//! for this family (`maddubs`) and for AVX-512 VL + VNNI (`exact::Dot`).
//!
//! Interleaved layouts ([`WeightLayout::Interleaved8`], chosen at load time
//! as ggml's AVX2 repacking does): [`q2_k_x8`], [`q4_k_x8`], [`q6_k_x8`] and [`q8_0_x8`]
//! run the AVX-512 family's group layouts with `vpmaddubsw` in place of
//! `vpdpbusd`, one lane per weight row and no horizontal reduction; they
//! are bit-identical to the layouts' scalar references (not to ggml's row
//! kernels: the float order is the layout's own).
//!
//! [`WeightLayout::Interleaved8`]: crate::WeightLayout::Interleaved8
//!
//! Safety: every `unsafe fn` here is `#[target_feature(enable = "avx2,fma,f16c")]`;
//! the safe wrappers at the bottom check [`avx2_available`] first. Kernels
//! assert their slice-length invariants on entry and only then use raw
//! pointer loads.

#[cfg(target_arch = "x86_64")]
mod exact;
#[cfg(target_arch = "x86_64")]
mod exact_k;
#[cfg(target_arch = "x86_64")]
mod float;
#[cfg(target_arch = "x86_64")]
mod k_quants;
#[cfg(target_arch = "x86_64")]
mod legacy;
#[cfg(target_arch = "x86_64")]
mod q2_k_x8;
#[cfg(target_arch = "x86_64")]
mod q4_k_x8;
#[cfg(target_arch = "x86_64")]
mod q6_k_x8;
#[cfg(target_arch = "x86_64")]
mod q8_0_x8;
#[cfg(target_arch = "x86_64")]
mod quantize;

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use crate::isa::avx2_available;
use crate::{Isa, KernelError, QuantizedActivations, WeightFormat};

/// Activation rows handled per pass over a weight row.
#[cfg(target_arch = "x86_64")]
pub(crate) const TILE: usize = 4;

#[cfg(target_arch = "x86_64")]
mod helpers {
    use std::arch::x86_64::*;

    /// ggml `hsum_float_8`: (x0+x4 + x2+x6) + (x1+x5 + x3+x7) in that order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn hsum_float_8(x: __m256) -> f32 {
        let mut res = _mm256_extractf128_ps::<1>(x);
        res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// ggml `hsum_i32_8`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn hsum_i32_8(a: __m256i) -> i32 {
        let sum128 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        let hi64 = _mm_unpackhi_epi64(sum128, sum128);
        let sum64 = _mm_add_epi32(hi64, sum128);
        let hi32 = _mm_shuffle_epi32::<0b10_11_00_01>(sum64);
        _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32))
    }

    /// ggml `sum_i16_pairs_float`: pairwise-add 16 i16 into 8 i32, convert.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn sum_i16_pairs_float(x: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), x))
    }

    /// f16 bits at `p` (unaligned) to f32 via F16C (ggml `GGML_CPU_FP16_TO_FP32`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { f16_bits(u16::from_le_bytes([*p, *p.add(1)])) }
    }

    /// f16 bits to f32 with `vcvtph2ps` through inline asm: with the
    /// intrinsic, LLVM sees that only lane 0 matters and loads the 16 bits
    /// with `vpinsrw` *into a live register* (often an FMA accumulator), a
    /// false dependency that turns a row's blocks into one serial latency
    /// chain. The asm operand is the whole register, so a full-width `vmovd`
    /// feeds it. Exact, like every f16 → f32 conversion.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f16_bits(bits: u16) -> f32 {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            let v = _mm_cvtsi32_si128(i32::from(bits));
            let r: __m128;
            std::arch::asm!(
                "vcvtph2ps {r}, {v}",
                v = in(xmm_reg) v,
                r = lateout(xmm_reg) r,
                options(pure, nomem, nostack, preserves_flags)
            );
            _mm_cvtss_f32(r)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn load256<T>(p: *const T) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn load128<T>(p: *const T) -> __m128i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm_loadu_si128(p as *const __m128i) }
    }
}

/// A tile kernel: dot one weight row with activation rows `b0..b0 + out.len()`.
#[cfg(target_arch = "x86_64")]
pub(crate) type TileFn = unsafe fn(&[u8], &QuantizedActivations, usize, &mut [f32]);

/// The formats this family has kernels for (the registry's view).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_kernel(format: WeightFormat) -> bool {
    tile_fns(format).is_some()
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_kernel(_: WeightFormat) -> bool {
    false
}

/// This family's registered tile kernels (`None`: not registered, the
/// registry falls back to the scalar reference).
#[cfg(target_arch = "x86_64")]
fn tile_fns(format: WeightFormat) -> Option<[TileFn; TILE]> {
    macro_rules! tiles {
        ($m:ident :: $f:ident) => {
            [
                $m::$f::<1> as TileFn,
                $m::$f::<2> as TileFn,
                $m::$f::<3> as TileFn,
                $m::$f::<4> as TileFn,
            ]
        };
    }
    Some(match format {
        WeightFormat::F32 => tiles!(float::dot_f32),
        WeightFormat::F16 => tiles!(float::dot_f16),
        WeightFormat::BF16 => tiles!(float::dot_bf16),
        WeightFormat::Q8_0 => tiles!(legacy::dot_q8_0),
        WeightFormat::Q4_0 => tiles!(legacy::dot_q4_0),
        WeightFormat::Q4_K => tiles!(k_quants::dot_q4_k),
        WeightFormat::Q5_K => tiles!(k_quants::dot_q5_k),
        WeightFormat::Q6_K => tiles!(k_quants::dot_q6_k),
        f => return exact::exact_tiles(f, false),
    })
}

/// The AVX-512 VL + VNNI build of the exact kernels (`exact.rs`), for the
/// AVX-512 family's registry: same signature as this family's tiles.
#[cfg(target_arch = "x86_64")]
pub(crate) fn exact_vnni_tiles(format: WeightFormat) -> Option<[TileFn; TILE]> {
    exact::exact_tiles(format, true)
}

/// Validated matmul (sizes checked by `matmul_rows_with`); errors only if the
/// CPU lacks AVX2.
#[cfg(target_arch = "x86_64")]
pub(crate) fn matmul(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !avx2_available() {
        return Err(KernelError::IsaUnavailable(Isa::Avx2));
    }
    let Some(fns) = tile_fns(format) else {
        crate::reference::matmul(format, weights, row_bytes, rows, acts, out);
        return Ok(());
    };
    crate::driver::drive(
        weights,
        row_bytes,
        rows,
        acts.n_rows(),
        1,
        TILE,
        out,
        |w, b0, n, o| {
            // SAFETY: AVX2/FMA/F16C checked above; the kernel asserts its size invariants.
            unsafe { fns[n - 1](w, acts, b0, &mut o[b0..b0 + n]) }
        },
    );
    Ok(())
}

/// A group kernel: the 8 rows of one interleaved group times activation
/// rows `b0..b0 + N`, writing `tile[k * 8 + r]`.
#[cfg(target_arch = "x86_64")]
type GroupFn = unsafe fn(
    &[u8],
    usize,
    &QuantizedActivations,
    usize,
    &mut [f32; crate::interleaved::GROUP_ROWS * crate::driver::GROUP_ACT_TILE],
);

/// This family's group kernels for the interleaved layout of `format`.
#[cfg(target_arch = "x86_64")]
fn group_fns(format: WeightFormat) -> Option<[GroupFn; crate::driver::GROUP_ACT_TILE]> {
    Some(match format {
        WeightFormat::Q2_K => [
            q2_k_x8::dot_q2_k_x8::<1>,
            q2_k_x8::dot_q2_k_x8::<2>,
            q2_k_x8::dot_q2_k_x8::<3>,
            q2_k_x8::dot_q2_k_x8::<4>,
        ],
        WeightFormat::Q4_K => [
            q4_k_x8::dot_q4_k_x8::<1>,
            q4_k_x8::dot_q4_k_x8::<2>,
            q4_k_x8::dot_q4_k_x8::<3>,
            q4_k_x8::dot_q4_k_x8::<4>,
        ],
        WeightFormat::Q6_K => [
            q6_k_x8::dot_q6_k_x8::<1>,
            q6_k_x8::dot_q6_k_x8::<2>,
            q6_k_x8::dot_q6_k_x8::<3>,
            q6_k_x8::dot_q6_k_x8::<4>,
        ],
        WeightFormat::Q8_0 => [
            q8_0_x8::dot_q8_0_x8::<1>,
            q8_0_x8::dot_q8_0_x8::<2>,
            q8_0_x8::dot_q8_0_x8::<3>,
            q8_0_x8::dot_q8_0_x8::<4>,
        ],
        _ => return None,
    })
}

/// Whether this family has group kernels for `format`'s interleaved layout.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_group_kernel(format: WeightFormat) -> bool {
    group_fns(format).is_some()
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_group_kernel(_: WeightFormat) -> bool {
    false
}

/// Validated matmul over a [`WeightLayout::Interleaved8`] matrix: groups
/// overlapping `rows` are computed whole (only the requested rows are
/// stored), the row-major tail goes to [`matmul`].
///
/// [`WeightLayout::Interleaved8`]: crate::WeightLayout::Interleaved8
#[cfg(target_arch = "x86_64")]
pub(crate) fn matmul_interleaved(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !avx2_available() {
        return Err(KernelError::IsaUnavailable(Isa::Avx2));
    }
    let fns = group_fns(format).ok_or(KernelError::LayoutUnsupported {
        format,
        layout: crate::WeightLayout::Interleaved8,
    })?;
    let n_b = acts.n_rows();
    let packed = crate::interleaved::packed_rows(weights.len() / row_bytes);
    crate::driver::drive_groups(
        weights,
        row_bytes,
        rows.clone(),
        packed,
        n_b,
        out,
        |w, b0, n, tile| {
            // SAFETY: AVX2/FMA/F16C checked above; the kernel asserts its
            // size invariants.
            unsafe { fns[n - 1](w, row_bytes, acts, b0, tile) }
        },
    );
    let tail = rows.start.max(packed)..rows.end;
    if !tail.is_empty() {
        let o = (tail.start - rows.start) * n_b;
        matmul(format, weights, row_bytes, tail, acts, &mut out[o..])?;
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn matmul_interleaved(
    _: WeightFormat,
    _: &[u8],
    _: usize,
    _: Range<usize>,
    _: &QuantizedActivations,
    _: &mut [f32],
) -> Result<(), KernelError> {
    Err(KernelError::IsaUnavailable(Isa::Avx2))
}

/// Q8_0 activations, x86 variant (bit-identical to `reference::quantize::q8_0_x86`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn quantize_q8_0(
    x: &[f32],
    qs: &mut [i8],
    d_bits: &mut [u16],
    d: &mut [f32],
) -> Result<(), KernelError> {
    if !avx2_available() {
        return Err(KernelError::IsaUnavailable(Isa::Avx2));
    }
    // SAFETY: features checked; the function asserts the buffer sizes.
    unsafe { quantize::q8_0_x86(x, qs, d_bits, d) };
    Ok(())
}

/// Q8_K activations (bit-identical to `reference::quantize::q8_k`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn quantize_q8_k(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
) -> Result<(), KernelError> {
    if !avx2_available() {
        return Err(KernelError::IsaUnavailable(Isa::Avx2));
    }
    // SAFETY: features checked; the function asserts the buffer sizes.
    unsafe { quantize::q8_k(x, qs, d, bsums) };
    Ok(())
}

/// F16 activations (round to nearest even with F16C).
#[cfg(target_arch = "x86_64")]
pub(crate) fn quantize_f16(x: &[f32], out: &mut [u16]) -> Result<(), KernelError> {
    if !avx2_available() {
        return Err(KernelError::IsaUnavailable(Isa::Avx2));
    }
    // SAFETY: features checked; the function asserts the buffer sizes.
    unsafe { quantize::f16(x, out) };
    Ok(())
}

// Non-x86 targets: the AVX2 family is never available, so these only report it.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn matmul(
    _: WeightFormat,
    _: &[u8],
    _: usize,
    _: Range<usize>,
    _: &QuantizedActivations,
    _: &mut [f32],
) -> Result<(), KernelError> {
    Err(KernelError::IsaUnavailable(Isa::Avx2))
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn quantize_q8_0(
    _: &[f32],
    _: &mut [i8],
    _: &mut [u16],
    _: &mut [f32],
) -> Result<(), KernelError> {
    Err(KernelError::IsaUnavailable(Isa::Avx2))
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn quantize_q8_k(
    _: &[f32],
    _: &mut [i8],
    _: &mut [f32],
    _: &mut [i16],
) -> Result<(), KernelError> {
    Err(KernelError::IsaUnavailable(Isa::Avx2))
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn quantize_f16(_: &[f32], _: &mut [u16]) -> Result<(), KernelError> {
    Err(KernelError::IsaUnavailable(Isa::Avx2))
}
