//! Memory read-bandwidth probe: what a plain multi-threaded scan of a buffer
//! much larger than the last-level cache achieves, measured on the same
//! threads and in the same run as the decode figures it is compared with.
//!
//! The threads are pluggable through [`Runner`]: `tandem bench` uses the
//! model's own pinned NUMA pool, tests use [`ScopedThreads`]; and
//! because each worker first-touches the part it later reads, pages land on
//! the reading worker's node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::BenchError;

/// Runs a job once on each of its workers and returns when all are done.
pub trait Runner {
    fn n_threads(&self) -> usize;
    /// Calls `job(index, n_threads)` on every worker, `index` in `0..n_threads`.
    fn run(&self, job: &(dyn Fn(usize, usize) + Sync));
}

/// `n` fresh OS threads per run (spawn cost is microseconds; a run is tens
/// of milliseconds).
pub struct ScopedThreads(pub usize);

impl Runner for ScopedThreads {
    fn n_threads(&self) -> usize {
        self.0.max(1)
    }
    fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.n_threads();
        std::thread::scope(|s| {
            for i in 1..n {
                s.spawn(move || job(i, n));
            }
            job(0, n);
        });
    }
}

/// The engine's pinned NUMA pool: each worker reads its part from where it
/// runs, exactly as the decode kernels do.
impl Runner for tandem_model::Pool {
    fn n_threads(&self) -> usize {
        tandem_model::Pool::n_threads(self)
    }
    fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        tandem_model::Pool::run(self, |w| job(w.index, w.n_threads));
    }
}

/// Probe settings.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    /// Buffer size in bytes (default 1 GiB).
    pub bytes: usize,
    /// Timed repetitions; the best counts.
    pub reps: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            bytes: 1 << 30,
            reps: 5,
        }
    }
}

/// The probe's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeResult {
    pub bytes: usize,
    pub threads: usize,
    /// GB/s (10^9 bytes per second) of every repetition.
    pub samples_gbps: Vec<f64>,
    /// The best repetition.
    pub gbps: f64,
    /// The kernel's ISA (`avx512`, `avx2`, `scalar`).
    pub isa: String,
}

/// Part `i` of `n` of `len` bytes, split on 4 KiB boundaries.
fn part(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let pages = len.div_ceil(4096);
    let lo = (pages * i / n * 4096).min(len);
    let hi = (pages * (i + 1) / n * 4096).min(len);
    lo..hi
}

/// Shares a mutable buffer among workers that each touch a disjoint part.
struct SharedBuf(*mut u8, usize);
// SAFETY: workers only ever form slices over disjoint `part`s of the buffer.
#[allow(unsafe_code)]
unsafe impl Sync for SharedBuf {}

impl SharedBuf {
    /// Fills part `i` of `n` (a method, so closures capture the whole struct).
    fn fill_part(&self, i: usize, n: usize) {
        let r = part(self.1, i, n);
        // SAFETY: the capacity is `self.1`; parts are disjoint and in bounds;
        // u8 has no invalid values, and the bytes are written before any read.
        #[allow(unsafe_code)]
        let s = unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start), r.len()) };
        s.fill(0x5a ^ i as u8);
    }
}

/// Allocates and first-touches the buffer on the runner's workers, then
/// times `reps` full parallel scans.
pub fn probe(runner: &dyn Runner, cfg: ProbeConfig) -> Result<ProbeResult, BenchError> {
    let len = cfg.bytes.max(1 << 20);
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| BenchError::Invalid(format!("cannot allocate a {len}-byte probe buffer")))?;
    let shared = SharedBuf(buf.as_mut_ptr(), len);
    runner.run(&|i, n| shared.fill_part(i, n));
    // SAFETY: every byte of 0..len was written above.
    #[allow(unsafe_code)]
    unsafe {
        buf.set_len(len)
    };
    let sink = AtomicU64::new(0);
    let mut samples = Vec::with_capacity(cfg.reps);
    for _ in 0..cfg.reps.max(1) {
        let t0 = Instant::now();
        runner.run(&|i, n| {
            let c = tandem_kernels::read_checksum(&buf[part(len, i, n)]);
            sink.fetch_xor(c, Ordering::Relaxed);
        });
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        samples.push(len as f64 / secs / 1e9);
    }
    std::hint::black_box(sink.load(Ordering::Relaxed));
    let gbps = samples.iter().copied().fold(0.0, f64::max);
    Ok(ProbeResult {
        bytes: len,
        threads: runner.n_threads(),
        samples_gbps: samples,
        gbps,
        isa: tandem_kernels::detected_isa().name().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_buffer() {
        for len in [1usize, 4096, 10_000, 1 << 20] {
            for n in 1..5 {
                let mut next = 0;
                for i in 0..n {
                    let r = part(len, i, n);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn small_probe_runs() {
        let r = probe(
            &ScopedThreads(2),
            ProbeConfig {
                bytes: 4 << 20,
                reps: 2,
            },
        )
        .unwrap();
        assert_eq!(r.samples_gbps.len(), 2);
        assert!(r.gbps > 0.0 && r.gbps.is_finite());
    }
}
