//! The CUDA kernels' source compiled for the host by a C++ compiler (the
//! CUDA built-ins replaced by plain C++, each launch run thread by thread)
//! and checked against the references: dequantization bit for bit against
//! gguf-py's values (`fixtures/quant`) and the `half` crate's rounding,
//! the hand-written f16/bf16 conversions on every edge case, the Q8_0 KV
//! encoder byte for byte against `tandem_kernels::attention::encode_row`,
//! the strided copy (`copy_cols`).
//! Kernels that need warps or block barriers (`attend`, `rms_norm`) are
//! not emulated here. Without a C++ compiler the test prints why it is
//! skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use half::{bf16, f16};
use tandem_kernels::attention::KvFormat;
use tandem_kernels::WeightFormat;

const STUB: &str = r#"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
struct D3 { unsigned x = 0, y = 0, z = 0; };
static D3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
static inline void __syncthreads() {}
"#;

const MAIN: &str = r#"
template <class F> static void launch(long long n, F f) {
    blockDim.x = 256; gridDim.x = (unsigned)((n + 255) / 256); if (gridDim.x == 0) gridDim.x = 1;
    for (unsigned b = 0; b < gridDim.x; b++) for (unsigned t = 0; t < 256; t++) {
        blockIdx.x = b; threadIdx.x = t; f();
    }
}
static std::vector<unsigned char> slurp(const char* p) {
    FILE* f = std::fopen(p, "rb"); if (!f) { std::perror(p); std::exit(2); }
    std::vector<unsigned char> v; unsigned char buf[65536]; size_t k;
    while ((k = std::fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + k);
    std::fclose(f); return v;
}
static void dump(const char* p, const void* d, size_t n) {
    FILE* f = std::fopen(p, "wb"); std::fwrite(d, 1, n, f); std::fclose(f);
}
// kernel_host deq FMT N TY IN OUT | convert TY N IN OUT | encode FMT N IN OUT
int main(int argc, char** argv) {
    if (argc < 6) return 2;
    std::string op = argv[1];
    long long n = std::atoll(argv[3]);
    std::vector<unsigned char> in = slurp(argv[4]);
    if (op == "deq") {
        // argv[2] = kernel suffix, ':', output type (0 f32, 1 f16, 2 bf16).
        std::string arg(argv[2]);
        size_t colon = arg.find(':');
        std::string fmt = arg.substr(0, colon);
        int ty = std::atoi(arg.c_str() + colon + 1);
        typedef void (*deq_kernel)(const u8*, void*, int, i64);
        struct Entry { const char* name; deq_kernel k; };
        static const Entry DEQ[] = {
#define E(x) {#x, deq_##x},
            E(f32) E(f16) E(bf16) E(q8_0) E(q4_0) E(q4_1) E(q5_0) E(q5_1) E(q2_K) E(q3_K)
            E(q4_K) E(q5_K) E(q6_K) E(iq4_nl) E(iq4_xs) E(mxfp4) E(tq1_0) E(tq2_0)
            E(iq2_xxs) E(iq2_xs) E(iq2_s) E(iq3_xxs) E(iq3_s) E(iq1_s) E(iq1_m)
            E(q1_0) E(q2_0)
#undef E
        };
        deq_kernel k = 0;
        for (const Entry& e : DEQ) if (fmt == e.name) k = e.k;
        if (!k) return 3;
        std::vector<unsigned char> out(n * 4);
        const u8* src = in.data(); void* dst = out.data();
        launch(n, [&] { k(src, dst, ty, n); });
        dump(argv[5], out.data(), n * (ty == 0 ? 4 : 2));
    } else if (op == "convert") {
        int ty = std::atoi(argv[2]);
        std::vector<unsigned char> out(n * 4);
        launch(n, [&] { convert_f32((const float*)in.data(), out.data(), ty, n); });
        dump(argv[5], out.data(), n * (ty == 0 ? 4 : 2));
    } else if (op == "encode") {
        int fmt = std::atoi(argv[2]);
        std::vector<unsigned char> out(n * 4);
        long long threads = fmt == 3 ? n / 32 : n;
        launch(threads, [&] { encode_kv((const float*)in.data(), out.data(), fmt, n); });
        long long bytes = fmt == 0 ? n * 4 : fmt == 3 ? n / 32 * 34 : n * 2;
        dump(argv[5], out.data(), bytes);
    } else if (op == "copycols") {
        // argv[2] = rows:cols:src_stride:dst_stride; argv[3] = dst floats.
        long long rows, cols, ss, ds;
        if (std::sscanf(argv[2], "%lld:%lld:%lld:%lld", &rows, &cols, &ss, &ds) != 4) return 2;
        std::vector<float> out(n, -1.0f);
        launch(rows * cols, [&] { copy_cols((const float*)in.data(), out.data(), rows, cols, ss, ds); });
        dump(argv[5], out.data(), n * 4);
    } else {
        return 2;
    }
    return 0;
}
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the harness, or None (with the reason printed).
fn harness(dir: &Path) -> Option<PathBuf> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let src = dir.join("harness.cpp");
    // The whole source NVRTC compiles: common.cuh, the i-quant tables
    // generated from tandem-kernels, dequant.cuh, kernels.cu.
    let kernels = dir.join("tandem_kernels.cu");
    std::fs::write(&kernels, tandem_gpu::kernel_source::kernel_source()).expect("write source");
    let text = format!("{STUB}\n#include \"{}\"\n{MAIN}", kernels.display());
    std::fs::write(&src, text).expect("write harness");
    let exe = dir.join("kernel_host");
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-w", "-x", "c++"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output();
    match out {
        Err(e) => {
            eprintln!("skipped: no C++ compiler ({cxx}: {e})");
            None
        }
        Ok(o) if !o.status.success() => {
            panic!(
                "kernels.cu does not compile for the host:\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        }
        Ok(_) => Some(exe),
    }
}

fn run(exe: &Path, dir: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let (i, o) = (dir.join("in.bin"), dir.join("out.bin"));
    std::fs::write(&i, input).expect("write input");
    let st = Command::new(exe)
        .args(args)
        .arg(&i)
        .arg(&o)
        .status()
        .expect("run harness");
    assert!(st.success(), "{args:?}");
    std::fs::read(&o).expect("read output")
}

/// Every stored type with a device kernel, and the kernel's suffix
/// (`deq_<suffix>`); F32 is a plain copy, checked by the others' paths.
const DEQ_KERNELS: &[(WeightFormat, &str)] = &[
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
    (WeightFormat::IQ2_XXS, "iq2_xxs"),
    (WeightFormat::IQ2_XS, "iq2_xs"),
    (WeightFormat::IQ2_S, "iq2_s"),
    (WeightFormat::IQ3_XXS, "iq3_xxs"),
    (WeightFormat::IQ3_S, "iq3_s"),
    (WeightFormat::IQ1_S, "iq1_s"),
    (WeightFormat::IQ1_M, "iq1_m"),
    (WeightFormat::Q1_0, "q1_0"),
    (WeightFormat::Q2_0, "q2_0"),
];

/// Deterministic pseudo-random bytes (xorshift64).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn cuda_kernels_match_the_references_when_run_on_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = harness(dir.path()) else {
        return;
    };
    let quant = root().join("../../fixtures/quant");
    // Dequantization: every stored type, to f32 (gguf-py's values, bit for
    // bit, and tandem-kernels' on random bytes) and to f16/bf16 (those
    // values rounded by `half`).
    for &(format, code) in DEQ_KERNELS {
        let name = format.name();
        let code = &format!("{code}:");
        let raw = std::fs::read(quant.join(format!("{name}.bin"))).expect("fixture");
        let want = f32s(&std::fs::read(quant.join(format!("{name}.f32"))).expect("fixture"));
        // Random blocks: every bit pattern of scales and indices.
        let n_rand = format.block_len() * 64;
        let rand = random_bytes(
            format.row_bytes(n_rand).expect("whole blocks"),
            n_rand as u64,
        );
        let mut rand_want = vec![0f32; n_rand];
        tandem_kernels::dequantize_row(format, &rand, &mut rand_want).expect("reference");
        let rand_got = f32s(&run(
            &exe,
            dir.path(),
            &["deq", &format!("{code}0"), &n_rand.to_string()],
            &rand,
        ));
        for (i, (g, w)) in rand_got.iter().zip(&rand_want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{name} random[{i}]: {g} vs {w}"
            );
        }
        let n = want.len();
        let mut ours = vec![0f32; n];
        tandem_kernels::dequantize_row(format, &raw, &mut ours).expect("reference");
        let got = f32s(&run(
            &exe,
            dir.path(),
            &["deq", &format!("{code}0"), &n.to_string()],
            &raw,
        ));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{name}[{i}]: {g} vs {w}"
            );
        }
        let h = u16s(&run(
            &exe,
            dir.path(),
            &["deq", &format!("{code}1"), &n.to_string()],
            &raw,
        ));
        let b = u16s(&run(
            &exe,
            dir.path(),
            &["deq", &format!("{code}2"), &n.to_string()],
            &raw,
        ));
        for i in 0..n {
            let v = ours[i];
            if v.is_nan() {
                continue;
            }
            assert_eq!(h[i], f16::from_f32(v).to_bits(), "{name}[{i}] as f16 ({v})");
            assert_eq!(
                b[i],
                bf16::from_f32(v).to_bits(),
                "{name}[{i}] as bf16 ({v})"
            );
        }
    }
    // f32 -> f16/bf16 on the edge cases and a sweep of bit patterns.
    let mut vals: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.99,
        65520.0,
        1e6,
        -1e6,
        f32::INFINITY,
        f32::NEG_INFINITY,
        6.1035156e-5,
        6.097555e-5,
        5.9604645e-8,
        2.9802322e-8,
        2.9802326e-8,
        1e-10,
        3.0e-8,
        1.5e-7,
        f32::MAX,
        f32::MIN_POSITIVE,
    ];
    let mut x = 0x1234_5678u32;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let v = f32::from_bits(x);
        if !v.is_nan() {
            vals.push(v);
        }
    }
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let n = vals.len().to_string();
    let h = u16s(&run(&exe, dir.path(), &["convert", "1", &n], &bytes));
    let b = u16s(&run(&exe, dir.path(), &["convert", "2", &n], &bytes));
    for (i, &v) in vals.iter().enumerate() {
        assert_eq!(
            h[i],
            f16::from_f32(v).to_bits(),
            "f16 of {v:e} ({:#x})",
            v.to_bits()
        );
        assert_eq!(
            b[i],
            bf16::from_f32(v).to_bits(),
            "bf16 of {v:e} ({:#x})",
            v.to_bits()
        );
    }
    // K/V rows as the store keeps them.
    let rows: Vec<f32> = (0..64 * 32)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) % 20001) as f32 / 1000.0 - 10.0)
        .collect();
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    for (code, format) in [
        ("1", KvFormat::F16),
        ("2", KvFormat::BF16),
        ("3", KvFormat::Q8_0),
    ] {
        let got = run(
            &exe,
            dir.path(),
            &["encode", code, &rows.len().to_string()],
            &bytes,
        );
        let rb = format.row_bytes(32).expect("row bytes");
        let mut want = vec![0u8; 64 * rb];
        for (r, out) in rows.chunks_exact(32).zip(want.chunks_exact_mut(rb)) {
            tandem_kernels::attention::encode_row(format, r, out).expect("encode");
        }
        assert_eq!(got, want, "{format} rows");
    }
    // Strided copies: a slice of each row into rows of another width.
    let (rows, cols, ss, ds) = (7usize, 5usize, 9usize, 6usize);
    let src: Vec<f32> = (0..rows * ss).map(|i| i as f32 * 0.5 - 3.0).collect();
    let bytes: Vec<u8> = src.iter().flat_map(|x| x.to_le_bytes()).collect();
    let dst_len = rows * ds;
    let arg = format!("{rows}:{cols}:{ss}:{ds}");
    let got = f32s(&run(
        &exe,
        dir.path(),
        &["copycols", &arg, &dst_len.to_string()],
        &bytes,
    ));
    for r in 0..rows {
        for c in 0..ds {
            let want = if c < cols { src[r * ss + c] } else { -1.0 };
            assert_eq!(got[r * ds + c], want, "copy_cols row {r} column {c}");
        }
    }
}
