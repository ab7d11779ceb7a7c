//! GPU prefill: the model's layer kinds on a device, with the weights
//! streamed from host memory layer by layer and the new tokens' K/V
//! written back into `tandem-kv`'s host pages, so CPU decode, the prefix
//! cache and the disk tier use them unchanged.
//!
//! Code map:
//! - [`device`]: the [`Device`] trait (memory with a budget, copies,
//!   streams, events, compute ops).
//! - [`cpu`]: [`CpuDevice`], the same interface on host threads; CI runs
//!   the whole prefill on it.
//! - `cuda` (feature `cuda`): `CudaDevice` over cudarc (driver, NVRTC,
//!   cuBLAS, loaded at run time).
//! - [`weights`]: what each layer streams (the file's bytes, as stored).
//! - [`prefill`]: [`GpuPrefill`], the streaming protocol (layers, MoE,
//!   attention over cached pages in its submodules).
//! - [`routing`]: the cost model that sends a prefill to the CPU or the
//!   GPU, and the calibration [`Profile`] it reads.
//! - [`calibrate`]: the measurements behind a profile.

pub mod calibrate;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
mod error;
pub mod kernel_source;
mod kv_io;
pub mod prefill;
pub mod routing;
pub mod weights;

pub use cpu::CpuDevice;
pub use device::{DType, Device};
pub use error::GpuError;
pub use prefill::{GpuPrefill, PrefillOptions, PrefillOutput, PrefillStats};
pub use routing::{PrefillMode, PrefillRoute, Profile};

/// Opens the CUDA device `ordinal` with a memory cap, or says in one line
/// what is missing (no `cuda` feature, no driver, no device).
#[cfg(feature = "cuda")]
pub fn open_cuda(ordinal: usize, memory_cap: Option<usize>) -> Result<cuda::CudaDevice, GpuError> {
    cuda::CudaDevice::open(ordinal, memory_cap)
}

/// Without the `cuda` feature there is no GPU device.
#[cfg(not(feature = "cuda"))]
pub fn cuda_unavailable() -> GpuError {
    GpuError::Unavailable(
        "this tandem was built without GPU support (rebuild with `--features cuda`)".into(),
    )
}
