//! The one error type of the crate. Every size or format problem is reported
//! here instead of panicking, so callers can surface a corrupt model file as
//! an error.

use crate::{ActivationFormat, Isa, WeightFormat, WeightLayout};

/// Errors from dequantization, activation quantization and matmul.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A row length is not a multiple of the format's block length.
    #[error("{n_cols} columns is not a multiple of the {format} block length {block_len}")]
    NotBlockAligned {
        /// Format name.
        format: &'static str,
        /// Requested row length.
        n_cols: usize,
        /// Block length of the format.
        block_len: usize,
    },
    /// A buffer has the wrong length.
    #[error("{what}: expected {expected}, got {actual}")]
    SizeMismatch {
        /// Which buffer.
        what: &'static str,
        /// Length required by the other arguments.
        expected: usize,
        /// Length passed.
        actual: usize,
    },
    /// The activations are not in the weight format's `vec_dot_type`.
    #[error("{weights} weights need {expected} activations, got {actual}")]
    ActivationFormatMismatch {
        /// Weight format.
        weights: WeightFormat,
        /// Activation format it needs.
        expected: ActivationFormat,
        /// Activation format passed.
        actual: ActivationFormat,
    },
    /// The row range does not fit in the matrix.
    #[error("row range {start}..{end} is out of bounds for a matrix of {n_rows} rows")]
    RowRange {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Rows in the matrix.
        n_rows: usize,
    },
    /// A matmul over rows of zero columns (the matrix shape is undefined).
    #[error("rows of zero columns")]
    ZeroColumns,
    /// A size computation overflowed `usize`.
    #[error("size overflow")]
    Overflow,
    /// No kernel of the chosen family multiplies this format in this layout.
    #[error("{format} weights in the {} layout have no kernel here", layout.name())]
    LayoutUnsupported {
        /// Weight format.
        format: WeightFormat,
        /// Layout requested.
        layout: WeightLayout,
    },
    /// The requested instruction set is not available on this CPU.
    #[error("instruction set {0} is not available on this CPU")]
    IsaUnavailable(Isa),
}
