//! File types (`--quant`) and the per-tensor type mixture each implies.
//!
//! The `_M` mixtures follow llama.cpp's `llama_tensor_get_type` for a plain
//! dense model, so a synthetic Q4_K_M has the bytes per token of a real one:
//! the output matrix (or a tied embedding) is Q6_K; `attn_v` and `ffn_down`
//! are Q6_K in the layers `use_more_bits` picks (the first and last eighth
//! and every third in between), the rest Q4_K (Q5_K for Q5_K_M).

use tandem_gguf::GgmlType;

use crate::BenchError;

/// A llama.cpp file type (`general.file_type`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_K_M,
    Q5_K_M,
    Q6_K,
}

/// What a tensor is, for choosing its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOut,
    FfnGate,
    FfnUp,
    FfnDown,
}

/// llama.cpp's `use_more_bits(i_layer, n_layers)`.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    // Short-circuit: the subtraction only runs when i >= n / 8.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl Quant {
    pub const ALL: [Quant; 7] = [
        Quant::F16,
        Quant::BF16,
        Quant::Q8_0,
        Quant::Q4_0,
        Quant::Q4_K_M,
        Quant::Q5_K_M,
        Quant::Q6_K,
    ];
    pub const NAMES: &'static [&'static str] =
        &["F16", "BF16", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"];

    /// Case-insensitive.
    pub fn parse(s: &str) -> Result<Quant, BenchError> {
        let up = s.to_ascii_uppercase();
        Quant::ALL
            .into_iter()
            .zip(Quant::NAMES)
            .find(|(_, n)| **n == up)
            .map(|(q, _)| q)
            .ok_or_else(|| BenchError::UnknownQuant(s.to_string()))
    }

    pub fn name(self) -> &'static str {
        Quant::NAMES[Quant::ALL.iter().position(|&q| q == self).unwrap_or(0)]
    }

    /// llama.cpp's `llama_ftype` value.
    pub fn file_type(self) -> u32 {
        match self {
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4_K_M => 15,
            Quant::Q5_K_M => 17,
            Quant::Q6_K => 18,
            Quant::BF16 => 32,
        }
    }

    fn base(self) -> GgmlType {
        match self {
            Quant::F16 => GgmlType::F16,
            Quant::BF16 => GgmlType::BF16,
            Quant::Q8_0 => GgmlType::Q8_0,
            Quant::Q4_0 => GgmlType::Q4_0,
            Quant::Q4_K_M => GgmlType::Q4_K,
            Quant::Q5_K_M => GgmlType::Q5_K,
            Quant::Q6_K => GgmlType::Q6_K,
        }
    }

    /// The type of a weight matrix. `tied`: the model has no output matrix,
    /// so llama.cpp treats the embedding as the output.
    pub fn tensor_type(self, role: Role, layer: usize, n_layers: usize, tied: bool) -> GgmlType {
        let base = self.base();
        let float = matches!(self, Quant::F16 | Quant::BF16);
        let is_output = role == Role::Output || (tied && role == Role::TokenEmbd);
        if float || self == Quant::Q8_0 {
            return base;
        }
        if is_output {
            return GgmlType::Q6_K;
        }
        let more_bits = matches!(self, Quant::Q4_K_M | Quant::Q5_K_M)
            && matches!(role, Role::AttnV | Role::FfnDown)
            && use_more_bits(layer, n_layers);
        if more_bits {
            GgmlType::Q6_K
        } else {
            base
        }
    }
}
