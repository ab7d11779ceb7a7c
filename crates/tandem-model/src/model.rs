//! The decoder forward pass, one implementation for every supported
//! architecture and both file formats.
//!
//! Per layer: `x += Wo · attn(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x))`, then
//! `x += Wdown · (silu(Wgate·n(x)) * Wup·n(x))`, with RMSNorm `n`. The
//! architecture switches (QKV bias, QK-norm) and the RoPE layout come from
//! [`ModelConfig`]; tensor names from the canonical (GGUF) naming.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use tandem_numa::{NumaMode, Pool};
use tandem_tokenizer::Tokenizer;

use crate::attention::{attention, choose_plan, AttnLayer, AttnPlan, SeqView, SplitState};
use crate::config::{MlaConfig, ModelConfig, MoeConfig};
use crate::kv_cache::{check_fits, KvCache, KvOptions, KvStore};
use crate::linear::Matrix;
use crate::mla::MlaWeights;
use crate::mla_expanded::worth_expanding;
use crate::moe::{self, route_token, Expert, ExpertBias, MoeFfn, Slot, SlotActs, SHARED};
use crate::ops::{rms_norm, Rope};
use crate::parallel::{col_split, gate_up, row_split, RowTarget, SCRATCH};
use crate::shard::{aligned_ranges, even_ranges, kv_head_ranges, Placer, ShardedMatrix, Split};
use crate::source::{ModelFiles, SourceFormat};
use crate::spec::{Activation, AttnSpec, FfnSpec};
use crate::tensor::Tensor;
use crate::workspace::{grow, Dims, SharedOut, Workspace};
use crate::ModelError;
use tandem_kernels::GROUP_ROWS;
use tandem_kv::{KvGeometry, KvValues};

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill of a prompt prefix).
    None,
    /// The last position only (generation).
    Last,
    /// Every position.
    All,
    /// The last `n` positions (perplexity scores the second half of a chunk).
    Tail(usize),
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q/K/V projections, by attention kind.
    qkv: Qkv,
    wo: ShardedMatrix,
    /// O's bias (gpt-oss).
    bo: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
    /// KV heads per node (query heads follow their group).
    kv_ranges: Vec<Range<usize>>,
    /// What the attention computes (scale, window, soft-cap, sinks).
    attn: AttnSpec,
    sinks: Option<Vec<f32>>,
    /// Sandwich norms of the attention and FFN outputs.
    attn_post_norm: Option<Vec<f32>>,
    ffn_post_norm: Option<Vec<f32>>,
}

/// How a layer computes its queries, keys and values.
// One per layer; the common (GQA) kind stays inline.
#[allow(clippy::large_enum_variant)]
enum Qkv {
    /// Grouped-query attention: Q, K and V projections (optionally biased),
    /// optional Q/K norms.
    Gqa {
        wq: ShardedMatrix,
        wk: ShardedMatrix,
        wv: ShardedMatrix,
        bq: Option<Vec<f32>>,
        bk: Option<Vec<f32>>,
        bv: Option<Vec<f32>>,
        q_norm: Option<Vec<f32>>,
        k_norm: Option<Vec<f32>>,
    },
    /// Latent attention (`crate::mla`).
    Mla(Box<MlaWeights>),
}

impl Qkv {
    fn matrices(&self) -> Vec<&ShardedMatrix> {
        match self {
            Qkv::Gqa { wq, wk, wv, .. } => vec![wq, wk, wv],
            Qkv::Mla(m) => m.matrices().collect(),
        }
    }
}

/// A layer's feed-forward block, by kind ([`FfnSpec`]).
enum Ffn {
    Dense {
        gate: ShardedMatrix,
        up: ShardedMatrix,
        down: ShardedMatrix,
        act: Activation,
    },
    Moe(Box<MoeFfn>),
}

impl Layer {
    /// Every weight matrix of the layer.
    fn matrices(&self) -> impl Iterator<Item = &ShardedMatrix> {
        let ffn: Vec<&ShardedMatrix> = match &self.ffn {
            Ffn::Dense { gate, up, down, .. } => vec![gate, up, down],
            Ffn::Moe(m) => std::iter::once(&m.router)
                .chain(m.experts.iter().chain(&m.shared).flat_map(Expert::matrices))
                .collect(),
        };
        self.qkv.matrices().into_iter().chain([&self.wo]).chain(ffn)
    }

    /// Weight bytes one token's decode reads in this layer.
    fn bytes_per_token(&self) -> usize {
        let attn: usize = self
            .qkv
            .matrices()
            .iter()
            .chain([&&self.wo])
            .map(|m| m.n_bytes())
            .sum();
        attn + match &self.ffn {
            Ffn::Dense { gate, up, down, .. } => gate.n_bytes() + up.n_bytes() + down.n_bytes(),
            Ffn::Moe(m) => m.bytes_per_token(),
        }
    }
}

/// How the O and down projections are divided among nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TensorParallel {
    /// By output rows, like every other matrix: each node computes whole
    /// dot products for its rows, and reads the (tiny) attention / FFN
    /// activations of all nodes from shared memory (an all-gather that
    /// costs nothing but a barrier). Results are bit-identical to the
    /// unsharded path, because no dot product is cut in two.
    #[default]
    Gather,
    /// Megatron: by input columns, each node producing partial sums of
    /// every output that are added across nodes (all-reduce). Saves two
    /// barriers per layer, but reassociates the sums, and on 8-bit
    /// quantized activations an ulp of difference can flip a rounding
    /// downstream (up to ~4e-3 relative in logits on the tiny fixtures).
    AllReduce,
}

/// How to run a model: NUMA mode, threads, pinning.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub numa: NumaMode,
    /// How O and down are split across nodes.
    pub tensor_parallel: TensorParallel,
    /// Worker threads in all (default: one per usable CPU).
    pub threads: Option<usize>,
    /// Pin workers to CPUs (the engine does; tests sharing a machine don't).
    pub pin: bool,
    /// Re-lay weights out for the kernels at load time where that is faster
    /// ([`tandem_kernels::preferred_layout`]; costs one copy of those
    /// matrices, after which the file's pages are dropped).
    pub repack: bool,
    /// KV type and page size of the caches this model makes.
    pub kv: KvOptions,
    /// Parts each decoding sequence's pages are split into across workers
    /// (flash-decoding); None: chosen from the threads and context length.
    /// For tests and experiments.
    pub attention_splits: Option<usize>,
    /// How MLA layers prefill (absorbed, expanded, or by the cost model;
    /// default from `TANDEM_MLA_PREFILL`, else the cost model).
    pub mla_prefill: crate::MlaPrefill,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            numa: NumaMode::Auto,
            tensor_parallel: TensorParallel::Gather,
            threads: None,
            pin: false,
            repack: true,
            kv: KvOptions::default(),
            attention_splits: None,
            mla_prefill: crate::MlaPrefill::from_env(),
        }
    }
}

/// One sequence of a batched forward pass.
pub struct SeqInput<'a> {
    /// New tokens, at the positions following what `cache` holds.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub want: Logits,
}

/// A loaded model: configuration, tokenizer, weights placed on the engine's
/// nodes, and the worker pool that runs it.
pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub format: SourceFormat,
    pub name: Option<String>,
    embd: Tensor,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: ShardedMatrix,
    /// The RoPEs layers use (`AttnSpec::rope`): the global one, then the
    /// windowed layers' own if it differs.
    ropes: Vec<Rope>,
    /// Embeddings are multiplied by this (Gemma: sqrt(hidden)).
    embed_scale: Option<f32>,
    pool: Arc<Pool>,
    /// Buffers reused by every forward pass (a pass holds the lock; the
    /// pool runs one pass at a time anyway).
    workspace: Mutex<Workspace>,
    allreduce_ns: std::sync::atomic::AtomicU64,
    /// Weight bytes of the routed experts the passes have read (each
    /// selected expert once per layer and pass), since load.
    expert_bytes: std::sync::atomic::AtomicU64,
    kv: KvOptions,
    attention_splits: Option<usize>,
    mla_prefill: crate::MlaPrefill,
    /// What names these weights to the KV disk tier.
    identity: tandem_kv::ModelIdentity,
}

fn vector(files: &ModelFiles, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    files.require(name)?.to_f32_vec(len)
}

fn optional_vector(
    files: &ModelFiles,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>, ModelError> {
    files.tensor(name).map(|t| t.to_f32_vec(len)).transpose()
}

/// Matrices of one layer before placement.
struct LayerPlan {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    qkv: QkvPlan,
    bo: Option<Vec<f32>>,
    kv_ranges: Vec<Range<usize>>,
    attn: AttnSpec,
    sinks: Option<Vec<f32>>,
    attn_post_norm: Option<Vec<f32>>,
    ffn_post_norm: Option<Vec<f32>>,
    /// Placer index of wo.
    wo: usize,
    ffn: FfnPlan,
}

/// Placer indices (and vectors) of a layer's Q/K/V weights.
enum QkvPlan {
    Gqa {
        /// wq, wk, wv.
        ids: [usize; 3],
        bq: Option<Vec<f32>>,
        bk: Option<Vec<f32>>,
        bv: Option<Vec<f32>>,
        q_norm: Option<Vec<f32>>,
        k_norm: Option<Vec<f32>>,
    },
    Mla {
        cfg: MlaConfig,
        q_a: Option<(usize, Vec<f32>)>,
        /// q_b, kv_a, k_b, v_b.
        ids: [usize; 4],
        /// k_b transposed (expanded prefill).
        k_b_t: Option<usize>,
        kv_a_norm: Vec<f32>,
    },
}

/// Placer indices of a layer's FFN matrices (load time only).
#[allow(clippy::large_enum_variant)]
enum FfnPlan {
    /// gate, up, down.
    Dense([usize; 3], Activation),
    Moe {
        cfg: MoeConfig,
        router: usize,
        bias: Option<Vec<f32>>,
        router_bias: Option<Vec<f32>>,
        /// gate, up, down of each routed expert, then of the shared one.
        experts: Vec<[usize; 3]>,
        /// All experts' gate, up and down biases, expert after expert.
        expert_bias: Option<[Vec<f32>; 3]>,
        shared: Option<[usize; 3]>,
    },
}

/// The KV store shape of a model of config `c` with KV options `kv`, node
/// `n` holding the KV heads `node_heads[n]`.
fn kv_shape(c: &ModelConfig, kv: KvOptions, node_heads: Vec<Range<usize>>) -> KvGeometry {
    KvGeometry {
        n_layers: c.n_layers,
        head_dim: c.head_dim,
        values: match c.mla {
            Some(_) => KvValues::InKeys,
            None => KvValues::Separate,
        },
        page_tokens: kv.page_tokens,
        format: kv.format,
        node_heads,
        // Windowed layers get page groups whose pages behind the window
        // are released (tandem-kv's `layout.rs`).
        windows: {
            let w: Vec<Option<usize>> = (0..c.n_layers)
                .map(|i| c.arch.layer_spec(c, i).attn.window)
                .collect();
            if w.iter().any(Option::is_some) {
                w
            } else {
                Vec::new()
            }
        },
    }
}

impl Model {
    /// Builds the model from opened files with default options (every
    /// machine node, every CPU, unpinned).
    pub fn load(files: ModelFiles) -> Result<Model, ModelError> {
        Model::load_with(files, &LoadOptions::default())
    }

    /// Builds the model, checking every tensor's shape and type, and places
    /// each node's shards in its memory.
    pub fn load_with(files: ModelFiles, opts: &LoadOptions) -> Result<Model, ModelError> {
        let mut layout =
            tandem_numa::Layout::plan(&tandem_numa::Topology::detect(), opts.numa, opts.threads)?;
        layout.pin = opts.pin;
        let pool = Arc::new(Pool::with_layout(layout)?);
        let n_nodes = pool.n_nodes();
        let c = files.config.clone();
        let identity = files.identity();
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        if c.n_kv_heads == 0 || !c.n_heads.is_multiple_of(c.n_kv_heads) {
            return Err(ModelError::invalid(
                "attention.head_count_kv",
                format!(
                    "{} query heads are not a multiple of {} KV heads",
                    c.n_heads, c.n_kv_heads
                ),
            ));
        }
        let group = c.n_heads / c.n_kv_heads;
        if group > crate::attention::MAX_QUERIES {
            return Err(ModelError::invalid(
                "attention.head_count_kv",
                format!(
                    "{group} query heads per KV head (at most {})",
                    crate::attention::MAX_QUERIES
                ),
            ));
        }
        if opts.kv.page_tokens == 0 {
            return Err(ModelError::BadBatch("KV pages of 0 tokens".into()));
        }
        // The KV type against the head size (Q8_0 rows are whole 32-value
        // blocks): refused here, before any weight is placed, rather than
        // at the first cache.
        #[allow(clippy::single_range_in_vec_init)] // all heads on one node
        let shape = kv_shape(&c, opts.kv, vec![0..c.n_kv_heads]);
        shape.validate()?;
        let mut placer = Placer::new(&pool);
        let isa = tandem_kernels::detected_isa();
        let lay = |m: &Matrix| match opts.repack {
            true => tandem_kernels::preferred_layout(isa, m.format),
            false => tandem_kernels::WeightLayout::Rows,
        };
        // RMSNorm weights, with the family's stored offset (Gemma on HF).
        let norm = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let mut v = vector(&files, name, len)?;
            v.iter_mut().for_each(|w| *w += c.norm_weight_offset);
            Ok(v)
        };
        let mut plans = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let spec = c.arch.layer_spec(&c, i);
            let n = |s: &str| format!("blk.{i}.{s}");
            let m = |s: &str, rows, cols| Matrix::new(files.require(&n(s))?, rows, cols);
            let bias = |s: &str, len| -> Result<Option<Vec<f32>>, ModelError> {
                if spec.attn.qkv_bias {
                    vector(&files, &n(s), len).map(Some)
                } else {
                    optional_vector(&files, &n(s), len)
                }
            };
            let qk_norm = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
                let v = if spec.attn.qk_norm {
                    Some(vector(&files, &n(s), c.head_dim)?)
                } else {
                    optional_vector(&files, &n(s), c.head_dim)?
                };
                Ok(v.map(|mut v| {
                    v.iter_mut().for_each(|w| *w += c.norm_weight_offset);
                    v
                }))
            };
            // Whole interleaved groups per node, so a row is computed the
            // same way whatever the node count (a row in a group and the
            // same row in a row-major tail round differently).
            let hidden_rows = aligned_ranges(c.hidden, GROUP_ROWS, n_nodes);
            let (qkv, kv_ranges, wo) = match &spec.attn.mla {
                None => {
                    let (wq, wk, wv, wo) = (
                        m("attn_q.weight", q_dim, c.hidden)?,
                        m("attn_k.weight", kv_dim, c.hidden)?,
                        m("attn_v.weight", kv_dim, c.hidden)?,
                        m("attn_output.weight", c.hidden, q_dim)?,
                    );
                    // Heads: whole KV groups, aligned to O's blocks.
                    let kv_ranges = kv_head_ranges(
                        c.n_kv_heads,
                        group,
                        c.head_dim,
                        wo.format.block_len(),
                        n_nodes,
                    );
                    let scale = |r: &Range<usize>, f: usize| r.start * f..r.end * f;
                    let q_rows: Vec<_> = kv_ranges
                        .iter()
                        .map(|r| scale(r, group * c.head_dim))
                        .collect();
                    let kv_rows: Vec<_> = kv_ranges.iter().map(|r| scale(r, c.head_dim)).collect();
                    let (o_split, o_ranges) = match opts.tensor_parallel {
                        TensorParallel::AllReduce if !spec.post_norms => (Split::Cols, &q_rows),
                        _ => (Split::Rows, &hidden_rows),
                    };
                    let qkv = QkvPlan::Gqa {
                        ids: [
                            placer.add(&wq, Split::Rows, &q_rows, lay(&wq))?,
                            placer.add(&wk, Split::Rows, &kv_rows, lay(&wk))?,
                            placer.add(&wv, Split::Rows, &kv_rows, lay(&wv))?,
                        ],
                        bq: bias("attn_q.bias", q_dim)?,
                        bk: bias("attn_k.bias", kv_dim)?,
                        bv: bias("attn_v.bias", kv_dim)?,
                        q_norm: qk_norm("attn_q_norm.weight")?,
                        k_norm: qk_norm("attn_k_norm.weight")?,
                    };
                    (
                        qkv,
                        kv_ranges,
                        placer.add(&wo, o_split, o_ranges, lay(&wo))?,
                    )
                }
                Some(mc) => {
                    let (h, qk, lora) = (c.n_heads, mc.qk_head(), mc.kv_lora_rank);
                    let q_a = match mc.q_lora_rank {
                        0 => None,
                        r => Some((
                            m("attn_q_a.weight", r, c.hidden)?,
                            norm(&n("attn_q_a_norm.weight"), r)?,
                        )),
                    };
                    let q_b = match &q_a {
                        Some(_) => m("attn_q_b.weight", h * qk, mc.q_lora_rank)?,
                        None => m("attn_q.weight", h * qk, c.hidden)?,
                    };
                    let kv_a = m("attn_kv_a_mqa.weight", mc.row(), c.hidden)?;
                    // Both GGUF layouts: split k_b/v_b, or kv_b to split here.
                    let (k_b, v_b) = crate::mla::k_b_v_b(&files, i, mc, h)?;
                    let (k_b, v_b) = (
                        Matrix::new(&k_b, h * lora, mc.qk_nope)?,
                        Matrix::new(&v_b, h * mc.v_head, lora)?,
                    );
                    let wo = m("attn_output.weight", c.hidden, h * mc.v_head)?;
                    let rows = |m: &Matrix| aligned_ranges(m.rows, GROUP_ROWS, n_nodes);
                    // k_b and v_b by whole heads (each head's block of
                    // rows multiplies its own input).
                    let heads = even_ranges(h, n_nodes);
                    let per_head = |m: &Matrix, rph: usize| {
                        let ranges: Vec<_> =
                            heads.iter().map(|r| r.start * rph..r.end * rph).collect();
                        let layout = match rph % GROUP_ROWS {
                            0 => lay(m),
                            _ => tandem_kernels::WeightLayout::Rows,
                        };
                        (ranges, layout)
                    };
                    let (kb_rows, kb_lay) = per_head(&k_b, lora);
                    let (vb_rows, vb_lay) = per_head(&v_b, mc.v_head);
                    let k_b_t = match opts.mla_prefill {
                        crate::MlaPrefill::Absorbed => None,
                        _ => {
                            let t = crate::mla::transpose_k_b(&k_b.tensor, mc, h)?;
                            let t = Matrix::new(&t, h * mc.qk_nope, lora)?;
                            let (r, l) = per_head(&t, mc.qk_nope);
                            Some(placer.add(&t, Split::Rows, &r, l)?)
                        }
                    };
                    let qkv = QkvPlan::Mla {
                        cfg: mc.clone(),
                        q_a: match q_a {
                            Some((qa, norm)) => {
                                Some((placer.add(&qa, Split::Rows, &rows(&qa), lay(&qa))?, norm))
                            }
                            None => None,
                        },
                        ids: [
                            placer.add(&q_b, Split::Rows, &rows(&q_b), lay(&q_b))?,
                            placer.add(&kv_a, Split::Rows, &rows(&kv_a), lay(&kv_a))?,
                            placer.add(&k_b, Split::Rows, &kb_rows, kb_lay)?,
                            placer.add(&v_b, Split::Rows, &vb_rows, vb_lay)?,
                        ],
                        k_b_t,
                        kv_a_norm: norm(&n("attn_kv_a_norm.weight"), lora)?,
                    };
                    // One latent KV head: the node that holds it attends.
                    let kv_ranges = even_ranges(1, n_nodes);
                    (
                        qkv,
                        kv_ranges,
                        placer.add(&wo, Split::Rows, &hidden_rows, lay(&wo))?,
                    )
                }
            };
            // A SwiGLU block of width `ffn` from three matrices: gate/up by
            // FFN rows aligned to down's blocks, down by hidden rows (or by
            // FFN columns, Megatron, for dense layers).
            let mut place_swiglu = |gate: Matrix,
                                    up: Matrix,
                                    down: Matrix,
                                    megatron: bool|
             -> Result<[usize; 3], ModelError> {
                let ffn_ranges = aligned_ranges(gate.rows, down.format.block_len(), n_nodes);
                let (down_split, down_ranges) = match megatron {
                    false => (Split::Rows, &hidden_rows),
                    true => (Split::Cols, &ffn_ranges),
                };
                Ok([
                    placer.add(&gate, Split::Rows, &ffn_ranges, lay(&gate))?,
                    placer.add(&up, Split::Rows, &ffn_ranges, lay(&up))?,
                    placer.add(&down, down_split, down_ranges, lay(&down))?,
                ])
            };
            // Sandwich norms need the whole block output before the add.
            let megatron = opts.tensor_parallel == TensorParallel::AllReduce
                && !spec.post_norms
                && spec.attn.mla.is_none();
            let ffn = match &spec.ffn {
                FfnSpec::Dense { width, act } => FfnPlan::Dense(
                    place_swiglu(
                        m("ffn_gate.weight", *width, c.hidden)?,
                        m("ffn_up.weight", *width, c.hidden)?,
                        m("ffn_down.weight", c.hidden, *width)?,
                        megatron,
                    )?,
                    *act,
                ),
                FfnSpec::Moe(mc) => {
                    let t = crate::MoeTensors::load(&files, i, mc, c.hidden)?;
                    let (ne, f) = (mc.n_experts, mc.expert_ffn);
                    let mut experts = Vec::with_capacity(ne);
                    for [g, u, d] in &t.experts {
                        experts.push(place_swiglu(
                            Matrix::new(g, f, c.hidden)?,
                            Matrix::new(u, f, c.hidden)?,
                            Matrix::new(d, c.hidden, f)?,
                            false,
                        )?);
                    }
                    let shared = match (&t.shared, mc.shared_ffn) {
                        (Some([g, u, d]), sf) => Some(place_swiglu(
                            Matrix::new(g, sf, c.hidden)?,
                            Matrix::new(u, sf, c.hidden)?,
                            Matrix::new(d, c.hidden, sf)?,
                            false,
                        )?),
                        (None, _) => None,
                    };
                    let router = Matrix::new(&t.router, ne, c.hidden)?;
                    let router = placer.add(
                        &router,
                        Split::Rows,
                        &aligned_ranges(ne, GROUP_ROWS, n_nodes),
                        tandem_kernels::WeightLayout::Rows,
                    )?;
                    FfnPlan::Moe {
                        cfg: mc.clone(),
                        router,
                        bias: t.selection_bias,
                        router_bias: t.router_bias,
                        experts,
                        expert_bias: t.expert_bias,
                        shared,
                    }
                }
            };
            let post = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
                spec.post_norms.then(|| norm(&n(s), c.hidden)).transpose()
            };
            plans.push(LayerPlan {
                attn_norm: norm(&n("attn_norm.weight"), c.hidden)?,
                ffn_norm: norm(&n(&format!("{}.weight", spec.ffn_norm)), c.hidden)?,
                attn_post_norm: post("post_attention_norm.weight")?,
                ffn_post_norm: post("post_ffw_norm.weight")?,
                qkv,
                bo: optional_vector(&files, &n("attn_output.bias"), c.hidden)?,
                kv_ranges,
                sinks: match spec.attn.sinks {
                    true => Some(vector(&files, &n("attn_sinks.weight"), c.n_heads)?),
                    false => None,
                },
                attn: spec.attn.clone(),
                wo,
                ffn,
            });
        }
        let embd = files.require("token_embd.weight")?.clone();
        embd.expect_matrix(c.vocab_size, c.hidden)?;
        // Tied embeddings: no output matrix, the embedding doubles as one.
        let output = Matrix::new(
            files.tensor("output.weight").unwrap_or(&embd),
            c.vocab_size,
            c.hidden,
        )?;
        let output_id = placer.add(
            &output,
            Split::Rows,
            &aligned_ranges(c.vocab_size, GROUP_ROWS, n_nodes),
            lay(&output),
        )?;
        let mut placed: Vec<Option<ShardedMatrix>> =
            placer.finish()?.into_iter().map(Some).collect();
        let mut take = |id: usize| {
            placed
                .get_mut(id)
                .and_then(Option::take)
                .ok_or_else(|| ModelError::Kernel(format!("placement lost matrix {id}")))
        };
        let mut layers = Vec::with_capacity(plans.len());
        for p in plans {
            fn expert(
                take: &mut impl FnMut(usize) -> Result<ShardedMatrix, ModelError>,
                [g, u, d]: [usize; 3],
            ) -> Result<Expert, ModelError> {
                Ok(Expert {
                    gate: take(g)?,
                    up: take(u)?,
                    down: take(d)?,
                    bias: None,
                })
            }
            let ffn = match p.ffn {
                FfnPlan::Dense(ids, act) => {
                    let e = expert(&mut take, ids)?;
                    Ffn::Dense {
                        gate: e.gate,
                        up: e.up,
                        down: e.down,
                        act,
                    }
                }
                FfnPlan::Moe {
                    cfg,
                    router,
                    bias,
                    router_bias,
                    experts,
                    expert_bias,
                    shared,
                } => {
                    let (f, h) = (cfg.expert_ffn, c.hidden);
                    let mut list = Vec::with_capacity(experts.len());
                    for (e, ids) in experts.into_iter().enumerate() {
                        let mut x = expert(&mut take, ids)?;
                        x.bias = expert_bias.as_ref().map(|[g, u, d]| ExpertBias {
                            gate: g[e * f..(e + 1) * f].to_vec(),
                            up: u[e * f..(e + 1) * f].to_vec(),
                            down: d[e * h..(e + 1) * h].to_vec(),
                        });
                        list.push(x);
                    }
                    Ffn::Moe(Box::new(MoeFfn {
                        cfg,
                        router: take(router)?,
                        bias,
                        router_bias,
                        experts: list,
                        shared: shared.map(|ids| expert(&mut take, ids)).transpose()?,
                    }))
                }
            };
            let qkv = match p.qkv {
                QkvPlan::Gqa {
                    ids: [q, k, v],
                    bq,
                    bk,
                    bv,
                    q_norm,
                    k_norm,
                } => Qkv::Gqa {
                    wq: take(q)?,
                    wk: take(k)?,
                    wv: take(v)?,
                    bq,
                    bk,
                    bv,
                    q_norm,
                    k_norm,
                },
                QkvPlan::Mla {
                    cfg,
                    q_a,
                    ids: [q_b, kv_a, k_b, v_b],
                    k_b_t,
                    kv_a_norm,
                } => Qkv::Mla(Box::new(MlaWeights {
                    cfg,
                    q_a: match q_a {
                        Some((id, norm)) => Some((take(id)?, norm)),
                        None => None,
                    },
                    q_b: take(q_b)?,
                    kv_a: take(kv_a)?,
                    kv_a_norm,
                    k_b: take(k_b)?,
                    v_b: take(v_b)?,
                    k_b_t: match k_b_t {
                        Some(id) => Some(take(id)?),
                        None => None,
                    },
                })),
            };
            layers.push(Layer {
                attn_norm: p.attn_norm,
                qkv,
                wo: take(p.wo)?,
                bo: p.bo,
                ffn_norm: p.ffn_norm,
                ffn,
                kv_ranges: p.kv_ranges,
                attn: p.attn,
                sinks: p.sinks,
                attn_post_norm: p.attn_post_norm,
                ffn_post_norm: p.ffn_post_norm,
            });
        }
        let output = take(output_id)?;
        Ok(Model {
            ropes: std::iter::once(&c.rope)
                .chain(c.swa.as_ref().and_then(|w| w.rope.as_ref()))
                .map(Rope::new)
                .collect(),
            embed_scale: c.arch.model_spec(&c).embed_scale,
            out_norm: norm("output_norm.weight", c.hidden)?,
            config: c,
            tokenizer: files.tokenizer,
            format: files.format,
            name: files.name,
            embd,
            layers,
            output,
            pool,
            workspace: Mutex::new(Workspace::default()),
            allreduce_ns: Default::default(),
            expert_bytes: Default::default(),
            kv: opts.kv,
            attention_splits: opts.attention_splits,
            mla_prefill: opts.mla_prefill,
            identity,
        })
    }

    /// The worker pool (threads, nodes, synchronisation counters).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Nanoseconds spent adding nodes' partial sums so far.
    pub fn allreduce_ns(&self) -> u64 {
        self.allreduce_ns.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Weight bytes of the routed experts read so far (each expert a pass
    /// selects counted once per layer, whatever number of its tokens):
    /// the difference over a run, divided by its passes, is what a
    /// benchmark counts for the experts of a decode step.
    pub fn routed_expert_bytes(&self) -> u64 {
        self.expert_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Weight bytes one decode step of one sequence reads: every dense
    /// matrix once, the router and `top_k` experts of each MoE layer (all
    /// experts of a layer have the same size, so this is exact whichever
    /// are routed), plus one embedding row.
    pub fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self.layers.iter().map(Layer::bytes_per_token).sum();
        layers + self.output.n_bytes() + self.embd.n_bytes() / self.config.vocab_size.max(1)
    }

    /// Every weight shard as (engine node, its bytes): what placement did.
    pub fn shards(&self) -> Vec<(usize, &[u8])> {
        let mut out = Vec::new();
        let mats = self
            .layers
            .iter()
            .flat_map(Layer::matrices)
            .chain(std::iter::once(&self.output));
        for m in mats {
            for (node, s) in m.shards.iter().enumerate() {
                out.push((node, s.bytes()));
            }
        }
        out
    }

    /// The KV options the model was loaded with.
    pub fn kv_options(&self) -> KvOptions {
        self.kv
    }

    /// The shape of a KV store for this model: each engine node holds the
    /// KV heads it computes attention for.
    pub fn kv_geometry(&self, kv: KvOptions) -> KvGeometry {
        kv_shape(&self.config, kv, self.kv_node_heads())
    }

    /// How this batch's attention is cut into items
    /// (`attention::choose_plan`).
    fn attention_plan(&self, seqs: &[SeqInput<'_>]) -> AttnPlan {
        let pool = &*self.pool;
        let page_tokens = seqs
            .iter()
            .map(|s| s.cache.store().geometry().page_tokens)
            .min()
            .unwrap_or(1);
        // A latent cache is attended by every node's threads
        // (`attention::shared_home`, which decides it from the same
        // geometry): parts for all of them.
        let shared = pool.n_nodes() > 1
            && seqs
                .first()
                .is_some_and(|s| s.cache.store().geometry().values == KvValues::InKeys);
        let threads = (0..pool.n_nodes()).map(|n| match shared {
            true => pool.n_threads(),
            false => pool.threads_in_node(n),
        });
        choose_plan(
            seqs.iter().map(|s| (s.cache.len(), s.tokens.len())),
            self.config.n_heads / self.config.n_kv_heads,
            page_tokens,
            threads,
            self.attention_splits,
        )
    }

    #[allow(clippy::single_range_in_vec_init)] // one node's range
    fn kv_node_heads(&self) -> Vec<Range<usize>> {
        match self.layers.first() {
            Some(l) => l.kv_ranges.clone(),
            None => vec![0..self.config.n_kv_heads],
        }
    }

    /// A KV store of `bytes` (rounded down to whole pages, at least one),
    /// each node's pages on that node's memory. Memory is mapped, not
    /// touched: pages become resident as sequences fill them.
    pub fn new_kv_store(&self, kv: KvOptions, bytes: usize) -> Result<Arc<KvStore>, ModelError> {
        self.new_kv_store_tiered(kv, bytes, None)
    }

    /// [`Model::new_kv_store`] over a disk tier (opened with
    /// [`Model::identity`]) that takes evicted pages and serves prefix
    /// lookups the pool misses.
    pub fn new_kv_store_tiered(
        &self,
        kv: KvOptions,
        bytes: usize,
        disk: Option<tandem_kv::DiskTier>,
    ) -> Result<Arc<KvStore>, ModelError> {
        let geom = self.kv_geometry(kv);
        if kv.page_tokens == 0 {
            return Err(ModelError::BadBatch("KV pages of 0 tokens".into()));
        }
        geom.validate()?;
        let pages = (bytes / geom.page_bytes().max(1)).max(1);
        self.kv_store_of_pages(geom, pages, disk)
    }

    /// What identifies these weights (`ModelFiles::identity`): the KV disk
    /// tier keeps each model's pages apart by it.
    pub fn identity(&self) -> tandem_kv::ModelIdentity {
        self.identity
    }

    fn kv_store_of_pages(
        &self,
        geom: KvGeometry,
        pages: usize,
        disk: Option<tandem_kv::DiskTier>,
    ) -> Result<Arc<KvStore>, ModelError> {
        // A shape error is the options' fault, not memory's.
        geom.validate()?;
        let bytes = pages.saturating_mul(geom.page_bytes());
        let tokens = pages.saturating_mul(geom.page_tokens) / geom.n_groups();
        let what = || format!("a KV pool of {tokens} tokens");
        check_fits(what, bytes)?;
        let nodes: Vec<Option<usize>> = (0..geom.node_heads.len())
            .map(|n| self.pool.layout().nodes.get(n).and_then(|p| p.memory_node))
            .collect();
        KvStore::new_tiered(geom, pages, &nodes, disk).map_err(|e| ModelError::OutOfMemory {
            what: format!("{what}: {e}", what = what()),
            bytes,
        })
    }

    /// An empty KV cache for up to `capacity` tokens, in a store of its
    /// own (the model's KV options).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        let geom = self.kv_geometry(self.kv);
        // Every page group's pages for the whole capacity: a prefill of
        // it in one step writes every row before a windowed group
        // releases any.
        let pages = capacity.div_ceil(geom.page_tokens).max(1) * geom.n_groups();
        let store = self.kv_store_of_pages(geom, pages, None)?;
        Ok(store.sequence_with_capacity(capacity).with_limit(capacity))
    }

    /// Runs `tokens` at the positions following what `cache` holds, appends
    /// their keys and values to it, and returns the requested logits
    /// (`vocab_size` values per position, positions in order).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        want: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let mut logits = Vec::new();
        self.forward_batch(
            &mut [SeqInput {
                tokens,
                cache,
                want,
            }],
            &mut logits,
        )?;
        Ok(logits)
    }

    /// One decode step for B sequences: `tokens[b]` is appended to
    /// `caches[b]`; `logits` receives `B × vocab_size` values. Each weight
    /// is read once for the whole batch.
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [KvCache],
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        if tokens.len() != caches.len() {
            return Err(ModelError::BadBatch(format!(
                "{} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        // Inline storage: a decode step of up to 16 sequences allocates nothing.
        let mut seqs: SmallVec<[SeqInput<'_>; 16]> = tokens
            .chunks(1)
            .zip(caches.iter_mut())
            .map(|(t, cache)| SeqInput {
                tokens: t,
                cache,
                want: Logits::Last,
            })
            .collect();
        self.forward_batch(&mut seqs, logits)
    }

    /// The general forward pass: several sequences, each with its new
    /// tokens, in one pass over the weights. `logits` is resized to hold, for
    /// each sequence in order, the rows it asked for (`vocab_size` each);
    /// its allocation is reused across calls.
    pub fn forward_batch(
        &self,
        seqs: &mut [SeqInput<'_>],
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let (h, hd) = (c.hidden, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        logits.clear();
        if n == 0 {
            return Ok(());
        }
        for s in seqs.iter() {
            let g = s.cache.store().geometry();
            let same_heads = self
                .layers
                .first()
                .is_none_or(|l| l.kv_ranges == g.node_heads);
            if g.n_layers != c.n_layers || g.head_dim != hd || !same_heads {
                return Err(ModelError::BadBatch(
                    "KV cache made for another model".into(),
                ));
            }
            if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::BadToken {
                    id,
                    vocab: c.vocab_size,
                });
            }
        }
        // Pages for the new positions (copy-on-write of a shared last page).
        for s in seqs.iter_mut() {
            s.cache.reserve(s.tokens.len()).map_err(|e| match e {
                tandem_kv::KvError::OutOfPages { .. } | tandem_kv::KvError::LimitReached { .. } => {
                    ModelError::ContextFull {
                        needed: s.cache.len() + s.tokens.len(),
                        capacity: s.cache.capacity(),
                    }
                }
                e => ModelError::Kernel(e.to_string()),
            })?;
        }
        let mut guard = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        let ws = &mut *guard;
        let pool = &*self.pool;
        let n_nodes = pool.n_nodes();
        let max_node_heads = self.layers.first().map_or(1, |l| {
            l.kv_ranges.iter().map(|r| r.len()).max().unwrap_or(1)
        });
        ws.ensure(
            n,
            &Dims {
                hidden: h,
                q_dim,
                kv_dim,
                ffn: c.ffn_hidden,
                rope_pairs: self.rope_pairs() * self.ropes.len(),
                n_nodes,
                n_threads: pool.n_threads(),
                // Matmul chunks, or attention's tiles.
                scratch: SCRATCH.max(8 * n).max(crate::attention::scratch_len(
                    hd,
                    seqs.iter()
                        .map(|s| s.cache.store().geometry().page_tokens)
                        .max()
                        .unwrap_or(1),
                    max_node_heads,
                )),
                attn_states: crate::attention::states_len(max_node_heads),
            },
        );

        // Rows: embeddings, RoPE tables, logit rows.
        ws.logit_rows.clear();
        let pairs = self.rope_pairs();
        let n_ropes = self.ropes.len();
        let mut row = 0;
        for s in seqs.iter() {
            let t = s.tokens.len();
            if t == 0 {
                // No new tokens: no rows, no logits.
                continue;
            }
            let first_logit = match s.want {
                Logits::None => t,
                Logits::Last => t - 1,
                Logits::All => 0,
                Logits::Tail(k) => t - k.clamp(1, t),
            };
            for (i, &tok) in s.tokens.iter().enumerate() {
                let pos = s.cache.len() + i;
                let xr = &mut ws.x[row * h..(row + 1) * h];
                self.embd.row_f32(tok as usize, xr)?;
                if let Some(sc) = self.embed_scale {
                    xr.iter_mut().for_each(|v| *v *= sc);
                }
                // Tables of each RoPE, one after the other.
                for (ri, rope) in self.ropes.iter().enumerate() {
                    let at = (ri * n + row) * pairs;
                    rope.table(pos, &mut ws.rope[at..at + pairs]);
                }
                if i >= first_logit {
                    ws.logit_rows.push(row);
                }
                row += 1;
            }
        }

        // Attention items; flash-decoding's buffers when split.
        let plan = self.attention_plan(seqs);
        if plan.parts > 1 {
            let heads = seqs.len() * c.n_kv_heads;
            grow(
                &mut ws.attn_partials,
                heads * plan.parts * crate::attention::partial_slot_len(hd),
            );
            ws.attn_done.grow(heads);
        }

        for (li, l) in self.layers.iter().enumerate() {
            // Attention block.
            rms_norm(
                &ws.x[..n * h],
                &l.attn_norm,
                c.norm_eps,
                &mut ws.xn[..n * h],
            );
            ws.acts.invalidate();
            let rope_i = l.attn.rope.min(n_ropes - 1);
            match &l.qkv {
                Qkv::Gqa { wq, wk, wv, .. } => {
                    for m in [wq, wk, wv] {
                        ws.acts
                            .prepare(m.format.activation_format(), &ws.xn[..n * h], n, h)?;
                    }
                    let (q, k, v) = (
                        SharedOut::new(&mut ws.q),
                        SharedOut::new(&mut ws.k),
                        SharedOut::new(&mut ws.v),
                    );
                    row_split(
                        pool,
                        &[
                            RowTarget {
                                m: wq,
                                out: q,
                                stride: q_dim,
                            },
                            RowTarget {
                                m: wk,
                                out: k,
                                stride: kv_dim,
                            },
                            RowTarget {
                                m: wv,
                                out: v,
                                stride: kv_dim,
                            },
                        ],
                        &ws.acts,
                        n,
                        &ws.scratch,
                    )?;
                }
                Qkv::Mla(m) => {
                    // Sequences prefilled expanded (`mla_expanded`); the
                    // rest absorbed, their rows' queries absorbed here.
                    ws.mla_rows.clear();
                    let mut row0 = 0;
                    for s in seqs.iter() {
                        let rows = row0..row0 + s.tokens.len();
                        let expand = m.k_b_t.is_some()
                            && worth_expanding(self.mla_prefill, &m.cfg, s.cache.len(), rows.len());
                        ws.mla_rows.push((rows.clone(), expand));
                        row0 = rows.end;
                    }
                    crate::mla::prepare(
                        pool,
                        m,
                        c.n_heads,
                        h,
                        c.norm_eps,
                        &self.ropes[rope_i],
                        rope_i * n * pairs,
                        ws,
                        n,
                    )?;
                }
            }
            let (q, k, v) = (
                SharedOut::new(&mut ws.q),
                SharedOut::new(&mut ws.k),
                SharedOut::new(&mut ws.v),
            );
            let attn_out = SharedOut::new(&mut ws.attn);
            let mut row0 = 0;
            let views_buf = &mut ws.seq_views;
            views_buf.clear();
            for (si, s) in seqs.iter().enumerate() {
                // An expanded MLA sequence attends in `mla_expanded`.
                let expanded =
                    matches!(l.qkv, Qkv::Mla(_)) && ws.mla_rows.get(si).is_some_and(|r| r.1);
                if !expanded {
                    views_buf.push(SeqView {
                        seq: &*s.cache,
                        layer: li,
                        p0: s.cache.len(),
                        row0,
                        n_rows: s.tokens.len(),
                    });
                }
                row0 += s.tokens.len();
            }
            let split = SplitState {
                plan,
                partials: SharedOut::new(&mut ws.attn_partials),
                done: &ws.attn_done,
            };
            let no_vec: Option<Vec<f32>> = None;
            let (bq, bk, bv, q_norm, k_norm) = match &l.qkv {
                Qkv::Gqa {
                    bq,
                    bk,
                    bv,
                    q_norm,
                    k_norm,
                    ..
                } => (bq, bk, bv, q_norm, k_norm),
                Qkv::Mla(_) => (&no_vec, &no_vec, &no_vec, &no_vec, &no_vec),
            };
            // Every sequence may be expanded (MLA): then no views.
            if !ws.seq_views.is_empty() {
                attention(
                    pool,
                    c,
                    &self.ropes[rope_i],
                    &AttnLayer {
                        spec: &l.attn,
                        sinks: l.sinks.as_deref(),
                        bq: bq.as_deref(),
                        bk: bk.as_deref(),
                        bv: bv.as_deref(),
                        q_norm: q_norm.as_deref(),
                        k_norm: k_norm.as_deref(),
                        rotate: l.attn.mla.is_none(),
                    },
                    &l.kv_ranges,
                    &ws.seq_views,
                    q,
                    k,
                    v,
                    attn_out,
                    &ws.rope[rope_i * n * pairs..],
                    &ws.scratch,
                    &ws.attn_states,
                    &split,
                )?;
            }
            match &l.qkv {
                Qkv::Gqa { .. } => self.project_add(
                    ws,
                    &l.wo,
                    n,
                    q_dim,
                    Buf::Attn,
                    l.bo.as_deref(),
                    l.attn_post_norm.as_deref(),
                )?,
                Qkv::Mla(m) => {
                    for (si, s) in seqs.iter().enumerate() {
                        let Some((rows, expand)) = ws.mla_rows.get(si).cloned() else {
                            continue;
                        };
                        if !expand {
                            crate::mla::output(pool, m, c.n_heads, ws, rows)?;
                            continue;
                        }
                        let home = s.cache.store().geometry().head_home(0).0;
                        let es = crate::mla_expanded::ExpandedSeq {
                            cache: &*s.cache,
                            p0: s.cache.len(),
                            row0: rows.start,
                            n_rows: rows.len(),
                        };
                        crate::mla_expanded::attend(
                            pool, m, &l.attn, c.n_heads, li, home, &es, ws,
                        )?;
                    }
                    let w = c.n_heads * m.cfg.v_head;
                    self.project_add(
                        ws,
                        &l.wo,
                        n,
                        w,
                        Buf::Mla,
                        l.bo.as_deref(),
                        l.attn_post_norm.as_deref(),
                    )?
                }
            }

            // Feed-forward block.
            rms_norm(&ws.x[..n * h], &l.ffn_norm, c.norm_eps, &mut ws.xn[..n * h]);
            ws.acts.invalidate();
            match &l.ffn {
                Ffn::Dense {
                    gate,
                    up,
                    down,
                    act,
                } => {
                    for m in [gate, up] {
                        ws.acts
                            .prepare(m.format.activation_format(), &ws.xn[..n * h], n, h)?;
                    }
                    let (g, u) = (SharedOut::new(&mut ws.gate), SharedOut::new(&mut ws.up));
                    gate_up(pool, gate, up, *act, g, u, &ws.acts, n, &ws.scratch)?;
                    let post = l.ffn_post_norm.as_deref();
                    self.project_add(ws, down, n, gate.rows, Buf::Gate, None, post)?;
                }
                Ffn::Moe(m) => self.moe_add(ws, m, n, l.ffn_post_norm.as_deref())?,
            }
        }
        for s in seqs.iter_mut() {
            s.cache
                .commit(s.tokens)
                .map_err(|e| ModelError::Kernel(e.to_string()))?;
        }

        // Output head on the rows that want logits.
        let n_out = ws.logit_rows.len();
        if n_out == 0 {
            return Ok(());
        }
        for (i, &r) in ws.logit_rows.iter().enumerate() {
            rms_norm(
                &ws.x[r * h..(r + 1) * h],
                &self.out_norm,
                c.norm_eps,
                &mut ws.normed_out[i * h..(i + 1) * h],
            );
        }
        ws.acts.invalidate();
        ws.acts.prepare(
            self.output.format.activation_format(),
            &ws.normed_out[..n_out * h],
            n_out,
            h,
        )?;
        logits.resize(n_out * c.vocab_size, 0.0);
        row_split(
            pool,
            &[RowTarget {
                m: &self.output,
                out: SharedOut::new(logits),
                stride: c.vocab_size,
            }],
            &ws.acts,
            n_out,
            &ws.scratch,
        )
    }

    /// `x += m · buf` for O (`buf` = attention output) and down (`buf` =
    /// gated FFN activations), however `m` is split.
    #[allow(clippy::too_many_arguments)]
    fn project_add(
        &self,
        ws: &mut Workspace,
        m: &ShardedMatrix,
        n: usize,
        width: usize,
        buf: Buf,
        bias: Option<&[f32]>,
        post_norm: Option<&[f32]>,
    ) -> Result<(), ModelError> {
        let h = self.config.hidden;
        if m.split == Split::Cols {
            // (The loader never splits a sandwich-normed block by columns.)
            self.prepare_node_acts(ws, m, n, width, buf)?;
            self.col_split_add(ws, m, n)?;
            if let Some(b) = bias {
                for row in ws.x[..n * h].chunks_exact_mut(h) {
                    row.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
                }
            }
            return Ok(());
        }
        let src = match buf {
            Buf::Attn => &ws.attn[..n * width],
            Buf::Mla => &ws.mla.o[..n * width],
            Buf::Gate => &ws.gate[..n * width],
        };
        ws.acts.invalidate();
        ws.acts
            .prepare(m.format.activation_format(), src, n, width)?;
        let out = SharedOut::new(&mut ws.partial[0]);
        row_split(
            &self.pool,
            &[RowTarget { m, out, stride: h }],
            &ws.acts,
            n,
            &ws.scratch,
        )?;
        if let Some(b) = bias {
            for row in ws.partial[0][..n * h].chunks_exact_mut(h) {
                row.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
            }
        }
        self.add_residual(ws, n, post_norm);
        Ok(())
    }

    /// `x += post_norm(partial[0])` over `n` rows (no norm when None): the
    /// residual add of a block whose output is in `partial[0]`.
    fn add_residual(&self, ws: &mut Workspace, n: usize, post_norm: Option<&[f32]>) {
        let h = self.config.hidden;
        let t0 = std::time::Instant::now();
        if let Some(w) = post_norm {
            let (p, tmp) = (&ws.partial[0][..n * h], &mut ws.normed_out[..n * h]);
            rms_norm(p, w, self.config.norm_eps, tmp);
            ws.x[..n * h]
                .iter_mut()
                .zip(&ws.normed_out[..n * h])
                .for_each(|(a, &b)| *a += b);
        } else {
            ws.x[..n * h]
                .iter_mut()
                .zip(&ws.partial[0][..n * h])
                .for_each(|(a, &b)| *a += b);
        }
        self.allreduce_ns.fetch_add(
            t0.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Entries per row of one RoPE table.
    fn rope_pairs(&self) -> usize {
        self.ropes.first().map_or(0, Rope::table_len)
    }

    /// Quantizes each node's column slice of `buf` for a column-split matrix.
    fn prepare_node_acts(
        &self,
        ws: &mut Workspace,
        m: &ShardedMatrix,
        n: usize,
        width: usize,
        buf: Buf,
    ) -> Result<(), ModelError> {
        let fmt = m.format.activation_format();
        for (node, sh) in m.shards.iter().enumerate() {
            let acts = &mut ws.node_acts[node];
            acts.invalidate();
            if sh.is_empty() {
                continue;
            }
            let src = match buf {
                Buf::Attn => &ws.attn,
                Buf::Gate => &ws.gate,
                Buf::Mla => &ws.mla.o,
            };
            let cols = sh.cols.clone();
            if cols.len() == width {
                acts.prepare(fmt, &src[..n * width], n, width)?;
            } else {
                let g = &mut ws.gather[..n * cols.len()];
                for (b, dst) in g.chunks_exact_mut(cols.len()).enumerate() {
                    dst.copy_from_slice(&src[b * width + cols.start..b * width + cols.end]);
                }
                acts.prepare(fmt, g, n, cols.len())?;
            }
        }
        Ok(())
    }

    /// Runs a column-split matrix and adds every node's partial sums into
    /// the residual stream (the all-reduce, in shared memory).
    fn col_split_add(
        &self,
        ws: &mut Workspace,
        m: &ShardedMatrix,
        n: usize,
    ) -> Result<(), ModelError> {
        let h = self.config.hidden;
        ws.partial_outs.clear();
        for p in ws.partial.iter_mut().take(m.shards.len()) {
            ws.partial_outs.push(SharedOut::new(p));
        }
        col_split(
            &self.pool,
            m,
            &ws.node_acts,
            &ws.partial_outs,
            n,
            &ws.scratch,
        )?;
        let t0 = std::time::Instant::now();
        let x = &mut ws.x[..n * h];
        for (node, sh) in m.shards.iter().enumerate() {
            if !sh.is_empty() {
                let p = &ws.partial[node][..n * h];
                x.iter_mut().zip(p).for_each(|(a, &b)| *a += b);
            }
        }
        self.allreduce_ns.fetch_add(
            t0.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
}

impl Model {
    /// `x += moe(xn)` for the `n` rows of the batch: router, routing,
    /// grouping by expert, then the gate/up and down runs of `crate::moe`.
    fn moe_add(
        &self,
        ws: &mut Workspace,
        m: &MoeFfn,
        n: usize,
        post_norm: Option<&[f32]>,
    ) -> Result<(), ModelError> {
        let h = self.config.hidden;
        let pool = &*self.pool;
        let cfg = &m.cfg;
        let (ne, k) = (cfg.n_experts, cfg.top_k);
        // 1. Router logits.
        let xn = &ws.xn[..n * h];
        ws.acts
            .prepare(m.router.format.activation_format(), xn, n, h)?;
        let b = &mut ws.moe;
        grow(&mut b.logits, n * ne);
        row_split(
            pool,
            &[RowTarget {
                m: &m.router,
                out: SharedOut::new(&mut b.logits),
                stride: ne,
            }],
            &ws.acts,
            n,
            &ws.scratch,
        )?;
        // 2. Routes, 3. grouped by expert (a counting sort): one slot per
        // selected expert, then the shared expert over every token.
        grow(&mut b.probs, ne);
        grow(&mut b.choice, ne);
        grow(&mut b.routes, n * k);
        if let Some(rb) = &m.router_bias {
            for row in b.logits[..n * ne].chunks_exact_mut(ne) {
                row.iter_mut().zip(rb).for_each(|(l, &x)| *l += x);
            }
        }
        for t in 0..n {
            route_token(
                cfg,
                &b.logits[t * ne..(t + 1) * ne],
                m.bias.as_deref(),
                &mut b.probs,
                &mut b.choice,
                &mut b.routes[t * k..(t + 1) * k],
            );
        }
        b.starts.clear();
        b.starts.resize(ne + 1, 0);
        for &(e, _) in &b.routes[..n * k] {
            b.starts[e as usize + 1] += 1;
        }
        for e in 0..ne {
            b.starts[e + 1] += b.starts[e];
        }
        b.cursor.clear();
        b.cursor.extend_from_slice(&b.starts[..ne]);
        let shared_n = if m.shared.is_some() { n } else { 0 };
        grow(&mut b.tokens, n * k + shared_n);
        grow(&mut b.weights, n * k + shared_n);
        for (i, &(e, w)) in b.routes[..n * k].iter().enumerate() {
            let at = &mut b.cursor[e as usize];
            b.tokens[*at] = (i / k) as u32;
            b.weights[*at] = w;
            *at += 1;
        }
        b.slots.clear();
        let mut h_off = 0;
        for e in 0..ne {
            let rows = b.starts[e]..b.starts[e + 1];
            if !rows.is_empty() {
                let len = rows.len();
                b.slots.push(Slot {
                    expert: e,
                    rows,
                    h_off,
                });
                h_off += len * cfg.expert_ffn;
            }
        }
        if let Some(sh) = &m.shared {
            for t in 0..n {
                b.tokens[n * k + t] = t as u32;
                b.weights[n * k + t] = 1.0;
            }
            b.slots.push(Slot {
                expert: SHARED,
                rows: n * k..n * k + n,
                h_off,
            });
            h_off += n * sh.gate.rows;
        }
        let routed: usize = b
            .slots
            .iter()
            .filter(|s| s.expert != SHARED)
            .filter_map(|s| m.experts.get(s.expert))
            .map(Expert::n_bytes)
            .sum();
        self.expert_bytes
            .fetch_add(routed as u64, std::sync::atomic::Ordering::Relaxed);
        grow(&mut b.g, h_off);
        grow(&mut b.u, h_off);
        // 4. Each slot's input rows, quantized for its gate and up (one
        // token: every slot reads the batch's one row).
        let experts_of = |s: &Slot| {
            if s.expert == SHARED {
                m.shared.as_ref()
            } else {
                m.experts.get(s.expert)
            }
        };
        if b.acts.len() < b.slots.len() {
            b.acts.resize_with(b.slots.len(), Default::default);
            b.h_acts.resize_with(b.slots.len(), Default::default);
        }
        if n == 1 {
            for s in &b.slots {
                let Some(e) = experts_of(s) else { continue };
                for f in [
                    e.gate.format.activation_format(),
                    e.up.format.activation_format(),
                ] {
                    ws.acts.prepare(f, xn, 1, h)?;
                }
            }
        } else {
            b.gather.ensure(pool.n_threads(), 0);
            moe::quantize_inputs(pool, m, &b.slots, &b.tokens, xn, h, &mut b.acts, &b.gather)?;
        }
        let (g, u) = (SharedOut::new(&mut b.g), SharedOut::new(&mut b.u));
        let acts = match n {
            1 => SlotActs::Shared(&ws.acts),
            _ => SlotActs::PerSlot(&b.acts),
        };
        moe::gate_up(pool, m, &b.slots, acts, g, u, &ws.scratch)?;
        // 5. The SwiGLU rows quantized for down, then down.
        moe::quantize_hidden(pool, m, &b.slots, &b.g, &mut b.h_acts)?;
        let out = SharedOut::new(&mut ws.partial[0]);
        moe::down(
            pool,
            m,
            &b.slots,
            &b.tokens,
            &b.weights,
            n,
            SlotActs::PerSlot(&b.h_acts),
            out,
            &ws.scratch,
        )?;
        self.add_residual(ws, n, post_norm);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Buf {
    Attn,
    Gate,
    /// MLA's output after `v_b`.
    Mla,
}
