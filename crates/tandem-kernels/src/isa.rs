//! Instruction-set selection.
//!
//! [`detected_isa`] picks the best ISA the CPU supports once per process
//! (runtime detection, cached in a `OnceLock`); `TANDEM_ISA=scalar|avx2|avx512|neon`
//! overrides it, falling back (with a single warning on stderr) when the CPU
//! lacks the requested ISA.
//!
//! Kernel families: an [`Isa`] names what the CPU can do, [`Isa::kernels`]
//! names the code that actually runs (one [`KernelFamily`] per ISA):
//!
//! | ISA | needs | family |
//! | --- | --- | --- |
//! | `scalar` | nothing | `reference` |
//! | `avx2` | AVX2 + FMA + F16C | `avx2` |
//! | `avx512` | the above + AVX-512 F/BW/VL + **VNNI** | `avx512` (BF16 dots use `vdpbf16ps` when AVX512-BF16 is present too) |
//! | `neon` | AArch64 NEON | `neon` (quantized dots use `sdot` when the `dotprod` extension is detected at run time, an `smull` fallback otherwise; same results either way) |
//!
//! `avx512` requires VNNI because every quantized kernel is built on
//! `vpdpbusd`; CPUs with AVX-512 but without VNNI (Skylake-X, Cascade Lake
//! before VNNI parts) report `avx512` unavailable and pick `avx2`.
//!
//! A family need not have a kernel for every format: `registry.rs` routes a
//! format the family did not register down its fallback chain (avx512 →
//! avx2 → scalar, neon → scalar); [`kernel_family_for`](crate::kernel_family_for)
//! tells which family runs.
//!
//! To add a family, create `src/<family>/` mirroring `src/avx2/` (its tile
//! kernels run through `driver::drive`), add a [`KernelFamily`] variant,
//! its `has_kernel` and fallback in `registry.rs`, and route it in
//! `matmul_rows_in_layout` and `QuantizedActivations::quantize_with`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction set the kernels can be dispatched to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar reference code (always available).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL, VNNI) on top of AVX2.
    Avx512,
    /// AArch64 NEON (`sdot` used when `dotprod` is present too).
    Neon,
}

/// The code family that runs for an [`Isa`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelFamily {
    /// `reference` module.
    Scalar,
    /// `avx2` module.
    Avx2,
    /// `avx512` module.
    Avx512,
    /// `neon` module.
    Neon,
}

impl Isa {
    /// All variants.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// Lower-case name, as accepted by `TANDEM_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU can run code for this ISA.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => avx2_available(),
            Isa::Avx512 => avx512_available(),
            Isa::Neon => neon_available(),
        }
    }

    /// The kernel code that runs for this ISA today.
    pub fn kernels(self) -> KernelFamily {
        match self {
            Isa::Scalar => KernelFamily::Scalar,
            Isa::Avx2 => KernelFamily::Avx2,
            Isa::Avx512 => KernelFamily::Avx512,
            Isa::Neon => KernelFamily::Neon,
        }
    }

    /// The best ISA this CPU supports (ignores `TANDEM_ISA`).
    pub fn best_available() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Scalar)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error from parsing an [`Isa`] name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown ISA {0:?} (expected scalar, avx2, avx512 or neon)")]
pub struct ParseIsaError(pub String);

impl FromStr for Isa {
    type Err = ParseIsaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "generic" | "none" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" | "avx-512" => Ok(Isa::Avx512),
            "neon" => Ok(Isa::Neon),
            _ => Err(ParseIsaError(s.to_string())),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn avx2_available() -> bool {
    false
}

/// AVX-512 F/BW/VL/VNNI (plus everything [`avx2_available`] needs).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        avx2_available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn avx512_available() -> bool {
    false
}

/// AVX512-BF16 (`vdpbf16ps`) on top of [`avx512_available`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_bf16_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| avx512_available() && is_x86_feature_detected!("avx512bf16"))
}

/// AVX512-VBMI (`vpermb`, `vpermi2b`, `vpmultishiftqb`) on top of
/// [`avx512_available`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_vbmi_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| avx512_available() && is_x86_feature_detected!("avx512vbmi"))
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(dead_code)]
pub(crate) fn avx512_vbmi_available() -> bool {
    false
}

#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(not(target_arch = "aarch64"))]
pub(crate) fn neon_available() -> bool {
    false
}

/// Resolve a `TANDEM_ISA` value against what the CPU offers. Returns the ISA
/// to use and a warning to print, if any.
pub(crate) fn resolve_override(value: Option<&str>, best: Isa) -> (Isa, Option<String>) {
    let Some(value) = value else {
        return (best, None);
    };
    match value.parse::<Isa>() {
        Ok(isa) if isa.is_available() => (isa, None),
        Ok(isa) => (
            best,
            Some(format!(
                "tandem-kernels: TANDEM_ISA={value}: this CPU lacks {isa}; using {best}"
            )),
        ),
        Err(e) => (
            best,
            Some(format!("tandem-kernels: TANDEM_ISA: {e}; using {best}")),
        ),
    }
}

/// The ISA used by [`matmul_rows`](crate::matmul_rows) and
/// [`QuantizedActivations::quantize`](crate::QuantizedActivations::quantize):
/// the best available one, or `TANDEM_ISA` when set and supported. Computed
/// once per process.
pub fn detected_isa() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        let value = std::env::var("TANDEM_ISA").ok();
        let (isa, warning) = resolve_override(value.as_deref(), Isa::best_available());
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        isa
    })
}
