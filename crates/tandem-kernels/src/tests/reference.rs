//! Checks of the reference kernels themselves.

use super::*;
use crate::{matmul_rows_with, Isa};

/// The reference dot equals the f64 dot of dequantized weights and
/// dequantized activations (within the f32 rounding of the reference).
#[test]
fn reference_dot_matches_dequantized_float_dot() {
    let mut seed = 3000;
    for f in WeightFormat::ALL {
        let n_cols = match f.block_len() {
            256 => 768,
            128 => 384,
            _ => 320,
        };
        for (s, a) in [
            (Scales::Normal, Acts::Normal),
            (Scales::MaxQuants, Acts::MaxMagnitude),
            (Scales::Huge, Acts::Tiny),
        ] {
            seed += 1;
            let mut r = rng(seed);
            let n_rows = 4;
            let w = random_weights(&mut r, f, n_rows, n_cols, s);
            let x = random_acts(&mut r, 3, n_cols, a);
            let mut q = QuantizedActivations::new(act_format(f));
            q.quantize_with(Isa::Scalar, &x, 3, n_cols).unwrap();
            let mut out = vec![0f32; n_rows * 3];
            matmul_rows_with(Isa::Scalar, f, &w, n_cols, 0..n_rows, &q, &mut out).unwrap();
            let rb = f.row_bytes(n_cols).unwrap();
            for row in 0..n_rows {
                let wr = &w[row * rb..(row + 1) * rb];
                let mut wv = vec![0f32; n_cols];
                dequantize_row(f, wr, &mut wv).unwrap();
                for b in 0..3 {
                    let mut av = vec![0f32; n_cols];
                    q.dequantize_row(b, &mut av).unwrap();
                    let exact: f64 = wv
                        .iter()
                        .zip(&av)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    let tol =
                        tolerance(n_cols, magnitude(f, wr, &q, b)) + q8_1_s_error(f, wr, &q, b);
                    let got = f64::from(out[row * 3 + b]);
                    assert!(
                        (got - exact).abs() <= tol,
                        "{f} {s:?} row {row} b {b}: ref {got} vs float dot {exact} (tol {tol:e})"
                    );
                }
            }
        }
    }
}

/// Q4_1 / Q5_1 dots use the activation block's stored `s = fp16(d·Σq)`
/// (unrounded `d`), not `d16·Σq` of the dequantized values: allow
/// `|m|·|Σq|·|d|·2^-9` per block for that rounding (ggml computes the same).
fn q8_1_s_error(f: WeightFormat, w: &[u8], q: &QuantizedActivations, b: usize) -> f64 {
    if f.activation_format() != ActivationFormat::Q8_1 {
        return 0.0;
    }
    let row = q.q8_1_row(b);
    w.chunks_exact(f.block_bytes())
        .enumerate()
        .map(|(ib, blk)| {
            let m = f64::from(crate::convert::read_f16(blk, 2)).abs();
            let sum: i32 = row.qs[32 * ib..32 * ib + 32]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            m * f64::from(sum.abs()) * f64::from(row.d[ib]).abs() * 2f64.powi(-9)
        })
        .sum()
}

/// ggml's two ways of reading the packed 6-bit scales agree.
#[test]
fn scale_unpacking_variants_agree() {
    let mut r = rng(11);
    for _ in 0..2000 {
        let mut s = [0u8; 12];
        r.fill(&mut s);
        let (sc, m) = scales_mins_bytes(unpack_scales_mins_k4(&s));
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &s), (sc[j], m[j]), "{s:?} j={j}");
        }
    }
}

#[test]
fn known_values() {
    // Q4_0: d = 1, nibbles 0x0..0xF -> -8..7
    let mut blk = vec![0u8; 18];
    blk[0..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
    for j in 0..16 {
        blk[2 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let mut out = [0f32; 32];
    dequantize_row(WeightFormat::Q4_0, &blk, &mut out).unwrap();
    for j in 0..16 {
        assert_eq!(out[j], j as f32 - 8.0);
        assert_eq!(out[j + 16], 7.0 - j as f32);
    }
    // Q6_K: ql = 0, qh = 0 -> q = -32; scales = 1; d = 0.5 -> every weight -16
    let mut blk = vec![0u8; 210];
    blk[192..208].fill(1);
    blk[208..210].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
    let mut out = [0f32; 256];
    dequantize_row(WeightFormat::Q6_K, &blk, &mut out).unwrap();
    assert!(out.iter().all(|&v| v == -16.0));
    // Q4_K: d = 1, dmin = 1, scale j = j, min j = 1 (j < 4 only for simplicity), all quants 3
    let mut blk = vec![0u8; 144];
    blk[0..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
    blk[2..4].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
    for j in 0..4 {
        blk[4 + j] = j as u8;
        blk[8 + j] = 1;
    }
    blk[16..144].fill(0x33);
    let mut out = [0f32; 256];
    dequantize_row(WeightFormat::Q4_K, &blk, &mut out).unwrap();
    for (i, &v) in out.iter().enumerate() {
        let j = i / 32;
        let want = if j < 4 { 3.0 * j as f32 - 1.0 } else { 0.0 };
        assert_eq!(v, want, "i={i}");
    }
}

/// Q1_0 / Q2_0 values by hand (ggml-quants.c `dequantize_row_q{1,2}_0`)
/// and their dots against Q8_0 activations that span several activation
/// blocks per weight block, each with its own scale.
#[test]
fn low_bit_known_values() {
    // Q1_0: d = 0.5, bit j set for even j -> +0.5, -0.5, +0.5, ...
    let mut blk = vec![0u8; 18];
    blk[0..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
    blk[2..].fill(0b0101_0101);
    let mut w1 = [0f32; 128];
    dequantize_row(WeightFormat::Q1_0, &blk, &mut w1).unwrap();
    for (j, &v) in w1.iter().enumerate() {
        assert_eq!(v, if j % 2 == 0 { 0.5 } else { -0.5 }, "Q1_0 j={j}");
    }
    // Q2_0: d = 2, byte 0b11_10_01_00 -> -2, 0, 2, 4 repeating
    let mut blk2 = vec![0u8; 18];
    blk2[0..2].copy_from_slice(&f32_to_f16(2.0).to_le_bytes());
    blk2[2..].fill(0b1110_0100);
    let mut w2 = [0f32; 64];
    dequantize_row(WeightFormat::Q2_0, &blk2, &mut w2).unwrap();
    for (j, &v) in w2.iter().enumerate() {
        assert_eq!(v, [-2.0, 0.0, 2.0, 4.0][j % 4], "Q2_0 j={j}");
    }
    // activations: block k of 32 values all equal to (k + 1) (d = (k + 1)/127 per block)
    let x: Vec<f32> = (0..128).map(|i| (i / 32 + 1) as f32).collect();
    let mut q = QuantizedActivations::new(ActivationFormat::Q8_0);
    q.quantize_with(Isa::Scalar, &x, 1, 128).unwrap();
    let mut out = [0f32; 1];
    matmul_rows_with(
        Isa::Scalar,
        WeightFormat::Q1_0,
        &blk,
        128,
        0..1,
        &q,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        out[0], 0.0,
        "alternating signs cancel in every activation block"
    );
    let mut all_pos = blk.clone();
    all_pos[2..].fill(0xFF);
    matmul_rows_with(
        Isa::Scalar,
        WeightFormat::Q1_0,
        &all_pos,
        128,
        0..1,
        &q,
        &mut out,
    )
    .unwrap();
    let want: f64 = x.iter().map(|&v| 0.5 * f64::from(v)).sum();
    assert!(
        (f64::from(out[0]) - want).abs() < 1e-3 * want,
        "{} vs {want}",
        out[0]
    );
    let mut two = blk2.clone();
    two.extend_from_slice(&blk2);
    let mut out2 = [0f32; 1];
    matmul_rows_with(
        Isa::Scalar,
        WeightFormat::Q2_0,
        &two,
        128,
        0..1,
        &q,
        &mut out2,
    )
    .unwrap();
    // per 4 weights (-2 + 0 + 2 + 4)·a = 4a; 32 groups over activation blocks 1,1,2,2,3,3,4,4 (×4 groups each)
    let want2: f64 = (0..128)
        .map(|i| f64::from(w2[i % 64]) * f64::from(x[i]))
        .sum();
    assert!(
        (f64::from(out2[0]) - want2).abs() < 1e-3 * want2,
        "{} vs {want2}",
        out2[0]
    );
}

/// Spot checks of the generated grids against ggml-common.h (first and last
/// entries) and of the sign table's even-parity rule.
#[test]
fn grids_spot_check() {
    use crate::grids::*;
    assert_eq!(IQ2XXS_GRID[0], 0x0808_0808_0808_0808);
    assert_eq!(IQ1S_GRID[0], 0xffff_ffff_ffff_ffff);
    assert_eq!(IQ3XXS_GRID[0], 0x0404_0404);
    assert_eq!(KVALUES_IQ4NL[0], -127);
    assert_eq!(KVALUES_IQ4NL[15], 113);
    assert_eq!(KVALUES_MXFP4[15], -12);
    for (i, &s) in KSIGNS_IQ2XS.iter().enumerate() {
        let parity = (i as u32).count_ones() & 1;
        assert_eq!(u32::from(s), i as u32 | (parity << 7), "ksigns[{i}]");
    }
    assert_eq!(KMASK_IQ2XS, [1, 2, 4, 8, 16, 32, 64, 128]);
}
