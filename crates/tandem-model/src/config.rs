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
}

impl ModelConfig {
    fn validate(self) -> Result<Self, ModelError> {
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
        let freq_scale = match meta.get_str(&key("rope.scaling.type"))? {
            Some("linear") => {
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
                    format!("'{other}' is not supported (none, linear; llama3 uses rope_freqs)"),
                ))
            }
        };
        ModelConfig {
            arch,
            n_layers: req("block_count")?,
            hidden,
            n_heads,
            n_kv_heads: meta
                .get_usize(&key("attention.head_count_kv"))?
                .unwrap_or(n_heads),
            head_dim,
            ffn_hidden: req("feed_forward_length")?,
            vocab_size: meta.get_usize(&key("vocab_size"))?.unwrap_or(0),
            context_length: meta.get_usize(&key("context_length"))?.unwrap_or(2048),
            norm_eps: meta
                .get_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope: RopeConfig {
                theta: meta.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
                layout: match arch {
                    Arch::Llama | Arch::Mistral => RopeLayout::Interleaved,
                    Arch::Qwen2 | Arch::Qwen3 => RopeLayout::Halves,
                },
                n_rot: meta
                    .get_usize(&key("rope.dimension_count"))?
                    .unwrap_or(head_dim),
                freq_scale,
                freq_factors: None,
            },
        }
        .validate()
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
        match rope_type {
            "default" => {}
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
                    format!("rope type '{other}' is not supported (default, linear, llama3)"),
                ))
            }
        }
        ModelConfig {
            arch,
            n_layers: req("num_hidden_layers")?,
            hidden,
            n_heads,
            n_kv_heads: opt_usize("num_key_value_heads").unwrap_or(n_heads),
            head_dim,
            ffn_hidden: req("intermediate_size")?,
            vocab_size: req("vocab_size")?,
            context_length: opt_usize("max_position_embeddings").unwrap_or(2048),
            norm_eps: opt_f64(cfg, "rms_norm_eps").unwrap_or(1e-6) as f32,
            rope: RopeConfig {
                theta: theta as f32,
                layout: RopeLayout::Halves,
                n_rot: head_dim,
                freq_scale,
                freq_factors,
            },
        }
        .validate()
    }
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
