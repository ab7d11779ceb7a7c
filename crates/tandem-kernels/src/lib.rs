//! # tandem-kernels
//!
//! Weight formats, dequantization and the dot products of a CPU forward pass,
//! bit-compatible with ggml (llama.cpp's tensor library).
//!
//! * [`WeightFormat`]: every ggml weight type `llama-quantize` produces
//!   (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ1_S, IQ1_M,
//!   IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, MXFP4, TQ1_0,
//!   TQ2_0, Q1_0, Q2_0), parsed from raw little-endian bytes in ggml's block layouts (no
//!   alignment needed); ids, names and geometry come from `tandem-gguf`'s
//!   type table.
//! * [`dequantize_row`]: bit-identical to ggml's `dequantize_row_*` (and
//!   gguf-py), checked against fixtures in `fixtures/quant/`.
//! * [`QuantizedActivations`]: activation rows converted to the weight
//!   format's `vec_dot_type` (F32, F16, BF16, Q8_0, Q8_1, Q8_K) exactly as ggml does.
//! * [`matmul_rows`]: a block of weight rows times B activation rows, with
//!   ggml's integer accumulation and float accumulation order. Every ISA runs
//!   every format: a family without a kernel for a format falls back (see
//!   [`kernel_family_for`]).
//!
//! ## Layout
//!
//! | module | role |
//! | --- | --- |
//! | `format` | [`WeightFormat`] / [`ActivationFormat`] geometry |
//! | `blocks` | byte offsets inside ggml blocks, scale unpacking |
//! | `grids` | ggml's IQ grids and value tables (generated from ggml-common.h) |
//! | `registry` | which family runs a format ([`kernel_family_for`]), fallbacks |
//! | `driver` | the one tile loop all SIMD families run their kernels through |
//! | `convert` | f16 / bf16 conversions with ggml semantics |
//! | `activations` | [`QuantizedActivations`] |
//! | `attention` | blockwise attention over stored K/V rows (f32/f16/bf16) with an online softmax; its own scalar and x86 primitives |
//! | `interleaved` | [`WeightLayout::Interleaved8`]: 8 rows per group, one SIMD lane per row; encodings and their scalar reference |
//! | `reference` | scalar kernels mirroring ggml's generic C code (the oracle) |
//! | `avx2` | AVX2+FMA+F16C kernels mirroring ggml's AVX2 code, tiled over activation rows |
//! | `avx512` | AVX-512 VNNI (+BF16) kernels, tiled over weight rows and activation rows |
//! | `neon` | AArch64 NEON kernels (`sdot` with run-time `dotprod` detection, `smull` fallback), tiled over activation rows |
//! | `isa` | [`Isa`] detection, `TANDEM_ISA` override, ISA → kernel family |
//!
//! ## Numerics
//!
//! For every (weight row, activation row) pair, the scalar kernels reproduce
//! ggml's scalar `*_generic` functions and the AVX2 kernels reproduce ggml's
//! AVX2 functions operation for operation. The AVX-512 family computes the
//! same exact integer block sums and uses its own, documented, fixed
//! float accumulation order (see `avx512`'s module docs), and so does the
//! NEON family (see `neon`'s module docs; its `sdot` and ARMv8.0 paths agree
//! bit for bit). In every family
//! the result for a pair is a function of that pair alone: it does not depend
//! on B, on the row range, on the tile shape or on how rows are split across
//! calls. Families differ from each other only by f32 reassociation.

mod activations;
pub mod attention;
mod avx2;
mod avx512;
mod blocks;
pub mod convert;
mod driver;
mod error;
mod format;
mod grids;
/// The i-quants' lookup tables (ggml-common.h's grids and sign patterns),
/// for devices that decode these types themselves (tandem-gpu builds its
/// CUDA tables from them).
pub mod grid_tables {
    pub use crate::grids::{
        IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
    };
}
mod interleaved;
mod isa;
mod neon;
mod probe;
mod reference;
mod registry;

#[cfg(test)]
mod tests;

use std::ops::Range;

pub use activations::{Q8_0Variant, QuantizedActivations};
pub use error::KernelError;
pub use format::{ActivationFormat, WeightFormat};
pub use interleaved::{
    deinterleave_group, has_interleaved, interleave_group, interleave_matrix, preferred_layout,
    WeightLayout, GROUP_ROWS,
};
pub use isa::{detected_isa, Isa, KernelFamily, ParseIsaError};
pub use probe::{read_checksum, read_checksum_with};
pub use registry::kernel_family_for;

/// Dequantize one row: `src.len()` must be `format.row_bytes(dst.len())`.
/// Bit-identical to ggml's `dequantize_row_*`.
pub fn dequantize_row(
    format: WeightFormat,
    src: &[u8],
    dst: &mut [f32],
) -> Result<(), KernelError> {
    let expected = row_bytes(format, dst.len())?;
    if src.len() != expected {
        return Err(KernelError::SizeMismatch {
            what: "dequantize_row source bytes",
            expected,
            actual: src.len(),
        });
    }
    reference::dequantize_row(format, src, dst);
    Ok(())
}

/// Multiply weight rows `rows` of a row-major matrix by the B activation rows
/// in `acts`, using the ISA from [`detected_isa`]:
/// `out[(r - rows.start) * B + b] = dot(weight row r, activation row b)`.
///
/// `weights` holds all rows of the matrix (`weights.len()` a multiple of
/// `format.row_bytes(n_cols)`); `acts` must be in `format.activation_format()`
/// with `n_cols` columns; `out.len()` must be `rows.len() * B`. Any mismatch
/// is an error, never a panic.
pub fn matmul_rows(
    format: WeightFormat,
    weights: &[u8],
    n_cols: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_rows_with(detected_isa(), format, weights, n_cols, rows, acts, out)
}

/// [`matmul_rows`] for a matrix stored in `layout`, with the ISA from
/// [`detected_isa`] (see [`matmul_rows_in_layout`]).
pub fn matmul_rows_layout(
    format: WeightFormat,
    layout: WeightLayout,
    weights: &[u8],
    n_cols: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_rows_in_layout(
        detected_isa(),
        format,
        layout,
        weights,
        n_cols,
        rows,
        acts,
        out,
    )
}

/// [`matmul_rows`] with an explicit ISA (for tests and benchmarks). Returns
/// [`KernelError::IsaUnavailable`] when the CPU lacks it.
pub fn matmul_rows_with(
    isa: Isa,
    format: WeightFormat,
    weights: &[u8],
    n_cols: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_rows_in_layout(
        isa,
        format,
        WeightLayout::Rows,
        weights,
        n_cols,
        rows,
        acts,
        out,
    )
}

/// [`matmul_rows_with`] for a matrix stored in `layout` (see
/// [`WeightLayout`]). Returns [`KernelError::LayoutUnsupported`] when the
/// ISA's kernel family has no kernel for that format and layout (the
/// AVX-512, AVX2 and scalar families run [`WeightLayout::Interleaved8`] of
/// Q2_K, Q4_K, Q6_K and Q8_0; use [`preferred_layout`] to choose).
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_in_layout(
    isa: Isa,
    format: WeightFormat,
    layout: WeightLayout,
    weights: &[u8],
    n_cols: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let rb = validate(format, weights, n_cols, &rows, acts, out)?;
    if !isa.is_available() {
        return Err(KernelError::IsaUnavailable(isa));
    }
    if !interleaved::supports(isa.kernels(), format, layout) {
        return Err(KernelError::LayoutUnsupported { format, layout });
    }
    if rows.is_empty() || acts.n_rows() == 0 {
        return Ok(());
    }
    if layout == WeightLayout::Interleaved8 {
        return match isa.kernels() {
            KernelFamily::Avx512 => {
                avx512::matmul_interleaved(format, weights, rb, rows, acts, out)
            }
            KernelFamily::Avx2 => avx2::matmul_interleaved(format, weights, rb, rows, acts, out),
            _ => {
                interleaved::reference_matmul(format, weights, rb, rows, acts, out);
                Ok(())
            }
        };
    }
    match kernel_family_for(isa, format) {
        KernelFamily::Scalar => {
            reference::matmul(format, weights, rb, rows, acts, out);
            Ok(())
        }
        KernelFamily::Avx2 => avx2::matmul(format, weights, rb, rows, acts, out),
        KernelFamily::Avx512 => avx512::matmul(format, weights, rb, rows, acts, out),
        KernelFamily::Neon => neon::matmul(format, weights, rb, rows, acts, out),
    }
}

fn row_bytes(format: WeightFormat, n_cols: usize) -> Result<usize, KernelError> {
    format.row_bytes(n_cols).ok_or_else(|| {
        if !n_cols.is_multiple_of(format.block_len()) {
            KernelError::NotBlockAligned {
                format: format.name(),
                n_cols,
                block_len: format.block_len(),
            }
        } else {
            KernelError::Overflow
        }
    })
}

/// Check every size; returns the bytes per weight row.
fn validate(
    format: WeightFormat,
    weights: &[u8],
    n_cols: usize,
    rows: &Range<usize>,
    acts: &QuantizedActivations,
    out: &[f32],
) -> Result<usize, KernelError> {
    let expected = format.activation_format();
    if acts.format() != expected {
        return Err(KernelError::ActivationFormatMismatch {
            weights: format,
            expected,
            actual: acts.format(),
        });
    }
    if n_cols == 0 {
        return Err(KernelError::ZeroColumns);
    }
    let rb = row_bytes(format, n_cols)?;
    if acts.n_cols() != n_cols {
        return Err(KernelError::SizeMismatch {
            what: "activation columns",
            expected: n_cols,
            actual: acts.n_cols(),
        });
    }
    if !weights.len().is_multiple_of(rb) {
        return Err(KernelError::SizeMismatch {
            what: "weight bytes (a whole number of rows)",
            expected: weights.len() / rb * rb,
            actual: weights.len(),
        });
    }
    let n_rows = weights.len() / rb;
    if rows.start > rows.end || rows.end > n_rows {
        return Err(KernelError::RowRange {
            start: rows.start,
            end: rows.end,
            n_rows,
        });
    }
    let expected_out = (rows.end - rows.start)
        .checked_mul(acts.n_rows())
        .ok_or(KernelError::Overflow)?;
    if out.len() != expected_out {
        return Err(KernelError::SizeMismatch {
            what: "output length (rows × activation rows)",
            expected: expected_out,
            actual: out.len(),
        });
    }
    Ok(rb)
}
