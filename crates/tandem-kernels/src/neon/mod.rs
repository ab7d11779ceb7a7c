//! AArch64 NEON kernel family.
//!
//! Not written yet: the family exists so that [`Isa::Neon`] has its own
//! dispatch slot (and its own column in the tests and the benchmark), but it
//! runs the scalar reference kernels, so its results equal
//! [`Isa::Scalar`]'s bit for bit. The plan for the real kernels: `sdot`
//! (`vdotq_s32`) when the `dotprod` feature is detected at run time, tiled
//! over weight rows and activation rows like `avx512`, with the scalar code
//! as the fallback on CPUs without `dotprod`.

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
