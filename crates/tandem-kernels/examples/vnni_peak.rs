//! Peak throughput of the VNNI instruction the AVX-512 kernels are built
//! from, on this core: independent `vpdpbusd` (256- and 512-bit). Prints instructions per nanosecond and the implied
//! ceiling for one activation row of a Q4_K / Q8_0 super-block.
//!
//! `cargo run --release -p tandem-kernels --example vnni_peak`

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    const ITERS: u64 = 50_000_000;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dpbusd_ymm() -> (f64, i32) {
        let a = _mm256_set1_epi8(3);
        let b = _mm256_set1_epi8(5);
        let mut acc = [_mm256_setzero_si256(); 8];
        let t = Instant::now();
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm256_dpbusd_epi32(*x, a, b);
            }
        }
        let ns = t.elapsed().as_nanos() as f64;
        let s = acc.iter().fold(0, |s, x| s ^ _mm256_extract_epi32::<0>(*x));
        ((ITERS * 8) as f64 / ns, s)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dpbusd_zmm() -> (f64, i32) {
        let a = _mm512_set1_epi8(3);
        let b = _mm512_set1_epi8(5);
        let mut acc = [_mm512_setzero_si512(); 8];
        let t = Instant::now();
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        let ns = t.elapsed().as_nanos() as f64;
        let s = acc.iter().fold(0, |s, x| s ^ _mm512_reduce_add_epi32(*x));
        ((ITERS * 8) as f64 / ns, s)
    }

    pub fn main() {
        if !(is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")) {
            println!("no AVX-512 VNNI on this CPU");
            return;
        }
        // SAFETY: features checked above.
        let (y, s1) = unsafe { dpbusd_ymm() };
        // SAFETY: main checked that the CPU has AVX-512 VNNI before calling.
        let (z, s2) = unsafe { dpbusd_zmm() };
        std::hint::black_box((s1, s2));
        println!("vpdpbusd ymm: {y:.2} /ns   ({:.1} G int8 MAC/s)", y * 32.0);
        println!("vpdpbusd zmm: {z:.2} /ns   ({:.1} G int8 MAC/s)", z * 64.0);
        let macs = (y * 32.0).max(z * 64.0);
        // One activation row of a super-block needs 256 MACs; the weights
        // it reads are 144 bytes (Q4_K) or 272 bytes (8 Q8_0 blocks).
        println!(
            "ceiling from MACs alone, per activation row: Q4_K {:.1} GB/s, Q8_0 {:.1} GB/s of weights",
            macs / 256.0 * 144.0,
            macs / 256.0 * 272.0
        );
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    x86::main();
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86-64 only");
}
