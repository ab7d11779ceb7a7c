//! The model shapes `--synthetic` can write: hyperparameters of real models
//! (from their published configs), so a synthetic file costs what the real
//! one costs per token.

use crate::BenchError;

/// Which tokenizer conventions (special tokens, pre-tokenizer, chat
/// template) the synthetic vocabulary follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabStyle {
    /// Llama 3: `<|begin_of_text|>`, `llama-bpe` pre-tokenizer, BOS added.
    Llama3,
    /// Qwen 2: ChatML tokens, `qwen2` pre-tokenizer, no BOS.
    Qwen2,
}

/// The experts of a mixture-of-experts shape (every layer MoE, softmax
/// routing).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeShape {
    pub n_experts: usize,
    pub top_k: usize,
    pub expert_ffn: usize,
}

/// A decoder's hyperparameters (all GQA, SwiGLU, RMSNorm, RoPE).
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub name: String,
    /// `general.architecture`: `llama` or `qwen2`.
    pub arch: &'static str,
    pub hidden: usize,
    pub ffn: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab: usize,
    /// No `output.weight`: the embedding doubles as the output matrix.
    pub tied: bool,
    /// Q, K and V have biases (Qwen 2).
    pub qkv_bias: bool,
    pub rope_theta: f32,
    pub norm_eps: f32,
    pub context_length: usize,
    pub vocab_style: VocabStyle,
    /// Head size when it is not `hidden / n_heads` (Qwen3).
    pub key_length: Option<usize>,
    /// Q and K heads are RMS-normalised (Qwen3).
    pub qk_norm: bool,
    /// Experts instead of a dense FFN in every layer.
    pub moe: Option<MoeShape>,
}

impl Shape {
    /// Names accepted by [`Shape::named`].
    pub const NAMES: &'static [&'static str] = &[
        "llama3.2-3b",
        "llama3-8b",
        "qwen2.5-3b",
        "llama3.1-405b",
        "qwen3-30b-a3b",
        "tiny",
        "tiny-qwen2",
        "tiny-qwen3moe",
    ];

    /// A named shape. `layers` overrides the layer count (the 405B shape is
    /// a slice: 2 layers unless told otherwise).
    pub fn named(name: &str, layers: Option<usize>) -> Result<Shape, BenchError> {
        let llama = |hidden, ffn, n_layers, n_heads, n_kv_heads, tied, ctx| Shape {
            name: name.to_string(),
            arch: "llama",
            hidden,
            ffn,
            n_layers,
            n_heads,
            n_kv_heads,
            vocab: 128_256,
            tied,
            qkv_bias: false,
            rope_theta: 500_000.0,
            norm_eps: 1e-5,
            context_length: ctx,
            vocab_style: VocabStyle::Llama3,
            key_length: None,
            qk_norm: false,
            moe: None,
        };
        // Qwen3-30B-A3B's config: 48 layers of 128 experts (top 8, 768
        // wide), 32 query heads of 128 on 4 KV heads, hidden 2048.
        let qwen3moe = |hidden, n_layers, n_heads, n_kv, head, experts, top_k, eff, vocab| Shape {
            arch: "qwen3moe",
            vocab,
            rope_theta: 1_000_000.0,
            norm_eps: 1e-6,
            vocab_style: VocabStyle::Qwen2,
            key_length: Some(head),
            qk_norm: true,
            moe: Some(MoeShape {
                n_experts: experts,
                top_k,
                expert_ffn: eff,
            }),
            ..llama(hidden, 3 * hidden, n_layers, n_heads, n_kv, false, 40_960)
        };
        let mut s = match name {
            "llama3.2-3b" => llama(3072, 8192, 28, 24, 8, true, 131_072),
            "llama3-8b" => llama(4096, 14336, 32, 32, 8, false, 8192),
            "llama3.1-405b" => llama(16384, 53248, 2, 128, 8, false, 131_072),
            "qwen2.5-3b" => Shape {
                arch: "qwen2",
                vocab: 151_936,
                qkv_bias: true,
                rope_theta: 1_000_000.0,
                norm_eps: 1e-6,
                vocab_style: VocabStyle::Qwen2,
                ..llama(2048, 11008, 36, 16, 2, true, 32_768)
            },
            "qwen3-30b-a3b" => qwen3moe(2048, 48, 32, 4, 128, 128, 8, 768, 151_936),
            // Test shapes: every dimension a multiple of 256 so all quant
            // types apply; small enough to write and run in milliseconds.
            "tiny" => Shape {
                vocab: 512,
                ..llama(256, 512, 2, 4, 2, false, 2048)
            },
            "tiny-qwen2" => Shape {
                arch: "qwen2",
                vocab: 512,
                qkv_bias: true,
                rope_theta: 1_000_000.0,
                norm_eps: 1e-6,
                vocab_style: VocabStyle::Qwen2,
                ..llama(256, 512, 2, 4, 2, true, 2048)
            },
            "tiny-qwen3moe" => qwen3moe(256, 2, 4, 2, 64, 8, 2, 256, 512),
            other => return Err(BenchError::UnknownShape(other.to_string())),
        };
        if let Some(n) = layers {
            if n == 0 || n > 1024 {
                return Err(BenchError::Invalid(format!(
                    "--layers {n}: expected 1 to 1024"
                )));
            }
            s.n_layers = n;
        }
        Ok(s)
    }

    pub fn head_dim(&self) -> usize {
        self.key_length.unwrap_or(self.hidden / self.n_heads)
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim()
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }
}
