//! NEON-only checks (aarch64): the `sdot` path and the ARMv8.0 `smull`
//! fallback put the same integers in the same lanes, so they must agree bit
//! for bit; the fallback must also match the scalar reference (the generic
//! `simd_vs_reference` tests exercise whichever path the CPU selects, so
//! run them under `QEMU_CPU=cortex-a72` too to cover detection).

use super::*;
use crate::neon::{dotprod_available, matmul_dot};
use crate::{matmul_rows_with, Isa};

fn run_dot(
    f: WeightFormat,
    w: &[u8],
    n_cols: usize,
    rows: std::ops::Range<usize>,
    q: &QuantizedActivations,
    dotprod: bool,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows.len() * q.n_rows()];
    let rb = f.row_bytes(n_cols).unwrap();
    matmul_dot(f, w, rb, rows, q, &mut out, dotprod).unwrap();
    out
}

#[test]
fn neon_dot_paths_agree_and_match_reference() {
    eprintln!("note: dotprod available: {}", dotprod_available());
    let mut seed = 9000;
    for f in WeightFormat::ALL {
        let cols: &[usize] = match f.block_len() {
            1 => &[33, 256, 1000],
            32 => &[32, 96, 1024],
            _ => &[256, 1280],
        };
        for &n_cols in cols {
            for (s, a) in [
                (Scales::Normal, Acts::Normal),
                (Scales::MaxQuants, Acts::MaxMagnitude),
                (Scales::Huge, Acts::Huge),
                (Scales::Tiny, Acts::Normal),
            ] {
                for n_b in [1, 2, 3, 4, 5, 9, 16] {
                    seed += 1;
                    let mut r = rng(seed);
                    let n_rows = 5;
                    let w = random_weights(&mut r, f, n_rows, n_cols, s);
                    let x = random_acts(&mut r, n_b, n_cols, a);
                    let mut q = QuantizedActivations::new(act_format(f));
                    q.quantize_with(Isa::Neon, &x, n_b, n_cols).unwrap();
                    let fast = run_dot(f, &w, n_cols, 1..n_rows, &q, true);
                    let slow = run_dot(f, &w, n_cols, 1..n_rows, &q, false);
                    assert_eq!(
                        fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{f} {s:?} {a:?} n_cols={n_cols} B={n_b}: sdot vs smull"
                    );
                    let mut want = vec![0f32; slow.len()];
                    matmul_rows_with(Isa::Scalar, f, &w, n_cols, 1..n_rows, &q, &mut want).unwrap();
                    let rb = f.row_bytes(n_cols).unwrap();
                    for (i, row) in (1..n_rows).enumerate() {
                        let wr = &w[row * rb..(row + 1) * rb];
                        for b in 0..n_b {
                            let (g, e) = (slow[i * n_b + b], want[i * n_b + b]);
                            let tol = tolerance(n_cols, magnitude(f, wr, &q, b));
                            assert!(
                                g.is_finite() && f64::from((g - e).abs()) <= tol,
                                "{f} {s:?} {a:?} n_cols={n_cols} B={n_b} row={row} b={b}: {g} vs ref {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
