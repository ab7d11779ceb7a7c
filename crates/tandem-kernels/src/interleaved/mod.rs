//! Interleaved weight layouts: groups of [`GROUP_ROWS`] weight rows stored
//! block by block, so that one SIMD lane holds one row.
//!
//! Why: in ggml's row-major layout a kernel produces one row's dot product
//! at a time, so every block pays for unpacking its scales, applying them to
//! one row's partial sums and reducing the SIMD lanes horizontally. With 8
//! rows interleaved (as llama.cpp's `block_q4_Kx8` repacking does) a 256-bit
//! `vpdpbusd` multiplies 4 consecutive weights of 8 rows against 4
//! activations broadcast to every lane: the 8 lanes *are* the 8 rows, scales
//! are applied to 8 rows with one `vpmulld`, and no horizontal reduction is
//! left. The AVX2 family runs the same encodings with `vpmaddubsw` (no VNNI;
//! `avx2/*_x8.rs`), as ggml repacks Q4_K for its AVX2 GEMV/GEMM. The layout
//! is chosen at load time ([`preferred_layout`]) and the model converts each
//! shard once while placing it.
//!
//! ## Contract
//!
//! A matrix in [`WeightLayout::Interleaved8`] has the same size as in
//! [`WeightLayout::Rows`] and the same row boundaries *per group*: rows
//! `8g..8g+8` occupy bytes `8g·rb..(8g+8)·rb` (rb = bytes of one row), laid
//! out by the format's group encoding. Rows past the last full group (the
//! `n_rows % 8` tail) stay in ggml's row layout at their usual offsets. So a
//! shard's byte ranges, `weight_bytes_per_token` and every size check are
//! the same for both layouts.
//!
//! Each format's encoding is defined, with its scalar reference kernel (the
//! oracle for the SIMD kernels), in its own file: [`q2_k`], [`q4_k`], [`q6_k`],
//! [`q8_0`].
//! [`interleave_group`] / [`deinterleave_group`] are exact inverses.

pub(crate) mod q2_k;
pub(crate) mod q4_k;
pub(crate) mod q6_k;
pub(crate) mod q8_0;

use crate::{Isa, KernelError, KernelFamily, QuantizedActivations, WeightFormat};

/// Rows per interleaved group.
pub const GROUP_ROWS: usize = 8;

/// How the rows of a weight matrix are stored.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// ggml's layout: row after row, each a sequence of blocks (as in the
    /// GGUF file).
    #[default]
    Rows,
    /// Groups of [`GROUP_ROWS`] rows interleaved block by block (see the
    /// module docs); a tail of fewer rows stays row-major.
    Interleaved8,
}

impl WeightLayout {
    /// Short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Rows => "rows",
            WeightLayout::Interleaved8 => "x8",
        }
    }
}

/// Converts 8 rows (`src`, `rb` bytes each) to one group, or back.
type Convert = fn(&[u8], usize, &mut [u8]);

/// The (interleave, deinterleave) pair of `format`'s encoding, if it has one:
/// the one table of which formats interleave.
fn converters(format: WeightFormat) -> Option<(Convert, Convert)> {
    match format {
        WeightFormat::Q2_K => Some((q2_k::interleave, q2_k::deinterleave)),
        WeightFormat::Q4_K => Some((q4_k::interleave, q4_k::deinterleave)),
        WeightFormat::Q6_K => Some((q6_k::interleave, q6_k::deinterleave)),
        WeightFormat::Q8_0 => Some((q8_0::interleave, q8_0::deinterleave)),
        _ => None,
    }
}

/// Whether `format` has an interleaved encoding.
pub fn has_interleaved(format: WeightFormat) -> bool {
    converters(format).is_some()
}

/// The layout `isa`'s kernels run fastest on for `format`: interleaved
/// where the family has group kernels for it (AVX-512 and AVX2: Q2_K,
/// Q4_K, Q6_K, Q8_0; ggml repacks the last three for AVX2). The scalar family can
/// run every interleaved layout (it is their reference) but is faster on
/// ggml's layout.
pub fn preferred_layout(isa: Isa, format: WeightFormat) -> WeightLayout {
    if has_interleaved(format) && has_group_kernels(isa.kernels(), format) {
        WeightLayout::Interleaved8
    } else {
        WeightLayout::Rows
    }
}

/// Whether SIMD family `family` has group kernels for `format`.
fn has_group_kernels(family: KernelFamily, format: WeightFormat) -> bool {
    match family {
        KernelFamily::Avx512 => true,
        KernelFamily::Avx2 => crate::avx2::has_group_kernel(format),
        KernelFamily::Scalar | KernelFamily::Neon => false,
    }
}

/// Whether kernel family `family` can multiply `format` stored in `layout`.
pub(crate) fn supports(family: KernelFamily, format: WeightFormat, layout: WeightLayout) -> bool {
    match layout {
        WeightLayout::Rows => true,
        WeightLayout::Interleaved8 => {
            has_interleaved(format)
                && (family == KernelFamily::Scalar || has_group_kernels(family, format))
        }
    }
}

/// Checks that `src` and `dst` are one group of `n_cols`-wide rows of an
/// interleavable format; returns the row bytes and the format's converters.
fn check_group(
    format: WeightFormat,
    n_cols: usize,
    src: &[u8],
    dst: &[u8],
) -> Result<(usize, (Convert, Convert)), KernelError> {
    let conv = converters(format).ok_or(KernelError::LayoutUnsupported {
        format,
        layout: WeightLayout::Interleaved8,
    })?;
    let rb = crate::row_bytes(format, n_cols)?;
    let want = rb * GROUP_ROWS;
    for (what, len) in [
        ("interleave source", src.len()),
        ("interleave destination", dst.len()),
    ] {
        if len != want {
            return Err(KernelError::SizeMismatch {
                what,
                expected: want,
                actual: len,
            });
        }
    }
    Ok((rb, conv))
}

/// Converts [`GROUP_ROWS`] consecutive rows of `n_cols` weights (`src`,
/// ggml layout) into one interleaved group (`dst`, same length).
pub fn interleave_group(
    format: WeightFormat,
    n_cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let (rb, (interleave, _)) = check_group(format, n_cols, src, dst)?;
    interleave(src, rb, dst);
    Ok(())
}

/// The inverse of [`interleave_group`].
pub fn deinterleave_group(
    format: WeightFormat,
    n_cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let (rb, (_, deinterleave)) = check_group(format, n_cols, src, dst)?;
    deinterleave(src, rb, dst);
    Ok(())
}

/// Converts a whole row-major matrix (`src`, rows of `n_cols`) into
/// [`WeightLayout::Interleaved8`] (`dst`, same length): full groups are
/// interleaved, the tail is copied.
pub fn interleave_matrix(
    format: WeightFormat,
    n_cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let rb = crate::row_bytes(format, n_cols)?;
    if src.len() != dst.len() || !src.len().is_multiple_of(rb) {
        return Err(KernelError::SizeMismatch {
            what: "interleave destination (same whole rows as the source)",
            expected: src.len(),
            actual: dst.len(),
        });
    }
    let g = rb * GROUP_ROWS;
    let full = src.len() / g * g;
    for (s, d) in src[..full]
        .chunks_exact(g)
        .zip(dst[..full].chunks_exact_mut(g))
    {
        interleave_group(format, n_cols, s, d)?;
    }
    dst[full..].copy_from_slice(&src[full..]);
    Ok(())
}

/// Rows `[0, packed)` are in full groups, `[packed, n_rows)` row-major.
pub(crate) fn packed_rows(n_rows: usize) -> usize {
    n_rows / GROUP_ROWS * GROUP_ROWS
}

/// Scalar matmul over an interleaved matrix (validated sizes): the
/// reference for the SIMD kernels. Groups overlapping `rows` are computed
/// whole and only the requested rows are stored.
pub(crate) fn reference_matmul(
    format: WeightFormat,
    weights: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) {
    let n_b = acts.n_rows();
    let packed = packed_rows(weights.len() / rb);
    let g = rb * GROUP_ROWS;
    let mut r = rows.start;
    while r < rows.end.min(packed) {
        let group = r / GROUP_ROWS;
        let bytes = &weights[group * g..(group + 1) * g];
        for b in 0..n_b {
            let vals = match format {
                WeightFormat::Q2_K => q2_k::dot_group(bytes, acts.q8_k_row(b)),
                WeightFormat::Q4_K => q4_k::dot_group(bytes, acts.q8_k_row(b)),
                WeightFormat::Q6_K => q6_k::dot_group(bytes, acts.q8_k_row(b)),
                WeightFormat::Q8_0 => q8_0::dot_group(bytes, acts.q8_0_row(b)),
                _ => unreachable!("validated by supports()"),
            };
            for (i, v) in vals.iter().enumerate() {
                let row = group * GROUP_ROWS + i;
                if rows.contains(&row) {
                    out[(row - rows.start) * n_b + b] = *v;
                }
            }
        }
        r = (group + 1) * GROUP_ROWS;
    }
    let tail = rows.start.max(packed)..rows.end;
    if !tail.is_empty() {
        let o = (tail.start - rows.start) * n_b;
        crate::reference::matmul(format, weights, rb, tail, acts, &mut out[o..]);
    }
}
