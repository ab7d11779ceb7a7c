//! The GPU side of the CLI: opening a device (`--gpu-device`, the CUDA
//! feature, or the CPU stand-in for tests), and running code generic over
//! [`Device`] on whichever was opened.

use clap::Args;
use tandem_gpu::{CpuDevice, Device};

/// Flags shared by the commands that use a GPU.
#[derive(Args, Clone, Debug)]
pub struct GpuArgs {
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    pub gpu_device: usize,
    /// Most GPU memory tandem takes (e.g. 20GiB; default: what is free,
    /// less 1 GiB).
    #[arg(long)]
    pub gpu_memory: Option<bytesize::ByteSize>,
    /// Run the GPU path on the CPU stand-in device (the one CI tests
    /// with; slow, for checking the commands without a GPU).
    #[arg(long, hide = true)]
    pub gpu_stand_in: bool,
}

/// Something to run on a device of any kind.
pub trait OnDevice {
    type Out;
    fn run<D: Device>(self, dev: D) -> anyhow::Result<Self::Out>;
}

/// Opens the device the flags name and runs `f` on it. Without a GPU (no
/// `cuda` feature, driver or device) this is a one-line error naming what
/// is missing.
pub fn with_device<F: OnDevice>(a: &GpuArgs, f: F) -> anyhow::Result<F::Out> {
    let cap = a.gpu_memory.map(|b| b.as_u64() as usize);
    if a.gpu_stand_in {
        return f.run(CpuDevice::new(cap.unwrap_or(4 << 30)));
    }
    #[cfg(feature = "cuda")]
    {
        let dev = tandem_gpu::open_cuda(a.gpu_device, cap)?;
        f.run(dev)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = a.gpu_device;
        Err(tandem_gpu::cuda_unavailable().into())
    }
}
