//! Llama, Mistral and Mixtral: pre-norm GQA with RoPE, SwiGLU FFN; Mixtral
//! swaps the FFN for 8 experts (top-2, softmax gating renormalised), and
//! its GGUF files say `llama` with `expert_count` set.

use crate::config::ModelConfig;
use crate::spec::{AttnSpec, FfnSpec, LayerSpec};

pub(super) fn layer_spec(c: &ModelConfig, layer: usize) -> LayerSpec {
    LayerSpec {
        attn: AttnSpec::gqa(c, false, false),
        ffn: FfnSpec::of_layer(c, layer),
        ffn_norm: "ffn_norm",
        post_norms: false,
    }
}

/// HF names: Mixtral's `block_sparse_moe` (w1 gate, w3 up, w2 down).
pub(super) fn hf_stem(stem: &str, expert: Option<usize>) -> Option<String> {
    match (stem, expert) {
        ("ffn_gate_inp", None) => Some("block_sparse_moe.gate".into()),
        ("ffn_gate_exps", Some(e)) => Some(format!("block_sparse_moe.experts.{e}.w1")),
        ("ffn_up_exps", Some(e)) => Some(format!("block_sparse_moe.experts.{e}.w3")),
        ("ffn_down_exps", Some(e)) => Some(format!("block_sparse_moe.experts.{e}.w2")),
        (_, None) => super::common_hf_stem(stem),
        _ => None,
    }
}
