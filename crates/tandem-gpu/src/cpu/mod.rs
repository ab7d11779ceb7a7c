//! `CpuDevice`: the device interface on host threads, so that everything
//! the streamed prefill does that is not a CUDA call runs in CI.
//!
//! - **Memory** is heap memory counted against a budget of its own: an
//!   allocation over it fails exactly as device memory would.
//! - **Streams** are threads, each running its queue in order; the copy
//!   engine is whichever stream the caller enqueues copies on (the prefill
//!   uses a stream of its own for uploads, as on CUDA), so copies really
//!   overlap compute.
//! - **Events** have CUDA's semantics (a wait refers to the latest record
//!   at the time of the call) and one check CUDA lacks: waiting on an
//!   event that was never recorded is an error, not a no-op.
//! - **Trace**: every op, copy and annotation is logged with its stream
//!   and start/end times, so tests can check order and overlap.
//! - **Ops** are the plain loops of [`ops`], with the same element types
//!   and accumulation as the CUDA kernels (half-precision GEMM operands,
//!   f32 accumulation), so numerics match what the GPU computes.

pub mod ops;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_kernels::attention::KvFormat;
use tandem_kernels::WeightFormat;
use tandem_model::spec::Activation;

use crate::device::{Attend, DType, Device, Gemm, HeapMem, MemInfo, Ptr, RopeArgs};
use crate::GpuError;

/// Heap memory standing in for device memory.
pub struct CpuMem {
    /// u64 words: every offset the prefill uses is aligned to 256 bytes,
    /// so f32/u32 views of it are aligned.
    data: Box<[std::cell::UnsafeCell<u64>]>,
    len: usize,
    used: Arc<AtomicUsize>,
}

// SAFETY: the memory is shared between stream threads like device memory;
// who writes which bytes when is ordered by streams and events (the
// caller's protocol), as on a GPU.
unsafe impl Send for CpuMem {}
// SAFETY: as for `Send` above.
unsafe impl Sync for CpuMem {}

impl Drop for CpuMem {
    fn drop(&mut self) {
        self.used.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl CpuMem {
    fn base(&self) -> *mut u8 {
        self.data.as_ptr() as *mut u8
    }
}

/// A buffer of a [`CpuDevice`] (reference counted: queued work keeps it
/// alive).
#[derive(Clone)]
pub struct CpuBuffer(Arc<CpuMem>);

impl CpuBuffer {
    pub fn len(&self) -> usize {
        self.0.len
    }
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

/// One entry of the trace.
#[derive(Clone, Debug)]
pub struct TraceEntry {
    pub stream: usize,
    /// Op name (`h2d`, `gemm`, ...) or an annotation's text.
    pub label: String,
    pub start: Instant,
    pub end: Instant,
}

type Job = Box<dyn FnOnce() -> Result<(), GpuError> + Send>;

struct StreamShared {
    error: Mutex<Option<GpuError>>,
    /// Jobs queued and not finished.
    pending: Mutex<usize>,
    idle: Condvar,
}

/// A stream: a thread running its queue in order.
pub struct CpuStream {
    id: usize,
    tx: Option<Sender<Job>>,
    shared: Arc<StreamShared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for CpuStream {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct EvState {
    recorded: u64,
    done: u64,
}

/// An event: completes when its stream reaches its latest record.
#[derive(Clone, Default)]
pub struct CpuEvent(Arc<(Mutex<EvState>, Condvar)>);

impl CpuEvent {
    fn wait_for(&self, target: u64) {
        let (m, cv) = &*self.0;
        let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
        while st.done < target {
            st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The host implementation of [`Device`].
pub struct CpuDevice {
    budget: usize,
    used: Arc<AtomicUsize>,
    next_stream: AtomicUsize,
    trace: Arc<Mutex<Option<Vec<TraceEntry>>>>,
    op_delay: Option<Duration>,
    /// `register_host` says yes (tests of the in-place upload path).
    page_lock: bool,
}

impl CpuDevice {
    /// A device with `budget` bytes of memory.
    pub fn new(budget: usize) -> CpuDevice {
        CpuDevice {
            budget,
            used: Arc::new(AtomicUsize::new(0)),
            next_stream: AtomicUsize::new(0),
            trace: Arc::new(Mutex::new(None)),
            op_delay: None,
            page_lock: false,
        }
    }

    /// Records every op in a trace ([`CpuDevice::take_trace`]).
    pub fn with_trace(self) -> CpuDevice {
        *self.trace.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        self
    }

    /// Each compute op (not copies) also sleeps this long: makes compute
    /// slow enough that tests can see copies overlap it.
    pub fn with_op_delay(mut self, d: Duration) -> CpuDevice {
        self.op_delay = Some(d);
        self
    }

    /// Pretends to page-lock host memory (`register_host` is Ok(true)), so
    /// the prefill uploads straight from the mapped weights instead of
    /// through page-locked staging.
    pub fn with_page_locking(mut self) -> CpuDevice {
        self.page_lock = true;
        self
    }

    /// The trace so far (emptied).
    pub fn take_trace(&self) -> Vec<TraceEntry> {
        let mut t = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        t.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Queues `f` on `s`, traced as `label`.
    fn enqueue(
        &self,
        s: &CpuStream,
        label: &str,
        compute: bool,
        f: impl FnOnce() -> Result<(), GpuError> + Send + 'static,
    ) -> Result<(), GpuError> {
        let trace = Arc::clone(&self.trace);
        let label = label.to_string();
        let id = s.id;
        let delay = if compute { self.op_delay } else { None };
        let job: Job = Box::new(move || {
            let start = Instant::now();
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            let r = f();
            let end = Instant::now();
            if let Some(t) = trace.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                t.push(TraceEntry {
                    stream: id,
                    label,
                    start,
                    end,
                });
            }
            r
        });
        *s.shared.pending.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let tx =
            s.tx.as_ref()
                .ok_or(GpuError::Protocol("stream closed".into()))?;
        tx.send(job)
            .map_err(|_| GpuError::Protocol("stream thread gone".into()))
    }
}

/// A checked view of `len` bytes at `p`.
fn bytes(p: Ptr<'_, CpuBuffer>, len: usize, what: &str) -> Result<Raw, GpuError> {
    let end = p.off.checked_add(len).filter(|&e| e <= p.buf.0.len);
    match end {
        Some(_) => Ok(Raw {
            // SAFETY: in bounds of the buffer's allocation (checked above).
            ptr: unsafe { p.buf.0.base().add(p.off) },
            len,
            _keep: Arc::clone(&p.buf.0),
        }),
        None => Err(GpuError::Protocol(format!(
            "{what}: {len} bytes at offset {} outside a buffer of {}",
            p.off, p.buf.0.len
        ))),
    }
}

/// Bytes of a buffer captured by a queued job (kept alive by the Arc).
struct Raw {
    ptr: *mut u8,
    len: usize,
    _keep: Arc<CpuMem>,
}

// SAFETY: see `CpuMem`.
unsafe impl Send for Raw {}

impl Raw {
    fn overlaps(&self, o: &Raw) -> bool {
        let (a, b) = (self.ptr as usize, o.ptr as usize);
        a < b + o.len && b < a + self.len
    }
    /// # Safety
    /// No other live view of these bytes is written meanwhile (the
    /// stream protocol; ops check their own views for overlap).
    #[allow(clippy::mut_from_ref)] // device memory: ordered by streams, not borrows
    unsafe fn u8(&self) -> &mut [u8] {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// # Safety
    /// As [`Raw::u8`]; the offset is 4-aligned (checked).
    #[allow(clippy::mut_from_ref)] // device memory: ordered by streams, not borrows
    unsafe fn f32(&self) -> Result<&mut [f32], GpuError> {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            if !(self.ptr as usize).is_multiple_of(4) {
                return Err(GpuError::Protocol("unaligned f32 view".into()));
            }
            Ok(std::slice::from_raw_parts_mut(
                self.ptr as *mut f32,
                self.len / 4,
            ))
        }
    }
    /// # Safety
    /// As [`Raw::f32`].
    #[allow(clippy::mut_from_ref)] // device memory: ordered by streams, not borrows
    unsafe fn u32(&self) -> Result<&mut [u32], GpuError> {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            if !(self.ptr as usize).is_multiple_of(4) {
                return Err(GpuError::Protocol("unaligned u32 view".into()));
            }
            Ok(std::slice::from_raw_parts_mut(
                self.ptr as *mut u32,
                self.len / 4,
            ))
        }
    }
}

fn distinct(views: &[&Raw], what: &str) -> Result<(), GpuError> {
    for (i, a) in views.iter().enumerate() {
        for b in &views[i + 1..] {
            if a.overlaps(b) {
                return Err(GpuError::Protocol(format!("{what}: operands overlap")));
            }
        }
    }
    Ok(())
}

/// Host bytes captured by a queued copy (the caller's `unsafe` contract
/// keeps them valid).
struct HostPtr(*mut u8);
// SAFETY: the copy's caller guarantees exclusive use until it completes.
unsafe impl Send for HostPtr {}

impl Device for CpuDevice {
    type Buffer = CpuBuffer;
    type Stream = CpuStream;
    type Event = CpuEvent;
    type Host = HeapMem;

    fn alloc_host(&self, bytes: usize) -> Result<HeapMem, GpuError> {
        Ok(HeapMem(vec![0; bytes]))
    }

    fn describe(&self) -> String {
        format!("CPU stand-in device ({} MiB budget)", self.budget >> 20)
    }

    fn annotate(&self, s: &CpuStream, label: &str) -> Result<(), GpuError> {
        self.enqueue(s, label, false, || Ok(()))
    }

    fn memory(&self) -> MemInfo {
        MemInfo {
            budget: self.budget,
            used: self.used.load(Ordering::Acquire),
        }
    }

    fn alloc(&self, bytes: usize, what: &str) -> Result<CpuBuffer, GpuError> {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let next = cur.checked_add(bytes).filter(|&n| n <= self.budget);
            let Some(next) = next else {
                return Err(GpuError::OutOfMemory {
                    what: what.to_string(),
                    bytes,
                    free: self.budget.saturating_sub(cur),
                });
            };
            match self
                .used
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
        let words = bytes.div_ceil(8);
        let data: Box<[std::cell::UnsafeCell<u64>]> =
            (0..words).map(|_| std::cell::UnsafeCell::new(0)).collect();
        Ok(CpuBuffer(Arc::new(CpuMem {
            data,
            len: bytes,
            used: Arc::clone(&self.used),
        })))
    }

    fn new_stream(&self) -> Result<CpuStream, GpuError> {
        let id = self.next_stream.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = channel::<Job>();
        let shared = Arc::new(StreamShared {
            error: Mutex::new(None),
            pending: Mutex::new(0),
            idle: Condvar::new(),
        });
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("cpu-device-stream-{id}"))
            .spawn(move || {
                for job in rx {
                    let r = job();
                    if let Err(e) = r {
                        let mut err = sh.error.lock().unwrap_or_else(|p| p.into_inner());
                        err.get_or_insert(e);
                    }
                    let mut p = sh.pending.lock().unwrap_or_else(|p| p.into_inner());
                    *p -= 1;
                    if *p == 0 {
                        sh.idle.notify_all();
                    }
                }
            })
            .map_err(|e| GpuError::Protocol(format!("stream thread: {e}")))?;
        Ok(CpuStream {
            id,
            tx: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    fn new_event(&self) -> Result<CpuEvent, GpuError> {
        Ok(CpuEvent::default())
    }

    fn record(&self, ev: &CpuEvent, s: &CpuStream) -> Result<(), GpuError> {
        let gen = {
            let mut st = ev.0 .0.lock().unwrap_or_else(|p| p.into_inner());
            st.recorded += 1;
            st.recorded
        };
        let e = ev.clone();
        self.enqueue(s, "record", false, move || {
            let (m, cv) = &*e.0;
            let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
            st.done = st.done.max(gen);
            cv.notify_all();
            Ok(())
        })
    }

    fn wait(&self, s: &CpuStream, ev: &CpuEvent) -> Result<(), GpuError> {
        let target = ev.0 .0.lock().unwrap_or_else(|p| p.into_inner()).recorded;
        if target == 0 {
            return Err(GpuError::Protocol(
                "a stream waits on an event that was never recorded".into(),
            ));
        }
        let e = ev.clone();
        self.enqueue(s, "wait", false, move || {
            e.wait_for(target);
            Ok(())
        })
    }

    fn sync_event(&self, ev: &CpuEvent) -> Result<(), GpuError> {
        let target = ev.0 .0.lock().unwrap_or_else(|p| p.into_inner()).recorded;
        ev.wait_for(target);
        Ok(())
    }

    fn sync_stream(&self, s: &CpuStream) -> Result<(), GpuError> {
        let mut p = s.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        while *p > 0 {
            p = s.shared.idle.wait(p).unwrap_or_else(|p| p.into_inner());
        }
        drop(p);
        match s
            .shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    unsafe fn register_host(&self, _ptr: *const u8, _len: usize) -> Result<bool, GpuError> {
        Ok(self.page_lock)
    }

    unsafe fn h2d(
        &self,
        s: &CpuStream,
        dst: Ptr<'_, CpuBuffer>,
        src: *const u8,
        len: usize,
    ) -> Result<(), GpuError> {
        let d = bytes(dst, len, "h2d destination")?;
        let src = HostPtr(src as *mut u8);
        self.enqueue(s, "h2d", false, move || {
            let (src, d) = (src, d);
            // SAFETY: the caller keeps `len` host bytes valid until done;
            // `d` is checked.
            unsafe { std::ptr::copy_nonoverlapping(src.0, d.ptr, len) };
            Ok(())
        })
    }

    unsafe fn d2h(
        &self,
        s: &CpuStream,
        src: Ptr<'_, CpuBuffer>,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), GpuError> {
        let sr = bytes(src, len, "d2h source")?;
        let dst = HostPtr(dst);
        self.enqueue(s, "d2h", false, move || {
            let (dst, sr) = (dst, sr);
            // SAFETY: as in `h2d`, the other way.
            unsafe { std::ptr::copy_nonoverlapping(sr.ptr, dst.0, len) };
            Ok(())
        })
    }

    fn fill_f32(
        &self,
        s: &CpuStream,
        dst: Ptr<'_, CpuBuffer>,
        n: usize,
        value: f32,
    ) -> Result<(), GpuError> {
        let d = bytes(dst, n * 4, "fill")?;
        self.enqueue(s, "fill", true, move || {
            // SAFETY: stream protocol.
            unsafe { d.f32()? }.fill(value);
            Ok(())
        })
    }

    fn supports(&self, _format: WeightFormat) -> bool {
        true
    }

    fn dequantize(
        &self,
        s: &CpuStream,
        format: WeightFormat,
        src: Ptr<'_, CpuBuffer>,
        dst: Ptr<'_, CpuBuffer>,
        ty: DType,
        n: usize,
    ) -> Result<(), GpuError> {
        let src_len = format.row_bytes(n).ok_or_else(|| {
            GpuError::Shape(format!("{n} values are not whole {} blocks", format.name()))
        })?;
        let (sr, d) = (
            bytes(src, src_len, "dequantize source")?,
            bytes(dst, n * ty.size(), "dequantize destination")?,
        );
        distinct(&[&sr, &d], "dequantize")?;
        self.enqueue(s, "dequantize", true, move || {
            // SAFETY: stream protocol; distinct views.
            unsafe { ops::dequantize(format, sr.u8(), d.u8(), ty, n) }
        })
    }

    fn convert(
        &self,
        s: &CpuStream,
        src: Ptr<'_, CpuBuffer>,
        dst: Ptr<'_, CpuBuffer>,
        ty: DType,
        n: usize,
    ) -> Result<(), GpuError> {
        let (sr, d) = (
            bytes(src, n * 4, "convert source")?,
            bytes(dst, n * ty.size(), "convert destination")?,
        );
        distinct(&[&sr, &d], "convert")?;
        self.enqueue(s, "convert", true, move || {
            // SAFETY: stream protocol; distinct views.
            unsafe { ops::convert(sr.f32()?, d.u8(), ty) };
            Ok(())
        })
    }

    fn gemm(&self, s: &CpuStream, g: &Gemm<'_, CpuBuffer>) -> Result<(), GpuError> {
        let es = g.ty.size();
        let w = bytes(g.w, g.rows * g.cols * es, "gemm weights")?;
        let x = bytes(g.x, g.n * g.cols * es, "gemm activations")?;
        let ylen = if g.n == 0 {
            0
        } else {
            ((g.n - 1) * g.ldy + g.rows) * 4
        };
        let y = bytes(g.y, ylen, "gemm output")?;
        distinct(&[&w, &x, &y], "gemm")?;
        if g.ldy < g.rows {
            return Err(GpuError::Shape("gemm output stride below its rows".into()));
        }
        let (ty, n, rows, cols, ldy, acc) = (g.ty, g.n, g.rows, g.cols, g.ldy, g.accumulate);
        let wt = g.w_transposed;
        self.enqueue(s, "gemm", true, move || {
            // SAFETY: stream protocol; distinct views.
            unsafe { ops::gemm(ty, w.u8(), x.u8(), y.f32()?, n, rows, cols, ldy, acc, wt) };
            Ok(())
        })
    }

    fn rms_norm(
        &self,
        s: &CpuStream,
        x: Ptr<'_, CpuBuffer>,
        w: Ptr<'_, CpuBuffer>,
        out: Ptr<'_, CpuBuffer>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let (xr, wr, o) = (
            bytes(x, rows * dim * 4, "rms_norm input")?,
            bytes(w, dim * 4, "rms_norm weight")?,
            bytes(out, rows * dim * 4, "rms_norm output")?,
        );
        distinct(&[&xr, &wr, &o], "rms_norm")?;
        self.enqueue(s, "rms_norm", true, move || {
            // SAFETY: stream protocol; distinct views.
            unsafe { tandem_model::ops::rms_norm(xr.f32()?, wr.f32()?, eps, o.f32()?) };
            Ok(())
        })
    }

    fn rope(&self, s: &CpuStream, r: &RopeArgs<'_, CpuBuffer>) -> Result<(), GpuError> {
        if 2 * r.pairs > r.head_dim {
            return Err(GpuError::Shape("RoPE rotates more than the head".into()));
        }
        let x = bytes(r.x, r.rows * r.heads * r.head_dim * 4, "rope values")?;
        let t = bytes(r.table, r.rows * r.pairs * 8, "rope table")?;
        distinct(&[&x, &t], "rope")?;
        let (heads, hd, pairs, layout) = (r.heads, r.head_dim, r.pairs, r.layout);
        self.enqueue(s, "rope", true, move || {
            // SAFETY: stream protocol; distinct views.
            unsafe { ops::rope(x.f32()?, t.f32()?, heads, hd, pairs, layout) };
            Ok(())
        })
    }

    fn add_bias(
        &self,
        s: &CpuStream,
        x: Ptr<'_, CpuBuffer>,
        b: Ptr<'_, CpuBuffer>,
        rows: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        let (xr, br) = (
            bytes(x, rows * dim * 4, "bias rows")?,
            bytes(b, dim * 4, "bias")?,
        );
        distinct(&[&xr, &br], "add_bias")?;
        self.enqueue(s, "add_bias", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (x, b) = unsafe { (xr.f32()?, br.f32()?) };
            for row in x.chunks_exact_mut(dim) {
                row.iter_mut().zip(&*b).for_each(|(v, &bb)| *v += bb);
            }
            Ok(())
        })
    }

    fn add(
        &self,
        s: &CpuStream,
        x: Ptr<'_, CpuBuffer>,
        y: Ptr<'_, CpuBuffer>,
        n: usize,
    ) -> Result<(), GpuError> {
        let (xr, yr) = (
            bytes(x, n * 4, "add target")?,
            bytes(y, n * 4, "add source")?,
        );
        distinct(&[&xr, &yr], "add")?;
        self.enqueue(s, "add", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (x, y) = unsafe { (xr.f32()?, yr.f32()?) };
            x.iter_mut().zip(&*y).for_each(|(a, &b)| *a += b);
            Ok(())
        })
    }

    fn glu(
        &self,
        s: &CpuStream,
        act: Activation,
        gate: Ptr<'_, CpuBuffer>,
        up: Ptr<'_, CpuBuffer>,
        n: usize,
    ) -> Result<(), GpuError> {
        let (g, u) = (bytes(gate, n * 4, "glu gate")?, bytes(up, n * 4, "glu up")?);
        distinct(&[&g, &u], "glu")?;
        self.enqueue(s, "glu", true, move || {
            // SAFETY: stream protocol; distinct views.
            unsafe { act.apply(g.f32()?, u.f32()?) };
            Ok(())
        })
    }

    fn copy_cols(
        &self,
        s: &CpuStream,
        src: Ptr<'_, CpuBuffer>,
        src_stride: usize,
        dst: Ptr<'_, CpuBuffer>,
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<(), GpuError> {
        let (src_len, dst_len) =
            crate::device::copy_cols_spans(rows, cols, src_stride, dst_stride)?;
        let (sr, d) = (
            bytes(src, src_len, "copy_cols source")?,
            bytes(dst, dst_len, "copy_cols destination")?,
        );
        distinct(&[&sr, &d], "copy_cols")?;
        self.enqueue(s, "copy_cols", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (sr, d) = unsafe { (sr.f32()?, d.f32()?) };
            for r in 0..rows {
                d[r * dst_stride..r * dst_stride + cols]
                    .copy_from_slice(&sr[r * src_stride..r * src_stride + cols]);
            }
            Ok(())
        })
    }

    fn transpose(
        &self,
        s: &CpuStream,
        src: Ptr<'_, CpuBuffer>,
        dst: Ptr<'_, CpuBuffer>,
        a: usize,
        b: usize,
        elem: usize,
    ) -> Result<(), GpuError> {
        let len = a * b * elem;
        let (sr, d) = (
            bytes(src, len, "transpose source")?,
            bytes(dst, len, "transpose destination")?,
        );
        distinct(&[&sr, &d], "transpose")?;
        self.enqueue(s, "transpose", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (sr, d) = unsafe { (sr.u8(), d.u8()) };
            for i in 0..a {
                for j in 0..b {
                    let from = (i * b + j) * elem;
                    let to = (j * a + i) * elem;
                    d[to..to + elem].copy_from_slice(&sr[from..from + elem]);
                }
            }
            Ok(())
        })
    }

    fn gather_rows(
        &self,
        s: &CpuStream,
        src: Ptr<'_, CpuBuffer>,
        src_rows: usize,
        idx: Ptr<'_, CpuBuffer>,
        dst: Ptr<'_, CpuBuffer>,
        n: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        let (sr, ir, d) = (
            bytes(src, src_rows * dim * 4, "gather source")?,
            bytes(idx, n * 4, "gather indices")?,
            bytes(dst, n * dim * 4, "gather destination")?,
        );
        distinct(&[&sr, &ir, &d], "gather_rows")?;
        self.enqueue(s, "gather_rows", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (sv, iv, dv) = unsafe { (sr.f32()?, ir.u32()?, d.f32()?) };
            for (i, &t) in iv.iter().enumerate() {
                if let Some(row) = sv.get(t as usize * dim..(t as usize + 1) * dim) {
                    dv[i * dim..(i + 1) * dim].copy_from_slice(row);
                }
            }
            Ok(())
        })
    }

    fn scatter_add_rows(
        &self,
        s: &CpuStream,
        src: Ptr<'_, CpuBuffer>,
        idx: Ptr<'_, CpuBuffer>,
        weights: Ptr<'_, CpuBuffer>,
        dst: Ptr<'_, CpuBuffer>,
        dst_rows: usize,
        n: usize,
        dim: usize,
    ) -> Result<(), GpuError> {
        let (sr, ir, wr, d) = (
            bytes(src, n * dim * 4, "scatter source")?,
            bytes(idx, n * 4, "scatter indices")?,
            bytes(weights, n * 4, "scatter weights")?,
            bytes(dst, dst_rows * dim * 4, "scatter destination")?,
        );
        distinct(&[&sr, &ir, &wr, &d], "scatter_add_rows")?;
        self.enqueue(s, "scatter_add_rows", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (sv, iv, wv, dv) = unsafe { (sr.f32()?, ir.u32()?, wr.f32()?, d.f32()?) };
            for (i, (&t, &w)) in iv.iter().zip(&*wv).enumerate() {
                if let Some(row) = dv.get_mut(t as usize * dim..(t as usize + 1) * dim) {
                    row.iter_mut()
                        .zip(&sv[i * dim..(i + 1) * dim])
                        .for_each(|(o, &v)| *o += w * v);
                }
            }
            Ok(())
        })
    }

    fn encode_kv(
        &self,
        s: &CpuStream,
        format: KvFormat,
        src: Ptr<'_, CpuBuffer>,
        dst: Ptr<'_, CpuBuffer>,
        rows: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let rb = format
            .row_bytes(head_dim)
            .ok_or_else(|| GpuError::Shape(format!("{format} KV rows of {head_dim}")))?;
        let (sr, d) = (
            bytes(src, rows * head_dim * 4, "encode source")?,
            bytes(dst, rows * rb, "encode destination")?,
        );
        distinct(&[&sr, &d], "encode_kv")?;
        self.enqueue(s, "encode_kv", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (sv, dv) = unsafe { (sr.f32()?, d.u8()) };
            for (row, out) in sv.chunks_exact(head_dim).zip(dv.chunks_exact_mut(rb)) {
                tandem_kernels::attention::encode_row(format, row, out)
                    .map_err(|e| GpuError::Shape(e.to_string()))?;
            }
            Ok(())
        })
    }

    fn attn_init(
        &self,
        s: &CpuStream,
        states: Ptr<'_, CpuBuffer>,
        acc: Ptr<'_, CpuBuffer>,
        rows: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let (st, ac) = (
            bytes(states, rows * 8, "attention states")?,
            bytes(acc, rows * head_dim * 4, "attention accumulators")?,
        );
        distinct(&[&st, &ac], "attn_init")?;
        self.enqueue(s, "attn_init", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (st, ac) = unsafe { (st.f32()?, ac.f32()?) };
            for p in st.chunks_exact_mut(2) {
                p[0] = f32::NEG_INFINITY;
                p[1] = 0.0;
            }
            ac.fill(0.0);
            Ok(())
        })
    }

    fn attend(&self, s: &CpuStream, a: &Attend<'_, CpuBuffer>) -> Result<(), GpuError> {
        let rows = a.kv_heads * a.n_q * a.group;
        let q = bytes(a.q, rows * a.head_dim * 4, "attention queries")?;
        let kv_len = if a.kv_heads == 0 || a.n_k == 0 {
            0
        } else {
            ((a.kv_heads - 1) * a.k_head_stride + a.n_k * a.head_dim) * 4
        };
        let k = bytes(a.k, kv_len, "attention keys")?;
        let v = bytes(a.v, kv_len, "attention values")?;
        let st = bytes(a.states, rows * 8, "attention states")?;
        let ac = bytes(a.acc, rows * a.head_dim * 4, "attention accumulators")?;
        distinct(&[&q, &st, &ac], "attend")?;
        distinct(&[&k, &st, &ac], "attend")?;
        distinct(&[&v, &st, &ac], "attend")?;
        let p = ops::AttendShape {
            kv_heads: a.kv_heads,
            group: a.group,
            head_dim: a.head_dim,
            n_q: a.n_q,
            n_k: a.n_k,
            k_head_stride: a.k_head_stride,
            q_pos0: a.q_pos0,
            k_pos0: a.k_pos0,
            scale: a.scale,
            window: a.window,
            softcap: a.softcap,
        };
        self.enqueue(s, "attend", true, move || {
            // SAFETY: stream protocol; outputs distinct from inputs.
            unsafe { ops::attend(&p, q.f32()?, k.f32()?, v.f32()?, st.f32()?, ac.f32()?) };
            Ok(())
        })
    }

    fn attn_finish(
        &self,
        s: &CpuStream,
        states: Ptr<'_, CpuBuffer>,
        acc: Ptr<'_, CpuBuffer>,
        sinks: Option<Ptr<'_, CpuBuffer>>,
        out: Ptr<'_, CpuBuffer>,
        kv_heads: usize,
        n_q: usize,
        group: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let rows = kv_heads * n_q * group;
        let st = bytes(states, rows * 8, "attention states")?;
        let ac = bytes(acc, rows * head_dim * 4, "attention accumulators")?;
        let sk = sinks
            .map(|p| bytes(p, kv_heads * group * 4, "attention sinks"))
            .transpose()?;
        let o = bytes(out, rows * head_dim * 4, "attention output")?;
        distinct(&[&st, &ac, &o], "attn_finish")?;
        self.enqueue(s, "attn_finish", true, move || {
            // SAFETY: stream protocol; distinct views.
            let (st, ac, o) = unsafe { (st.f32()?, ac.f32()?, o.f32()?) };
            let sinks = match &sk {
                // SAFETY: read only.
                Some(r) => Some(unsafe { r.f32()? }),
                None => None,
            };
            ops::attn_finish(st, ac, sinks.as_deref(), o, kv_heads, n_q, group, head_dim);
            Ok(())
        })
    }
}
