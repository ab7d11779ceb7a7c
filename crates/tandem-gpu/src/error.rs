//! Errors of the GPU prefill: each names what failed (the tensor, the
//! buffer, the library that is missing).

/// What went wrong on the device side.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable GPU: the library, driver or device that is missing.
    #[error("GPU prefill unavailable: {0}")]
    Unavailable(String),
    #[error("GPU memory: {what} needs {bytes} bytes, {free} left of the budget (--gpu-memory)")]
    OutOfMemory {
        what: String,
        bytes: usize,
        free: usize,
    },
    /// A CUDA, NVRTC or cuBLAS call failed.
    #[error("{call}: {detail}")]
    Driver { call: &'static str, detail: String },
    /// Sizes that do not fit together (a bug or an unsupported model).
    #[error("shape: {0}")]
    Shape(String),
    /// The device's ordering rules were broken (a bug in the caller).
    #[error("device protocol: {0}")]
    Protocol(String),
    /// A weight the device cannot run.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Model(#[from] tandem_model::ModelError),
    #[error("KV store: {0}")]
    Kv(#[from] tandem_kv::KvError),
    #[error("{0}")]
    Io(String),
}
