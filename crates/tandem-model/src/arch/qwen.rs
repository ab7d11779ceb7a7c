//! Qwen2 (QKV biases), Qwen3 (Q/K RMSNorm per head) and Qwen3-MoE (Qwen3
//! attention, every FFN a softmax-routed mixture of experts).

use super::Arch;
use crate::config::ModelConfig;
use crate::spec::{AttnSpec, FfnSpec, LayerSpec};

pub(super) fn layer_spec(arch: Arch, c: &ModelConfig, layer: usize) -> LayerSpec {
    LayerSpec {
        attn: AttnSpec::gqa(c, arch == Arch::Qwen2, arch != Arch::Qwen2),
        ffn: FfnSpec::of_layer(c, layer),
        ffn_norm: "ffn_norm",
        post_norms: false,
    }
}

/// HF names: `mlp.gate` routes, `mlp.experts.E.{gate,up,down}_proj`.
pub(super) fn hf_stem(stem: &str, expert: Option<usize>) -> Option<String> {
    match (stem, expert) {
        ("ffn_gate_inp", None) => Some("mlp.gate".into()),
        ("ffn_gate_exps", Some(e)) => Some(format!("mlp.experts.{e}.gate_proj")),
        ("ffn_up_exps", Some(e)) => Some(format!("mlp.experts.{e}.up_proj")),
        ("ffn_down_exps", Some(e)) => Some(format!("mlp.experts.{e}.down_proj")),
        (_, None) => super::common_hf_stem(stem),
        _ => None,
    }
}
