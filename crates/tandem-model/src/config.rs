//! Hyperparameters, read from GGUF metadata or an HF `config.json` into one
//! [`ModelConfig`] that the forward pass uses without knowing the source.

use serde_json::Value as Json;
use tandem_gguf::Metadata;

use crate::arch::{Arch, RopeLayout};
use crate::ModelError;

/// Largest size, head count or layer count accepted from a file.
const MAX_DIM: usize = 1 << 20;

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    pub layout: RopeLayout,
    /// Rotated dimensions per head (the first `n_rot` of `head_dim`).
    pub n_rot: usize,
    /// Linear position scaling (1 / factor), 1.0 when off.
    pub freq_scale: f32,
    /// Per-frequency divisors ("llama3" scaling); `n_rot / 2` entries.
    pub freq_factors: Option<Vec<f32>>,
    /// YaRN: `freq_scale` applies only to the low frequencies, ramped
    /// between the correction dimensions (ggml's `rope_yarn`).
    pub yarn: Option<Yarn>,
}

/// YaRN RoPE scaling parameters (GGUF `rope.scaling.*`, HF
/// `rope_scaling` of type `yarn`).
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    /// The context the model was trained for before scaling.
    pub orig_ctx: usize,
    /// The correction range is rounded out to whole dimensions (ggml
    /// always; transformers unless `truncate: false`, as gpt-oss says).
    pub truncate: bool,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// Multiplies every sine and cosine (ggml's effective `mscale`; 1 for
    /// DeepSeek, whose attention scale carries it instead).
    pub mscale: f32,
}

/// Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2): keys and values
/// are decompressed per head from one shared latent of `kv_lora_rank`
/// values plus a `qk_rope`-wide rotated key part, which is all the cache
/// holds.
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// Rank of Q's low-rank projection (0: Q is projected directly, as in
    /// DeepSeek-V2-Lite).
    pub q_lora_rank: usize,
    pub kv_lora_rank: usize,
    /// Per head: the query/key part without and with RoPE, and the value.
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head: usize,
}

impl MlaConfig {
    /// Query/key width per head before absorption.
    pub fn qk_head(&self) -> usize {
        self.qk_nope + self.qk_rope
    }

    /// A cached row: the latent, then the rotated key part.
    pub fn row(&self) -> usize {
        self.kv_lora_rank + self.qk_rope
    }
}

/// `mscale` of YaRN (DeepSeek's `yarn_get_mscale`).
pub(crate) fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    pub vocab_size: usize,
    /// The context length the model was trained for.
    pub context_length: usize,
    pub norm_eps: f32,
    pub rope: RopeConfig,
    /// Mixture-of-experts hyperparameters; None for a dense model.
    pub moe: Option<MoeConfig>,
    /// Latent attention (then `n_kv_heads` is 1 and `head_dim` the cached
    /// row, [`MlaConfig::row`]).
    pub mla: Option<MlaConfig>,
    /// Sliding-window attention: the window and which layers use it.
    pub swa: Option<SlidingWindow>,
    /// Score scale when it is not `1/sqrt(head_dim)` (Gemma 3's
    /// `query_pre_attn_scalar`).
    pub attn_scale: Option<f32>,
    /// RMSNorm weights are stored as `w - 1` (Gemma checkpoints on Hugging
    /// Face; llama.cpp's converter adds the one back).
    pub norm_weight_offset: f32,
    /// Element-wise operations as ggml computes them where that differs
    /// from transformers (GELU through an f16 table): set for GGUF files,
    /// whose reference is llama.cpp.
    pub ggml_numerics: bool,
}

/// Sliding-window attention layers (Gemma 3: five of every six layers).
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    pub window: usize,
    /// Per layer: uses the window.
    pub layers: Vec<bool>,
    /// RoPE of the windowed layers, when it differs from the global one.
    pub rope: Option<RopeConfig>,
}

/// How a router turns its logits into expert weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gating {
    /// Softmax over all experts, then the top k (Mixtral, Qwen-MoE).
    Softmax,
    /// Sigmoid per expert; selection on sigmoid + a learned bias
    /// (`exp_probs_b`), weights from the sigmoid alone (DeepSeek-V3, GLM-4.5).
    Sigmoid,
    /// Top k of the raw logits, weights a softmax over those k (gpt-oss;
    /// llama.cpp's `SOFTMAX_WEIGHT`).
    SoftmaxTopK,
}

/// Mixture-of-experts hyperparameters (GGUF `{arch}.expert_*`, HF
/// `num_experts`, `num_experts_per_tok`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub n_experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// FFN width of one routed expert.
    pub expert_ffn: usize,
    /// FFN width of the shared expert(s) (0: none).
    pub shared_ffn: usize,
    /// The first `leading_dense` layers have a dense FFN.
    pub leading_dense: usize,
    pub gating: Gating,
    /// Renormalise the selected experts' weights to sum to one.
    pub norm_top_k: bool,
    /// Routed weights are multiplied by this (DeepSeek's
    /// `routed_scaling_factor`).
    pub scale: f32,
    /// Grouped top-k (DeepSeek-V3): experts in `n_groups` groups, tokens
    /// choose among the best `groups_used` groups only. 1/1: off.
    pub n_groups: usize,
    pub groups_used: usize,
    /// The experts' gated activation (SwiGLU; gpt-oss's clamped one).
    pub act: crate::spec::Activation,
}

/// Most expert groups a router may have (the routing keeps a fixed-size
/// mask of them; DeepSeek-V3 has 8).
pub(crate) const MAX_EXPERT_GROUPS: usize = 256;

impl MoeConfig {
    fn validate(&self) -> Result<(), ModelError> {
        let m = self;
        if m.n_experts == 0 || m.n_experts > 4096 {
            return Err(ModelError::invalid(
                "expert_count",
                format!("{} experts (1..=4096)", m.n_experts),
            ));
        }
        if m.top_k == 0 || m.top_k > m.n_experts {
            return Err(ModelError::invalid(
                "expert_used_count",
                format!("top-{} of {} experts", m.top_k, m.n_experts),
            ));
        }
        if m.expert_ffn == 0 || m.expert_ffn > 1 << 20 || m.shared_ffn > 1 << 20 {
            return Err(ModelError::invalid(
                "expert_feed_forward_length",
                format!("{} (shared {})", m.expert_ffn, m.shared_ffn),
            ));
        }
        if m.n_groups == 0
            || m.n_groups > MAX_EXPERT_GROUPS
            || !m.n_experts.is_multiple_of(m.n_groups)
            || m.groups_used == 0
            || m.groups_used > m.n_groups
            || m.top_k > m.groups_used * (m.n_experts / m.n_groups)
        {
            return Err(ModelError::invalid(
                "expert_group_count",
                format!(
                    "{} groups ({} used) of {} experts, top-{}",
                    m.n_groups, m.groups_used, m.n_experts, m.top_k
                ),
            ));
        }
        if !(m.scale.is_finite() && m.scale > 0.0) {
            return Err(ModelError::invalid("expert_weights_scale", m.scale));
        }
        Ok(())
    }
}

impl ModelConfig {
    fn validate(self) -> Result<Self, ModelError> {
        // MLA first: its ranks make `head_dim`, so a bad rank is named.
        if let Some(m) = &self.mla {
            let dims = [
                ("attention.kv_lora_rank", m.kv_lora_rank),
                ("attention.key_length (nope part)", m.qk_nope),
                ("rope.dimension_count", m.qk_rope),
                ("attention.value_length", m.v_head),
            ];
            for (k, v) in dims {
                if v == 0 || v > MAX_DIM {
                    return Err(ModelError::invalid(k, format!("{v} (MLA: 1..={MAX_DIM})")));
                }
            }
            if m.q_lora_rank > MAX_DIM {
                return Err(ModelError::invalid(
                    "attention.q_lora_rank",
                    format!("{} is implausibly large", m.q_lora_rank),
                ));
            }
            if self.n_kv_heads != 1 || self.head_dim != m.row() || self.rope.n_rot != m.qk_rope {
                return Err(ModelError::invalid(
                    "attention.kv_lora_rank",
                    "the latent cache's row does not match the head sizes",
                ));
            }
        }
        let nonzero = [
            ("block_count", self.n_layers),
            ("embedding_length", self.hidden),
            ("head_count", self.n_heads),
            ("head_count_kv", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("feed_forward_length", self.ffn_hidden),
        ];
        for (k, v) in nonzero {
            if v == 0 {
                return Err(ModelError::invalid(k, "must be positive"));
            }
            if v > MAX_DIM {
                return Err(ModelError::invalid(k, format!("{v} is implausibly large")));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ModelError::invalid(
                "head_count_kv",
                format!(
                    "{} query heads are not a multiple of {} KV heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if self.rope.n_rot == 0
            || self.rope.n_rot > self.head_dim
            || !self.rope.n_rot.is_multiple_of(2)
        {
            return Err(ModelError::invalid(
                "rope.dimension_count",
                format!("{} for head_dim {}", self.rope.n_rot, self.head_dim),
            ));
        }
        if let Some(f) = &self.rope.freq_factors {
            if f.len() != self.rope.n_rot / 2 || f.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                return Err(ModelError::invalid(
                    "rope_freqs",
                    "wrong length or non-positive factors",
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(ModelError::invalid("rms_norm_eps", self.norm_eps));
        }
        if !(self.rope.theta.is_finite() && self.rope.theta > 0.0) {
            return Err(ModelError::invalid("rope_theta", self.rope.theta));
        }
        if let Some(w) = &self.swa {
            if w.window == 0 || w.layers.len() != self.n_layers {
                return Err(ModelError::invalid(
                    "attention.sliding_window",
                    format!(
                        "window {} with a pattern of {} layers for {}",
                        w.window,
                        w.layers.len(),
                        self.n_layers
                    ),
                ));
            }
        }
        if let Some(s) = self.attn_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(ModelError::invalid("query_pre_attn_scalar", s));
            }
        }
        if let Some(m) = &self.moe {
            m.validate()?;
            if m.leading_dense > self.n_layers {
                return Err(ModelError::invalid(
                    "leading_dense_block_count",
                    format!("{} of {} layers", m.leading_dense, self.n_layers),
                ));
            }
        }
        Ok(self)
    }

    /// From GGUF metadata. `vocab_size` and `freq_factors` come from tensors
    /// and are filled in by the loader.
    pub fn from_gguf(meta: &Metadata) -> Result<ModelConfig, ModelError> {
        let arch_name = meta
            .get_str("general.architecture")?
            .ok_or_else(|| ModelError::MissingHyperparameter("general.architecture".into()))?;
        let arch = Arch::parse(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize, ModelError> {
            meta.get_usize(&key(k))?
                .ok_or_else(|| ModelError::MissingHyperparameter(key(k)))
        };
        let n_heads = req("attention.head_count")?;
        let hidden = req("embedding_length")?;
        let head_dim = match meta.get_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => hidden / n_heads.max(1),
        };
        let scaling_type = meta.get_str(&key("rope.scaling.type"))?;
        let freq_scale = match scaling_type {
            Some("linear") | Some("yarn") => {
                let f = meta.get_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0);
                if !(f.is_finite() && f > 0.0) {
                    return Err(ModelError::invalid(&key("rope.scaling.factor"), f));
                }
                1.0 / f
            }
            None | Some("none") => 1.0,
            Some(other) => {
                return Err(ModelError::invalid(
                    &key("rope.scaling.type"),
                    format!(
                        "'{other}' is not supported (none, linear, yarn; llama3 uses rope_freqs)"
                    ),
                ))
            }
        };
        // DeepSeek's converter writes 0.1 · mscale_all_dim (llama.cpp
        // divides it back out).
        let log_mul = meta
            .get_f32(&key("rope.scaling.yarn_log_multiplier"))?
            .map(|m| if arch == Arch::Deepseek2 { m / 0.1 } else { m });
        let factor = f64::from(1.0 / freq_scale);
        let yarn = match scaling_type {
            Some("yarn") if factor > 1.0 => Some(Yarn {
                truncate: true,
                orig_ctx: meta
                    .get_usize(&key("rope.scaling.original_context_length"))?
                    .ok_or_else(|| {
                        ModelError::MissingHyperparameter(key(
                            "rope.scaling.original_context_length",
                        ))
                    })?,
                beta_fast: meta
                    .get_f32(&key("rope.scaling.yarn_beta_fast"))?
                    .unwrap_or(32.0),
                beta_slow: meta
                    .get_f32(&key("rope.scaling.yarn_beta_slow"))?
                    .unwrap_or(1.0),
                // llama.cpp's yarn_attn_factor, times the (1 + 0.1 ln f)
                // its rope kernel multiplies in again.
                mscale: match log_mul {
                    Some(m_all) if m_all != 0.0 => {
                        let m = if arch == Arch::Deepseek2 && m_all != 1.0 {
                            f64::from(m_all)
                        } else {
                            1.0
                        };
                        (yarn_mscale(factor, m) / yarn_mscale(factor, f64::from(m_all))) as f32
                    }
                    _ => yarn_mscale(factor, 1.0) as f32,
                },
            }),
            _ => None,
        };
        let mla = match arch {
            Arch::Deepseek2 => {
                let rope = req("rope.dimension_count")?;
                let (qk, v) = match meta.get_usize(&key("attention.key_length_mla"))? {
                    Some(k) => (k, req("attention.value_length_mla")?),
                    None => (req("attention.key_length")?, req("attention.value_length")?),
                };
                Some(MlaConfig {
                    q_lora_rank: meta.get_usize(&key("attention.q_lora_rank"))?.unwrap_or(0),
                    kv_lora_rank: req("attention.kv_lora_rank")?,
                    qk_nope: qk.checked_sub(rope).ok_or_else(|| {
                        ModelError::invalid(
                            &key("attention.key_length"),
                            format!("{qk} is less than the rope dimension {rope}"),
                        )
                    })?,
                    qk_rope: rope,
                    v_head: v,
                })
            }
            _ => None,
        };
        // DeepSeek's score scale: 1/sqrt(qk head) times llama.cpp's mscale².
        let attn_scale = mla.as_ref().map(|m| {
            let sincos = yarn.as_ref().map_or(1.0, |y| f64::from(y.mscale));
            let ms = sincos * (1.0 + 0.1 * f64::from(log_mul.unwrap_or(0.0)) * factor.ln());
            (ms * ms / (m.qk_head() as f64).sqrt()) as f32
        });
        let head_dim = mla.as_ref().map_or(head_dim, MlaConfig::row);
        let moe = moe_from_gguf(meta, arch, &key)?;
        let swa = match meta.get_usize(&key("attention.sliding_window"))? {
            Some(w) if w > 0 && matches!(arch, Arch::Gemma3 | Arch::GptOss) => {
                let blocks = req("block_count")?;
                let period = meta
                    .get_usize(&key("attention.sliding_window_pattern"))?
                    .unwrap_or(if arch == Arch::GptOss { 2 } else { 6 });
                Some(SlidingWindow {
                    window: w,
                    // llama.cpp's set_swa_pattern: the last of every
                    // `period` layers is global.
                    layers: (0..blocks)
                        .map(|il| period == 0 || il % period < period.saturating_sub(1))
                        .collect(),
                    rope: None,
                })
            }
            _ => None,
        };
        // A model whose every layer is MoE may state no dense FFN width.
        let ffn_hidden = match (meta.get_usize(&key("feed_forward_length"))?, &moe) {
            (Some(f), _) => f,
            (None, Some(m)) => m.expert_ffn,
            (None, None) => req("feed_forward_length")?,
        };
        // NextN / MTP layers follow the trunk and are not run.
        let nextn = meta.get_usize(&key("nextn_predict_layers"))?.unwrap_or(0);
        let blocks = req("block_count")?;
        let n_layers = blocks.checked_sub(nextn).ok_or_else(|| {
            ModelError::invalid(
                &key("nextn_predict_layers"),
                format!("{nextn} of {blocks} blocks"),
            )
        })?;
        ModelConfig {
            arch,
            n_layers,
            hidden,
            n_heads,
            n_kv_heads: match &mla {
                Some(_) => 1,
                None => meta
                    .get_usize(&key("attention.head_count_kv"))?
                    .unwrap_or(n_heads),
            },
            head_dim,
            ffn_hidden,
            vocab_size: meta.get_usize(&key("vocab_size"))?.unwrap_or(0),
            context_length: meta.get_usize(&key("context_length"))?.unwrap_or(2048),
            norm_eps: meta
                .get_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope: RopeConfig {
                theta: meta.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
                layout: match arch {
                    Arch::Llama | Arch::Mistral | Arch::Mixtral | Arch::Deepseek2 => {
                        RopeLayout::Interleaved
                    }
                    Arch::Qwen2
                    | Arch::Qwen3
                    | Arch::Qwen3Moe
                    | Arch::Glm4Moe
                    | Arch::Gemma3
                    | Arch::GptOss => RopeLayout::Halves,
                },
                n_rot: meta
                    .get_usize(&key("rope.dimension_count"))?
                    .unwrap_or(head_dim),
                freq_scale,
                freq_factors: None,
                yarn,
            },
            moe,
            mla,
            swa,
            attn_scale,
            norm_weight_offset: 0.0,
            ggml_numerics: true,
        }
        .with_local_rope(
            meta.get_f32(&key("rope.freq_base_swa"))?
                .or((arch == Arch::Gemma3).then_some(10_000.0)),
        )
        .validate()
    }

    /// The windowed layers' RoPE: the global one with another base and no
    /// linear scaling (Gemma 3 scales only its global layers).
    fn with_local_rope(mut self, theta: Option<f32>) -> Self {
        if let (Some(w), Some(theta)) = (&mut self.swa, theta) {
            w.rope = Some(RopeConfig {
                theta,
                freq_scale: 1.0,
                yarn: None,
                ..self.rope.clone()
            });
        }
        self
    }

    pub(crate) fn with_tensor_facts(
        mut self,
        vocab_size: usize,
        freq_factors: Option<Vec<f32>>,
    ) -> Result<Self, ModelError> {
        self.vocab_size = vocab_size;
        if freq_factors.is_some() {
            self.rope.freq_factors = freq_factors;
        }
        self.validate()
    }

    /// From a Hugging Face `config.json` (transformers 4 and 5 layouts).
    pub fn from_hf(cfg: &Json) -> Result<ModelConfig, ModelError> {
        let model_type = cfg
            .get("model_type")
            .and_then(Json::as_str)
            .ok_or_else(|| ModelError::MissingHyperparameter("config.json: model_type".into()))?;
        let arch = Arch::parse(model_type)?;
        let req = |k: &str| -> Result<usize, ModelError> {
            let v = cfg
                .get(k)
                .ok_or_else(|| ModelError::MissingHyperparameter(format!("config.json: {k}")))?;
            v.as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| ModelError::invalid(k, format!("{v} is not a non-negative integer")))
        };
        let opt_usize = |k: &str| {
            cfg.get(k)
                .and_then(Json::as_u64)
                .and_then(|x| usize::try_from(x).ok())
        };
        let opt_f64 = |v: &Json, k: &str| v.get(k).and_then(Json::as_f64);
        let hidden = req("hidden_size")?;
        let n_heads = req("num_attention_heads")?;
        let head_dim = opt_usize("head_dim").unwrap_or(hidden / n_heads.max(1));
        // Checked before anything is sized by it (the llama3 factors below).
        if head_dim > MAX_DIM {
            return Err(ModelError::invalid(
                "head_dim",
                format!("{head_dim} is implausibly large"),
            ));
        }

        // transformers 5 folds rope_theta and rope_scaling into rope_parameters.
        let params = cfg.get("rope_parameters").filter(|v| v.is_object());
        // Per layer type (Gemma 3 in transformers 5): the global layers'
        // parameters are the model's; the windowed ones' base is read below.
        let local_params = params.and_then(|p| p.get("sliding_attention"));
        let params = params.map(|p| p.get("full_attention").unwrap_or(p));
        let scaling = cfg.get("rope_scaling").filter(|v| v.is_object()).or(params);
        let theta = opt_f64(cfg, "rope_theta")
            .or_else(|| params.and_then(|p| opt_f64(p, "rope_theta")))
            .unwrap_or(10000.0);
        let rope_type = scaling
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(Json::as_str)
            .unwrap_or("default");
        let mut freq_scale = 1.0f32;
        let mut freq_factors = None;
        let mut yarn = None;
        let mut yarn_factor = 1.0f64;
        match rope_type {
            "default" => {}
            "yarn" => {
                let s = scaling.ok_or_else(|| ModelError::invalid("rope_scaling", "missing"))?;
                let f = opt_f64(s, "factor").unwrap_or(1.0);
                if !(f.is_finite() && f >= 1.0) {
                    return Err(ModelError::invalid("rope_scaling.factor", f));
                }
                freq_scale = (1.0 / f) as f32;
                yarn_factor = f;
                let m = opt_f64(s, "mscale").filter(|&m| m != 0.0);
                let m_all = opt_f64(s, "mscale_all_dim").filter(|&m| m != 0.0);
                let mscale = match (opt_f64(s, "attention_factor"), m, m_all) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(m_all)) => yarn_mscale(f, m) / yarn_mscale(f, m_all),
                    _ => yarn_mscale(f, 1.0),
                };
                let orig = opt_f64(s, "original_max_position_embeddings")
                    .or_else(|| opt_f64(cfg, "original_max_position_embeddings"))
                    .filter(|&o| o >= 1.0 && o <= MAX_DIM as f64 * 16.0)
                    .ok_or_else(|| {
                        ModelError::invalid(
                            "rope_scaling.original_max_position_embeddings",
                            "missing",
                        )
                    })?;
                yarn = (f > 1.0).then_some(Yarn {
                    truncate: s.get("truncate").and_then(Json::as_bool).unwrap_or(true),
                    orig_ctx: orig as usize,
                    beta_fast: opt_f64(s, "beta_fast").unwrap_or(32.0) as f32,
                    beta_slow: opt_f64(s, "beta_slow").unwrap_or(1.0) as f32,
                    mscale: mscale as f32,
                });
            }
            "linear" => {
                let f = scaling.and_then(|s| opt_f64(s, "factor")).unwrap_or(1.0);
                if !(f.is_finite() && f > 0.0) {
                    return Err(ModelError::invalid("rope_scaling.factor", f));
                }
                freq_scale = (1.0 / f) as f32;
            }
            "llama3" => {
                let s = scaling.ok_or_else(|| ModelError::invalid("rope_scaling", "missing"))?;
                let get = |k: &str| {
                    opt_f64(s, k)
                        .ok_or_else(|| ModelError::invalid(&format!("rope_scaling.{k}"), "missing"))
                };
                freq_factors = Some(llama3_freq_factors(
                    theta,
                    head_dim,
                    get("factor")?,
                    get("low_freq_factor")?,
                    get("high_freq_factor")?,
                    get("original_max_position_embeddings")?,
                ));
            }
            other => {
                return Err(ModelError::invalid(
                    "rope_scaling",
                    format!("rope type '{other}' is not supported (default, linear, llama3, yarn)"),
                ))
            }
        }
        let moe = moe_from_hf(cfg, arch)?;
        let n_layers_hf = req("num_hidden_layers")?;
        let swa = match (arch, opt_usize("sliding_window")) {
            (Arch::Gemma3 | Arch::GptOss, Some(w)) if w > 0 => {
                let layers = match cfg.get("layer_types").and_then(Json::as_array) {
                    Some(t) => t
                        .iter()
                        .map(|v| v.as_str() == Some("sliding_attention"))
                        .collect(),
                    None => {
                        let period = opt_usize("sliding_window_pattern").unwrap_or(6);
                        (0..n_layers_hf)
                            .map(|il| period == 0 || (il + 1) % period != 0)
                            .collect()
                    }
                };
                Some(SlidingWindow {
                    window: w,
                    layers,
                    rope: None,
                })
            }
            _ => None,
        };
        let gemma = arch == Arch::Gemma3;
        let mla = match arch {
            Arch::Deepseek2 => Some(MlaConfig {
                q_lora_rank: opt_usize("q_lora_rank").unwrap_or(0),
                kv_lora_rank: req("kv_lora_rank")?,
                qk_nope: req("qk_nope_head_dim")?,
                qk_rope: req("qk_rope_head_dim")?,
                v_head: req("v_head_dim")?,
            }),
            _ => None,
        };
        // DeepSeek: 1/sqrt(qk head), times mscale(mscale_all_dim)² under YaRN.
        let mla_scale = mla.as_ref().map(|m| {
            let m_all = scaling
                .and_then(|s| opt_f64(s, "mscale_all_dim"))
                .filter(|&m| m != 0.0 && yarn.is_some());
            let ms = m_all.map_or(1.0, |m_all| yarn_mscale(yarn_factor, m_all));
            (ms * ms / (m.qk_head() as f64).sqrt()) as f32
        });
        let head_dim = mla.as_ref().map_or(head_dim, MlaConfig::row);
        let rope_layout = match cfg.get("rope_interleave").and_then(Json::as_bool) {
            Some(true) | None if mla.is_some() => RopeLayout::Interleaved,
            _ => RopeLayout::Halves,
        };
        ModelConfig {
            arch,
            n_layers: n_layers_hf,
            hidden,
            n_heads,
            n_kv_heads: match &mla {
                Some(_) => 1,
                None => opt_usize("num_key_value_heads").unwrap_or(n_heads),
            },
            head_dim,
            ffn_hidden: req("intermediate_size")?,
            vocab_size: req("vocab_size")?,
            context_length: opt_usize("max_position_embeddings").unwrap_or(2048),
            norm_eps: opt_f64(cfg, "rms_norm_eps").unwrap_or(1e-6) as f32,
            rope: RopeConfig {
                theta: theta as f32,
                layout: rope_layout,
                // GLM rotates the first half of each head.
                n_rot: match (
                    &mla,
                    opt_f64(cfg, "partial_rotary_factor")
                        .or_else(|| params.and_then(|p| opt_f64(p, "partial_rotary_factor"))),
                ) {
                    (Some(m), _) => m.qk_rope,
                    (None, Some(f)) if f > 0.0 && f <= 1.0 => (head_dim as f64 * f) as usize,
                    _ => head_dim,
                },
                freq_scale,
                freq_factors,
                yarn,
            },
            moe,
            mla,
            swa,
            attn_scale: opt_f64(cfg, "query_pre_attn_scalar")
                .filter(|_| gemma)
                .map(|s| (1.0 / s.sqrt()) as f32)
                .or(mla_scale),
            norm_weight_offset: if gemma { 1.0 } else { 0.0 },
            ggml_numerics: false,
        }
        .with_local_rope(
            opt_f64(cfg, "rope_local_base_freq")
                .or_else(|| local_params.and_then(|p| opt_f64(p, "rope_theta")))
                .map(|t| t as f32)
                .or(gemma.then_some(10_000.0)),
        )
        .validate()
    }
}

/// MoE hyperparameters from GGUF metadata (`{arch}.expert_*`), None when
/// the file has no experts. Defaults are llama.cpp's for each architecture.
fn moe_from_gguf(
    meta: &Metadata,
    arch: Arch,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<MoeConfig>, ModelError> {
    let n_experts = meta.get_usize(&key("expert_count"))?.unwrap_or(0);
    if n_experts == 0 {
        if arch.is_moe() {
            return Err(ModelError::MissingHyperparameter(key("expert_count")));
        }
        return Ok(None);
    }
    let top_k = meta
        .get_usize(&key("expert_used_count"))?
        .ok_or_else(|| ModelError::MissingHyperparameter(key("expert_used_count")))?;
    let expert_ffn = match meta.get_usize(&key("expert_feed_forward_length"))? {
        Some(f) => f,
        // Mixtral files (architecture llama) give the expert width as the FFN width.
        None => meta
            .get_usize(&key("feed_forward_length"))?
            .ok_or_else(|| ModelError::MissingHyperparameter(key("expert_feed_forward_length")))?,
    };
    let gating = match meta.get_u32(&key("expert_gating_func"))? {
        // llama.cpp hard-codes gpt-oss's routing.
        _ if arch == Arch::GptOss => Gating::SoftmaxTopK,
        // GLM files that predate the key route by sigmoid.
        None | Some(0) if arch == Arch::Glm4Moe => Gating::Sigmoid,
        None | Some(0) | Some(1) => Gating::Softmax,
        Some(2) => Gating::Sigmoid,
        Some(other) => {
            return Err(ModelError::invalid(
                &key("expert_gating_func"),
                format!("{other} (1 softmax, 2 sigmoid)"),
            ))
        }
    };
    let n_shared = meta.get_usize(&key("expert_shared_count"))?.unwrap_or(0);
    let shared_ffn = match meta.get_usize(&key("expert_shared_feed_forward_length"))? {
        Some(f) => f,
        None => n_shared.saturating_mul(expert_ffn),
    };
    Ok(Some(MoeConfig {
        n_experts,
        top_k,
        expert_ffn,
        shared_ffn,
        leading_dense: meta
            .get_usize(&key("leading_dense_block_count"))?
            .unwrap_or(0),
        gating,
        // llama.cpp renormalises for llama (Mixtral) and qwen3moe always.
        norm_top_k: match arch {
            Arch::Llama | Arch::Mixtral | Arch::Qwen3Moe => true,
            _ => meta.get_bool(&key("expert_weights_norm"))?.unwrap_or(false),
        },
        // llama.cpp reads an absent or zero scale as "no scaling".
        scale: match meta.get_f32(&key("expert_weights_scale"))? {
            Some(s) if s != 0.0 => s,
            _ => 1.0,
        },
        n_groups: meta
            .get_usize(&key("expert_group_count"))?
            .unwrap_or(1)
            .max(1),
        groups_used: meta
            .get_usize(&key("expert_group_used_count"))?
            .unwrap_or(1)
            .max(1),
        act: match arch {
            Arch::GptOss => crate::spec::Activation::SwigluOai,
            _ => crate::spec::Activation::Silu,
        },
    }))
}

/// MoE hyperparameters from an HF `config.json`.
fn moe_from_hf(cfg: &Json, arch: Arch) -> Result<Option<MoeConfig>, ModelError> {
    let get = |k: &str| {
        cfg.get(k)
            .and_then(Json::as_u64)
            .and_then(|x| usize::try_from(x).ok())
    };
    let need = |k: &str| {
        get(k).ok_or_else(|| ModelError::MissingHyperparameter(format!("config.json: {k}")))
    };
    let moe = match arch {
        Arch::Mixtral => MoeConfig {
            n_experts: need("num_local_experts")?,
            top_k: need("num_experts_per_tok")?,
            expert_ffn: need("intermediate_size")?,
            shared_ffn: 0,
            leading_dense: 0,
            gating: Gating::Softmax,
            norm_top_k: true,
            scale: 1.0,
            n_groups: 1,
            groups_used: 1,
            act: crate::spec::Activation::Silu,
        },
        Arch::Qwen3Moe => {
            // Layers listed in mlp_only_layers, or off the sparse step, are
            // dense; tandem supports the common case (every layer MoE).
            let step = get("decoder_sparse_step").unwrap_or(1);
            let dense_layers = cfg
                .get("mlp_only_layers")
                .and_then(Json::as_array)
                .is_some_and(|a| !a.is_empty());
            if step != 1 || dense_layers {
                return Err(ModelError::invalid(
                    "decoder_sparse_step",
                    "dense layers between MoE layers are not supported",
                ));
            }
            MoeConfig {
                // transformers 5 renamed num_experts to num_local_experts.
                n_experts: match get("num_experts") {
                    Some(n) => n,
                    None => need("num_local_experts")?,
                },
                top_k: need("num_experts_per_tok")?,
                expert_ffn: need("moe_intermediate_size")?,
                shared_ffn: 0,
                leading_dense: 0,
                gating: Gating::Softmax,
                norm_top_k: cfg
                    .get("norm_topk_prob")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
                scale: 1.0,
                n_groups: 1,
                groups_used: 1,
                act: crate::spec::Activation::Silu,
            }
        }
        Arch::Glm4Moe | Arch::Deepseek2 => MoeConfig {
            n_experts: need("n_routed_experts")?,
            top_k: need("num_experts_per_tok")?,
            expert_ffn: need("moe_intermediate_size")?,
            shared_ffn: get("n_shared_experts")
                .unwrap_or(0)
                .saturating_mul(need("moe_intermediate_size")?),
            leading_dense: get("first_k_dense_replace").unwrap_or(0),
            gating: match cfg.get("scoring_func").and_then(Json::as_str) {
                Some("softmax") => Gating::Softmax,
                _ => Gating::Sigmoid,
            },
            norm_top_k: cfg
                .get("norm_topk_prob")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            scale: cfg
                .get("routed_scaling_factor")
                .and_then(Json::as_f64)
                .unwrap_or(1.0) as f32,
            n_groups: get("n_group").unwrap_or(1).max(1),
            groups_used: get("topk_group").unwrap_or(1).max(1),
            act: crate::spec::Activation::Silu,
        },
        Arch::GptOss => MoeConfig {
            n_experts: need("num_local_experts")?,
            top_k: need("num_experts_per_tok")?,
            expert_ffn: need("intermediate_size")?,
            shared_ffn: 0,
            leading_dense: 0,
            gating: Gating::SoftmaxTopK,
            norm_top_k: false,
            scale: 1.0,
            n_groups: 1,
            groups_used: 1,
            act: crate::spec::Activation::SwigluOai,
        },
        _ => return Ok(None),
    };
    Ok(Some(moe))
}

/// Llama 3.1's frequency-dependent RoPE scaling, expressed as llama.cpp's
/// per-frequency divisors (`rope_freqs.weight`), computed exactly as
/// llama.cpp's converter does so both formats run the same numbers.
fn llama3_freq_factors(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f32> {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deepseek(kv_lora: u64) -> Json {
        serde_json::json!({
            "model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100,
            "q_lora_rank": 32, "kv_lora_rank": kv_lora, "qk_nope_head_dim": 32,
            "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 8,
            "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        })
    }

    #[test]
    fn mla_shapes_are_checked() {
        let c = ModelConfig::from_hf(&deepseek(64)).expect("valid");
        let m = c.mla.expect("mla");
        assert_eq!((c.n_kv_heads, c.head_dim, c.rope.n_rot), (1, 80, 16));
        assert_eq!(m.row(), 80);
        for bad in [0, 1 << 40] {
            let e = ModelConfig::from_hf(&deepseek(bad)).expect_err("refused");
            assert!(e.to_string().contains("kv_lora_rank"), "{e}");
        }
    }
}
