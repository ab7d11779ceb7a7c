//! The ceiling of exact int8 dot products on the AVX2 family (no VNNI:
//! EPYC Rome/Milan), one thread, data in L1: what bounds an AVX2 Q8_0
//! prefill GEMM on such a core, next to the plain f32 FMA rate.
//!
//! `cargo run --release -p tandem-kernels --example avx2_int8_peak`
//!
//! - `exact`: ggml's (and tandem's `avx2::q8_0_x8`) sequence per 32
//!   multiply-adds of one weight chunk and one activation row: broadcast
//!   the activation bytes, `vpsignb` (move the weight's sign onto the
//!   activation, so `vpmaddubsw`'s unsigned operand is `|q|`), `vpmaddubsw`,
//!   `vpmaddwd` by ones (i16 pairs to i32: two `vpmaddubsw` results cannot
//!   be summed in i16, 2·2·127·128 > 2^15) and `vpaddd`;
//! - `no-sign`: the same without `vpsignb`, which is only exact when one
//!   operand is known unsigned (7-bit activations, for instance): the
//!   most an int8 kernel on this ISA could gain by changing the
//!   arithmetic;
//! - `f32 fma`: `vfmadd231ps` on ymm, 8 multiply-adds each.
//!
//! A real kernel also loads and flips its weights, converts each block's
//! i32 sum to f32 and multiplies the two block scales in: about 6.3
//! instructions per 32 multiply-adds in `q8_0_x8` against the 5 here, so
//! its ceiling is about 5/6.3 of `exact`.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    const ITERS: usize = 25_000_000;
    /// Independent chains: enough to cover `vpmaddwd`'s latency.
    const CHAINS: usize = 8;

    #[target_feature(enable = "avx2")]
    unsafe fn int8<const SIGN: bool>(act: &[i32; 64]) -> (f64, i32) {
        let q = _mm256_set1_epi32(0x05fb_7f81);
        let aq = _mm256_abs_epi8(q);
        let ones = _mm256_set1_epi16(1);
        let mut s = [_mm256_setzero_si256(); CHAINS];
        let t = Instant::now();
        for it in 0..ITERS {
            let base = (it * CHAINS) % (act.len() - CHAINS);
            for (k, sk) in s.iter_mut().enumerate() {
                let y = _mm256_set1_epi32(black_box(act[base + k]));
                let y = if SIGN { _mm256_sign_epi8(y, q) } else { y };
                let p = _mm256_maddubs_epi16(aq, y);
                *sk = _mm256_add_epi32(*sk, _mm256_madd_epi16(p, ones));
            }
        }
        let ns = t.elapsed().as_nanos() as f64;
        let x = s.iter().fold(0, |a, v| a ^ _mm256_extract_epi32::<0>(*v));
        ((ITERS * CHAINS * 32) as f64 / ns, x)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma() -> (f64, f32) {
        let a = _mm256_set1_ps(0.999_9);
        let b = _mm256_set1_ps(1e-4);
        let mut s = [_mm256_setzero_ps(); 10];
        let t = Instant::now();
        for _ in 0..ITERS {
            for x in s.iter_mut() {
                *x = _mm256_fmadd_ps(a, *x, b);
            }
        }
        let ns = t.elapsed().as_nanos() as f64;
        let x = s.iter().map(|v| _mm256_cvtss_f32(*v)).sum();
        ((ITERS * 10 * 8) as f64 / ns, x)
    }

    pub fn main() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            println!("no AVX2/FMA on this CPU");
            return;
        }
        let mut act = [0i32; 64];
        for (i, a) in act.iter_mut().enumerate() {
            *a = (i as i32).wrapping_mul(0x0125_3b17) ^ 0x7f01_80fe;
        }
        // SAFETY: the features were checked above.
        let (exact, x1) = unsafe { int8::<true>(&act) };
        // SAFETY: as above.
        let (unsigned, x2) = unsafe { int8::<false>(&act) };
        // SAFETY: as above.
        let (f, x3) = unsafe { fma() };
        black_box((x1, x2, x3));
        println!("exact int8 (ggml's AVX2 sequence): {exact:6.1} G MAC/s");
        println!("int8 without vpsignb (not exact):  {unsigned:6.1} G MAC/s");
        println!("f32 fma (ymm):                     {f:6.1} G MAC/s");
        println!(
            "a Q8_0 kernel at ~6.3 instructions per 32 MACs: about {:.1} G MAC/s",
            exact * 5.0 / 6.3
        );
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    x86::main();
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86 only");
}
