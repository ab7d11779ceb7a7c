//! The interleaved layout ([`WeightLayout::Interleaved8`]): the encoding is
//! an exact bijection, its scalar reference equals ggml's row-major result
//! within f32 reassociation, and the SIMD kernels equal the scalar
//! reference bit for bit for every B, row range, tail and edge case.

use super::*;
use crate::{
    deinterleave_group, has_interleaved, interleave_group, interleave_matrix,
    matmul_rows_in_layout, Isa, KernelError, WeightLayout, GROUP_ROWS,
};

fn formats() -> impl Iterator<Item = WeightFormat> {
    WeightFormat::ALL
        .into_iter()
        .filter(|f| has_interleaved(*f))
}

/// The SIMD ISAs with interleaved kernels that this CPU has.
fn simd_isas(test: &str) -> Vec<Isa> {
    let mut out = Vec::new();
    for isa in [Isa::Avx512, Isa::Avx2] {
        if isa.is_available() {
            out.push(isa);
        } else {
            eprintln!("note: {test}: {isa} skipped, this CPU lacks it");
        }
    }
    out
}

fn run(
    isa: Isa,
    f: WeightFormat,
    layout: WeightLayout,
    w: &[u8],
    n_cols: usize,
    rows: std::ops::Range<usize>,
    q: &QuantizedActivations,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows.len() * q.n_rows()];
    matmul_rows_in_layout(isa, f, layout, w, n_cols, rows, q, &mut out).unwrap();
    out
}

fn quantized(f: WeightFormat, x: &[f32], n_b: usize, n_cols: usize) -> QuantizedActivations {
    let mut q = QuantizedActivations::new(act_format(f));
    q.quantize_with(Isa::Scalar, x, n_b, n_cols).unwrap();
    q
}

fn packed(f: WeightFormat, w: &[u8], n_cols: usize) -> Vec<u8> {
    let mut p = vec![0u8; w.len()];
    interleave_matrix(f, n_cols, w, &mut p).unwrap();
    p
}

#[test]
fn interleave_round_trips_exactly() {
    for f in formats() {
        for (seed, s) in [
            Scales::Normal,
            Scales::MaxQuants,
            Scales::Huge,
            Scales::ZeroBlocks,
        ]
        .into_iter()
        .enumerate()
        {
            for n_cols in [256, 768] {
                let mut r = rng(40 + seed as u64);
                let w = random_weights(&mut r, f, GROUP_ROWS, n_cols, s);
                let mut p = vec![0u8; w.len()];
                interleave_group(f, n_cols, &w, &mut p).unwrap();
                let mut back = vec![0u8; w.len()];
                deinterleave_group(f, n_cols, &p, &mut back).unwrap();
                assert_eq!(back, w, "{f} {s:?} {n_cols}");
                // Dequantized values survive too (the layout is a permutation
                // of the information, nothing is re-quantized).
                if s == Scales::Normal {
                    assert_ne!(p, w, "{f}: interleaving changed nothing");
                }
            }
        }
    }
}

#[test]
fn interleave_rejects_bad_sizes_and_formats() {
    let f = WeightFormat::Q4_K;
    let w = vec![0u8; 8 * 144];
    let mut d = vec![0u8; 8 * 144];
    assert!(matches!(
        interleave_group(f, 256, &w[..144 * 7], &mut d),
        Err(KernelError::SizeMismatch { .. })
    ));
    assert!(matches!(
        interleave_group(f, 100, &w, &mut d),
        Err(KernelError::NotBlockAligned { .. })
    ));
    assert!(matches!(
        interleave_group(WeightFormat::F16, 576, &w, &mut d),
        Err(KernelError::LayoutUnsupported { .. })
    ));
    assert!(matches!(
        interleave_matrix(f, 256, &w, &mut d[..100]),
        Err(KernelError::SizeMismatch { .. })
    ));
    // A format without an interleaved encoding says so instead of computing
    // garbage, on every family.
    let f16 = WeightFormat::F16;
    let wf = vec![0u8; 8 * 512];
    let q = quantized(f16, &[0.5; 256], 1, 256);
    let mut out = [0f32; 8];
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
        if !isa.is_available() {
            eprintln!(
                "note: interleave_rejects_bad_sizes_and_formats: {isa} skipped, this CPU lacks it"
            );
            continue;
        }
        assert!(matches!(
            matmul_rows_in_layout(
                isa,
                f16,
                WeightLayout::Interleaved8,
                &wf,
                256,
                0..8,
                &q,
                &mut out
            ),
            Err(KernelError::LayoutUnsupported { .. })
        ));
    }
}

#[test]
fn preferred_layouts() {
    use crate::preferred_layout;
    for f in WeightFormat::ALL {
        assert_eq!(preferred_layout(Isa::Scalar, f), WeightLayout::Rows, "{f}");
        let want = if matches!(
            f,
            WeightFormat::Q2_K | WeightFormat::Q4_K | WeightFormat::Q6_K | WeightFormat::Q8_0
        ) {
            WeightLayout::Interleaved8
        } else {
            WeightLayout::Rows
        };
        for isa in [Isa::Avx2, Isa::Avx512] {
            assert_eq!(preferred_layout(isa, f), want, "{isa} {f}");
        }
    }
}

/// The scalar interleaved kernel against ggml's row-major reference: equal
/// within the f32-reassociation bound, for full groups and row-major tails.
#[test]
fn interleaved_reference_matches_row_major() {
    for f in formats() {
        for (seed, (n_rows, n_b, s, a)) in [
            (8, 1, Scales::Normal, Acts::Normal),
            (19, 3, Scales::Normal, Acts::Normal),
            (16, 5, Scales::Huge, Acts::Huge),
            (9, 2, Scales::MaxQuants, Acts::MaxMagnitude),
            (8, 2, Scales::Tiny, Acts::Tiny),
            (8, 1, Scales::ZeroBlocks, Acts::Normal),
        ]
        .into_iter()
        .enumerate()
        {
            let n_cols = 512;
            let mut r = rng(900 + seed as u64);
            let w = random_weights(&mut r, f, n_rows, n_cols, s);
            let x = random_acts(&mut r, n_b, n_cols, a);
            let q = quantized(f, &x, n_b, n_cols);
            let p = packed(f, &w, n_cols);
            let got = run(
                Isa::Scalar,
                f,
                WeightLayout::Interleaved8,
                &p,
                n_cols,
                0..n_rows,
                &q,
            );
            let want = run(
                Isa::Scalar,
                f,
                WeightLayout::Rows,
                &w,
                n_cols,
                0..n_rows,
                &q,
            );
            let rb = f.row_bytes(n_cols).unwrap();
            for row in 0..n_rows {
                for b in 0..n_b {
                    let (g, e) = (got[row * n_b + b], want[row * n_b + b]);
                    let tol = tolerance(n_cols, magnitude(f, &w[row * rb..(row + 1) * rb], &q, b));
                    assert!(
                        g.is_finite() && f64::from((g - e).abs()) <= tol,
                        "{f} {s:?} {a:?} row {row} b {b}: {g} vs row-major {e} (tol {tol:e})"
                    );
                }
            }
        }
    }
}

/// SIMD interleaved kernels equal the scalar interleaved reference bit for
/// bit: every B in 1..=16 (all act tiles and their remainders), row ranges
/// starting and ending inside groups and in the tail, edge-case scales.
#[test]
fn simd_interleaved_matches_reference_bitwise() {
    for isa in simd_isas("simd_interleaved_matches_reference_bitwise") {
        for f in formats() {
            let mut seed = 0;
            for (s, a) in [
                (Scales::Normal, Acts::Normal),
                (Scales::Huge, Acts::Huge),
                (Scales::MaxQuants, Acts::MaxMagnitude),
                (Scales::Tiny, Acts::Normal),
                (Scales::Normal, Acts::Zero),
                (Scales::ZeroBlocks, Acts::Normal),
            ] {
                for n_cols in [256, 1280] {
                    seed += 1;
                    let n_rows = 21; // two groups and a 5-row tail
                    let mut r = rng(1300 + seed);
                    let w = random_weights(&mut r, f, n_rows, n_cols, s);
                    let p = packed(f, &w, n_cols);
                    let x = random_acts(&mut r, 16, n_cols, a);
                    for n_b in [1, 2, 3, 4, 5, 7, 8, 13, 16] {
                        let q = quantized(f, &x[..n_b * n_cols], n_b, n_cols);
                        for rows in [0..n_rows, 0..8, 3..21, 5..11, 16..21, 9..18, 17..19] {
                            let got = run(
                                isa,
                                f,
                                WeightLayout::Interleaved8,
                                &p,
                                n_cols,
                                rows.clone(),
                                &q,
                            );
                            // Groups: the scalar interleaved reference. The
                            // row-major tail (rows 16..): the same ISA's
                            // row-major kernel on the original bytes.
                            let groups = run(
                                Isa::Scalar,
                                f,
                                WeightLayout::Interleaved8,
                                &p,
                                n_cols,
                                rows.clone(),
                                &q,
                            );
                            let tail =
                                run(isa, f, WeightLayout::Rows, &w, n_cols, rows.clone(), &q);
                            for (i, row) in rows.clone().enumerate() {
                                let want = if row < 16 { &groups } else { &tail };
                                for b in 0..n_b {
                                    let (g, e) = (got[i * n_b + b], want[i * n_b + b]);
                                    assert_eq!(
                                        g.to_bits(),
                                        e.to_bits(),
                                        "{isa} {f} {s:?} {a:?} n_cols={n_cols} B={n_b} rows {rows:?} row {row} b {b}: {g} vs {e}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The prefill path: B large enough for several activation blocks.
#[test]
fn simd_interleaved_large_batch() {
    for isa in simd_isas("simd_interleaved_large_batch") {
        for f in formats() {
            let (n_rows, n_cols, n_b) = (24, 512, 150);
            let mut r = rng(77);
            let w = random_weights(&mut r, f, n_rows, n_cols, Scales::Normal);
            let p = packed(f, &w, n_cols);
            let x = random_acts(&mut r, n_b, n_cols, Acts::Normal);
            let q = quantized(f, &x, n_b, n_cols);
            let got = run(
                isa,
                f,
                WeightLayout::Interleaved8,
                &p,
                n_cols,
                0..n_rows,
                &q,
            );
            let want = run(
                Isa::Scalar,
                f,
                WeightLayout::Interleaved8,
                &p,
                n_cols,
                0..n_rows,
                &q,
            );
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, e)| g.to_bits() == e.to_bits()),
                "{isa} {f}"
            );
        }
    }
}

/// Q2_K x8 repeats ggml's generic float operations per row, so every
/// family's interleaved kernel equals the row-major scalar reference bit
/// for bit (not only within reassociation).
#[test]
fn q2_k_interleaved_equals_row_major_reference_bitwise() {
    let f = WeightFormat::Q2_K;
    let mut isas = simd_isas("q2_k_interleaved_equals_row_major_reference_bitwise");
    isas.push(Isa::Scalar);
    for (seed, (s, a)) in [
        (Scales::Normal, Acts::Normal),
        (Scales::Huge, Acts::Huge),
        (Scales::MaxQuants, Acts::MaxMagnitude),
        (Scales::Tiny, Acts::Tiny),
        (Scales::ZeroBlocks, Acts::Normal),
    ]
    .into_iter()
    .enumerate()
    {
        let (n_rows, n_cols, n_b) = (19, 768, 6);
        let mut r = rng(2100 + seed as u64);
        let w = random_weights(&mut r, f, n_rows, n_cols, s);
        let p = packed(f, &w, n_cols);
        let x = random_acts(&mut r, n_b, n_cols, a);
        let q = quantized(f, &x, n_b, n_cols);
        let want = run(
            Isa::Scalar,
            f,
            WeightLayout::Rows,
            &w,
            n_cols,
            0..n_rows,
            &q,
        );
        for &isa in &isas {
            let got = run(
                isa,
                f,
                WeightLayout::Interleaved8,
                &p,
                n_cols,
                0..n_rows,
                &q,
            );
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{isa} {s:?} {a:?} output {i}: {g} vs {e}"
                );
            }
        }
    }
}
