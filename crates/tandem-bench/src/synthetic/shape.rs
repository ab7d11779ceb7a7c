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

/// The experts of a mixture-of-experts shape (softmax routing unless
/// `deepseek` says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeShape {
    pub n_experts: usize,
    pub top_k: usize,
    pub expert_ffn: usize,
    /// Width of the shared expert (0: none).
    pub shared_ffn: usize,
    /// The first layers have a dense FFN of `Shape::ffn`.
    pub leading_dense: usize,
    /// DeepSeek-V3 routing: sigmoid with a selection bias, groups
    /// (count, used) and the routed weights' scale.
    pub deepseek: Option<(usize, usize, f32)>,
}

/// Latent attention (DeepSeek-V3, Kimi-K2): ranks and per-head widths.
#[derive(Debug, Clone, PartialEq)]
pub struct MlaShape {
    pub q_lora: usize,
    pub kv_lora: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head: usize,
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
    /// Experts instead of a dense FFN (past `leading_dense` layers).
    pub moe: Option<MoeShape>,
    /// Latent attention instead of GQA (`deepseek2`).
    pub mla: Option<MlaShape>,
    /// Every other layer's sliding window, from the first (`gpt-oss`).
    pub window: Option<usize>,
}

impl Shape {
    /// Names accepted by [`Shape::named`].
    pub const NAMES: &'static [&'static str] = &[
        "llama3.2-3b",
        "llama3-8b",
        "qwen2.5-3b",
        "llama3.1-405b",
        "qwen3-30b-a3b",
        "deepseek-v3",
        "kimi-k2",
        "gpt-oss-120b",
        "tiny",
        "tiny-qwen2",
        "tiny-qwen3moe",
        "tiny-deepseek3",
        "tiny-gpt-oss",
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
            mla: None,
            window: None,
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
                shared_ffn: 0,
                leading_dense: 0,
                deepseek: None,
            }),
            ..llama(hidden, 3 * hidden, n_layers, n_heads, n_kv, false, 40_960)
        };
        // DeepSeek-V3's config (Kimi-K2 is the same architecture with 384
        // experts, 64 heads, one dense layer and no expert groups): hidden
        // 7168, 61 layers, MLA with q_lora 1536 and kv_lora 512, heads of
        // 128 + 64 (RoPE), values of 128; routed experts 2048 wide, one
        // shared, top 8; the dense layers' FFN 18432. Slices default to 4
        // layers: the first dense one(s), then MoE layers.
        let deepseek = |n_heads, experts, leading, groups: (usize, usize), scale, vocab| Shape {
            arch: "deepseek2",
            vocab,
            rope_theta: 10_000.0,
            norm_eps: 1e-6,
            vocab_style: VocabStyle::Qwen2,
            moe: Some(MoeShape {
                n_experts: experts,
                top_k: 8,
                expert_ffn: 2048,
                shared_ffn: 2048,
                leading_dense: leading,
                deepseek: Some((groups.0, groups.1, scale)),
            }),
            mla: Some(MlaShape {
                q_lora: 1536,
                kv_lora: 512,
                qk_nope: 128,
                qk_rope: 64,
                v_head: 128,
            }),
            ..llama(7168, 18432, 4, n_heads, 1, false, 163_840)
        };
        // gpt-oss-120b's config: hidden 2880, 36 layers alternating a
        // 128-position window and full attention, 64 query heads of 64 on
        // 8 KV heads (biased, with sinks), 128 experts 2880 wide (top 4,
        // softmax after top-k, biased), o200k's 201,088-token vocabulary.
        let gpt_oss = |hidden, n_layers, n_heads, n_kv, head, experts, top_k, vocab| Shape {
            arch: "gpt-oss",
            vocab,
            qkv_bias: true,
            rope_theta: 150_000.0,
            vocab_style: VocabStyle::Qwen2,
            key_length: Some(head),
            moe: Some(MoeShape {
                n_experts: experts,
                top_k,
                expert_ffn: hidden,
                shared_ffn: 0,
                leading_dense: 0,
                deepseek: None,
            }),
            window: Some(128),
            ..llama(hidden, hidden, n_layers, n_heads, n_kv, false, 131_072)
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
            "deepseek-v3" => deepseek(128, 256, 3, (8, 4), 2.5, 129_280),
            "kimi-k2" => deepseek(64, 384, 1, (1, 1), 2.827, 163_840),
            "gpt-oss-120b" => gpt_oss(2880, 36, 64, 8, 64, 128, 4, 201_088),
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
            // DeepSeek-V3's layout at test size: one dense layer, then MoE
            // (8 experts in 4 groups, 2 used; a shared expert).
            "tiny-deepseek3" => {
                let mut s = deepseek(4, 8, 1, (4, 2), 2.5, 512);
                s.hidden = 256;
                s.ffn = 512;
                s.n_layers = 2;
                s.context_length = 4096;
                s.mla = Some(MlaShape {
                    q_lora: 128,
                    kv_lora: 256,
                    qk_nope: 64,
                    qk_rope: 32,
                    v_head: 64,
                });
                if let Some(m) = &mut s.moe {
                    m.top_k = 2;
                    m.expert_ffn = 256;
                    m.shared_ffn = 256;
                }
                s
            }
            "tiny-gpt-oss" => {
                let mut s = gpt_oss(256, 2, 4, 2, 64, 8, 2, 512);
                s.window = Some(16);
                s.context_length = 4096;
                s
            }
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
        match &self.mla {
            // The cached row: latent, then the rotated key part.
            Some(m) => m.kv_lora + m.qk_rope,
            None => self.key_length.unwrap_or(self.hidden / self.n_heads),
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim()
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }
}
