//! Rough single-thread matmul throughput (not a rigorous benchmark).
//!
//! `cargo run --release -p tandem-kernels --example gemv_bench [n_rows n_cols]`
//!
//! Multiplies an `n_rows × n_cols` weight matrix (default 8192 × 4096, larger
//! than a typical L3 for Q8_0) by B activation rows and reports GB/s of weight
//! bytes streamed and rows·B/s. Timings include nothing but `matmul_rows_with`.
//! Two clocks: wall time, and (Linux) the thread's on-CPU time from
//! `/proc/thread-self/schedstat`, which is less distorted on a shared machine
//! (it still includes cache/bandwidth contention from other processes).

use std::time::{Duration, Instant};

use tandem_kernels::{matmul_rows_with, Isa, QuantizedActivations, WeightFormat};

fn weights(f: WeightFormat, n_rows: usize, n_cols: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut w: Vec<u8> = (0..n_rows * f.row_bytes(n_cols).unwrap())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let half_0_01 = 0x211Fu16.to_le_bytes(); // f16 ~0.0100
    match f {
        WeightFormat::F16 => w
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&half_0_01)),
        WeightFormat::F32 => w
            .chunks_exact_mut(4)
            .for_each(|c| c.copy_from_slice(&0.01f32.to_le_bytes())),
        WeightFormat::BF16 => w
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&0x3C24u16.to_le_bytes())),
        _ => {
            for blk in w.chunks_exact_mut(f.block_bytes()) {
                let d_off = if f == WeightFormat::Q6_K { 208 } else { 0 };
                blk[d_off..d_off + 2].copy_from_slice(&half_0_01);
                if matches!(f, WeightFormat::Q4_K | WeightFormat::Q5_K) {
                    blk[2..4].copy_from_slice(&half_0_01);
                }
            }
        }
    }
    w
}

/// Nanoseconds this thread has spent on a CPU (None off Linux).
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn bench(
    isa: Isa,
    f: WeightFormat,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    n_b: usize,
    budget: Duration,
) -> (f64, f64, f64) {
    let x: Vec<f32> = (0..n_b * n_cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut q = QuantizedActivations::new(f.activation_format());
    q.quantize_with(isa, &x, n_b, n_cols).unwrap();
    let mut out = vec![0f32; n_rows * n_b];
    matmul_rows_with(isa, f, w, n_cols, 0..n_rows, &q, &mut out).unwrap(); // warm-up
    let start = Instant::now();
    let cpu0 = cpu_ns();
    let mut iters = 0u32;
    while start.elapsed() < budget || iters < 2 {
        matmul_rows_with(isa, f, w, n_cols, 0..n_rows, &q, &mut out).unwrap();
        iters += 1;
    }
    let secs = start.elapsed().as_secs_f64() / f64::from(iters);
    let cpu_secs = match (cpu0, cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9 / f64::from(iters),
        _ => f64::NAN,
    };
    std::hint::black_box(&out);
    (
        w.len() as f64 / secs / 1e9,
        w.len() as f64 / cpu_secs / 1e9,
        (n_rows * n_b) as f64 / cpu_secs,
    )
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n_rows, n_cols) = (
        args.first().copied().unwrap_or(8192),
        args.get(1).copied().unwrap_or(4096),
    );
    let fast = [Isa::Avx2]
        .into_iter()
        .find(|i| i.is_available())
        .unwrap_or(Isa::Scalar);
    println!("ROUGH single-thread numbers, {n_rows} x {n_cols} weights, kernels: {fast} (and scalar for B=1)");
    println!(
        "{:<6} {:>7} {:>4} {:>7} {:>11} {:>11} {:>13}",
        "format", "MB", "B", "isa", "GB/s(wall)", "GB/s(cpu)", "dots/cpu-s"
    );
    for f in [
        WeightFormat::Q4_K,
        WeightFormat::Q8_0,
        WeightFormat::Q6_K,
        WeightFormat::Q5_K,
        WeightFormat::Q4_0,
        WeightFormat::F16,
    ] {
        let w = weights(f, n_rows, n_cols);
        let mb = w.len() as f64 / 1e6;
        for (isa, n_b) in [(fast, 1), (fast, 4), (fast, 16), (Isa::Scalar, 1)] {
            let budget = Duration::from_millis(if isa == Isa::Scalar { 300 } else { 700 });
            let (wall, cpu, dots) = bench(isa, f, &w, n_rows, n_cols, n_b, budget);
            println!(
                "{:<6} {mb:>7.1} {n_b:>4} {:>7} {wall:>11.2} {cpu:>11.2} {dots:>13.3e}",
                f.name(),
                isa.name()
            );
        }
    }
}
