//! GLM-4.5/4.6/4.7 (`glm4moe`): GQA with Q/K/V biases (and optional Q/K
//! norms) and partial RoPE; the first `leading_dense` layers dense, the
//! rest sigmoid-routed experts with a selection bias, a shared expert,
//! renormalised and scaled weights. Its FFN pre-norm is called
//! `post_attention_norm` in GGUF. The NextN (multi-token prediction)
//! layers that follow the trunk are not loaded (`config.rs` counts only
//! the trunk).

use crate::config::ModelConfig;
use crate::spec::{AttnSpec, FfnSpec, LayerSpec};

pub(super) fn layer_spec(c: &ModelConfig, layer: usize) -> LayerSpec {
    LayerSpec {
        attn: AttnSpec::gqa(c, true, false),
        ffn: FfnSpec::of_layer(c, layer),
        ffn_norm: "post_attention_norm",
        post_norms: false,
    }
}

/// HF names: `mlp.gate` routes (its `e_score_correction_bias` is GGUF's
/// `exp_probs_b`), `mlp.experts.E.*_proj`, `mlp.shared_experts.*_proj`.
pub(super) fn hf_name(
    layer: usize,
    stem: &str,
    suffix: &str,
    expert: Option<usize>,
) -> Option<String> {
    let hf = match (stem, expert) {
        ("exp_probs_b", None) => {
            return Some(format!(
                "model.layers.{layer}.mlp.gate.e_score_correction_bias"
            ))
        }
        ("post_attention_norm", None) => "post_attention_layernorm".to_string(),
        ("ffn_gate_inp", None) => "mlp.gate".into(),
        ("ffn_gate_exps", Some(e)) => format!("mlp.experts.{e}.gate_proj"),
        ("ffn_up_exps", Some(e)) => format!("mlp.experts.{e}.up_proj"),
        ("ffn_down_exps", Some(e)) => format!("mlp.experts.{e}.down_proj"),
        ("ffn_gate_shexp", None) => "mlp.shared_experts.gate_proj".into(),
        ("ffn_up_shexp", None) => "mlp.shared_experts.up_proj".into(),
        ("ffn_down_shexp", None) => "mlp.shared_experts.down_proj".into(),
        (_, None) => super::common_hf_stem(stem)?,
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}
