//! Gemma 3 (text): GQA with Q/K RMSNorm; "sandwich" norms (each block's
//! output is normed again before the residual add); a GELU (tanh) FFN;
//! embeddings scaled by sqrt(hidden); five windowed layers with a local
//! RoPE base for every global one; tied embeddings. On Hugging Face its
//! norm weights are stored minus one (`config.rs`).

use crate::config::ModelConfig;
use crate::spec::{Activation, AttnSpec, FfnSpec, LayerSpec};

pub(super) fn layer_spec(c: &ModelConfig, layer: usize) -> LayerSpec {
    let local = c
        .swa
        .as_ref()
        .filter(|w| w.layers.get(layer).copied().unwrap_or(false));
    let mut attn = AttnSpec::gqa(c, false, true);
    attn.window = local.map(|w| w.window);
    attn.rope = usize::from(local.is_some_and(|w| w.rope.is_some()));
    LayerSpec {
        attn,
        ffn: FfnSpec::Dense {
            width: c.ffn_hidden,
            act: match c.ggml_numerics {
                true => Activation::GeluTanhF16,
                false => Activation::GeluTanh,
            },
        },
        ffn_norm: "ffn_norm",
        post_norms: true,
    }
}

/// HF names of the sandwich norms; the rest as every family.
pub(super) fn hf_stem(stem: &str, expert: Option<usize>) -> Option<String> {
    if expert.is_some() {
        return None;
    }
    Some(match stem {
        "post_attention_norm" => "post_attention_layernorm".into(),
        "ffn_norm" => "pre_feedforward_layernorm".into(),
        "post_ffw_norm" => "post_feedforward_layernorm".into(),
        _ => super::common_hf_stem(stem)?,
    })
}
