//! `TANDEM_ISA` resolution (the env var itself is read once per process, so
//! the pure resolver is tested instead).

use crate::isa::resolve_override;
use crate::{Isa, KernelFamily};

#[test]
fn override_resolution() {
    let best = Isa::best_available();
    assert_eq!(resolve_override(None, best), (best, None));
    assert_eq!(resolve_override(Some("scalar"), best), (Isa::Scalar, None));
    let (isa, warning) = resolve_override(Some("bogus"), best);
    assert_eq!(isa, best);
    assert!(warning.unwrap().contains("unknown ISA"));
    for isa in Isa::ALL {
        let (got, warning) = resolve_override(Some(isa.name()), best);
        if isa.is_available() {
            assert_eq!((got, warning), (isa, None));
        } else {
            assert_eq!(got, best);
            assert!(warning.unwrap().contains("lacks"));
        }
    }
}

#[test]
fn kernel_families() {
    assert_eq!(Isa::Scalar.kernels(), KernelFamily::Scalar);
    assert_eq!(Isa::Avx2.kernels(), KernelFamily::Avx2);
    assert_eq!(Isa::Avx512.kernels(), KernelFamily::Avx512);
    assert_eq!(Isa::Neon.kernels(), KernelFamily::Neon);
    assert!(Isa::best_available().is_available());
}
