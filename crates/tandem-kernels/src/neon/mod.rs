//! AArch64 NEON kernels (Apple M-series, Graviton, Ampere, Cortex-A).
//!
//! The quantized kernels follow ggml's ARM NEON `ggml_vec_dot_*`
//! (ggml-cpu/arch/arm/quants.c) in spirit: the same exact integer block sums,
//! built on `sdot` (`vdotq_s32`) when the CPU has the `dotprod` extension
//! (detected at run time) and on `smull` + pairwise adds otherwise (ggml's
//! `ggml_vdotq_s32` fallback for ARMv8.0 cores). Both paths put *the same*
//! integers in *the same* i32 lanes (lane k = the sum of byte products
//! 4k..4k+4, see [`helpers::Dot`]), so they give bit-identical results;
//! the tests check that. Like `avx2`, every call is *tiled over activation
//! rows*: up to [`TILE`] (quantized) or [`FLOAT_TILE`] (F32/F16/BF16)
//! activation rows share each decoded weight block.
//!
//! ## Numerics
//!
//! Integer sums are exact (bounds in each file). The float accumulation
//! order is this family's own, fixed per (weight row, activation row) pair:
//!
//! * Q8_0 / Q4_0: the four i32 lanes of a block are converted to f32 and
//!   FMA-ed with `dx * dy` into one of two 4-lane accumulators (even / odd
//!   blocks); at the end `vaddvq_f32(acc_even + acc_odd)`.
//! * Q4_K / Q5_K / Q6_K: sub-block scales are applied in i32 (`mla`), so a
//!   super-block yields one exact i32 `sumi` (and, for the mins, one exact
//!   `summ = Σ bsums·mins`); a scalar f32 `sumf` is then updated per
//!   super-block: `sumf -= dmin·summ; sumf += d·sumi` (Q4_K / Q5_K, as
//!   ggml's NEON Q4_K) or `sumf += d·(sumi - 32·summ)` (Q6_K, as ggml), with
//!   `d = x.d·y.d`, `dmin = x.dmin·y.d`.
//! * F32 / F16 / BF16: 32 values per step into eight 4-lane accumulators
//!   (FMA; F16 weights widened with `fcvtl`, exact), reduced pairwise
//!   (`((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7))`, then `vaddvq_f32`); the tail
//!   (`n mod 32` values) is added in f64 with exact products, and the sum is
//!   rounded to f32 once.
//!
//! Tile shape, B and the row range only decide which pairs a call computes,
//! never the operations applied to a pair, so results do not depend on them
//! (tested bit for bit). Against ggml / the scalar reference the results
//! differ by f32 reassociation only (tested against the reference within
//! the crate's tolerance, and bit for bit on exact-arithmetic inputs).
//!
//! Activations are quantized with the scalar quantizers (bit-identical to
//! every other family's).
//!
//! Files: [`legacy`] (Q8_0, Q4_0), [`k_quants`] (Q4_K, Q5_K, Q6_K),
//! [`float`] (F32, F16, BF16).
//!
//! Safety: the quantized kernel bodies are `#[inline(always)]` generics over
//! [`helpers::Dot`]; they are only instantiated inside the
//! `#[target_feature]` wrappers [`tile_sdot`] (`neon,dotprod`, chosen only
//! when [`dotprod_available`]) and [`tile_mull`] (`neon`). [`matmul`]
//! checks NEON first. Kernels assert their slice-length invariants on entry
//! and only then use raw pointer loads within those bounds.

#[cfg(target_arch = "aarch64")]
mod float;
#[cfg(target_arch = "aarch64")]
mod k_quants;
#[cfg(target_arch = "aarch64")]
mod legacy;

use std::ops::Range;

use crate::isa::neon_available;
use crate::{Isa, KernelError, QuantizedActivations, WeightFormat};

/// Activation rows handled per pass over a weight row (quantized formats).
#[cfg(target_arch = "aarch64")]
pub(crate) const TILE: usize = 4;
/// Activation rows per pass for F32 / F16 / BF16 (8 accumulators per row).
#[cfg(target_arch = "aarch64")]
pub(crate) const FLOAT_TILE: usize = 2;

/// Whether the CPU has the `dotprod` extension (`sdot` / `udot`).
#[cfg(target_arch = "aarch64")]
pub(crate) fn dotprod_available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

#[cfg(target_arch = "aarch64")]
pub(super) mod helpers {
    use std::arch::aarch64::*;

    /// Sixteen i8 × i8 products added into four i32 lanes, lane k getting
    /// the products of bytes 4k..4k+4 (the `sdot` layout).
    pub(crate) trait Dot {
        /// `acc + dot4(a, b)`.
        ///
        /// # Safety
        /// NEON must be available, and for [`Sdot`] the `dotprod` extension
        /// too; the caller must be compiled with those features (see
        /// [`super::tile_sdot`]).
        unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
    }

    /// `sdot` (ARMv8.2 dotprod). Inline asm because `vdotq_s32` is not a
    /// stable intrinsic; the instruction only assembles inside a function
    /// compiled with `dotprod`, which the `#[inline(always)]` chain into
    /// [`super::tile_sdot`] guarantees (a build error otherwise).
    pub(crate) struct Sdot;

    /// `smull` + `saddlp` + `addp` (ARMv8.0): ggml's `ggml_vdotq_s32`
    /// fallback, with a final pairwise add that puts the sums in the `sdot`
    /// lanes. i8 × i8 products fit i16 (|p| ≤ 2^14), so every step is exact.
    pub(crate) struct Mull;

    impl Dot for Sdot {
        #[inline(always)]
        unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
            let mut acc = acc;
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
            acc
        }
    }

    impl Dot for Mull {
        #[inline(always)]
        unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
            let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let p1 = vmull_high_s8(a, b);
            vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
        }
    }

    /// A quantized tile kernel, generic over the dot instruction.
    pub(crate) trait QuantKernel {
        /// Dot one weight row `w` with activation rows `b0..b0 + N`.
        ///
        /// # Safety
        /// Only call from a `#[target_feature]` wrapper that enables what
        /// `D` needs (the body is inlined into it).
        unsafe fn run<D: Dot, const N: usize>(
            w: &[u8],
            acts: &crate::QuantizedActivations,
            b0: usize,
            out: &mut [f32],
        );
    }

    /// Four f16 (lanes 0..4 of `x`) widened to f32 with `fcvtl` (exact;
    /// ARMv8.0 base, unlike the `vcvt_f32_f16` intrinsic, which needs a newer
    /// Rust than the MSRV).
    #[inline(always)]
    pub(crate) unsafe fn cvt_f16_lo(x: uint16x8_t) -> float32x4_t {
        let r: float32x4_t;
        std::arch::asm!(
            "fcvtl {r:v}.4s, {x:v}.4h",
            r = lateout(vreg) r,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags)
        );
        r
    }

    /// Lanes 4..8 of `x` widened with `fcvtl2`.
    #[inline(always)]
    pub(crate) unsafe fn cvt_f16_hi(x: uint16x8_t) -> float32x4_t {
        let r: float32x4_t;
        std::arch::asm!(
            "fcvtl2 {r:v}.4s, {x:v}.8h",
            r = lateout(vreg) r,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags)
        );
        r
    }

    /// f16 bits at `p` (unaligned, little-endian) widened to f32 (exact).
    #[inline(always)]
    pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        vgetq_lane_f32::<0>(cvt_f16_lo(vdupq_n_u16(bits)))
    }

    /// 16 bytes at `p` (no alignment needed).
    #[inline(always)]
    pub(crate) unsafe fn load_u8(p: *const u8) -> uint8x16_t {
        vld1q_u8(p)
    }

    /// 16 bytes at `p` as i8.
    #[inline(always)]
    pub(crate) unsafe fn load_s8(p: *const i8) -> int8x16_t {
        vld1q_s8(p)
    }
}

/// A tile kernel: dot one weight row with activation rows `b0..b0 + out.len()`.
#[cfg(target_arch = "aarch64")]
type TileFn = unsafe fn(&[u8], &QuantizedActivations, usize, &mut [f32]);

/// `K` with `sdot`.
///
/// # Safety
/// The CPU must have NEON and `dotprod`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_sdot<K: helpers::QuantKernel, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this function is compiled with, and only called with, dotprod.
    unsafe { K::run::<helpers::Sdot, N>(w, acts, b0, out) }
}

/// `K` without `dotprod`.
///
/// # Safety
/// The CPU must have NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn tile_mull<K: helpers::QuantKernel, const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: `Mull` needs NEON only, which the caller guarantees.
    unsafe { K::run::<helpers::Mull, N>(w, acts, b0, out) }
}

/// The tile kernels for `format`: entry `n - 1` handles `n` activation rows.
/// `sdot` kernels only when `dotprod` is requested *and* available.
#[cfg(target_arch = "aarch64")]
fn tile_fns(format: WeightFormat, dotprod: bool) -> &'static [TileFn] {
    macro_rules! quant {
        ($k:ty) => {
            if dotprod && dotprod_available() {
                const {
                    &[
                        tile_sdot::<$k, 1> as TileFn,
                        tile_sdot::<$k, 2> as TileFn,
                        tile_sdot::<$k, 3> as TileFn,
                        tile_sdot::<$k, 4> as TileFn,
                    ] as &[TileFn; TILE]
                }
            } else {
                const {
                    &[
                        tile_mull::<$k, 1> as TileFn,
                        tile_mull::<$k, 2> as TileFn,
                        tile_mull::<$k, 3> as TileFn,
                        tile_mull::<$k, 4> as TileFn,
                    ] as &[TileFn; TILE]
                }
            }
        };
    }
    macro_rules! float {
        ($f:ident) => {
            const { &[float::$f::<1> as TileFn, float::$f::<2> as TileFn] as &[TileFn; FLOAT_TILE] }
        };
    }
    match format {
        WeightFormat::F32 => float!(dot_f32),
        WeightFormat::F16 => float!(dot_f16),
        WeightFormat::BF16 => float!(dot_bf16),
        WeightFormat::Q8_0 => quant!(legacy::Q8_0),
        WeightFormat::Q4_0 => quant!(legacy::Q4_0),
        WeightFormat::Q4_K => quant!(k_quants::Q4K),
        WeightFormat::Q5_K => quant!(k_quants::Q5K),
        WeightFormat::Q6_K => quant!(k_quants::Q6K),
        // not registered: `has_kernel` is false, the registry routes it to the reference
        _ => &[],
    }
}

/// The formats this family has kernels for (the registry's view).
pub(crate) fn has_kernel(format: WeightFormat) -> bool {
    cfg!(target_arch = "aarch64")
        && matches!(
            format,
            WeightFormat::F32
                | WeightFormat::F16
                | WeightFormat::BF16
                | WeightFormat::Q8_0
                | WeightFormat::Q4_0
                | WeightFormat::Q4_K
                | WeightFormat::Q5_K
                | WeightFormat::Q6_K
        )
}

/// Validated matmul (sizes checked by `matmul_rows_with`); errors only if
/// the CPU lacks NEON. Uses `sdot` when the CPU has `dotprod`.
#[cfg(target_arch = "aarch64")]
pub(crate) fn matmul(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_dot(format, weights, row_bytes, rows, acts, out, true)
}

/// [`matmul`] choosing the dot path: `dotprod = false` forces the ARMv8.0
/// `smull` path (tests compare the two); `true` uses `sdot` if available.
#[cfg(target_arch = "aarch64")]
pub(crate) fn matmul_dot(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
    dotprod: bool,
) -> Result<(), KernelError> {
    if !neon_available() {
        return Err(KernelError::IsaUnavailable(Isa::Neon));
    }
    let fns = tile_fns(format, dotprod);
    let n_b = acts.n_rows();
    if n_b == 0 {
        return Ok(());
    }
    if fns.is_empty() {
        crate::reference::matmul(format, weights, row_bytes, rows, acts, out);
        return Ok(());
    }
    assert!(out.len() == rows.len() * n_b && rows.end * row_bytes <= weights.len());
    for (r, out_row) in rows.zip(out.chunks_exact_mut(n_b)) {
        let w = &weights[r * row_bytes..(r + 1) * row_bytes];
        let mut b0 = 0;
        while b0 < n_b {
            let n = (n_b - b0).min(fns.len());
            // SAFETY: NEON checked above, dotprod checked in `tile_fns`
            // before choosing an `sdot` kernel; the kernel asserts its size
            // invariants.
            unsafe { fns[n - 1](w, acts, b0, &mut out_row[b0..b0 + n]) };
            b0 += n;
        }
    }
    Ok(())
}

// Other targets: the NEON family is never available.
#[cfg(not(target_arch = "aarch64"))]
pub(crate) fn matmul(
    _: WeightFormat,
    _: &[u8],
    _: usize,
    _: Range<usize>,
    _: &QuantizedActivations,
    _: &mut [f32],
) -> Result<(), KernelError> {
    let _ = neon_available;
    Err(KernelError::IsaUnavailable(Isa::Neon))
}
