//! Rough single-thread matmul throughput (not a rigorous benchmark).
//!
//! ```text
//! cargo run --release -p tandem-kernels --example gemv_bench -- \
//!     [n_rows n_cols] [--ms 250] [--formats Q4_K,Q8_0|all] [--isas scalar,avx2,avx512] [--batches 1,2,4,8,16]
//! ```
//!
//! An ISA without its own kernel for a format runs its registry fallback;
//! the row then names the family that ran, e.g. `avx512>avx2` or `avx2>scalar`.
//!
//! Multiplies an `n_rows × n_cols` weight matrix (default 8192 × 4096, larger
//! than a typical L3 for Q8_0) by B activation rows and reports GB/s of weight
//! bytes streamed. For each format it first measures a plain read loop over
//! a buffer of the same size (the "read" line: what one thread can stream),
//! then every ISA × B, all in the same run so the columns compare. `t8/t1`
//! is the time of a B = 8 call over a B = 1 call.
//!
//! Clock: the thread's on-CPU time from `/proc/thread-self/schedstat`
//! (Linux), which is less distorted on a shared machine than wall time (it
//! still includes cache/bandwidth contention from other processes); wall
//! time elsewhere.

use std::time::{Duration, Instant};

use tandem_kernels::{
    interleave_matrix, matmul_rows_in_layout, preferred_layout, Isa, QuantizedActivations,
    WeightFormat, WeightLayout,
};

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
            use WeightFormat::*;
            // byte offsets of each block's f16 scale fields
            let fields: &[usize] = match f {
                Q6_K => &[208],
                Q4_K | Q5_K | Q4_1 | Q5_1 => &[0, 2],
                Q2_K => &[80, 82],
                Q3_K => &[108],
                TQ1_0 => &[52],
                TQ2_0 => &[64],
                MXFP4 | IQ1_M => &[],
                _ => &[0],
            };
            for blk in w.chunks_exact_mut(f.block_bytes()) {
                for &o in fields {
                    blk[o..o + 2].copy_from_slice(&half_0_01);
                }
                if f == MXFP4 {
                    blk[0] = 121; // 2^-7
                }
                if f == IQ1_M {
                    // f16 scale in the top nibbles of the four scale words
                    let bits = u16::from_le_bytes(half_0_01);
                    for i in 0..4 {
                        let o = 48 + 2 * i + 1;
                        blk[o] = (blk[o] & 0x0F) | ((((bits >> (4 * i)) & 0xF) as u8) << 4);
                    }
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

/// Seconds per call of `f` (CPU time where available), after one warm-up.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let cpu0 = cpu_ns();
    let mut iters = 0u32;
    while start.elapsed() < budget || iters < 2 {
        f();
        iters += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    match (cpu0, cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9 / f64::from(iters),
        _ => wall / f64::from(iters),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn read_avx512(buf: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 4];
    let chunks = buf.chunks_exact(256);
    let rest = chunks.remainder();
    for c in chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: c has 256 bytes, the load reads bytes 64j..64j+64 unaligned.
            let v = unsafe { _mm512_loadu_si512(c.as_ptr().add(64 * j) as *const __m512i) };
            *a = _mm512_xor_si512(*a, v);
        }
    }
    let x = _mm512_xor_si512(
        _mm512_xor_si512(acc[0], acc[1]),
        _mm512_xor_si512(acc[2], acc[3]),
    );
    let mut lanes = [0u64; 8];
    // SAFETY: lanes is 64 bytes.
    unsafe { _mm512_storeu_si512(lanes.as_mut_ptr() as *mut __m512i, x) };
    lanes.iter().fold(0, |a, b| a ^ b) ^ rest.iter().map(|&b| u64::from(b)).sum::<u64>()
}

/// A plain read of `buf` (AVX-512 loads where available): the bandwidth
/// reference.
fn read_loop(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: feature checked.
        return unsafe { read_avx512(buf) };
    }
    buf.chunks_exact(8)
        .fold(0, |a, c| a ^ u64::from_le_bytes(c.try_into().unwrap()))
}

fn list_arg<'a>(args: &'a [String], name: &str) -> Option<Vec<&'a str>> {
    let i = args.iter().position(|a| a == name)?;
    Some(args.get(i + 1)?.split(',').collect())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut nums = args
        .iter()
        .take_while(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse::<usize>().ok());
    let (n_rows, n_cols) = (nums.next().unwrap_or(8192), nums.next().unwrap_or(4096));
    let ms = list_arg(&args, "--ms")
        .and_then(|v| v[0].parse().ok())
        .unwrap_or(250u64);
    let budget = Duration::from_millis(ms);
    let formats: Vec<WeightFormat> = match list_arg(&args, "--formats") {
        Some(v) if v.iter().any(|n| n.eq_ignore_ascii_case("all")) => WeightFormat::ALL.to_vec(),
        Some(v) => WeightFormat::ALL
            .into_iter()
            .filter(|f| v.iter().any(|n| n.eq_ignore_ascii_case(f.name())))
            .collect(),
        None => vec![
            WeightFormat::Q4_K,
            WeightFormat::Q8_0,
            WeightFormat::Q6_K,
            WeightFormat::Q5_K,
            WeightFormat::Q4_0,
            WeightFormat::F16,
            WeightFormat::BF16,
            WeightFormat::F32,
        ],
    };
    let isas: Vec<Isa> = match list_arg(&args, "--isas") {
        Some(v) => v.iter().filter_map(|n| n.parse().ok()).collect(),
        None => vec![Isa::Avx2, Isa::Avx512, Isa::Neon],
    }
    .into_iter()
    .filter(|i| i.is_available())
    .collect();
    let batches: Vec<usize> = list_arg(&args, "--batches")
        .map(|v| v.iter().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8, 16]);

    println!(
        "ROUGH single-thread GB/s of weight bytes (CPU-time clock), {n_rows} x {n_cols} weights, {} ms per cell",
        ms
    );
    print!("{:<7} {:>7} {:<14}", "format", "MB", "isa");
    for b in &batches {
        print!(" {:>7}", format!("B={b}"));
    }
    println!(" {:>6}", "t8/t1");
    for f in formats {
        let w = weights(f, n_rows, n_cols);
        let mb = w.len() as f64 / 1e6;
        let t = time_per_call(budget, || {
            std::hint::black_box(read_loop(std::hint::black_box(&w)));
        });
        println!(
            "{:<7} {mb:>7.1} {:<14} {:>7.2}   (plain read loop, same bytes)",
            f.name(),
            "read",
            w.len() as f64 / t / 1e9
        );
        let mut packed = vec![0u8; w.len()];
        let variants = isas.iter().flat_map(|&isa| {
            let mut v = vec![(isa, WeightLayout::Rows)];
            if preferred_layout(isa, f) != WeightLayout::Rows {
                v.push((isa, preferred_layout(isa, f)));
            }
            v
        });
        for (isa, layout) in variants.collect::<Vec<_>>() {
            let w = if layout == WeightLayout::Rows {
                &w
            } else {
                interleave_matrix(f, n_cols, &w, &mut packed).unwrap();
                &packed
            };
            let family = tandem_kernels::kernel_family_for(isa, f);
            let name = match layout {
                WeightLayout::Rows if family != isa.kernels() => {
                    format!("{}>{}", isa.name(), format!("{family:?}").to_lowercase())
                }
                WeightLayout::Rows => isa.name().to_string(),
                l => format!("{}-{}", isa.name(), l.name()),
            };
            print!("{:<7} {mb:>7.1} {:<14}", f.name(), name);
            let mut times = Vec::new();
            for &n_b in &batches {
                let x: Vec<f32> = (0..n_b * n_cols)
                    .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                let mut q = QuantizedActivations::new(f.activation_format());
                q.quantize_with(isa, &x, n_b, n_cols).unwrap();
                let mut out = vec![0f32; n_rows * n_b];
                let t = time_per_call(budget, || {
                    matmul_rows_in_layout(isa, f, layout, w, n_cols, 0..n_rows, &q, &mut out)
                        .unwrap();
                });
                std::hint::black_box(&out);
                times.push((n_b, t));
                print!(" {:>7.2}", w.len() as f64 / t / 1e9);
            }
            let t_of = |b| times.iter().find(|(n, _)| *n == b).map(|(_, t)| *t);
            match (t_of(1), t_of(8)) {
                (Some(t1), Some(t8)) => println!(" {:>6.2}", t8 / t1),
                _ => println!(),
            }
        }
    }
}
