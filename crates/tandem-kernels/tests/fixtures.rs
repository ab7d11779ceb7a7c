//! Bit-exact checks against the vectors in `fixtures/quant/` (written by
//! `tools/quant_vectors/make_vectors.py` from gguf-py; layout in the README
//! there). NaN compares equal to NaN; everything else compares by bits.

use std::path::PathBuf;

use tandem_kernels::{
    dequantize_row, ActivationFormat, Isa, Q8_0Variant, QuantizedActivations, WeightFormat,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/quant")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tools/quant_vectors/make_vectors.py)",
            path.display()
        )
    })
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

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn is_f16_nan(h: u16) -> bool {
    h & 0x7c00 == 0x7c00 && h & 0x03ff != 0
}

fn isas() -> Vec<Isa> {
    let v: Vec<Isa> = [Isa::Scalar, Isa::Avx2]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    if v.len() == 1 {
        eprintln!("note: AVX2 not available; fixture tests cover the scalar path only");
    }
    v
}

#[test]
fn dequantize_matches_gguf_py_bit_exact() {
    for f in WeightFormat::ALL {
        if f == WeightFormat::F32 {
            continue; // identity; covered by the API tests
        }
        let src = fixture(&format!("{}.bin", f.name()));
        let want = f32s(&fixture(&format!("{}.f32", f.name())));
        let n_blocks = src.len() / f.block_bytes();
        assert_eq!(n_blocks * f.block_bytes(), src.len(), "{f}");
        assert_eq!(n_blocks * f.block_len(), want.len(), "{f}");
        // whole file as one row, and block by block (odd offsets, no alignment)
        let mut got = vec![0f32; want.len()];
        dequantize_row(f, &src, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                same_f32(*g, *w),
                "{f} value {i}: {g:e} ({:#x}) vs gguf-py {w:e} ({:#x})",
                g.to_bits(),
                w.to_bits()
            );
        }
        let mut padded = vec![0u8; 1];
        padded.extend_from_slice(&src);
        let mut one = vec![0f32; f.block_len()];
        for b in 0..n_blocks {
            let blk = &padded[1 + b * f.block_bytes()..1 + (b + 1) * f.block_bytes()];
            dequantize_row(f, blk, &mut one).unwrap();
            let w = &want[b * f.block_len()..(b + 1) * f.block_len()];
            assert!(
                one.iter().zip(w).all(|(g, w)| same_f32(*g, *w)),
                "{f} block {b}"
            );
        }
    }
}

#[test]
fn f32_to_f16_matches_numpy() {
    let x = f32s(&fixture("f32_to_f16.in.f32"));
    let want = u16s(&fixture("f32_to_f16.out.bin"));
    for isa in isas() {
        let mut q = QuantizedActivations::new(ActivationFormat::F16);
        q.quantize_with(isa, &x, 1, x.len()).unwrap();
        let got = u16s(&q.to_ggml_bytes());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w || (is_f16_nan(*g) && is_f16_nan(*w)),
                "{isa} #{i} x={:e}: {g:#06x} vs {w:#06x}",
                x[i]
            );
        }
    }
}

#[test]
fn f32_to_bf16_matches_ggml_bit_exact() {
    let x = f32s(&fixture("f32_to_bf16.in.f32"));
    let want = u16s(&fixture("f32_to_bf16.out.bin"));
    for isa in isas() {
        let mut q = QuantizedActivations::new(ActivationFormat::BF16);
        q.quantize_with(isa, &x, 1, x.len()).unwrap();
        assert_eq!(u16s(&q.to_ggml_bytes()), want, "{isa}");
    }
}

fn check_bytes(what: &str, got: &[u8], want: &[u8], block: usize) {
    assert_eq!(got.len(), want.len(), "{what}");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!(
            "{what}: first difference at byte {i} (block {}): {} vs {}",
            i / block,
            got[i],
            want[i]
        );
    }
}

#[test]
fn q8_0_activations_match_ggml_bit_exact() {
    let x = f32s(&fixture("act_q8_0.in.f32"));
    let n_cols = 256;
    let n_rows = x.len() / n_cols;
    let want_x86 = fixture("act_q8_0.x86.bin");
    let want_ref = fixture("act_q8_0.ref.bin");
    assert_ne!(want_x86, want_ref, "fixture should contain rounding ties");
    for isa in isas() {
        let mut q = QuantizedActivations::new(ActivationFormat::Q8_0);
        q.quantize_with(isa, &x, n_rows, n_cols).unwrap();
        check_bytes(
            &format!("Q8_0 x86 variant, {isa}"),
            &q.to_ggml_bytes(),
            &want_x86,
            34,
        );
        q.set_q8_0_variant(Q8_0Variant::Reference);
        q.quantize_with(isa, &x, n_rows, n_cols).unwrap();
        check_bytes(
            &format!("Q8_0 reference variant (gguf-py), {isa}"),
            &q.to_ggml_bytes(),
            &want_ref,
            34,
        );
    }
}

#[test]
fn q8_k_activations_match_ggml_bit_exact() {
    let x = f32s(&fixture("act_q8_K.in.f32"));
    let n_cols = 512;
    let n_rows = x.len() / n_cols;
    let want = fixture("act_q8_K.bin");
    for isa in isas() {
        let mut q = QuantizedActivations::new(ActivationFormat::Q8_K);
        q.quantize_with(isa, &x, n_rows, n_cols).unwrap();
        check_bytes(&format!("Q8_K, {isa}"), &q.to_ggml_bytes(), &want, 292);
    }
}

#[test]
fn q8_1_activations_match_ggml_bit_exact() {
    let x = f32s(&fixture("act_q8_1.in.f32"));
    let n_cols = 256;
    let n_rows = x.len() / n_cols;
    for (variant, file) in [
        (Q8_0Variant::X86, "act_q8_1.x86.bin"),
        (Q8_0Variant::Reference, "act_q8_1.ref.bin"),
    ] {
        let want = fixture(file);
        for isa in isas() {
            let mut q = QuantizedActivations::new(ActivationFormat::Q8_1);
            q.set_q8_0_variant(variant);
            q.quantize_with(isa, &x, n_rows, n_cols).unwrap();
            check_bytes(
                &format!("Q8_1 {variant:?}, {isa}"),
                &q.to_ggml_bytes(),
                &want,
                36,
            );
        }
    }
}

/// The x86 families' Q5_0 / Q4_1 / Q5_1 / IQ4_NL / MXFP4 / IQ4_XS kernels follow ggml's x86 order and
/// must equal llama.cpp's own `vec_dot` (run by `tools/quant_vectors/ggml_dots.py`
/// on this fixture data) bit for bit; NaN == NaN.
#[test]
fn x86_dots_match_llama_cpp_bit_exact() {
    use tandem_kernels::matmul_rows_with;
    let n_cols = 256;
    let x = f32s(&fixture("act_q8_0.in.f32"));
    let n_b = x.len() / n_cols;
    for f in [
        WeightFormat::Q5_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_1,
        WeightFormat::IQ4_NL,
        WeightFormat::MXFP4,
        WeightFormat::IQ4_XS,
    ] {
        let w = fixture(&format!("{}.bin", f.name()));
        let want = f32s(&fixture(&format!("ggml_dot_{}.f32", f.name())));
        let n_rows = w.len() / f.row_bytes(n_cols).unwrap();
        assert_eq!(want.len(), n_rows * n_b, "{f}");
        for isa in [Isa::Avx2, Isa::Avx512] {
            if !isa.is_available() {
                eprintln!(
                    "note: x86_dots_match_llama_cpp_bit_exact: {isa} skipped, this CPU lacks it"
                );
                continue;
            }
            let mut q = QuantizedActivations::new(f.activation_format());
            q.quantize_with(isa, &x, n_b, n_cols).unwrap();
            let mut out = vec![0f32; n_rows * n_b];
            matmul_rows_with(isa, f, &w, n_cols, 0..n_rows, &q, &mut out).unwrap();
            for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                assert!(
                    same_f32(*g, *e),
                    "{isa} {f} row {} b {}: {g:e} vs llama.cpp {e:e}",
                    i / n_b,
                    i % n_b
                );
            }
        }
    }
}

/// Q1_0 and Q2_0 run the scalar reference on every family (no SIMD kernels).
/// It mirrors ggml's generic C code, so it must equal that code as compiled
/// into llama.cpp (`ggml_generic_dot_Q{1,2}_0.f32`, activations quantized by
/// ggml's x86 `quantize_row_q8_0`) bit for bit. llama.cpp's x86 build also
/// runs the generic code for Q2_0 (`ggml_dot_Q2_0.f32`, the same values); for
/// Q1_0 it runs an AVX2 kernel keeping eight lane sums per block, another
/// f32 order, which must agree within the rounding bound of two orders of the
/// same exact block sums, `2^-23·(n/32 + 16)·Σ|w_i|·|a_i|`.
#[test]
fn low_bit_dots_match_llama_cpp() {
    use tandem_kernels::matmul_rows_with;
    let n_cols = 256;
    let x = f32s(&fixture("act_q8_0.in.f32"));
    let n_b = x.len() / n_cols;
    for f in [WeightFormat::Q2_0, WeightFormat::Q1_0] {
        let w = fixture(&format!("{}.bin", f.name()));
        let generic = f32s(&fixture(&format!("ggml_generic_dot_{}.f32", f.name())));
        let x86 = f32s(&fixture(&format!("ggml_dot_{}.f32", f.name())));
        let rb = f.row_bytes(n_cols).unwrap();
        let n_rows = w.len() / rb;
        assert_eq!(generic.len(), n_rows * n_b, "{f}");
        assert_eq!(x86.len(), n_rows * n_b, "{f}");
        for isa in Isa::ALL {
            if !isa.is_available() {
                eprintln!("note: low_bit_dots_match_llama_cpp: {isa} skipped, this CPU lacks it");
                continue;
            }
            let mut q = QuantizedActivations::new(f.activation_format());
            q.quantize_with(isa, &x, n_b, n_cols).unwrap();
            let mut out = vec![0f32; n_rows * n_b];
            matmul_rows_with(isa, f, &w, n_cols, 0..n_rows, &q, &mut out).unwrap();
            let mut inexact = 0;
            for (i, ((g, e), e86)) in out.iter().zip(&generic).zip(&x86).enumerate() {
                let (row, b) = (i / n_b, i % n_b);
                assert!(
                    same_f32(*g, *e),
                    "{isa} {f} row {row} b {b}: {g:e} vs ggml generic {e:e}"
                );
                if same_f32(*g, *e86) {
                    continue;
                }
                inexact += 1;
                let mut wv = vec![0f32; n_cols];
                dequantize_row(f, &w[row * rb..(row + 1) * rb], &mut wv).unwrap();
                let mut av = vec![0f32; n_cols];
                q.dequantize_row(b, &mut av).unwrap();
                let mag: f64 = wv
                    .iter()
                    .zip(&av)
                    .map(|(w, a)| f64::from(w.abs()) * f64::from(a.abs()))
                    .sum();
                let tol = 2f64.powi(-23) * (n_cols as f64 / 32.0 + 16.0) * mag;
                let d = (f64::from(*g) - f64::from(*e86)).abs();
                assert!(
                    f == WeightFormat::Q1_0 && d <= tol,
                    "{isa} {f} row {row} b {b}: {g:e} vs llama.cpp x86 {e86:e} (tol {tol:e})"
                );
            }
            eprintln!(
                "{isa} {f}: equal to ggml's generic code; {inexact} of {} dots differ from llama.cpp's x86 kernel (within the bound)",
                out.len()
            );
        }
    }
}
