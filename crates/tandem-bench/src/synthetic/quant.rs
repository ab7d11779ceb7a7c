//! File types (`--quant`) and the per-tensor type mixture each implies.
//!
//! The `_M` mixtures follow llama.cpp's `llama_tensor_get_type` for a plain
//! dense model, so a synthetic Q4_K_M has the bytes per token of a real one:
//! the output matrix (or a tied embedding) is Q6_K; `attn_v` and `ffn_down`
//! are Q6_K in the layers `use_more_bits` picks (the first and last eighth
//! and every third in between), the rest Q4_K (Q5_K for Q5_K_M).
//!
//! The other single-type names put every layer matrix in that type (no
//! per-layer upgrades: a benchmark of the type, not a replica of
//! llama-quantize's mixture), with the output and embedding as
//! llama-quantize picks them: the output (or tied embedding) Q6_K, Q5_K for
//! the 1- and 2-bit IQ types, Q8_0 for Q8_0 and MXFP4; an untied embedding
//! Q2_K for IQ1_*/IQ2_XXS/IQ2_XS, IQ3_S for IQ2_S/IQ3_XXS, Q4_K for TQ* and
//! Q2_0 (Q1_0 keeps its own type).
//! `MXFP4` is llama-quantize's MXFP4_MOE: experts MXFP4, the rest Q8_0 (on
//! a dense shape the FFN takes the experts' type, so it is not all Q8_0).
//!
//! The `UD-*` names are mixtures like the ones the big downloads use
//! (unsloth's "dynamic" DeepSeek-R1 files): the routed experts low-bit,
//! attention and dense/shared FFN at 4-6 bits, the output Q6_K:
//!
//! | name | expert gate/up | expert down | attn q/k/o | attn v | dense FFN, embedding | output |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | `UD-Q2_K_XL` | Q2_K | Q3_K | Q4_K | Q6_K | Q4_K | Q6_K |
//! | `UD-IQ2_XXS` | IQ2_XXS | IQ2_XXS | Q4_K | Q6_K | Q4_K | Q6_K |
//! | `UD-IQ1_S` | IQ1_S | IQ1_M | Q4_K | Q6_K | Q4_K | Q6_K |
//!
//! On a dense shape the FFN plays the experts' part (it is where the bytes
//! are), so `--synthetic llama3.2-3b --quant UD-IQ2_XXS` has an IQ2_XXS FFN.

use tandem_gguf::GgmlType;

use crate::BenchError;

/// A llama.cpp file type (`general.file_type`) or a named mixture.
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
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    IQ4_NL,
    IQ4_XS,
    IQ3_XXS,
    IQ3_S,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ1_S,
    IQ1_M,
    TQ1_0,
    TQ2_0,
    Q1_0,
    Q2_0,
    MXFP4,
    UdQ2KXl,
    UdIq2Xxs,
    UdIq1S,
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
    /// Routed experts (`ffn_*_exps`).
    ExpGate,
    ExpUp,
    ExpDown,
}

impl Role {
    /// The dense role an expert role follows in the llama-quantize mixtures.
    fn dense(self) -> Role {
        match self {
            Role::ExpGate => Role::FfnGate,
            Role::ExpUp => Role::FfnUp,
            Role::ExpDown => Role::FfnDown,
            r => r,
        }
    }

    fn is_ffn(self) -> bool {
        matches!(self.dense(), Role::FfnGate | Role::FfnUp | Role::FfnDown)
    }
}

/// llama.cpp's `use_more_bits(i_layer, n_layers)`.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    // Short-circuit: the subtraction only runs when i >= n / 8.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl Quant {
    pub const ALL: [Quant; 29] = [
        Quant::F16,
        Quant::BF16,
        Quant::Q8_0,
        Quant::Q4_0,
        Quant::Q4_K_M,
        Quant::Q5_K_M,
        Quant::Q6_K,
        Quant::Q4_1,
        Quant::Q5_0,
        Quant::Q5_1,
        Quant::Q2_K,
        Quant::Q3_K,
        Quant::IQ4_NL,
        Quant::IQ4_XS,
        Quant::IQ3_XXS,
        Quant::IQ3_S,
        Quant::IQ2_XXS,
        Quant::IQ2_XS,
        Quant::IQ2_S,
        Quant::IQ1_S,
        Quant::IQ1_M,
        Quant::TQ1_0,
        Quant::TQ2_0,
        Quant::Q1_0,
        Quant::Q2_0,
        Quant::MXFP4,
        Quant::UdQ2KXl,
        Quant::UdIq2Xxs,
        Quant::UdIq1S,
    ];
    pub const NAMES: &'static [&'static str] = &[
        "F16",
        "BF16",
        "Q8_0",
        "Q4_0",
        "Q4_K_M",
        "Q5_K_M",
        "Q6_K",
        "Q4_1",
        "Q5_0",
        "Q5_1",
        "Q2_K",
        "Q3_K",
        "IQ4_NL",
        "IQ4_XS",
        "IQ3_XXS",
        "IQ3_S",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ2_S",
        "IQ1_S",
        "IQ1_M",
        "TQ1_0",
        "TQ2_0",
        "Q1_0",
        "Q2_0",
        "MXFP4",
        "UD-Q2_K_XL",
        "UD-IQ2_XXS",
        "UD-IQ1_S",
    ];

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

    /// llama.cpp's `llama_ftype` value (a mixture records its experts' type).
    pub fn file_type(self) -> u32 {
        match self {
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q4_1 => 3,
            Quant::Q8_0 => 7,
            Quant::Q5_0 => 8,
            Quant::Q5_1 => 9,
            Quant::Q2_K | Quant::UdQ2KXl => 10,
            Quant::Q3_K => 12,
            Quant::Q4_K_M => 15,
            Quant::Q5_K_M => 17,
            Quant::Q6_K => 18,
            Quant::IQ2_XXS | Quant::UdIq2Xxs => 19,
            Quant::IQ2_XS => 20,
            Quant::IQ3_XXS => 23,
            Quant::IQ1_S | Quant::UdIq1S => 24,
            Quant::IQ4_NL => 25,
            Quant::IQ3_S => 26,
            Quant::IQ2_S => 28,
            Quant::IQ4_XS => 30,
            Quant::IQ1_M => 31,
            Quant::BF16 => 32,
            Quant::TQ1_0 => 36,
            Quant::TQ2_0 => 37,
            Quant::MXFP4 => 38,
            Quant::Q1_0 => 40,
            Quant::Q2_0 => 41,
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
            Quant::Q4_1 => GgmlType::Q4_1,
            Quant::Q5_0 => GgmlType::Q5_0,
            Quant::Q5_1 => GgmlType::Q5_1,
            Quant::Q2_K | Quant::UdQ2KXl => GgmlType::Q2_K,
            Quant::Q3_K => GgmlType::Q3_K,
            Quant::IQ4_NL => GgmlType::IQ4_NL,
            Quant::IQ4_XS => GgmlType::IQ4_XS,
            Quant::IQ3_XXS => GgmlType::IQ3_XXS,
            Quant::IQ3_S => GgmlType::IQ3_S,
            Quant::IQ2_XXS | Quant::UdIq2Xxs => GgmlType::IQ2_XXS,
            Quant::IQ2_XS => GgmlType::IQ2_XS,
            Quant::IQ2_S => GgmlType::IQ2_S,
            Quant::IQ1_S | Quant::UdIq1S => GgmlType::IQ1_S,
            Quant::IQ1_M => GgmlType::IQ1_M,
            Quant::TQ1_0 => GgmlType::TQ1_0,
            Quant::TQ2_0 => GgmlType::TQ2_0,
            Quant::MXFP4 => GgmlType::MXFP4,
            Quant::Q1_0 => GgmlType::Q1_0,
            Quant::Q2_0 => GgmlType::Q2_0,
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
        if let Some(t) = self.mixture(role, is_output) {
            return t;
        }
        if is_output {
            return match self {
                Quant::MXFP4 => GgmlType::Q8_0,
                Quant::IQ1_S
                | Quant::IQ1_M
                | Quant::IQ2_XXS
                | Quant::IQ2_XS
                | Quant::IQ2_S
                | Quant::IQ3_XXS => GgmlType::Q5_K,
                _ => GgmlType::Q6_K,
            };
        }
        if role == Role::TokenEmbd {
            return match self {
                Quant::IQ1_S | Quant::IQ1_M | Quant::IQ2_XXS | Quant::IQ2_XS => GgmlType::Q2_K,
                Quant::IQ2_S | Quant::IQ3_XXS => GgmlType::IQ3_S,
                Quant::TQ1_0 | Quant::TQ2_0 | Quant::Q2_0 => GgmlType::Q4_K,
                Quant::MXFP4 => GgmlType::Q8_0,
                _ => base,
            };
        }
        if self == Quant::MXFP4 && !role.is_ffn() {
            return GgmlType::Q8_0;
        }
        let more_bits = matches!(self, Quant::Q4_K_M | Quant::Q5_K_M)
            && matches!(role.dense(), Role::AttnV | Role::FfnDown)
            && use_more_bits(layer, n_layers);
        if more_bits {
            GgmlType::Q6_K
        } else {
            base
        }
    }

    /// The `UD-*` mixtures (see the module docs); `None` for the others.
    fn mixture(self, role: Role, is_output: bool) -> Option<GgmlType> {
        let (gate_up, down) = match self {
            Quant::UdQ2KXl => (GgmlType::Q2_K, GgmlType::Q3_K),
            Quant::UdIq2Xxs => (GgmlType::IQ2_XXS, GgmlType::IQ2_XXS),
            Quant::UdIq1S => (GgmlType::IQ1_S, GgmlType::IQ1_M),
            _ => return None,
        };
        Some(if is_output {
            GgmlType::Q6_K
        } else {
            match role {
                // on a dense shape the FFN is where an MoE model's experts are
                Role::ExpGate | Role::ExpUp | Role::FfnGate | Role::FfnUp => gate_up,
                Role::ExpDown | Role::FfnDown => down,
                Role::AttnV => GgmlType::Q6_K,
                _ => GgmlType::Q4_K,
            }
        })
    }
}
