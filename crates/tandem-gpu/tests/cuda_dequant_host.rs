//! The CUDA dequantization decoders (`src/cuda/dequant.cuh`) compiled on
//! the host and compared bit for bit with tandem-kernels' references
//! (which match gguf-py): CI has no GPU, so this is where the decoders'
//! arithmetic is checked. The source is the one NVRTC compiles, behind a
//! prelude that maps the few CUDA spellings it uses (`__device__`, the
//! `_rn` intrinsics, `__int_as_float`) to plain C++; `-ffp-contract=off`
//! keeps every multiply and add separately rounded, as the `_rn`
//! intrinsics do on the device. Skipped, saying so, where no C++ compiler
//! is found.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_kernels::WeightFormat;

/// Every type with a device decoder, and the decoder's name.
const DECODERS: &[(WeightFormat, &str)] = &[
    (WeightFormat::F32, "f32"),
    (WeightFormat::F16, "f16"),
    (WeightFormat::BF16, "bf16"),
    (WeightFormat::Q8_0, "q8_0"),
    (WeightFormat::Q4_0, "q4_0"),
    (WeightFormat::Q4_1, "q4_1"),
    (WeightFormat::Q5_0, "q5_0"),
    (WeightFormat::Q5_1, "q5_1"),
    (WeightFormat::Q2_K, "q2_K"),
    (WeightFormat::Q3_K, "q3_K"),
    (WeightFormat::Q4_K, "q4_K"),
    (WeightFormat::Q5_K, "q5_K"),
    (WeightFormat::Q6_K, "q6_K"),
    (WeightFormat::IQ4_NL, "iq4_nl"),
    (WeightFormat::IQ4_XS, "iq4_xs"),
    (WeightFormat::MXFP4, "mxfp4"),
    (WeightFormat::TQ1_0, "tq1_0"),
    (WeightFormat::TQ2_0, "tq2_0"),
];

const PRELUDE: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#define __device__
#define __forceinline__ inline
static inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
static inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
"#;

/// `harness NAME N IN OUT`: decodes N values of type NAME from file IN
/// into file OUT (f32, native order).
fn harness_main() -> String {
    let mut s = String::from(
        "typedef float (*deq_fn)(const u8*, i64);\nstruct Entry { const char* name; deq_fn f; };\nstatic const Entry TABLE[] = {\n",
    );
    for (_, name) in DECODERS {
        s += &format!("    {{\"{name}\", deq_{name}_at}},\n");
    }
    s += r#"};
int main(int argc, char** argv) {
    if (argc != 5) return 2;
    deq_fn f = 0;
    for (const Entry& e : TABLE) if (!std::strcmp(e.name, argv[1])) f = e.f;
    if (!f) return 3;
    long long n = std::atoll(argv[2]);
    FILE* in = std::fopen(argv[3], "rb");
    if (!in) return 4;
    std::fseek(in, 0, SEEK_END);
    long len = std::ftell(in);
    std::fseek(in, 0, SEEK_SET);
    u8* src = (u8*)std::malloc(len + 1);
    if (std::fread(src, 1, len, in) != (size_t)len) return 5;
    std::fclose(in);
    float* out = (float*)std::malloc(n * 4 + 4);
    for (long long i = 0; i < n; i++) out[i] = f(src, i);
    FILE* o = std::fopen(argv[4], "wb");
    if (!o || std::fwrite(out, 4, n, o) != (size_t)n) return 6;
    std::fclose(o);
    return 0;
}
"#;
    s
}

fn build_harness(dir: &Path) -> Option<PathBuf> {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cuda");
    let read = |f: &str| std::fs::read_to_string(src_dir.join(f)).expect("cuda source");
    let source = [
        PRELUDE.to_string(),
        read("common.cuh"),
        read("dequant.cuh"),
        harness_main(),
    ]
    .concat();
    let cpp = dir.join("harness.cpp");
    std::fs::write(&cpp, source).expect("write");
    let exe = dir.join("harness");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&compiler)
        .args(["-O2", "-ffp-contract=off", "-o"])
        .arg(&exe)
        .arg(&cpp)
        .output();
    match out {
        Err(e) => {
            eprintln!(
                "skipped: no C++ compiler ({compiler}: {e}); the CUDA decoders are unchecked"
            );
            None
        }
        Ok(o) if !o.status.success() => {
            panic!(
                "the CUDA decoders do not compile as C++:\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        }
        Ok(_) => Some(exe),
    }
}

/// Deterministic pseudo-random bytes (xorshift).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn device_decoders_match_the_references_bit_for_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = build_harness(dir.path()) else {
        return;
    };
    for (i, &(format, name)) in DECODERS.iter().enumerate() {
        let n = format.block_len() * 16;
        let row = format.row_bytes(n).expect("whole blocks");
        let data = bytes(row, 0x9E37_79B9 + i as u64);
        let mut want = vec![0f32; n];
        tandem_kernels::dequantize_row(format, &data, &mut want).expect("reference");
        let (inp, outp) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::write(&inp, &data).expect("write");
        let st = Command::new(&exe)
            .arg(name)
            .arg(n.to_string())
            .arg(&inp)
            .arg(&outp)
            .status()
            .expect("run harness");
        assert!(st.success(), "{name}: harness {st}");
        let got: Vec<f32> = std::fs::read(&outp)
            .expect("read")
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got.len(), n);
        let mut checked = 0;
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
            assert!(
                same,
                "{name}: value {j}: device decoder {g:e}, reference {w:e}"
            );
            checked += usize::from(w.is_finite());
        }
        // Random bytes must exercise real values, not only NaNs.
        assert!(checked > n / 2, "{name}: only {checked} finite values");
    }
}
