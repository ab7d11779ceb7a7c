//! gpt-oss (`gpt-oss`, HF `gpt_oss`): GQA with Q/K/V and O biases, one
//! learned sink logit per head, every other layer windowed (the first of
//! each pair), YaRN RoPE over whole heads; every layer MoE with a biased
//! router whose top-k logits are softmaxed, biased experts and a clamped
//! SwiGLU (`Activation::SwigluOai`). Its FFN pre-norm is
//! `post_attention_norm` in GGUF, as GLM's.

use crate::config::ModelConfig;
use crate::spec::{AttnSpec, FfnSpec, LayerSpec};

pub(super) fn layer_spec(c: &ModelConfig, layer: usize) -> LayerSpec {
    let mut attn = AttnSpec::gqa(c, true, false);
    attn.sinks = true;
    attn.window = c
        .swa
        .as_ref()
        .filter(|w| w.layers.get(layer).copied().unwrap_or(false))
        .map(|w| w.window);
    LayerSpec {
        attn,
        ffn: FfnSpec::of_layer(c, layer),
        ffn_norm: "post_attention_norm",
        post_norms: false,
    }
}

/// HF names: `self_attn.sinks`, `mlp.router` (weight and bias); the
/// experts are stacked tensors of their own layout (`crate::source`).
pub(super) fn hf_stem(stem: &str, expert: Option<usize>) -> Option<String> {
    // Experts: the matrices and biases [`split_hf_experts`] derives.
    let part = match stem {
        "ffn_gate_exps" => Some("gate"),
        "ffn_up_exps" => Some("up"),
        "ffn_down_exps" => Some("down"),
        _ => None,
    };
    if let Some(part) = part {
        return Some(match expert {
            Some(e) => format!("mlp.experts.{e}.{part}"),
            None => format!("mlp.experts.{part}"),
        });
    }
    if expert.is_some() {
        return None;
    }
    Some(match stem {
        "post_attention_norm" => "post_attention_layernorm".into(),
        "ffn_gate_inp" => "mlp.router".into(),
        _ => super::common_hf_stem(stem)?,
    })
}

/// Hugging Face stores gpt-oss's experts stacked and input-major:
/// `mlp.experts.gate_up_proj` `[experts, hidden, 2·ffn]` with gate and up
/// interleaved column by column, `down_proj` `[experts, ffn, hidden]`, and
/// their biases. This derives the per-expert `[rows, cols]` matrices (f32)
/// and the split biases that [`hf_stem`] names, so the loader sees them as
/// it sees every other family's.
pub(crate) fn split_hf_experts(
    tensors: &mut std::collections::HashMap<String, crate::tensor::Tensor>,
    c: &ModelConfig,
) -> Result<(), crate::ModelError> {
    use crate::tensor::Tensor;
    use crate::ModelError;
    use tandem_kernels::WeightFormat;
    let Some(m) = &c.moe else { return Ok(()) };
    let (ne, f, h) = (m.n_experts, m.expert_ffn, c.hidden);
    let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for layer in 0..c.n_layers {
        let p = format!("model.layers.{layer}.mlp.experts");
        let get = |name: &str| {
            tensors
                .get(&format!("{p}.{name}"))
                .cloned()
                .ok_or_else(|| ModelError::MissingTensor(format!("{p}.{name}")))
        };
        let gu = get("gate_up_proj")?.as_matrix(ne * h, 2 * f)?;
        let dp = get("down_proj")?.as_matrix(ne * f, h)?;
        let gub = get("gate_up_proj_bias")?.as_matrix(ne, 2 * f)?;
        let db = get("down_proj_bias")?.as_matrix(ne, h)?;
        let mut derived = Vec::new();
        let (mut row2f, mut rowh) = (vec![0f32; 2 * f], vec![0f32; h]);
        let (mut gb, mut ub, mut dbv) = (Vec::new(), Vec::new(), Vec::new());
        for e in 0..ne {
            let (mut g, mut u, mut d) = (vec![0f32; f * h], vec![0f32; f * h], vec![0f32; h * f]);
            for col in 0..h {
                gu.row_f32(e * h + col, &mut row2f)?;
                for r in 0..f {
                    g[r * h + col] = row2f[2 * r];
                    u[r * h + col] = row2f[2 * r + 1];
                }
            }
            for col in 0..f {
                dp.row_f32(e * f + col, &mut rowh)?;
                for (r, &x) in rowh.iter().enumerate() {
                    d[r * f + col] = x;
                }
            }
            for (name, data, dims) in [("gate", g, [f, h]), ("up", u, [f, h]), ("down", d, [h, f])]
            {
                let n = format!("{p}.{e}.{name}.weight");
                derived.push(Tensor::owned(
                    n,
                    WeightFormat::F32,
                    "F32",
                    dims.to_vec(),
                    f32s(data),
                )?);
            }
            gub.row_f32(e, &mut row2f)?;
            gb.extend(row2f.iter().step_by(2));
            ub.extend(row2f.iter().skip(1).step_by(2));
            db.row_f32(e, &mut rowh)?;
            dbv.extend_from_slice(&rowh);
        }
        for (name, data, width) in [("gate", gb, f), ("up", ub, f), ("down", dbv, h)] {
            let n = format!("{p}.{name}.bias");
            derived.push(Tensor::owned(
                n,
                WeightFormat::F32,
                "F32",
                vec![ne, width],
                f32s(data),
            )?);
        }
        for t in derived {
            tensors.insert(t.name().to_string(), t);
        }
    }
    Ok(())
}
