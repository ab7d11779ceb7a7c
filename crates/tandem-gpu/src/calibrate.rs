//! The measurements behind a [`Profile`](crate::Profile): copy bandwidth
//! both ways, the device's GEMM rate, and the CPU's prefill rate on a
//! loaded model. `tandem calibrate` runs them and saves the profile.

use std::time::Instant;

use tandem_model::{Logits, Model};

use crate::device::{DType, Device, Gemm, Ptr};
use crate::GpuError;

/// What [`measure_device`] found.
#[derive(Clone, Debug)]
pub struct DeviceRates {
    pub h2d_gbps: f64,
    pub d2h_gbps: f64,
    /// Registration of the host buffer worked (page-locked copies).
    pub pinned: bool,
    pub gemm_tflops: f64,
}

/// Copies `bytes` each way `reps` times and runs `reps` f16 GEMMs of
/// `dim³`, timing each after a warm-up.
pub fn measure_device<D: Device>(
    dev: &D,
    bytes: usize,
    dim: usize,
    reps: usize,
) -> Result<DeviceRates, GpuError> {
    let s = dev.new_stream()?;
    let mut host = vec![1u8; bytes];
    // SAFETY: `host` outlives its registration (undone below).
    let pinned = unsafe { dev.register_host(host.as_ptr(), host.len()) }.unwrap_or(false);
    let buf = dev.alloc(bytes, "bandwidth buffer")?;
    let reps = reps.max(1);
    let time = |f: &dyn Fn() -> Result<(), GpuError>| -> Result<f64, GpuError> {
        f()?;
        dev.sync_stream(&s)?;
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        dev.sync_stream(&s)?;
        Ok(t.elapsed().as_secs_f64() / reps as f64)
    };
    let hp = host.as_mut_ptr();
    // SAFETY: `host` is live and untouched during the copies (synced).
    let h2d = time(&|| unsafe { dev.h2d(&s, Ptr::new(&buf), hp, bytes) })?;
    // SAFETY: as above.
    let d2h = time(&|| unsafe { dev.d2h(&s, Ptr::new(&buf), hp, bytes) })?;
    let el = dim * dim;
    let w = dev.alloc(el * 2, "GEMM weights")?;
    let x = dev.alloc(el * 2, "GEMM activations")?;
    let y = dev.alloc(el * 4, "GEMM output")?;
    dev.fill_f32(&s, Ptr::new(&y), el, 0.0)?;
    let g = Gemm {
        w: Ptr::new(&w),
        x: Ptr::new(&x),
        y: Ptr::new(&y),
        ty: DType::F16,
        n: dim,
        rows: dim,
        cols: dim,
        ldy: dim,
        accumulate: false,
        w_transposed: false,
    };
    let gemm = time(&|| dev.gemm(&s, &g))?;
    dev.sync_stream(&s)?;
    if pinned {
        // SAFETY: the stream is idle: no copy reads `host` any more.
        unsafe { dev.unregister_host(host.as_ptr())? };
    }
    Ok(DeviceRates {
        h2d_gbps: bytes as f64 / h2d / 1e9,
        d2h_gbps: bytes as f64 / d2h / 1e9,
        pinned,
        gemm_tflops: 2.0 * (dim as f64).powi(3) / gemm / 1e12,
    })
}

/// The CPU's prefill rate in GFLOP/s of matrix work: a prefill of `n`
/// tokens on `model` (after a warm-up), divided into its FLOPs.
pub fn cpu_prefill_gflops(model: &Model, flops_per_token: f64, n: usize) -> Result<f64, GpuError> {
    let v = model.config.vocab_size as u32;
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % v.max(1)).collect();
    let mut warm = model.new_cache(n.min(16) + 1)?;
    model.forward(&tokens[..n.min(16)], &mut warm, Logits::Last)?;
    let mut cache = model.new_cache(n + 1)?;
    let t = Instant::now();
    model.forward(&tokens, &mut cache, Logits::Last)?;
    Ok(flops_per_token * n as f64 / t.elapsed().as_secs_f64() / 1e9)
}
