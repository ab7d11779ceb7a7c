//! What the GPU prefill streams: each layer's matrices as the file stores
//! them (views into the mapped files, never copied on the host), and the
//! small f32 vectors (norms, biases, sinks) that stay resident on the
//! device. Built from [`ModelFiles`] by the same rules as
//! `tandem_model::Model::load_with` (names from the layer specs, norm
//! weight offsets, tied embeddings), with every shape checked here once.

use tandem_kernels::WeightFormat;
use tandem_model::config::{MlaConfig, MoeConfig};
use tandem_model::ops::Rope;
use tandem_model::spec::{Activation, AttnSpec, FfnSpec};
use tandem_model::{ModelConfig, ModelError, ModelFiles, MoeTensors, Tensor};

/// A weight matrix in host memory, as stored.
#[derive(Clone)]
pub struct HostMatrix {
    pub tensor: Tensor,
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
}

impl HostMatrix {
    fn new(t: &Tensor, rows: usize, cols: usize) -> Result<HostMatrix, ModelError> {
        let format = t.expect_matrix(rows, cols)?;
        Ok(HostMatrix {
            tensor: t.clone(),
            format,
            rows,
            cols,
        })
    }
    pub fn bytes(&self) -> &[u8] {
        self.tensor.bytes()
    }
    pub fn n_bytes(&self) -> usize {
        self.tensor.n_bytes()
    }
    pub fn n_elements(&self) -> usize {
        self.rows * self.cols
    }
    pub fn name(&self) -> &str {
        self.tensor.name()
    }
}

/// Gate, up and down of one SwiGLU expert (or a dense FFN).
#[derive(Clone)]
pub struct Glu {
    pub gate: HostMatrix,
    pub up: HostMatrix,
    pub down: HostMatrix,
}

impl Glu {
    pub fn matrices(&self) -> [&HostMatrix; 3] {
        [&self.gate, &self.up, &self.down]
    }
    pub fn n_bytes(&self) -> usize {
        self.matrices().iter().map(|m| m.n_bytes()).sum()
    }
}

/// A layer's FFN as streamed.
#[allow(clippy::large_enum_variant)] // one per layer, never moved in a loop
pub enum FfnWeights {
    Dense {
        glu: Glu,
        act: Activation,
    },
    Moe {
        cfg: MoeConfig,
        router: HostMatrix,
        bias: Option<Vec<f32>>,
        experts: Vec<Glu>,
        shared: Option<Glu>,
    },
}

/// The resident vectors of a layer.
pub struct LayerVectors {
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub sinks: Option<Vec<f32>>,
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_post_norm: Option<Vec<f32>>,
    /// O's bias (gpt-oss).
    pub bo: Option<Vec<f32>>,
    /// Added to the router's logits (gpt-oss).
    pub router_bias: Option<Vec<f32>>,
    /// Every expert's gate, up and down biases, expert after expert
    /// (gpt-oss): small enough to stay resident, so a routed expert's
    /// upload is its matrices only.
    pub expert_bias: Option<[Vec<f32>; 3]>,
    /// MLA: the norms of Q's low rank and of the latent.
    pub q_a_norm: Option<Vec<f32>>,
    pub kv_a_norm: Option<Vec<f32>>,
}

impl LayerVectors {
    pub const ATTN_NORM: usize = 0;
    pub const FFN_NORM: usize = 1;
    pub const BQ: usize = 2;
    pub const BK: usize = 3;
    pub const BV: usize = 4;
    pub const Q_NORM: usize = 5;
    pub const K_NORM: usize = 6;
    pub const SINKS: usize = 7;
    pub const ATTN_POST_NORM: usize = 8;
    pub const FFN_POST_NORM: usize = 9;
    pub const BO: usize = 10;
    pub const ROUTER_BIAS: usize = 11;
    /// Then the up and down biases (`+ 1`, `+ 2`).
    pub const EXPERT_GATE_BIAS: usize = 12;
    pub const Q_A_NORM: usize = 15;
    pub const KV_A_NORM: usize = 16;
    pub const COUNT: usize = 17;

    /// Every vector, at the indices above (the resident buffer's layout).
    pub fn all(&self) -> [Option<&Vec<f32>>; Self::COUNT] {
        let eb = |i: usize| self.expert_bias.as_ref().map(|b| &b[i]);
        [
            Some(&self.attn_norm),
            Some(&self.ffn_norm),
            self.bq.as_ref(),
            self.bk.as_ref(),
            self.bv.as_ref(),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
            self.sinks.as_ref(),
            self.attn_post_norm.as_ref(),
            self.ffn_post_norm.as_ref(),
            self.bo.as_ref(),
            self.router_bias.as_ref(),
            eb(0),
            eb(1),
            eb(2),
            self.q_a_norm.as_ref(),
            self.kv_a_norm.as_ref(),
        ]
    }
}

/// A layer's attention projections (O aside).
#[allow(clippy::large_enum_variant)] // one per layer, never moved in a loop
pub enum AttnWeights {
    /// Grouped-query attention.
    Gqa {
        wq: HostMatrix,
        wk: HostMatrix,
        wv: HostMatrix,
    },
    /// Latent attention (`tandem_model`'s `mla.rs` names the parts).
    Mla {
        cfg: MlaConfig,
        q_a: Option<HostMatrix>,
        q_b: HostMatrix,
        kv_a: HostMatrix,
        /// `[n_heads·kv_lora_rank × qk_nope]`: per head, the latent rows.
        k_b: HostMatrix,
        /// `[n_heads·v_head × kv_lora_rank]`.
        v_b: HostMatrix,
    },
}

/// One decoder layer.
pub struct LayerWeights {
    pub attn: AttnSpec,
    pub proj: AttnWeights,
    pub wo: HostMatrix,
    pub ffn: FfnWeights,
    pub vectors: LayerVectors,
}

impl LayerWeights {
    /// The attention's matrices in slot order, O last: GQA `[q, k, v,
    /// o]`; MLA `[q_a (if any), q_b, kv_a, k_b, v_b, o]`.
    pub fn attn_matrices(&self) -> Vec<&HostMatrix> {
        let mut v = match &self.proj {
            AttnWeights::Gqa { wq, wk, wv } => vec![wq, wk, wv],
            AttnWeights::Mla {
                q_a,
                q_b,
                kv_a,
                k_b,
                v_b,
                ..
            } => q_a.iter().chain([q_b, kv_a, k_b, v_b]).collect(),
        };
        v.push(&self.wo);
        v
    }

    /// The matrices uploaded before the layer runs (its slot): attention
    /// ([`LayerWeights::attn_matrices`]), then the dense FFN, or the router
    /// and shared expert of an MoE layer (routed experts are uploaded once
    /// routing has chosen them).
    pub fn slot_matrices(&self) -> Vec<&HostMatrix> {
        let mut v = self.attn_matrices();
        match &self.ffn {
            FfnWeights::Dense { glu, .. } => v.extend(glu.matrices()),
            FfnWeights::Moe { router, shared, .. } => {
                v.push(router);
                if let Some(s) = shared {
                    v.extend(s.matrices());
                }
            }
        }
        v
    }
}

/// The whole model as the GPU prefill sees it.
pub struct ModelWeights {
    pub config: ModelConfig,
    pub layers: Vec<LayerWeights>,
    pub embd: Tensor,
    pub out_norm: Vec<f32>,
    pub output: HostMatrix,
    /// The RoPEs layers use (`AttnSpec::rope`), as the CPU model builds them.
    pub ropes: Vec<Rope>,
    pub embed_scale: Option<f32>,
}

/// Byte offsets of matrices packed one after another, each aligned.
pub const ALIGN: usize = 256;

pub fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Offsets of `ms` packed in a buffer, and the total size.
pub fn pack(ms: &[&HostMatrix]) -> (Vec<usize>, usize) {
    let mut off = 0;
    let mut v = Vec::with_capacity(ms.len());
    for m in ms {
        v.push(off);
        off += align(m.n_bytes());
    }
    (v, off)
}

impl ModelWeights {
    /// Views of every weight the prefill needs, shapes checked.
    pub fn from_files(files: &ModelFiles) -> Result<ModelWeights, ModelError> {
        let c = files.config.clone();
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let vector = |name: &str, len| files.require(name)?.to_f32_vec(len);
        let optional = |name: &str, len| files.tensor(name).map(|t| t.to_f32_vec(len)).transpose();
        let offset = |mut v: Vec<f32>| {
            v.iter_mut().for_each(|w| *w += c.norm_weight_offset);
            v
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let spec = c.arch.layer_spec(&c, i);
            let n = |s: &str| format!("blk.{i}.{s}");
            let m = |s: &str, rows, cols| HostMatrix::new(files.require(&n(s))?, rows, cols);
            let bias = |s: &str, len| -> Result<Option<Vec<f32>>, ModelError> {
                if spec.attn.qkv_bias {
                    vector(&n(s), len).map(Some)
                } else {
                    optional(&n(s), len)
                }
            };
            let qk_norm = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
                let v = if spec.attn.qk_norm {
                    Some(vector(&n(s), c.head_dim)?)
                } else {
                    optional(&n(s), c.head_dim)?
                };
                Ok(v.map(offset))
            };
            // The router's and experts' biases (gpt-oss), resident.
            let mut moe_vectors = (None, None);
            let ffn = match &spec.ffn {
                FfnSpec::Dense { width, act } => FfnWeights::Dense {
                    glu: Glu {
                        gate: m("ffn_gate.weight", *width, c.hidden)?,
                        up: m("ffn_up.weight", *width, c.hidden)?,
                        down: m("ffn_down.weight", c.hidden, *width)?,
                    },
                    act: *act,
                },
                FfnSpec::Moe(mc) => {
                    let t = MoeTensors::load(files, i, mc, c.hidden)?;
                    let (ne, f) = (mc.n_experts, mc.expert_ffn);
                    let glu = |[g, u, d]: &[Tensor; 3], width| -> Result<Glu, ModelError> {
                        Ok(Glu {
                            gate: HostMatrix::new(g, width, c.hidden)?,
                            up: HostMatrix::new(u, width, c.hidden)?,
                            down: HostMatrix::new(d, c.hidden, width)?,
                        })
                    };
                    let experts = t
                        .experts
                        .iter()
                        .map(|e| glu(e, f))
                        .collect::<Result<Vec<_>, _>>()?;
                    let shared = t
                        .shared
                        .as_ref()
                        .map(|s| glu(s, mc.shared_ffn))
                        .transpose()?;
                    moe_vectors = (t.router_bias, t.expert_bias);
                    FfnWeights::Moe {
                        cfg: mc.clone(),
                        router: HostMatrix::new(&t.router, ne, c.hidden)?,
                        bias: t.selection_bias,
                        experts,
                        shared,
                    }
                }
            };
            let post = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
                spec.post_norms
                    .then(|| vector(&n(s), c.hidden).map(offset))
                    .transpose()
            };
            let vectors = LayerVectors {
                attn_norm: offset(vector(&n("attn_norm.weight"), c.hidden)?),
                ffn_norm: offset(vector(&n(&format!("{}.weight", spec.ffn_norm)), c.hidden)?),
                bq: bias("attn_q.bias", q_dim)?,
                bk: bias("attn_k.bias", kv_dim)?,
                bv: bias("attn_v.bias", kv_dim)?,
                q_norm: qk_norm("attn_q_norm.weight")?,
                k_norm: qk_norm("attn_k_norm.weight")?,
                sinks: match spec.attn.sinks {
                    true => Some(vector(&n("attn_sinks.weight"), c.n_heads)?),
                    false => None,
                },
                attn_post_norm: post("post_attention_norm.weight")?,
                ffn_post_norm: post("post_ffw_norm.weight")?,
                bo: optional(&n("attn_output.bias"), c.hidden)?,
                router_bias: moe_vectors.0,
                expert_bias: moe_vectors.1,
                q_a_norm: match &spec.attn.mla {
                    Some(m) if m.q_lora_rank > 0 => {
                        Some(offset(vector(&n("attn_q_a_norm.weight"), m.q_lora_rank)?))
                    }
                    _ => None,
                },
                kv_a_norm: match &spec.attn.mla {
                    Some(m) => Some(offset(vector(&n("attn_kv_a_norm.weight"), m.kv_lora_rank)?)),
                    None => None,
                },
            };
            let (proj, o_cols) = match &spec.attn.mla {
                None => (
                    AttnWeights::Gqa {
                        wq: m("attn_q.weight", q_dim, c.hidden)?,
                        wk: m("attn_k.weight", kv_dim, c.hidden)?,
                        wv: m("attn_v.weight", kv_dim, c.hidden)?,
                    },
                    q_dim,
                ),
                Some(mc) => {
                    let (h, qk) = (c.n_heads, mc.qk_head());
                    let q_a = match mc.q_lora_rank {
                        0 => None,
                        r => Some(m("attn_q_a.weight", r, c.hidden)?),
                    };
                    let q_b = match &q_a {
                        Some(_) => m("attn_q_b.weight", h * qk, mc.q_lora_rank)?,
                        None => m("attn_q.weight", h * qk, c.hidden)?,
                    };
                    let (k_b, v_b) = tandem_model::k_b_v_b(files, i, mc, h)?;
                    let proj = AttnWeights::Mla {
                        cfg: mc.clone(),
                        q_a,
                        q_b,
                        kv_a: m("attn_kv_a_mqa.weight", mc.row(), c.hidden)?,
                        k_b: HostMatrix::new(&k_b, h * mc.kv_lora_rank, mc.qk_nope)?,
                        v_b: HostMatrix::new(&v_b, h * mc.v_head, mc.kv_lora_rank)?,
                    };
                    (proj, h * mc.v_head)
                }
            };
            layers.push(LayerWeights {
                proj,
                wo: m("attn_output.weight", c.hidden, o_cols)?,
                attn: spec.attn.clone(),
                ffn,
                vectors,
            });
        }
        let embd = files.require("token_embd.weight")?.clone();
        embd.expect_matrix(c.vocab_size, c.hidden)?;
        let output = HostMatrix::new(
            files.tensor("output.weight").unwrap_or(&embd),
            c.vocab_size,
            c.hidden,
        )?;
        let ropes = std::iter::once(&c.rope)
            .chain(c.swa.as_ref().and_then(|w| w.rope.as_ref()))
            .map(Rope::new)
            .collect();
        Ok(ModelWeights {
            out_norm: offset(vector("output_norm.weight", c.hidden)?),
            embed_scale: c.arch.model_spec(&c).embed_scale,
            config: c,
            layers,
            embd,
            output,
            ropes,
        })
    }

    /// Every matrix (for support checks and host registration).
    pub fn all_matrices(&self) -> Vec<&HostMatrix> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.extend(l.slot_matrices());
            if let FfnWeights::Moe { experts, .. } = &l.ffn {
                for e in experts {
                    v.extend(e.matrices());
                }
            }
        }
        v.push(&self.output);
        v
    }

    /// Bytes one prefill streams when every expert is routed: what the
    /// roofline's transfer term counts for long prompts.
    pub fn stream_bytes(&self) -> usize {
        self.all_matrices().iter().map(|m| m.n_bytes()).sum()
    }
}
