//! The architectures tandem runs, and what distinguishes them.
//!
//! All four are the same decoder (pre-norm attention + SwiGLU FFN, RMSNorm,
//! RoPE, GQA); they differ only in the switches below, so one forward pass
//! serves them all.

use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    /// From a GGUF `general.architecture` or an HF `model_type`.
    pub fn parse(name: &str) -> Result<Arch, ModelError> {
        Ok(match name {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// Qwen2 projects Q, K and V with a bias.
    pub fn has_qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// Qwen3 RMS-normalises each query and key head before RoPE.
    pub fn has_qk_norm(self) -> bool {
        self == Arch::Qwen3
    }
}

/// How RoPE pairs the dimensions of a head.
///
/// Hugging Face rotates the two halves of a head (`rotate_half`, GPT-NeoX
/// style). llama.cpp's converter permutes the rows of Llama's Q and K weights
/// so that llama.cpp can rotate adjacent pairs instead. The same model thus
/// needs `Interleaved` from a GGUF file and `Halves` from safetensors; Qwen is
/// `Halves` in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): ggml's `LLAMA_ROPE_TYPE_NORM`.
    Interleaved,
    /// Pairs (i, i + d/2): ggml's `LLAMA_ROPE_TYPE_NEOX`, HF's `rotate_half`.
    Halves,
}
