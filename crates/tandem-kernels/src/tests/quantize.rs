//! Activation quantizers: AVX2 == scalar bit for bit, Q8_K / Q8_0
//! invariants, variant differences, buffer reuse.

use super::*;
use crate::activations::Q8_0Variant;
use crate::Isa;

/// Inputs exercising ties, signs, zeros, tiny and huge values.
fn inputs(n_rows: usize, n_cols: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut x = random_acts(&mut r, n_rows, n_cols, Acts::Normal);
    for (i, row) in x.chunks_exact_mut(n_cols).enumerate() {
        match i % 8 {
            0 => row.fill(0.0),
            1 => {
                // amax 127 -> id exactly 1: half-integer ties
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (r.random_range(-254i32..=254) as f32) / 2.0;
                    if j % 32 == 0 {
                        *v = 127.0;
                    }
                    if j % 64 == 1 {
                        *v = -127.0; // +-max present: Q8_K keeps the first
                    }
                    if j % 256 == 0 {
                        *v = -127.0; // first max negative, last max positive
                    }
                }
            }
            2 => row.iter_mut().for_each(|v| *v *= 1e-30),
            3 => row.iter_mut().for_each(|v| *v *= 1e30),
            4 => row.iter_mut().for_each(|v| *v = -v.abs()),
            5 => {
                row.fill(0.0);
                row[n_cols / 2] = -2.5;
            }
            _ => {}
        }
    }
    x
}

fn bytes(
    f: ActivationFormat,
    isa: Isa,
    variant: Q8_0Variant,
    x: &[f32],
    n_rows: usize,
    n_cols: usize,
) -> Vec<u8> {
    let mut q = QuantizedActivations::new(f);
    q.set_q8_0_variant(variant);
    q.quantize_with(isa, x, n_rows, n_cols).unwrap();
    q.to_ggml_bytes()
}

#[test]
fn avx2_quantizers_match_scalar() {
    if !Isa::Avx2.is_available() {
        eprintln!("note: avx2_quantizers_match_scalar: skipped, this CPU lacks AVX2+FMA+F16C");
        return;
    }
    for (f, n_cols) in [
        (ActivationFormat::Q8_0, 256),
        (ActivationFormat::Q8_0, 32),
        (ActivationFormat::Q8_K, 512),
        (ActivationFormat::F16, 263),
        (ActivationFormat::BF16, 100),
        (ActivationFormat::F32, 17),
    ] {
        for seed in 0..4 {
            let x = inputs(16, n_cols, seed);
            let a = bytes(f, Isa::Avx2, Q8_0Variant::X86, &x, 16, n_cols);
            let s = bytes(f, Isa::Scalar, Q8_0Variant::X86, &x, 16, n_cols);
            assert_eq!(a, s, "{f} n_cols={n_cols} seed={seed}");
        }
    }
}

#[test]
fn q8_k_invariants() {
    let n_cols = 1024;
    let x = inputs(16, n_cols, 42);
    let mut q = QuantizedActivations::new(ActivationFormat::Q8_K);
    q.quantize_with(Isa::Scalar, &x, 16, n_cols).unwrap();
    for b in 0..16 {
        let row = q.q8_k_row(b);
        let xr = &x[b * n_cols..(b + 1) * n_cols];
        for (blk, xb) in xr.chunks_exact(QK_K).enumerate() {
            let qs = &row.qs[blk * QK_K..(blk + 1) * QK_K];
            let d = row.d[blk];
            for g in 0..16 {
                let s: i32 = qs[16 * g..16 * g + 16].iter().map(|&v| i32::from(v)).sum();
                assert_eq!(i32::from(row.bsums[blk * 16 + g]), s);
            }
            assert!(qs.iter().all(|&v| (-127..=127).contains(&v)));
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                assert_eq!(d, 0.0);
                assert!(qs.iter().all(|&v| v == 0));
                continue;
            }
            // the signed max maps to -127, so d has the opposite sign of the max
            let first = xb.iter().position(|v| v.abs() == amax).unwrap();
            assert_eq!(qs[first], -127);
            for (&xv, &qv) in xb.iter().zip(qs) {
                let err = (f64::from(xv) - f64::from(d) * f64::from(qv)).abs();
                assert!(
                    err <= f64::from(d.abs()) * 0.5 * (1.0 + 1e-5) + 1e-45,
                    "x={xv} q={qv} d={d}"
                );
            }
        }
    }
}

#[test]
fn q8_0_invariants_and_variants() {
    let n_cols = 256;
    let x = inputs(16, n_cols, 7);
    let mut qx = QuantizedActivations::new(ActivationFormat::Q8_0);
    let mut qr = QuantizedActivations::new(ActivationFormat::Q8_0);
    qr.set_q8_0_variant(Q8_0Variant::Reference);
    qx.quantize_with(Isa::Scalar, &x, 16, n_cols).unwrap();
    qr.quantize_with(Isa::Scalar, &x, 16, n_cols).unwrap();
    let mut differ = 0;
    for b in 0..16 {
        let (rx, rr) = (qx.q8_0_row(b), qr.q8_0_row(b));
        assert_eq!(rx.d, rr.d, "both variants store fp16(amax/127)");
        for (i, (&a, &c)) in rx.qs.iter().zip(rr.qs).enumerate() {
            assert!(
                (i32::from(a) - i32::from(c)).abs() <= 1,
                "row {b} i {i}: {a} vs {c}"
            );
            differ += usize::from(a != c);
            let xv = x[b * n_cols + i];
            let amax = x[b * n_cols + i / 32 * 32..][..32]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            let dd = f64::from(amax) / 127.0;
            let err = (f64::from(xv) - f64::from(rx.d[i / 32]) * f64::from(a)).abs();
            if rx.d[i / 32].is_finite() && rx.d[i / 32] != 0.0 {
                assert!(
                    err <= 0.6 * dd,
                    "row {b} i {i}: x={xv} q={a} d={}",
                    rx.d[i / 32]
                );
            }
        }
    }
    // the tie row (amax 127, half-integers) must show the rounding difference
    assert!(differ > 0 && differ < 16 * n_cols / 8, "differ = {differ}");
    assert_eq!(qx.q8_0_scale_bits().len(), 16 * n_cols / 32);
}

#[test]
fn quantize_reuses_buffers() {
    for f in [
        ActivationFormat::Q8_0,
        ActivationFormat::Q8_K,
        ActivationFormat::F16,
        ActivationFormat::F32,
    ] {
        let mut q = QuantizedActivations::new(f);
        let x = inputs(4, 512, 1);
        q.quantize(&x, 4, 512).unwrap();
        let before = q.buffer_ptrs();
        for _ in 0..3 {
            q.quantize(&x, 4, 512).unwrap();
            assert_eq!(q.buffer_ptrs(), before, "{f}: reallocated");
            q.quantize(&x[..1024], 2, 512).unwrap(); // smaller: still no reallocation
            assert_eq!(q.buffer_ptrs(), before, "{f}: reallocated on shrink");
        }
    }
}
