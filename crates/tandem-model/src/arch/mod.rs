//! The architectures tandem runs. Each family is a small module that says
//! how its config becomes per-layer specs ([`crate::spec`]) and how its
//! Hugging Face tensor names map to the canonical (GGUF) ones; the forward
//! pass knows layer kinds, never families.
//!
//! Adding a family: a variant here (its GGUF and HF names in
//! [`Arch::parse`]), a module with `layer_spec` and `hf_name`, and the RoPE
//! layout its GGUF files use (`config.rs`). New layer kinds go in
//! `spec.rs` and the forward pass; see ARCHITECTURE.md.

mod deepseek;
mod gemma;
mod glm;
mod gpt_oss;
mod llama;
mod qwen;

use crate::config::ModelConfig;
use crate::spec::LayerSpec;
use crate::ModelError;
pub(crate) use gpt_oss::split_hf_experts as split_gpt_oss_experts;

/// Every architecture name tandem accepts (GGUF `general.architecture`,
/// HF `model_type`), for error messages.
pub const SUPPORTED: &str =
    "llama, mistral, mixtral, qwen2, qwen3, qwen3moe, glm4moe, gemma3, deepseek2, gpt-oss";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    /// HF `mixtral`; GGUF files of Mixtral say `llama` with experts.
    Mixtral,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    /// GLM-4.5/4.6/4.7: sigmoid routing with a selection bias, a shared
    /// expert, leading dense layers, partial RoPE; NextN layers skipped.
    Glm4Moe,
    /// Gemma 3 (text): sandwich norms, GELU, scaled embeddings, local
    /// (windowed) and global layers with their own RoPE.
    Gemma3,
    /// DeepSeek-V2/V3/R1, Kimi-K2: latent attention (MLA), YaRN, sigmoid
    /// grouped routing with a shared expert.
    Deepseek2,
    /// gpt-oss: sinks, alternating windows, biased experts with a clamped
    /// SwiGLU.
    GptOss,
}

impl Arch {
    /// From a GGUF `general.architecture` or an HF `model_type`.
    pub fn parse(name: &str) -> Result<Arch, ModelError> {
        Ok(match name {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "mixtral" => Arch::Mixtral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "qwen3moe" | "qwen3_moe" => Arch::Qwen3Moe,
            "glm4moe" | "glm4_moe" => Arch::Glm4Moe,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            "deepseek2" | "deepseek_v2" | "deepseek_v3" | "kimi_k2" => Arch::Deepseek2,
            "gpt-oss" | "gpt_oss" => Arch::GptOss,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Mixtral => "mixtral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Glm4Moe => "glm4moe",
            Arch::Gemma3 => "gemma3",
            Arch::Deepseek2 => "deepseek2",
            Arch::GptOss => "gpt-oss",
        }
    }

    /// Architectures whose every file has experts.
    pub fn is_moe(self) -> bool {
        matches!(
            self,
            Arch::Mixtral | Arch::Qwen3Moe | Arch::Glm4Moe | Arch::Deepseek2 | Arch::GptOss
        )
    }

    /// What layer `layer` of a model of this architecture computes.
    pub fn layer_spec(self, c: &ModelConfig, layer: usize) -> LayerSpec {
        match self {
            Arch::Llama | Arch::Mistral | Arch::Mixtral => llama::layer_spec(c, layer),
            Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe => qwen::layer_spec(self, c, layer),
            Arch::Glm4Moe => glm::layer_spec(c, layer),
            Arch::Gemma3 => gemma::layer_spec(c, layer),
            Arch::Deepseek2 => deepseek::layer_spec(c, layer),
            Arch::GptOss => gpt_oss::layer_spec(c, layer),
        }
    }

    /// What the model does outside its layers.
    pub fn model_spec(self, c: &ModelConfig) -> crate::spec::ModelSpec {
        crate::spec::ModelSpec {
            embed_scale: (self == Arch::Gemma3).then(|| (c.hidden as f32).sqrt()),
        }
    }

    /// The Hugging Face name of a canonical (GGUF) tensor name: `expert`
    /// selects one expert of a stacked expert tensor (`ffn_gate_exps`
    /// ...), which HF checkpoints store one tensor per expert. None for
    /// tensors that only GGUF files have.
    pub fn hf_name(self, canonical: &str, expert: Option<usize>) -> Option<String> {
        let global = match canonical {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(g) = global {
            return expert.is_none().then(|| g.to_string());
        }
        let rest = canonical.strip_prefix("blk.")?;
        let (layer, name) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (stem, suffix) = name.rsplit_once('.')?;
        let hf = match self {
            Arch::Llama | Arch::Mistral | Arch::Mixtral => llama::hf_stem(stem, expert)?,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe => qwen::hf_stem(stem, expert)?,
            Arch::Glm4Moe => return glm::hf_name(layer, stem, suffix, expert),
            Arch::Deepseek2 => return deepseek::hf_name(layer, stem, suffix, expert),
            Arch::Gemma3 => gemma::hf_stem(stem, expert)?,
            // Sinks are a bare parameter (no `.weight`).
            Arch::GptOss if stem == "attn_sinks" => {
                return expert
                    .is_none()
                    .then(|| format!("model.layers.{layer}.self_attn.sinks"))
            }
            Arch::GptOss => gpt_oss::hf_stem(stem, expert)?,
        };
        Some(format!("model.layers.{layer}.{hf}.{suffix}"))
    }
}

/// The HF names every family shares (attention and norms, dense FFN).
fn common_hf_stem(stem: &str) -> Option<String> {
    Some(
        match stem {
            "attn_norm" => "input_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        }
        .to_string(),
    )
}

/// How a loaded model's Q and K rows pair their dimensions for RoPE.
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

#[cfg(test)]
mod tests {
    use super::Arch;

    #[test]
    fn maps_layer_and_global_names() {
        let a = Arch::Llama;
        assert_eq!(
            a.hf_name("blk.3.attn_q.bias", None).as_deref(),
            Some("model.layers.3.self_attn.q_proj.bias")
        );
        assert_eq!(
            a.hf_name("blk.0.ffn_down.weight", None).as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(
            a.hf_name("output.weight", None).as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(a.hf_name("rope_freqs.weight", None), None);
        assert_eq!(a.hf_name("blk.x.attn_q.weight", None), None);
    }

    #[test]
    fn maps_expert_tensors_per_family() {
        assert_eq!(
            Arch::Mixtral
                .hf_name("blk.1.ffn_up_exps.weight", Some(5))
                .as_deref(),
            Some("model.layers.1.block_sparse_moe.experts.5.w3.weight")
        );
        assert_eq!(
            Arch::Mixtral
                .hf_name("blk.1.ffn_gate_inp.weight", None)
                .as_deref(),
            Some("model.layers.1.block_sparse_moe.gate.weight")
        );
        assert_eq!(
            Arch::Qwen3Moe
                .hf_name("blk.0.ffn_down_exps.weight", Some(7))
                .as_deref(),
            Some("model.layers.0.mlp.experts.7.down_proj.weight")
        );
        assert_eq!(
            Arch::Qwen3Moe
                .hf_name("blk.0.ffn_gate_inp.weight", None)
                .as_deref(),
            Some("model.layers.0.mlp.gate.weight")
        );
        assert_eq!(
            Arch::Glm4Moe
                .hf_name("blk.2.exp_probs_b.bias", None)
                .as_deref(),
            Some("model.layers.2.mlp.gate.e_score_correction_bias")
        );
        assert_eq!(
            Arch::Glm4Moe
                .hf_name("blk.2.ffn_down_shexp.weight", None)
                .as_deref(),
            Some("model.layers.2.mlp.shared_experts.down_proj.weight")
        );
        assert_eq!(
            Arch::Glm4Moe
                .hf_name("blk.2.post_attention_norm.weight", None)
                .as_deref(),
            Some("model.layers.2.post_attention_layernorm.weight")
        );
        // An expert index on a tensor that has none is no name.
        assert_eq!(Arch::Qwen3Moe.hf_name("blk.0.attn_q.weight", Some(1)), None);
        assert_eq!(
            Arch::Qwen3Moe.hf_name("blk.0.ffn_up_exps.weight", None),
            None
        );
    }
}
