//! A layer's mixture-of-experts tensors as the files hold them: one reading
//! of the names, the per-expert slices of GGUF's stacked tensors (or
//! Hugging Face's per-expert ones), the optional biases, and every shape
//! checked. The CPU model places these on its nodes; the GPU prefill
//! (`tandem-gpu`) streams them. Neither re-reads the names.

use crate::config::{Gating, MoeConfig};
use crate::{ModelError, ModelFiles, Tensor};

/// Gate, up and down of one SwiGLU expert, as stored.
pub type ExpertTensors = [Tensor; 3];

/// One layer's experts, router and biases.
pub struct MoeTensors {
    /// `[n_experts × hidden]`.
    pub router: Tensor,
    /// Selection bias of sigmoid routing (`exp_probs_b`, DeepSeek-V3).
    pub selection_bias: Option<Vec<f32>>,
    /// Added to the router's logits (`ffn_gate_inp.bias`, gpt-oss).
    pub router_bias: Option<Vec<f32>>,
    /// Gate and up `[expert_ffn × hidden]`, down `[hidden × expert_ffn]`.
    pub experts: Vec<ExpertTensors>,
    /// Every expert's gate, up and down biases, expert after expert
    /// (gpt-oss): all three or none.
    pub expert_bias: Option<[Vec<f32>; 3]>,
    /// The shared expert (`*_shexp`), of width `shared_ffn`.
    pub shared: Option<ExpertTensors>,
}

impl MoeTensors {
    /// Layer `layer`'s MoE tensors, shapes checked against `mc`.
    pub fn load(
        files: &ModelFiles,
        layer: usize,
        mc: &MoeConfig,
        hidden: usize,
    ) -> Result<MoeTensors, ModelError> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let (ne, f) = (mc.n_experts, mc.expert_ffn);
        let checked = |t: Tensor, rows, cols| -> Result<Tensor, ModelError> {
            t.expect_matrix(rows, cols)?;
            Ok(t)
        };
        let exps = |s: &str, rows, cols| files.experts(&n(&format!("{s}.weight")), ne, rows, cols);
        let gates = exps("ffn_gate_exps", f, hidden)?;
        let ups = exps("ffn_up_exps", f, hidden)?;
        let downs = exps("ffn_down_exps", hidden, f)?;
        let mut experts = Vec::with_capacity(ne);
        for ((g, u), d) in gates.into_iter().zip(ups).zip(downs) {
            experts.push([
                checked(g, f, hidden)?,
                checked(u, f, hidden)?,
                checked(d, hidden, f)?,
            ]);
        }
        let matrix = |s: &str, rows, cols| checked(files.require(&n(s))?.clone(), rows, cols);
        let shared = match mc.shared_ffn {
            0 => None,
            sf => Some([
                matrix("ffn_gate_shexp.weight", sf, hidden)?,
                matrix("ffn_up_shexp.weight", sf, hidden)?,
                matrix("ffn_down_shexp.weight", hidden, sf)?,
            ]),
        };
        let optional = |s: &str, len| files.tensor(&n(s)).map(|t| t.to_f32_vec(len)).transpose();
        let eb = |s: &str, len| optional(s, ne * len);
        let expert_bias = match (
            eb("ffn_gate_exps.bias", f)?,
            eb("ffn_up_exps.bias", f)?,
            eb("ffn_down_exps.bias", hidden)?,
        ) {
            (Some(g), Some(u), Some(d)) => Some([g, u, d]),
            (None, None, None) => None,
            _ => {
                return Err(ModelError::MissingTensor(n(
                    "ffn_{gate,up,down}_exps.bias (some, not all)",
                )))
            }
        };
        Ok(MoeTensors {
            router: matrix("ffn_gate_inp.weight", ne, hidden)?,
            selection_bias: match mc.gating {
                Gating::Sigmoid => optional("exp_probs_b.bias", ne)?,
                Gating::Softmax | Gating::SoftmaxTopK => None,
            },
            router_bias: optional("ffn_gate_inp.bias", ne)?,
            experts,
            expert_bias,
            shared,
        })
    }
}
