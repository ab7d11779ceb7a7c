//! Scalar reference kernels: plain, obviously-correct code that mirrors
//! ggml's scalar functions (`dequantize_row_*` in ggml-quants.c and the
//! `*_generic` dot products in ggml-cpu) statement by statement, including the
//! order of float operations and where ggml accumulates in integers. They are
//! the oracle the SIMD kernels are tested against and the portable fallback.
//!
//! * [`float`]: F32 / F16 / BF16 (dot products accumulate in f64 like ggml's
//!   `ggml_float` scalar path).
//! * [`legacy`]: Q8_0, Q4_0, Q5_0 (against Q8_0) and Q4_1, Q5_1 (against Q8_1).
//! * [`nonlinear`]: IQ4_NL, MXFP4 (against Q8_0) and IQ4_XS (against Q8_K).
//! * [`k_quants`]: Q4_K / Q5_K / Q6_K against Q8_K activations.
//! * [`k_low`]: Q2_K / Q3_K against Q8_K activations.
//! * [`iq_grid`]: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M against Q8_K.
//! * [`ternary`]: TQ1_0, TQ2_0 against Q8_K.
//! * [`low_bit`]: Q1_0, Q2_0 against Q8_0 (a weight block spans 4 / 2
//!   activation blocks).
//! * [`quantize`]: the activation quantizers.
//!
//! All functions assume sizes were validated by the public entry points.

pub(crate) mod float;
pub(crate) mod iq_grid;
pub(crate) mod k_low;
pub(crate) mod k_quants;
pub(crate) mod legacy;
pub(crate) mod low_bit;
pub(crate) mod nonlinear;
pub(crate) mod quantize;
pub(crate) mod ternary;

use std::ops::Range;

use crate::{QuantizedActivations, WeightFormat};

/// Dequantize one row; `src.len() == format.row_bytes(dst.len())`.
pub(crate) fn dequantize_row(format: WeightFormat, src: &[u8], dst: &mut [f32]) {
    match format {
        WeightFormat::F32 => float::dequantize_f32(src, dst),
        WeightFormat::F16 => float::dequantize_f16(src, dst),
        WeightFormat::BF16 => float::dequantize_bf16(src, dst),
        WeightFormat::Q8_0 => legacy::dequantize_q8_0(src, dst),
        WeightFormat::Q4_0 => legacy::dequantize_q4_0(src, dst),
        WeightFormat::Q4_K => k_quants::dequantize_q4_k(src, dst),
        WeightFormat::Q5_K => k_quants::dequantize_q5_k(src, dst),
        WeightFormat::Q6_K => k_quants::dequantize_q6_k(src, dst),
        WeightFormat::Q4_1 => legacy::dequantize_q4_1(src, dst),
        WeightFormat::Q5_0 => legacy::dequantize_q5_0(src, dst),
        WeightFormat::Q5_1 => legacy::dequantize_q5_1(src, dst),
        WeightFormat::Q2_K => k_low::dequantize_q2_k(src, dst),
        WeightFormat::Q3_K => k_low::dequantize_q3_k(src, dst),
        WeightFormat::IQ2_XXS => iq_grid::dequantize_iq2_xxs(src, dst),
        WeightFormat::IQ2_XS => iq_grid::dequantize_iq2_xs(src, dst),
        WeightFormat::IQ2_S => iq_grid::dequantize_iq2_s(src, dst),
        WeightFormat::IQ3_XXS => iq_grid::dequantize_iq3_xxs(src, dst),
        WeightFormat::IQ3_S => iq_grid::dequantize_iq3_s(src, dst),
        WeightFormat::IQ1_S => iq_grid::dequantize_iq1_s(src, dst),
        WeightFormat::IQ1_M => iq_grid::dequantize_iq1_m(src, dst),
        WeightFormat::IQ4_NL => nonlinear::dequantize_iq4_nl(src, dst),
        WeightFormat::IQ4_XS => nonlinear::dequantize_iq4_xs(src, dst),
        WeightFormat::MXFP4 => nonlinear::dequantize_mxfp4(src, dst),
        WeightFormat::TQ1_0 => ternary::dequantize_tq1_0(src, dst),
        WeightFormat::TQ2_0 => ternary::dequantize_tq2_0(src, dst),
        WeightFormat::Q1_0 => low_bit::dequantize_q1_0(src, dst),
        WeightFormat::Q2_0 => low_bit::dequantize_q2_0(src, dst),
    }
}

/// Dot product of one weight row with activation row `b`.
pub(crate) fn vec_dot(
    format: WeightFormat,
    w: &[u8],
    acts: &QuantizedActivations,
    b: usize,
) -> f32 {
    match format {
        WeightFormat::F32 => float::dot_f32(w, acts.f32_row(b)),
        WeightFormat::F16 => float::dot_f16(w, acts.u16_row(b)),
        WeightFormat::BF16 => float::dot_bf16(w, acts.u16_row(b)),
        WeightFormat::Q8_0 => legacy::dot_q8_0_q8_0(w, acts.q8_0_row(b)),
        WeightFormat::Q4_0 => legacy::dot_q4_0_q8_0(w, acts.q8_0_row(b)),
        WeightFormat::Q4_K => k_quants::dot_q4_k_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::Q5_K => k_quants::dot_q5_k_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::Q6_K => k_quants::dot_q6_k_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::Q4_1 => legacy::dot_q4_1_q8_1(w, acts.q8_1_row(b)),
        WeightFormat::Q5_0 => legacy::dot_q5_0_q8_0(w, acts.q8_0_row(b)),
        WeightFormat::Q5_1 => legacy::dot_q5_1_q8_1(w, acts.q8_1_row(b)),
        WeightFormat::Q2_K => k_low::dot_q2_k_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::Q3_K => k_low::dot_q3_k_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ2_XXS => iq_grid::dot_iq2_xxs_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ2_XS => iq_grid::dot_iq2_xs_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ2_S => iq_grid::dot_iq2_s_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ3_XXS => iq_grid::dot_iq3_xxs_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ3_S => iq_grid::dot_iq3_s_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ1_S => iq_grid::dot_iq1_s_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ1_M => iq_grid::dot_iq1_m_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::IQ4_NL => nonlinear::dot_iq4_nl_q8_0(w, acts.q8_0_row(b)),
        WeightFormat::IQ4_XS => nonlinear::dot_iq4_xs_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::MXFP4 => nonlinear::dot_mxfp4_q8_0(w, acts.q8_0_row(b)),
        WeightFormat::TQ1_0 => ternary::dot_tq1_0_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::TQ2_0 => ternary::dot_tq2_0_q8_k(w, acts.q8_k_row(b)),
        WeightFormat::Q1_0 => low_bit::dot_q1_0_q8_0(w, acts.q8_0_row(b)),
        WeightFormat::Q2_0 => low_bit::dot_q2_0_q8_0(w, acts.q8_0_row(b)),
    }
}

/// Validated matmul: one `vec_dot` per (weight row, activation row).
pub(crate) fn matmul(
    format: WeightFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    acts: &QuantizedActivations,
    out: &mut [f32],
) {
    let n_b = acts.n_rows();
    for (r, out_row) in rows.zip(out.chunks_exact_mut(n_b)) {
        let w = &weights[r * row_bytes..(r + 1) * row_bytes];
        for (b, o) in out_row.iter_mut().enumerate() {
            *o = vec_dot(format, w, acts, b);
        }
    }
}
