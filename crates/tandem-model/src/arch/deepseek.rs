//! DeepSeek-V2/V3/R1, Kimi-K2 and Mistral Large 3 (`deepseek2`): multi-head
//! latent attention (MLA: a low-rank Q, keys and values decompressed per
//! head from one cached latent, YaRN RoPE on a separate rotated part) and,
//! past the leading dense layers, sigmoid-routed experts with a selection
//! bias and grouped top-k, plus a shared expert. GGUF files come in two
//! layouts: `attn_kv_b` (older converters; also what Hugging Face
//! checkpoints hold as `kv_b_proj`) and the split `attn_k_b`/`attn_v_b`;
//! the loader accepts both.

use crate::config::ModelConfig;
use crate::spec::{AttnSpec, FfnSpec, LayerSpec};

pub(super) fn layer_spec(c: &ModelConfig, layer: usize) -> LayerSpec {
    let mut attn = AttnSpec::gqa(c, false, false);
    attn.mla = c.mla.clone();
    LayerSpec {
        attn,
        ffn: FfnSpec::of_layer(c, layer),
        ffn_norm: "ffn_norm",
        post_norms: false,
    }
}

/// HF names (`DeepseekV3ForCausalLM`): `self_attn.{q_a_proj, q_a_layernorm,
/// q_b_proj | q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj}`;
/// the MoE block as GLM's (`mlp.gate` with `e_score_correction_bias`,
/// `mlp.experts.E`, `mlp.shared_experts`).
pub(super) fn hf_name(
    layer: usize,
    stem: &str,
    suffix: &str,
    expert: Option<usize>,
) -> Option<String> {
    let attn = match stem {
        "attn_q_a" => "self_attn.q_a_proj",
        "attn_q_a_norm" => "self_attn.q_a_layernorm",
        "attn_q_b" => "self_attn.q_b_proj",
        "attn_q" => "self_attn.q_proj",
        "attn_kv_a_mqa" => "self_attn.kv_a_proj_with_mqa",
        "attn_kv_a_norm" => "self_attn.kv_a_layernorm",
        "attn_kv_b" => "self_attn.kv_b_proj",
        _ => return super::glm::hf_name(layer, stem, suffix, expert),
    };
    expert
        .is_none()
        .then(|| format!("model.layers.{layer}.{attn}.{suffix}"))
}
