//! `CudaDevice`: the device interface on an NVIDIA GPU through cudarc,
//! with every library loaded at run time (the build needs no CUDA).
//!
//! - Memory: `cuMemAlloc` against a budget (`--gpu-memory`, else the free
//!   memory less a reserve); freed when the buffer drops (the prefill
//!   drops buffers only after synchronising its streams).
//! - Copies: `cuMemcpyHtoDAsync`/`DtoHAsync` on the given stream; mapped
//!   weights are page-locked in place with `cuMemHostRegister` (read-only)
//!   so uploads run at the link's speed.
//! - Kernels: `crate::kernel_source` (common.cuh, the i-quant tables,
//!   dequant.cuh, kernels.cu), compiled once by NVRTC when the device opens
//!   (no headers; half conversions written out).
//! - GEMMs: `cublasGemmEx`, f16/bf16 (or f32) operands, f32 accumulation.
//!
//! Not run on hardware yet: see the README's GPU section.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::cublas::sys as blas;
use cudarc::driver::result as cu;
use cudarc::driver::sys;

use tandem_kernels::attention::KvFormat;
use tandem_kernels::WeightFormat;
use tandem_model::spec::Activation;
use tandem_model::RopeLayout;

use crate::device::{Attend, DType, Device, Gemm, HostMem, MemInfo, Ptr, RopeArgs};
use crate::GpuError;

/// Memory left to the driver and other users when no cap is given.
const RESERVE: usize = 1 << 30;

fn drv(call: &'static str) -> impl Fn(cu::DriverError) -> GpuError {
    move |e| GpuError::Driver {
        call,
        detail: format!("{e:?}"),
    }
}

fn blas_err(call: &'static str) -> impl Fn(cudarc::cublas::result::CublasError) -> GpuError {
    move |e| GpuError::Driver {
        call,
        detail: format!("{e:?}"),
    }
}

/// Device memory.
pub struct CudaBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
    used: Arc<AtomicUsize>,
    ctx: sys::CUcontext,
}

// SAFETY: a device pointer is a number; the context is process-wide.
unsafe impl Send for CudaBuffer {}
// SAFETY: as for `Send` above.
unsafe impl Sync for CudaBuffer {}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by `cuMemAlloc` in this context, freed once.
        unsafe {
            let _ = cu::ctx::set_current(self.ctx);
            let _ = cu::free_sync(self.ptr);
        }
        self.used.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// Page-locked host memory (`cuMemHostAlloc`).
pub struct PinnedMem {
    ptr: *mut u8,
    len: usize,
    ctx: sys::CUcontext,
}

// SAFETY: plain host memory; the pointer is owned.
unsafe impl Send for PinnedMem {}

impl HostMem for PinnedMem {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes allocated (and zeroed) by `alloc_host`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for PinnedMem {
    fn drop(&mut self) {
        // SAFETY: allocated by `cuMemHostAlloc`, freed once.
        unsafe {
            let _ = cu::ctx::set_current(self.ctx);
            let _ = cu::free_host(self.ptr as *mut c_void);
        }
    }
}

pub struct CudaStream(sys::CUstream);
// SAFETY: CUDA streams may be used from any thread of the context.
unsafe impl Send for CudaStream {}
// SAFETY: as for `Send` above.
unsafe impl Sync for CudaStream {}

impl Drop for CudaStream {
    fn drop(&mut self) {
        // SAFETY: created by `cuStreamCreate`, destroyed once.
        unsafe {
            let _ = cu::stream::destroy(self.0);
        }
    }
}

pub struct CudaEvent(sys::CUevent);
// SAFETY: as streams.
unsafe impl Send for CudaEvent {}
// SAFETY: as for `Send` above.
unsafe impl Sync for CudaEvent {}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: created by `cuEventCreate`, destroyed once.
        unsafe {
            let _ = cu::event::destroy(self.0);
        }
    }
}

/// An NVIDIA GPU.
pub struct CudaDevice {
    ctx: sys::CUcontext,
    name: String,
    budget: usize,
    used: Arc<AtomicUsize>,
    funcs: HashMap<&'static str, sys::CUfunction>,
    _module: sys::CUmodule,
    blas: blas::cublasHandle_t,
}

// SAFETY: handles are process-wide; cuBLAS calls are serialised by the
// prefill (one call at a time under its streams' mutex).
unsafe impl Send for CudaDevice {}
// SAFETY: as for `Send` above.
unsafe impl Sync for CudaDevice {}

const KERNEL_NAMES: &[&str] = &[
    "deq_f32",
    "deq_f16",
    "deq_bf16",
    "deq_q8_0",
    "deq_q4_0",
    "deq_q4_1",
    "deq_q5_0",
    "deq_q5_1",
    "deq_q2_K",
    "deq_q3_K",
    "deq_q4_K",
    "deq_q5_K",
    "deq_q6_K",
    "deq_iq4_nl",
    "deq_iq4_xs",
    "deq_mxfp4",
    "deq_tq1_0",
    "deq_tq2_0",
    "deq_q1_0",
    "deq_q2_0",
    "deq_iq2_xxs",
    "deq_iq2_xs",
    "deq_iq2_s",
    "deq_iq3_xxs",
    "deq_iq3_s",
    "deq_iq1_s",
    "deq_iq1_m",
    "convert_f32",
    "fill_f32",
    "add_f32",
    "add_bias",
    "glu",
    "rms_norm",
    "rope",
    "transpose32",
    "copy_cols",
    "gather_rows",
    "scatter_add_rows",
    "encode_kv",
    "attn_init",
    "attend",
    "attn_finish",
];

/// Kernel arguments: each value in the low bytes of a 64-bit slot (the
/// driver reads the parameter's own size from its address).
struct Args(Vec<u64>);

impl Args {
    fn new() -> Args {
        Args(Vec::with_capacity(16))
    }
    fn p<B>(mut self, p: Ptr<'_, B>) -> Args
    where
        B: DevPtr,
    {
        self.0.push(p.buf.dev_ptr() + p.off as u64);
        self
    }
    fn null(mut self) -> Args {
        self.0.push(0);
        self
    }
    fn i(mut self, v: i64) -> Args {
        self.0.push(v as u64);
        self
    }
    fn i32(mut self, v: i32) -> Args {
        self.0.push(v as u32 as u64);
        self
    }
    fn f(mut self, v: f32) -> Args {
        self.0.push(v.to_bits() as u64);
        self
    }
}

trait DevPtr {
    fn dev_ptr(&self) -> u64;
}
impl DevPtr for CudaBuffer {
    fn dev_ptr(&self) -> u64 {
        self.ptr
    }
}

fn ty_code(t: DType) -> i32 {
    match t {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }
}

fn in_bounds(p: Ptr<'_, CudaBuffer>, len: usize, what: &str) -> Result<(), GpuError> {
    match p.off.checked_add(len) {
        Some(e) if e <= p.buf.len => Ok(()),
        _ => Err(GpuError::Protocol(format!(
            "{what}: {len} bytes at offset {} outside a buffer of {}",
            p.off, p.buf.len
        ))),
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`: loads the driver, NVRTC and cuBLAS, compiles
    /// the kernels. A missing library, driver or device is one line of
    /// [`GpuError::Unavailable`].
    pub fn open(ordinal: usize, cap: Option<usize>) -> Result<CudaDevice, GpuError> {
        // cudarc panics when a library or one of its symbols is missing:
        // check first, and turn any panic left into an error.
        // SAFETY: only probes whether the libraries load.
        let present = |name: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(GpuError::Unavailable(format!(
                    "{name} not found (is the NVIDIA driver / CUDA 12 runtime installed and on LD_LIBRARY_PATH?)"
                )))
            }
        };
        // SAFETY: only looks the library up (dlopen), calling nothing in it.
        present("libcuda (the NVIDIA driver)", unsafe {
            sys::is_culib_present()
        })?;
        // SAFETY: only looks the library up (dlopen), calling nothing in it.
        present("libnvrtc (CUDA's runtime compiler)", unsafe {
            cudarc::nvrtc::sys::is_culib_present()
        })?;
        // SAFETY: only looks the library up (dlopen), calling nothing in it.
        present("libcublas", unsafe { blas::is_culib_present() })?;
        match std::panic::catch_unwind(|| Self::open_inner(ordinal, cap)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "CUDA initialisation panicked".into());
                Err(GpuError::Unavailable(
                    msg.lines().next().unwrap_or("").to_string(),
                ))
            }
        }
    }

    fn open_inner(ordinal: usize, cap: Option<usize>) -> Result<CudaDevice, GpuError> {
        cu::init()
            .map_err(|e| GpuError::Unavailable(format!("CUDA driver did not initialise: {e:?}")))?;
        let count = cu::device::get_count().map_err(drv("cuDeviceGetCount"))?;
        if count <= 0 {
            return Err(GpuError::Unavailable("no CUDA device found".into()));
        }
        if ordinal >= count as usize {
            return Err(GpuError::Unavailable(format!(
                "CUDA device {ordinal} requested, {count} present"
            )));
        }
        let dev = cu::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
        // SAFETY: `dev` is a valid device; the primary context is kept
        // for the process's life.
        let ctx =
            unsafe { cu::primary_ctx::retain(dev) }.map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: a context just retained.
        unsafe { cu::ctx::set_current(ctx) }.map_err(drv("cuCtxSetCurrent"))?;
        let name = cu::device::get_name(dev).unwrap_or_else(|_| "CUDA device".into());
        let (free, _total) = cu::mem_get_info().map_err(drv("cuMemGetInfo"))?;
        let budget = match cap {
            Some(c) => c.min(free),
            None => free.saturating_sub(RESERVE),
        };
        let cc = |a| {
            // SAFETY: `dev` came from `cuDeviceGet`.
            unsafe { cu::device::get_attribute(dev, a) }.unwrap_or(0)
        };
        let cc = (
            cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        );
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(
            crate::kernel_source::kernel_source(),
            cudarc::nvrtc::CompileOptions {
                name: Some("tandem_kernels.cu".into()),
                arch: nvrtc_arch(cc),
                ..Default::default()
            },
        )
        .map_err(|e| GpuError::Driver {
            call: "nvrtcCompileProgram",
            detail: format!("{e:?}"),
        })?;
        let src = CString::new(ptx.to_src()).map_err(|_| GpuError::Driver {
            call: "nvrtc",
            detail: "PTX with a NUL byte".into(),
        })?;
        // SAFETY: a NUL-terminated PTX image.
        let module = unsafe { cu::module::load_data(src.as_ptr() as *const c_void) }
            .map_err(drv("cuModuleLoadData"))?;
        let mut funcs = HashMap::new();
        for &k in KERNEL_NAMES {
            let cname = CString::new(k).map_err(|_| GpuError::Protocol("kernel name".into()))?;
            // SAFETY: the module was just loaded.
            let f = unsafe { cu::module::get_function(module, cname) }
                .map_err(drv("cuModuleGetFunction"))?;
            funcs.insert(k, f);
        }
        let blas = cudarc::cublas::result::create_handle().map_err(blas_err("cublasCreate"))?;
        Ok(CudaDevice {
            ctx,
            name,
            budget,
            used: Arc::new(AtomicUsize::new(0)),
            funcs,
            _module: module,
            blas,
        })
    }

    fn bind(&self) -> Result<(), GpuError> {
        // SAFETY: the device's primary context.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(drv("cuCtxSetCurrent"))
    }

    /// Launches `name` over `n` items (256 threads a block).
    fn launch(
        &self,
        s: &CudaStream,
        name: &'static str,
        n: usize,
        args: Args,
    ) -> Result<(), GpuError> {
        let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
        self.launch_grid(s, name, (blocks, 1, 1), (256, 1, 1), args)
    }

    fn launch_grid(
        &self,
        s: &CudaStream,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        mut args: Args,
    ) -> Result<(), GpuError> {
        self.bind()?;
        let f = *self
            .funcs
            .get(name)
            .ok_or_else(|| GpuError::Protocol(format!("kernel {name} not loaded")))?;
        let mut params: Vec<*mut c_void> = args
            .0
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: the kernel's parameters match `args` (each read from
        // its slot's low bytes); device pointers were bounds-checked by
        // the caller.
        unsafe { cu::launch_kernel(f, grid, block, 0, s.0, &mut params) }
            .map_err(drv("cuLaunchKernel"))
    }
}

impl Device for CudaDevice {
    type Buffer = CudaBuffer;
    type Stream = CudaStream;
    type Event = CudaEvent;
    type Host = PinnedMem;

    fn alloc_host(&self, bytes: usize) -> Result<PinnedMem, GpuError> {
        self.bind()?;
        let len = bytes.max(1);
        // SAFETY: a plain allocation, zeroed before use.
        let ptr = unsafe { cu::malloc_host(len, 0) }.map_err(drv("cuMemHostAlloc"))? as *mut u8;
        // SAFETY: `len` bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedMem {
            ptr,
            len: bytes,
            ctx: self.ctx,
        })
    }

    fn describe(&self) -> String {
        format!("{} ({} MiB budget)", self.name, self.budget >> 20)
    }

    fn memory(&self) -> MemInfo {
        MemInfo {
            budget: self.budget,
            used: self.used.load(Ordering::Acquire),
        }
    }

    fn alloc(&self, bytes: usize, what: &str) -> Result<CudaBuffer, GpuError> {
        let cur = self.used.fetch_add(bytes, Ordering::AcqRel);
        if cur + bytes > self.budget {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return Err(GpuError::OutOfMemory {
                what: what.to_string(),
                bytes,
                free: self.budget.saturating_sub(cur),
            });
        }
        self.bind()?;
        // SAFETY: a plain allocation.
        match unsafe { cu::malloc_sync(bytes.max(1)) } {
            Ok(ptr) => Ok(CudaBuffer {
                ptr,
                len: bytes,
                used: Arc::clone(&self.used),
                ctx: self.ctx,
            }),
            Err(e) => {
                self.used.fetch_sub(bytes, Ordering::AcqRel);
                Err(GpuError::Driver {
                    call: "cuMemAlloc",
                    detail: format!("{what}, {bytes} bytes: {e:?}"),
                })
            }
        }
    }

    fn new_stream(&self) -> Result<CudaStream, GpuError> {
        self.bind()?;
        cu::stream::create(cu::stream::StreamKind::NonBlocking)
            .map(CudaStream)
            .map_err(drv("cuStreamCreate"))
    }

    fn new_event(&self) -> Result<CudaEvent, GpuError> {
        self.bind()?;
        cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map(CudaEvent)
            .map_err(drv("cuEventCreate"))
    }

    fn record(&self, ev: &CudaEvent, s: &CudaStream) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: live handles.
        unsafe { cu::event::record(ev.0, s.0) }.map_err(drv("cuEventRecord"))
    }

    fn wait(&self, s: &CudaStream, ev: &CudaEvent) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: live handles.
        unsafe { cu::stream::wait_event(s.0, ev.0, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }
            .map_err(drv("cuStreamWaitEvent"))
    }

    fn sync_event(&self, ev: &CudaEvent) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: a live event.
        unsafe { cu::event::synchronize(ev.0) }.map_err(drv("cuEventSynchronize"))
    }

    fn sync_stream(&self, s: &CudaStream) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: a live stream.
        unsafe { cu::stream::synchronize(s.0) }.map_err(drv("cuStreamSynchronize"))
    }

    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Result<bool, GpuError> {
        self.bind()?;
        // SAFETY: the caller's contract: `ptr..ptr + len` is mapped and
        // stays so until it is unregistered.
        unsafe {
            sys::cuMemHostRegister_v2(ptr as *mut c_void, len, sys::CU_MEMHOSTREGISTER_READ_ONLY)
        }
        .result()
        .map(|_| true)
        .map_err(drv("cuMemHostRegister"))
    }

    unsafe fn h2d(
        &self,
        s: &CudaStream,
        dst: Ptr<'_, CudaBuffer>,
        src: *const u8,
        len: usize,
    ) -> Result<(), GpuError> {
        in_bounds(dst, len, "h2d destination")?;
        self.bind()?;
        // SAFETY: the destination was checked in bounds; the caller keeps
        // `src..src + len` alive and unchanged until the stream passes.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst.buf.ptr + dst.off as u64, src as *const c_void, len, s.0)
        }
        .result()
        .map_err(drv("cuMemcpyHtoDAsync"))
    }

    unsafe fn d2h(
        &self,
        s: &CudaStream,
        src: Ptr<'_, CudaBuffer>,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), GpuError> {
        in_bounds(src, len, "d2h source")?;
        self.bind()?;
        // SAFETY: the source was checked in bounds; the caller keeps
        // `dst..dst + len` writable and unread until the stream passes.
        unsafe {
            sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src.buf.ptr + src.off as u64, len, s.0)
        }
        .result()
        .map_err(drv("cuMemcpyDtoHAsync"))
    }

    fn fill_f32(
        &self,
        s: &CudaStream,
        dst: Ptr<'_, CudaBuffer>,
        n: usize,
        value: f32,
    ) -> Result<(), GpuError> {
        in_bounds(dst, n * 4, "fill")?;
        self.launch(s, "fill_f32", n, Args::new().p(dst).f(value).i(n as i64))
    }

    fn supports(&self, format: WeightFormat) -> bool {
        deq_kernel(format).is_some()
    }

    fn dequantize(
        &self,
        s: &CudaStream,
        format: WeightFormat,
        src: Ptr<'_, CudaBuffer>,
        dst: Ptr<'_, CudaBuffer>,
        ty: DType,
        n: usize,
    ) -> Result<(), GpuError> {
        let k = deq_kernel(format).ok_or_else(|| {
            GpuError::Unsupported(format!(
                "no GPU dequantization kernel for {}",
                format.name()
            ))
        })?;
        let src_len = format.row_bytes(n).ok_or_else(|| {
            GpuError::Shape(format!("{n} values are not whole {} blocks", format.name()))
        })?;
        in_bounds(src, src_len, "dequantize source")?;
        in_bounds(dst, n * ty.size(), "dequantize destination")?;
        self.launch(
            s,
            k,
            n,
            Args::new().p(src).p(dst).i32(ty_code(ty)).i(n as i64),
        )
    }

    fn convert(
        &self,
        s: &CudaStream,
        src: Ptr<'_, CudaBuffer>,
        dst: Ptr<'_, CudaBuffer>,
        ty: DType,
        n: usize,
    ) -> Result<(), GpuError> {
        in_bounds(src, n * 4, "convert source")?;
        in_bounds(dst, n * ty.size(), "convert destination")?;
        self.launch(
            s,
            "convert_f32",
            n,
            Args::new().p(src).p(dst).i32(ty_code(ty)).i(n as i64),
        )
    }

    fn gemm(&self, s: &CudaStream, g: &Gemm<'_, CudaBuffer>) -> Result<(), GpuError> {
        let es = g.ty.size();
        in_bounds(g.w, g.rows * g.cols * es, "gemm weights")?;
        in_bounds(g.x, g.n * g.cols * es, "gemm activations")?;
        let ylen = if g.n == 0 {
            0
        } else {
            ((g.n - 1) * g.ldy + g.rows) * 4
        };
        in_bounds(g.y, ylen, "gemm output")?;
        if g.n == 0 || g.rows == 0 {
            return Ok(());
        }
        let dt = match g.ty {
            DType::F32 => blas::cudaDataType::CUDA_R_32F,
            DType::F16 => blas::cudaDataType::CUDA_R_16F,
            DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
        };
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| GpuError::Shape(format!("gemm {what} {v} over i32")))
        };
        self.bind()?;
        // W row-major `rows × cols` is column-major `cols × rows` (ld cols),
        // used transposed; stored transposed it is column-major `rows ×
        // cols` (ld rows), used as is.
        let (op_w, ld_w) = match g.w_transposed {
            false => (blas::cublasOperation_t::CUBLAS_OP_T, g.cols),
            true => (blas::cublasOperation_t::CUBLAS_OP_N, g.rows),
        };
        // SAFETY: bounds checked above; column-major view: Yᵀ (rows × n,
        // ld ldy) = op(W) · Xᵀ (cols × n).
        unsafe {
            cudarc::cublas::result::set_stream(self.blas, s.0 as _)
                .map_err(blas_err("cublasSetStream"))?;
            cudarc::cublas::result::gemm_ex(
                self.blas,
                op_w,
                blas::cublasOperation_t::CUBLAS_OP_N,
                int(g.rows, "rows")?,
                int(g.n, "tokens")?,
                int(g.cols, "columns")?,
                &alpha as *const f32 as *const c_void,
                (g.w.buf.ptr + g.w.off as u64) as *const c_void,
                dt,
                int(ld_w, "lda")?,
                (g.x.buf.ptr + g.x.off as u64) as *const c_void,
                dt,
                int(g.cols, "ldb")?,
                &beta as *const f32 as *const c_void,
                (g.y.buf.ptr + g.y.off as u64) as *mut c_void,
                blas::cudaDataType::CUDA_R_32F,
                int(g.ldy, "ldc")?,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
            .map_err(blas_err("cublasGemmEx"))
        }
    }

    fn rms_norm(
        &self,
        s: &CudaStream,
        x: Ptr<'_, CudaBuffer>,
        w: Ptr<'_, CudaBuffer>,
        out: Ptr<'_, CudaBuffer>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        in_bounds(x, rows * dim * 4, "rms_norm input")?;
        in_bounds(w, dim * 4, "rms_norm weight")?;
        in_bounds(out, rows * dim * 4, "rms_norm output")?;
        if rows == 0 {
            return Ok(());
        }
        let grid = u32::try_from(rows).map_err(|_| GpuError::Shape("rms_norm rows".into()))?;
        self.launch_grid(
            s,
            "rms_norm",
            (grid, 1, 1),
            (256, 1, 1),
            Args::new().p(x).p(w).p(out).i(dim as i64).f(eps),
        )
    }

    fn rope(&self, s: &CudaStream, r: &RopeArgs<'_, CudaBuffer>) -> Result<(), GpuError> {
        if 2 * r.pairs > r.head_dim {
            return Err(GpuError::Shape("RoPE rotates more than the head".into()));
        }
        in_bounds(r.x, r.rows * r.heads * r.head_dim * 4, "rope values")?;
        in_bounds(r.table, r.rows * r.pairs * 8, "rope table")?;
        let layout = match r.layout {
            RopeLayout::Interleaved => 0,
            RopeLayout::Halves => 1,
        };
        let n = r.rows * r.heads * r.pairs;
        self.launch(
            s,
            "rope",
            n,
            Args::new()
                .p(r.x)
                .p(r.table)
                .i(r.rows as i64)
                .i(r.heads as i64)
                .i(r.head_dim as i64)
                .i(r.pairs as i64)
                .i32(layout),
        )
    }

    fn add_bias(
        &self,
        s: &CudaStream,
        x: Ptr<'_, CudaBuffer>,
        b: Ptr<'_, CudaBuffer>,
        rows: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        in_bounds(x, rows * dim * 4, "bias rows")?;
        in_bounds(b, dim * 4, "bias")?;
        self.launch(
            s,
            "add_bias",
            rows * dim,
            Args::new().p(x).p(b).i((rows * dim) as i64).i(dim as i64),
        )
    }

    fn add(
        &self,
        s: &CudaStream,
        x: Ptr<'_, CudaBuffer>,
        y: Ptr<'_, CudaBuffer>,
        n: usize,
    ) -> Result<(), GpuError> {
        in_bounds(x, n * 4, "add target")?;
        in_bounds(y, n * 4, "add source")?;
        self.launch(s, "add_f32", n, Args::new().p(x).p(y).i(n as i64))
    }

    fn glu(
        &self,
        s: &CudaStream,
        act: Activation,
        gate: Ptr<'_, CudaBuffer>,
        up: Ptr<'_, CudaBuffer>,
        n: usize,
    ) -> Result<(), GpuError> {
        in_bounds(gate, n * 4, "glu gate")?;
        in_bounds(up, n * 4, "glu up")?;
        let a = match act {
            Activation::Silu => 0,
            Activation::GeluTanh => 1,
            Activation::GeluTanhF16 => 2,
            Activation::SwigluOai => 3,
        };
        self.launch(s, "glu", n, Args::new().p(gate).p(up).i32(a).i(n as i64))
    }

    fn copy_cols(
        &self,
        s: &CudaStream,
        src: Ptr<'_, CudaBuffer>,
        src_stride: usize,
        dst: Ptr<'_, CudaBuffer>,
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<(), GpuError> {
        let (src_len, dst_len) =
            crate::device::copy_cols_spans(rows, cols, src_stride, dst_stride)?;
        in_bounds(src, src_len, "copy_cols source")?;
        in_bounds(dst, dst_len, "copy_cols destination")?;
        self.launch(
            s,
            "copy_cols",
            rows * cols,
            Args::new()
                .p(src)
                .p(dst)
                .i(rows as i64)
                .i(cols as i64)
                .i(src_stride as i64)
                .i(dst_stride as i64),
        )
    }

    fn transpose(
        &self,
        s: &CudaStream,
        src: Ptr<'_, CudaBuffer>,
        dst: Ptr<'_, CudaBuffer>,
        a: usize,
        b: usize,
        elem: usize,
    ) -> Result<(), GpuError> {
        if !elem.is_multiple_of(4) {
            return Err(GpuError::Shape(format!("transpose of {elem}-byte items")));
        }
        in_bounds(src, a * b * elem, "transpose source")?;
        in_bounds(dst, a * b * elem, "transpose destination")?;
        let words = elem / 4;
        self.launch(
            s,
            "transpose32",
            a * b * words,
            Args::new()
                .p(src)
                .p(dst)
                .i(a as i64)
                .i(b as i64)
                .i(words as i64),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn gather_rows(
        &self,
        s: &CudaStream,
        src: Ptr<'_, CudaBuffer>,
        src_rows: usize,
        idx: Ptr<'_, CudaBuffer>,
        dst: Ptr<'_, CudaBuffer>,
        n: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        in_bounds(src, src_rows * dim * 4, "gather source")?;
        in_bounds(idx, n * 4, "gather indices")?;
        in_bounds(dst, n * dim * 4, "gather destination")?;
        self.launch(
            s,
            "gather_rows",
            n * dim,
            Args::new()
                .p(src)
                .p(idx)
                .p(dst)
                .i(n as i64)
                .i(dim as i64)
                .i(src_rows as i64),
        )
    }

    fn scatter_add_rows(
        &self,
        s: &CudaStream,
        src: Ptr<'_, CudaBuffer>,
        idx: Ptr<'_, CudaBuffer>,
        weights: Ptr<'_, CudaBuffer>,
        dst: Ptr<'_, CudaBuffer>,
        dst_rows: usize,
        n: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        in_bounds(src, n * dim * 4, "scatter source")?;
        in_bounds(idx, n * 4, "scatter indices")?;
        in_bounds(weights, n * 4, "scatter weights")?;
        in_bounds(dst, dst_rows * dim * 4, "scatter destination")?;
        self.launch(
            s,
            "scatter_add_rows",
            n * dim,
            Args::new()
                .p(src)
                .p(idx)
                .p(weights)
                .p(dst)
                .i(n as i64)
                .i(dim as i64)
                .i(dst_rows as i64),
        )
    }

    fn encode_kv(
        &self,
        s: &CudaStream,
        format: KvFormat,
        src: Ptr<'_, CudaBuffer>,
        dst: Ptr<'_, CudaBuffer>,
        rows: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let rb = format
            .row_bytes(head_dim)
            .ok_or_else(|| GpuError::Shape(format!("{format} KV rows of {head_dim}")))?;
        in_bounds(src, rows * head_dim * 4, "encode source")?;
        in_bounds(dst, rows * rb, "encode destination")?;
        let f = match format {
            KvFormat::F32 => 0,
            KvFormat::F16 => 1,
            KvFormat::BF16 => 2,
            KvFormat::Q8_0 => 3,
        };
        let n = rows * head_dim;
        self.launch(
            s,
            "encode_kv",
            n,
            Args::new().p(src).p(dst).i32(f).i(n as i64),
        )
    }

    fn attn_init(
        &self,
        s: &CudaStream,
        states: Ptr<'_, CudaBuffer>,
        acc: Ptr<'_, CudaBuffer>,
        rows: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        in_bounds(states, rows * 8, "attention states")?;
        in_bounds(acc, rows * head_dim * 4, "attention accumulators")?;
        self.launch(
            s,
            "attn_init",
            rows * head_dim.max(1),
            Args::new()
                .p(states)
                .p(acc)
                .i(rows as i64)
                .i(head_dim as i64),
        )
    }

    fn attend(&self, s: &CudaStream, a: &Attend<'_, CudaBuffer>) -> Result<(), GpuError> {
        if a.head_dim > 256 {
            return Err(GpuError::Unsupported(format!(
                "attention kernel: head size {} over 256",
                a.head_dim
            )));
        }
        let rows = a.kv_heads * a.n_q * a.group;
        in_bounds(a.q, rows * a.head_dim * 4, "attention queries")?;
        in_bounds(a.states, rows * 8, "attention states")?;
        in_bounds(a.acc, rows * a.head_dim * 4, "attention accumulators")?;
        if a.kv_heads > 0 && a.n_k > 0 {
            let kv = ((a.kv_heads - 1) * a.k_head_stride + a.n_k * a.head_dim) * 4;
            in_bounds(a.k, kv, "attention keys")?;
            in_bounds(a.v, kv, "attention values")?;
        } else {
            return Ok(());
        }
        let gx = u32::try_from((a.n_q * a.group).div_ceil(8))
            .map_err(|_| GpuError::Shape("attention rows".into()))?;
        let gy =
            u32::try_from(a.kv_heads).map_err(|_| GpuError::Shape("attention heads".into()))?;
        self.launch_grid(
            s,
            "attend",
            (gx, gy, 1),
            (256, 1, 1),
            Args::new()
                .p(a.q)
                .p(a.k)
                .p(a.v)
                .p(a.states)
                .p(a.acc)
                .i(a.n_q as i64)
                .i(a.group as i64)
                .i(a.head_dim as i64)
                .i(a.n_k as i64)
                .i(a.k_head_stride as i64)
                .i(a.q_pos0 as i64)
                .i(a.k_pos0 as i64)
                .f(a.scale)
                .i(a.window.map_or(0, |w| w as i64))
                .f(a.softcap.unwrap_or(0.0)),
        )
    }

    fn attn_finish(
        &self,
        s: &CudaStream,
        states: Ptr<'_, CudaBuffer>,
        acc: Ptr<'_, CudaBuffer>,
        sinks: Option<Ptr<'_, CudaBuffer>>,
        out: Ptr<'_, CudaBuffer>,
        kv_heads: usize,
        n_q: usize,
        group: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let rows = kv_heads * n_q * group;
        in_bounds(states, rows * 8, "attention states")?;
        in_bounds(acc, rows * head_dim * 4, "attention accumulators")?;
        in_bounds(out, rows * head_dim * 4, "attention output")?;
        let args = Args::new().p(states).p(acc);
        let args = match sinks {
            Some(p) => {
                in_bounds(p, kv_heads * group * 4, "attention sinks")?;
                args.p(p)
            }
            None => args.null(),
        };
        self.launch(
            s,
            "attn_finish",
            rows * head_dim,
            args.p(out)
                .i(n_q as i64)
                .i(group as i64)
                .i(head_dim as i64)
                .i(rows as i64),
        )
    }
}

/// The virtual architecture to compile for (None: NVRTC's default, which
/// the driver JIT-compiles for the device).
fn nvrtc_arch(cc: (i32, i32)) -> Option<&'static str> {
    Some(match cc {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        _ => return None,
    })
}

/// The dequantization kernel of each stored type; a type without one is
/// refused when the prefill is built (add a `deq_*` kernel and a line here).
fn deq_kernel(f: WeightFormat) -> Option<&'static str> {
    Some(match f {
        WeightFormat::F32 => "deq_f32",
        WeightFormat::F16 => "deq_f16",
        WeightFormat::BF16 => "deq_bf16",
        WeightFormat::Q8_0 => "deq_q8_0",
        WeightFormat::Q4_0 => "deq_q4_0",
        WeightFormat::Q4_1 => "deq_q4_1",
        WeightFormat::Q5_0 => "deq_q5_0",
        WeightFormat::Q5_1 => "deq_q5_1",
        WeightFormat::Q2_K => "deq_q2_K",
        WeightFormat::Q3_K => "deq_q3_K",
        WeightFormat::Q4_K => "deq_q4_K",
        WeightFormat::Q5_K => "deq_q5_K",
        WeightFormat::Q6_K => "deq_q6_K",
        WeightFormat::IQ4_NL => "deq_iq4_nl",
        WeightFormat::IQ4_XS => "deq_iq4_xs",
        WeightFormat::MXFP4 => "deq_mxfp4",
        WeightFormat::TQ1_0 => "deq_tq1_0",
        WeightFormat::TQ2_0 => "deq_tq2_0",
        WeightFormat::Q1_0 => "deq_q1_0",
        WeightFormat::Q2_0 => "deq_q2_0",
        WeightFormat::IQ2_XXS => "deq_iq2_xxs",
        WeightFormat::IQ2_XS => "deq_iq2_xs",
        WeightFormat::IQ2_S => "deq_iq2_s",
        WeightFormat::IQ3_XXS => "deq_iq3_xxs",
        WeightFormat::IQ3_S => "deq_iq3_s",
        WeightFormat::IQ1_S => "deq_iq1_s",
        WeightFormat::IQ1_M => "deq_iq1_m",
    })
}
