//! AVX-512 kernels (x86-64: F, BW, VL, VNNI; BF16 where present).
//!
//! Why a separate family rather than wider AVX2 code: the AVX2 ports spend
//! most of their time widening and re-multiplying integers (`maddubs` +
//! `madd` + sign tricks) and decode every weight block once per activation
//! row, so they are compute bound well below memory bandwidth and batching
//! barely helps. Here:
//!
//! * products are summed with `vpdpbusd` (u8 × i8 → i32, 64 bytes at a time);
//!   per-sub-block scales are applied with `vpackssdw` + `vpdpwssd` (the
//!   dpbusd lanes of one sub-block fit in i16 exactly, see each file);
//! * every call is *tiled over weight rows and activation rows*: a tile of
//!   [`ROW_TILE`] weight rows × up to [`ACT_TILE`] activation rows decodes
//!   each weight block once into registers and uses it against every
//!   activation row of the tile (the activation loads and scale
//!   permutations are shared by the weight rows).
//!
//! ## Numerics
//!
//! Integer block sums are exact (they equal ggml's integer sums; no
//! saturation is possible, bounds are in each file). Float accumulation is
//! this family's own, fixed per (weight row, activation row) pair:
//! one f32 accumulator per pair (16 lanes; 8 in the 256-bit Q4_K and Q6_K
//! kernels), updated block by block in row order, then reduced by a fixed
//! tree. Tile shape, B and the row range only decide *which* pairs a call
//! computes, never the operations applied to a pair, so results do not
//! depend on them (tested bit for bit). Against ggml / the scalar reference
//! the results differ by f32 reassociation only.
//!
//! Files: [`legacy`] (Q4_0), [`q8_0_ymm`], [`q4_k_ymm`] and [`q6_k_ymm`] (256-bit
//! registers: ggml's layouts of these two decode with no shuffles at that
//! width, and Zen 4 runs 512-bit operations as two 256-bit halves anyway),
//! [`k_quants`] (Q5_K), [`float`] (F32, F16, BF16). Activations are quantized with the AVX2
//! quantizers (bit-identical to the scalar ones).
//!
//! [`iq2_xxs`] (IQ2_XXS where the CPU has AVX512-VBMI: grid and sign
//! lookups as byte permutes; bit-identical to the scalar reference).
//! The other formats (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, the other IQ formats,
//! MXFP4, TQ1_0, TQ2_0) run the AVX-512 VL + VNNI build of `avx2/exact*.rs`
//! (registered in [`has_kernel`]; bit-identical to the scalar reference, so
//! this family's own float order above does not apply to them).
//!
//! Interleaved layouts: [`q2_k_x8`], [`q4_k_x8`], [`q6_k_x8`], [`q8_0_x8`]
//! (see `interleaved`); Q2_K x8 repeats ggml's generic float statements
//! lane by lane, so it too equals the scalar reference bit for bit.
//!
//! Safety: every `unsafe fn` here carries `#[target_feature]` with at least
//! the [`avx512_available`] set; [`matmul`] checks availability first (and
//! [`avx512_bf16_available`] before using the BF16 kernel). Kernels assert
//! their slice-length invariants on entry and then use raw pointer loads
//! within those bounds.

#[cfg(target_arch = "x86_64")]
mod float;
#[cfg(target_arch = "x86_64")]
mod iq2_xxs;
#[cfg(target_arch = "x86_64")]
mod k_quants;
#[cfg(target_arch = "x86_64")]
mod legacy;
#[cfg(target_arch = "x86_64")]
mod q2_k_x8;
#[cfg(target_arch = "x86_64")]
mod q4_k_x8;
#[cfg(target_arch = "x86_64")]
mod q4_k_ymm;
#[cfg(target_arch = "x86_64")]
mod q6_k_x8;
#[cfg(target_arch = "x86_64")]
mod q6_k_ymm;
#[cfg(target_arch = "x86_64")]
mod q8_0_x8;
#[cfg(target_arch = "x86_64")]
mod q8_0_ymm;

use std::ops::Range;

use crate::isa::avx512_available;
#[cfg(target_arch = "x86_64")]
use crate::isa::{avx512_bf16_available, avx512_vbmi_available};
use crate::{Isa, KernelError, QuantizedActivations, WeightFormat};

/// Weight rows per tile (at most; see [`matmul`]).
#[cfg(target_arch = "x86_64")]
pub(crate) const ROW_TILE: usize = 2;
/// Activation rows per tile.
#[cfg(target_arch = "x86_64")]
pub(crate) const ACT_TILE: usize = 4;

#[cfg(target_arch = "x86_64")]
mod helpers {
    use std::arch::x86_64::*;

    /// Fixed reduction of 16 lanes: halves (i + 8), then (i + 4), (i + 2), (i + 1).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn hsum(x: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(x);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        _mm_cvtss_f32(s1)
    }

    /// f16 bits at `p` (unaligned) widened to f32.
    /// Sum of the 8 lanes in a fixed order (the 256-bit kernels' reduction).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn hsum8(x: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        _mm_cvtss_f32(s1)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn load512<T>(p: *const T) -> __m512i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm512_loadu_si512(p as *const __m512i) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn load256<T>(p: *const T) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn load128<T>(p: *const T) -> __m128i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm_loadu_si128(p as *const __m128i) }
    }

    /// 4 activation bytes at `p` broadcast to all 8 lanes (the interleaved
    /// kernels' operand: one lane per weight row).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn bcast4(p: *const i8) -> __m256i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)) }
    }

    /// 32 bytes at `p` in both 256-bit halves.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn bcast256<T>(p: *const T) -> __m512i {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm512_broadcast_i64x4(load256(p)) }
    }
}

/// The size invariants every tile kernel asserts before using raw loads:
/// `w` is R rows of `rb` bytes, `rb` whole blocks, activation rows
/// `b0..b0 + N` exist, `out` has R rows of B.
#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn assert_tile(
    w: &[u8],
    rb: usize,
    block_bytes: usize,
    r: usize,
    acts: &QuantizedActivations,
    b0: usize,
    n: usize,
    out: &[f32],
) {
    assert!(
        rb.is_multiple_of(block_bytes)
            && w.len() == r * rb
            && b0 + n <= acts.n_rows()
            && out.len() == r * acts.n_rows()
    );
}

/// A tile kernel: weight rows `w` (R rows of `rb` bytes) times activation
/// rows `b0..b0 + N`, writing `out[r * B + b0 + k]` (`out` covers the R rows).
#[cfg(target_arch = "x86_64")]
type TileFn = unsafe fn(&[u8], usize, &QuantizedActivations, usize, &mut [f32]);

#[cfg(target_arch = "x86_64")]
type Tiles = [[TileFn; ACT_TILE]; ROW_TILE];

/// The formats this family has kernels for (the registry's view; the
/// others fall back to AVX2, then to the scalar reference).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_kernel(format: WeightFormat) -> bool {
    tile_fns(format).is_some() || crate::avx2::exact_vnni_tiles(format).is_some()
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_kernel(_: WeightFormat) -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn tile_fns(format: WeightFormat) -> Option<Tiles> {
    macro_rules! tiles {
        ($m:ident :: $f:ident) => {
            [
                [
                    $m::$f::<1, 1> as TileFn,
                    $m::$f::<1, 2> as TileFn,
                    $m::$f::<1, 3> as TileFn,
                    $m::$f::<1, 4> as TileFn,
                ],
                [
                    $m::$f::<2, 1> as TileFn,
                    $m::$f::<2, 2> as TileFn,
                    $m::$f::<2, 3> as TileFn,
                    $m::$f::<2, 4> as TileFn,
                ],
            ]
        };
    }
    Some(match format {
        WeightFormat::F32 => tiles!(float::dot_f32),
        WeightFormat::F16 => tiles!(float::dot_f16),
        WeightFormat::BF16 if avx512_bf16_available() => tiles!(float::dot_bf16_dp),
        WeightFormat::BF16 => tiles!(float::dot_bf16),
        WeightFormat::Q8_0 => tiles!(q8_0_ymm::dot_q8_0),
        WeightFormat::Q4_0 => tiles!(legacy::dot_q4_0),
        WeightFormat::Q4_K => tiles!(q4_k_ymm::dot_q4_k),
        WeightFormat::Q5_K => tiles!(k_quants::dot_q5_k),
        WeightFormat::Q6_K => tiles!(q6_k_ymm::dot_q6_k),
        WeightFormat::IQ2_XXS if avx512_vbmi_available() => tiles!(iq2_xxs::dot_iq2_xxs),
        _ => return None,
    })
}

/// Validated matmul (sizes checked by `matmul_rows_with`); errors only if the
/// CPU lacks AVX-512 F/BW/VL/VNNI.
#[cfg(target_arch = "x86_64")]
pub(crate) fn matmul(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !avx512_available() {
        return Err(KernelError::IsaUnavailable(Isa::Avx512));
    }
    let Some(fns) = tile_fns(format) else {
        let Some(fns) = crate::avx2::exact_vnni_tiles(format) else {
            return crate::avx2::matmul(format, weights, row_bytes, rows, acts, out);
        };
        // the exact kernels' AVX-512 VL + VNNI build: one weight row per tile
        crate::driver::drive(
            weights,
            row_bytes,
            rows,
            acts.n_rows(),
            1,
            crate::avx2::TILE,
            out,
            |w, b0, n, o| {
                // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) checked above;
                // the kernel asserts its size invariants.
                unsafe { fns[n - 1](w, acts, b0, &mut o[b0..b0 + n]) }
            },
        );
        return Ok(());
    };
    let n_b = acts.n_rows();
    // Measured on Zen 4: for B ≤ 2 streaming two weight rows at once is
    // slower than one (the per-block work dominates and two interleaved
    // streams prefetch worse); from B = 3 on, sharing activation loads wins.
    let row_tile = if n_b <= 2 { 1 } else { ROW_TILE };
    crate::driver::drive(
        weights,
        row_bytes,
        rows,
        n_b,
        row_tile,
        ACT_TILE,
        out,
        |w, b0, n, o| {
            let nr = w.len() / row_bytes;
            // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) checked above, BF16
            // checked in `tile_fns`; the kernel asserts its size invariants.
            unsafe { fns[nr - 1][n - 1](w, row_bytes, acts, b0, o) }
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
    &mut [f32; crate::interleaved::GROUP_ROWS * ACT_TILE],
);

/// Validated matmul over a [`WeightLayout::Interleaved8`] matrix: groups
/// overlapping `rows` are computed whole (only the requested rows are
/// stored), the row-major tail goes to [`matmul`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn matmul_interleaved(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    use crate::interleaved::packed_rows;
    if !avx512_available() {
        return Err(KernelError::IsaUnavailable(Isa::Avx512));
    }
    let fns: [GroupFn; ACT_TILE] = match format {
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
        WeightFormat::Q8_0 => [
            q8_0_x8::dot_q8_0_x8::<1>,
            q8_0_x8::dot_q8_0_x8::<2>,
            q8_0_x8::dot_q8_0_x8::<3>,
            q8_0_x8::dot_q8_0_x8::<4>,
        ],
        WeightFormat::Q6_K => [
            q6_k_x8::dot_q6_k_x8::<1>,
            q6_k_x8::dot_q6_k_x8::<2>,
            q6_k_x8::dot_q6_k_x8::<3>,
            q6_k_x8::dot_q6_k_x8::<4>,
        ],
        _ => {
            return Err(KernelError::LayoutUnsupported {
                format,
                layout: crate::WeightLayout::Interleaved8,
            })
        }
    };
    let n_b = acts.n_rows();
    let packed = packed_rows(weights.len() / row_bytes);
    crate::driver::drive_groups(
        weights,
        row_bytes,
        rows.clone(),
        packed,
        n_b,
        out,
        |w, b0, n, tile| {
            // SAFETY: AVX-512 F/BW/VL/VNNI (+ AVX2/FMA/F16C) checked above;
            // the kernel asserts its size invariants.
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

// Non-x86 targets: the AVX-512 family is never available.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn matmul_interleaved(
    _: WeightFormat,
    _: &[u8],
    _: usize,
    _: Range<usize>,
    _: &QuantizedActivations,
    _: &mut [f32],
) -> Result<(), KernelError> {
    Err(KernelError::IsaUnavailable(Isa::Avx512))
}

// Non-x86 targets: the AVX-512 family is never available.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn matmul(
    _: WeightFormat,
    _: &[u8],
    _: usize,
    _: Range<usize>,
    _: &QuantizedActivations,
    _: &mut [f32],
) -> Result<(), KernelError> {
    let _ = avx512_available;
    Err(KernelError::IsaUnavailable(Isa::Avx512))
}
