//! Every AVX2 kernel against the scalar reference: random inputs, edge cases
//! (odd row counts, `rows.start != 0`, B = 1..=16, all-zero blocks, tiny and
//! huge scales, maximum-magnitude quants and activations), exact-arithmetic
//! cases that must match bit for bit, and independence from B and row range.

use super::*;
use crate::{matmul_rows_with, Isa};

fn avx2_or_skip(test: &str) -> bool {
    if Isa::Avx2.is_available() {
        true
    } else {
        eprintln!("note: {test}: skipped, this CPU lacks AVX2+FMA+F16C");
        false
    }
}

fn cols_for(f: WeightFormat) -> &'static [usize] {
    match f.block_len() {
        1 => &[1, 7, 31, 32, 33, 100, 256, 1000],
        32 => &[32, 64, 96, 288, 1024],
        _ => &[256, 512, 1280],
    }
}

/// Quantize `x` (n_rows × n_cols) for format `f` with the given ISA.
fn quantize(
    f: WeightFormat,
    isa: Isa,
    x: &[f32],
    n_rows: usize,
    n_cols: usize,
) -> QuantizedActivations {
    let mut q = QuantizedActivations::new(act_format(f));
    q.quantize_with(isa, x, n_rows, n_cols).unwrap();
    q
}

fn run(
    isa: Isa,
    f: WeightFormat,
    w: &[u8],
    n_cols: usize,
    rows: std::ops::Range<usize>,
    q: &QuantizedActivations,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows.len() * q.n_rows()];
    matmul_rows_with(isa, f, w, n_cols, rows, q, &mut out).unwrap();
    out
}

/// Compare AVX2 and scalar on one configuration, within [`tolerance`].
fn check_close(
    f: WeightFormat,
    n_rows: usize,
    n_cols: usize,
    n_b: usize,
    s: Scales,
    a: Acts,
    seed: u64,
) {
    let mut r = rng(seed);
    let w = random_weights(&mut r, f, n_rows, n_cols, s);
    let x = random_acts(&mut r, n_b, n_cols, a);
    let q = quantize(f, Isa::Scalar, &x, n_b, n_cols);
    let start = n_rows / 3;
    let rows = start..n_rows;
    let got = run(Isa::Avx2, f, &w, n_cols, rows.clone(), &q);
    let want = run(Isa::Scalar, f, &w, n_cols, rows.clone(), &q);
    let rb = f.row_bytes(n_cols).unwrap();
    for (i, r) in rows.enumerate() {
        let wr = &w[r * rb..(r + 1) * rb];
        for b in 0..n_b {
            let (g, e) = (got[i * n_b + b], want[i * n_b + b]);
            let tol = tolerance(n_cols, magnitude(f, wr, &q, b));
            assert!(
                g.is_finite() && e.is_finite() && f64::from((g - e).abs()) <= tol,
                "{f} {s:?} {a:?} n_cols={n_cols} row={r} b={b}: avx2 {g} vs ref {e} (tol {tol:e})"
            );
        }
    }
}

#[test]
fn avx2_matches_reference_random() {
    if !avx2_or_skip("avx2_matches_reference_random") {
        return;
    }
    let mut seed = 1;
    for f in WeightFormat::ALL {
        for &n_cols in cols_for(f) {
            for n_b in [1, 2, 3, 4, 5, 7, 8, 13, 16] {
                seed += 1;
                check_close(f, 5, n_cols, n_b, Scales::Normal, Acts::Normal, seed);
            }
        }
    }
}

#[test]
fn avx2_matches_reference_edge_cases() {
    if !avx2_or_skip("avx2_matches_reference_edge_cases") {
        return;
    }
    let cases = [
        (Scales::ZeroBlocks, Acts::Normal),
        (Scales::Normal, Acts::Zero),
        (Scales::Tiny, Acts::Normal),
        (Scales::Tiny, Acts::Tiny),
        (Scales::Huge, Acts::Normal),
        (Scales::Huge, Acts::Huge),
        (Scales::MaxQuants, Acts::MaxMagnitude),
        (Scales::Huge, Acts::MaxMagnitude),
        (Scales::Normal, Acts::Tiny),
    ];
    let mut seed = 1000;
    for f in WeightFormat::ALL {
        let n_cols = *cols_for(f).last().unwrap();
        for (s, a) in cases {
            for n_b in [1, 3, 16] {
                seed += 1;
                check_close(f, 3, n_cols, n_b, s, a, seed);
            }
        }
    }
}

/// Powers-of-two scales and sums below 2^24: every accumulation order is
/// exact, so AVX2, reference and an i64 ground truth agree bit for bit.
#[test]
fn exact_arithmetic_is_bit_identical() {
    if !avx2_or_skip("exact_arithmetic_is_bit_identical") {
        return;
    }
    let n_cols = 512;
    for (seed, f) in WeightFormat::ALL.into_iter().enumerate() {
        let mut r = rng(77 + seed as u64);
        let n_rows = 3;
        let w = random_weights(&mut r, f, n_rows, n_cols, Scales::Exact);
        let x = random_acts(&mut r, 6, n_cols, Acts::Exact);
        for isa in [Isa::Scalar, Isa::Avx2] {
            let q = quantize(f, isa, &x, 6, n_cols);
            let got = run(Isa::Avx2, f, &w, n_cols, 0..n_rows, &q);
            let want = run(Isa::Scalar, f, &w, n_cols, 0..n_rows, &q);
            // ground truth in f64 from the dequantized values (all exact here)
            let rb = f.row_bytes(n_cols).unwrap();
            for row in 0..n_rows {
                let mut wv = vec![0f32; n_cols];
                dequantize_row(f, &w[row * rb..(row + 1) * rb], &mut wv).unwrap();
                for b in 0..6 {
                    let mut av = vec![0f32; n_cols];
                    q.dequantize_row(b, &mut av).unwrap();
                    let exact: f64 = wv
                        .iter()
                        .zip(&av)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    let (g, e) = (got[row * 6 + b], want[row * 6 + b]);
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{f} row {row} b {b}: avx2 {g} ref {e}"
                    );
                    assert_eq!(
                        f64::from(e),
                        exact,
                        "{f} row {row} b {b}: ref {e} exact {exact}"
                    );
                }
            }
        }
    }
}

/// Results are independent of B, of tiling and of the row range: the
/// B = 16 product equals 16 separate B = 1 products and sub-ranges equal
/// slices of the full product, bit for bit, for both kernel families.
#[test]
fn results_independent_of_batch_and_row_range() {
    let isas: Vec<Isa> = [Isa::Scalar, Isa::Avx2]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    for (seed, f) in WeightFormat::ALL.into_iter().enumerate() {
        let n_cols = cols_for(f)[cols_for(f).len() / 2];
        let n_rows = 7;
        let mut r = rng(500 + seed as u64);
        let w = random_weights(&mut r, f, n_rows, n_cols, Scales::Normal);
        let x = random_acts(&mut r, 16, n_cols, Acts::Normal);
        for &isa in &isas {
            let q = quantize(f, isa, &x, 16, n_cols);
            let full = run(isa, f, &w, n_cols, 0..n_rows, &q);
            for b in 0..16 {
                let q1 = quantize(f, isa, &x[b * n_cols..(b + 1) * n_cols], 1, n_cols);
                let single = run(isa, f, &w, n_cols, 0..n_rows, &q1);
                for row in 0..n_rows {
                    assert_eq!(
                        single[row].to_bits(),
                        full[row * 16 + b].to_bits(),
                        "{f} {isa} row {row} b {b}"
                    );
                }
            }
            for (a, e) in [(0, 1), (3, 7), (2, 5), (6, 7), (4, 4)] {
                let part = run(isa, f, &w, n_cols, a..e, &q);
                assert_eq!(
                    part,
                    full[a * 16..e * 16].to_vec(),
                    "{f} {isa} rows {a}..{e}"
                );
            }
        }
    }
}

#[test]
fn avx512_runs_the_avx2_kernels() {
    if !Isa::Avx512.is_available() {
        eprintln!("note: avx512_runs_the_avx2_kernels: skipped, this CPU lacks AVX-512");
        return;
    }
    let f = WeightFormat::Q4_K;
    let mut r = rng(9);
    let w = random_weights(&mut r, f, 4, 512, Scales::Normal);
    let x = random_acts(&mut r, 3, 512, Acts::Normal);
    let q = quantize(f, Isa::Avx512, &x, 3, 512);
    assert_eq!(
        run(Isa::Avx512, f, &w, 512, 0..4, &q),
        run(Isa::Avx2, f, &w, 512, 0..4, &q)
    );
}
