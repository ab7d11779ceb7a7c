//! Layer specs: what one decoder layer computes, as data.
//!
//! An architecture module (`crate::arch`) turns a [`ModelConfig`] into one
//! [`LayerSpec`] per layer; the loader fetches the tensors a spec names and
//! the forward pass runs each layer by its kinds (a `match` per block, no
//! trait objects). A backend implements the kinds, not the architectures:
//! adding a family that only recombines existing kinds touches its arch
//! module and nothing else.

use crate::config::{MlaConfig, ModelConfig, MoeConfig};

/// What the model does outside its layers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelSpec {
    /// Embeddings are multiplied by this (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
}

/// One decoder layer: attention then feed-forward, each pre-normed with a
/// residual connection.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub attn: AttnSpec,
    pub ffn: FfnSpec,
    /// GGUF stem of the FFN's pre-norm (`ffn_norm`; GLM calls it
    /// `post_attention_norm`).
    pub ffn_norm: &'static str,
    /// Sandwich norms: each block's output is RMS-normed
    /// (`post_attention_norm`, `post_ffw_norm`) before the residual add.
    pub post_norms: bool,
}

/// The gate's activation in a gated FFN: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU.
    Silu,
    /// GeGLU with the tanh approximation (Gemma).
    GeluTanh,
    /// The same through ggml's f16 table (GGUF files: llama.cpp's numbers).
    GeluTanhF16,
    /// gpt-oss's clamped SwiGLU: `g = min(g, 7)`, `u = clamp(u, -7, 7)`,
    /// `g · σ(1.702 g) · (u + 1)` (llama.cpp's `swiglu_oai`; the constants
    /// are the model's, fixed there too).
    SwigluOai,
}

impl Activation {
    /// In place: `gate = act(gate) * up`.
    pub fn apply(self, gate: &mut [f32], up: &[f32]) {
        match self {
            Activation::Silu => crate::ops::silu_mul(gate, up),
            Activation::GeluTanh => crate::ops::gelu_tanh_mul(gate, up),
            Activation::GeluTanhF16 => crate::ops::gelu_tanh_f16_mul(gate, up),
            Activation::SwigluOai => crate::ops::swiglu_oai_mul(gate, up),
        }
    }
}

/// Grouped-query attention with RoPE.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Q, K and V projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// Each query and key head is RMS-normalised before RoPE (Qwen3):
    /// required. Otherwise the norms are used if the file has them (GLM's
    /// `use_qk_norm`).
    pub qk_norm: bool,
    /// Multiplies the scores before the softmax.
    pub scale: f32,
    /// Sliding window: a query at position p sees positions
    /// `p + 1 - window ..= p` only (None: the whole causal prefix).
    pub window: Option<usize>,
    /// Scores become `cap · tanh(s / cap)` (Gemma 2).
    pub softcap: Option<f32>,
    /// One learned sink logit per query head joins each softmax
    /// (`attn_sinks`, gpt-oss).
    pub sinks: bool,
    /// Which of the model's RoPEs rotates Q and K (0: the global one; 1:
    /// the windowed layers' own).
    pub rope: usize,
    /// Multi-head latent attention instead of separate K/V heads: then
    /// `n_kv_heads` is 1, `head_dim` is the cached row (latent + rotated
    /// part) and queries are absorbed into latent space (`crate::mla`).
    pub mla: Option<MlaConfig>,
}

/// The feed-forward block.
#[derive(Debug, Clone, PartialEq)]
pub enum FfnSpec {
    /// `down(act(gate(x)) * up(x))` of width `width`.
    Dense { width: usize, act: Activation },
    /// A router picks `top_k` of `n_experts` SwiGLU experts per token; a
    /// shared expert (if any) sees every token.
    Moe(MoeConfig),
}

impl AttnSpec {
    /// Plain GQA of the config's shape (the attention of every family
    /// tandem runs so far), with the given switches.
    pub fn gqa(c: &ModelConfig, qkv_bias: bool, qk_norm: bool) -> AttnSpec {
        AttnSpec {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            qkv_bias,
            qk_norm,
            scale: c.attn_scale.unwrap_or(1.0 / (c.head_dim as f32).sqrt()),
            window: None,
            softcap: None,
            sinks: false,
            rope: 0,
            mla: None,
        }
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }
}

impl FfnSpec {
    /// Layer `layer`'s FFN under the config: MoE past the leading dense
    /// layers when the config has experts, dense otherwise.
    pub fn of_layer(c: &ModelConfig, layer: usize) -> FfnSpec {
        match &c.moe {
            Some(m) if layer >= m.leading_dense => FfnSpec::Moe(m.clone()),
            _ => FfnSpec::Dense {
                width: c.ffn_hidden,
                act: Activation::Silu,
            },
        }
    }
}
