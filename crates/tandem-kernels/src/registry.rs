//! The kernel registry: which family's code runs a weight format.
//!
//! Each SIMD family registers the formats it has kernels for (its
//! `tile_fns` returns `Some`, listed by its `has_kernel`); for any other
//! format a family falls back along a fixed chain and finally to the scalar
//! reference, which runs every format:
//!
//! | asked for | falls back to |
//! | --- | --- |
//! | `avx512` | `avx2`, then `scalar` |
//! | `avx2` | `scalar` |
//! | `neon` | `scalar` |
//!
//! So a new format works on every ISA as soon as it has a block layout, a
//! scalar reference and tests; SIMD kernels are added only where they pay.
//! [`kernel_family_for`] tells callers (benchmarks, logs) what actually runs.

use crate::{Isa, KernelFamily, WeightFormat};

/// Whether `family` has its own kernel for `format`.
pub(crate) fn has_kernel(family: KernelFamily, format: WeightFormat) -> bool {
    match family {
        KernelFamily::Scalar => true,
        KernelFamily::Avx2 => crate::avx2::has_kernel(format),
        KernelFamily::Avx512 => crate::avx512::has_kernel(format),
        KernelFamily::Neon => crate::neon::has_kernel(format),
    }
}

/// The family tried next when `family` has no kernel for a format.
const fn fallback(family: KernelFamily) -> KernelFamily {
    match family {
        KernelFamily::Avx512 => KernelFamily::Avx2,
        KernelFamily::Avx2 | KernelFamily::Neon | KernelFamily::Scalar => KernelFamily::Scalar,
    }
}

/// The kernel family whose code runs `format` when [`matmul_rows_with`]
/// is called with `isa` (row-major layout): the ISA's own family if it
/// registered a kernel for the format, else the first family down its
/// fallback chain that did (the scalar reference runs everything).
///
/// [`matmul_rows_with`]: crate::matmul_rows_with
pub fn kernel_family_for(isa: Isa, format: WeightFormat) -> KernelFamily {
    let mut family = isa.kernels();
    while !has_kernel(family, format) {
        family = fallback(family);
    }
    family
}
