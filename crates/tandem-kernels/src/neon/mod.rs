//! AArch64 NEON kernels (placeholder: scalar reference until written).

use std::ops::Range;

use crate::isa::neon_available;
use crate::{reference, Isa, KernelError, QuantizedActivations, WeightFormat};

/// Validated matmul; errors only if the CPU lacks NEON.
pub(crate) fn matmul(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !neon_available() {
        return Err(KernelError::IsaUnavailable(Isa::Neon));
    }
    reference::matmul(format, weights, row_bytes, rows, acts, out);
    Ok(())
}
