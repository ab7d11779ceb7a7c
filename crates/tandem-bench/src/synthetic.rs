//! `tandem bench --synthetic`: GGUF files with random weights in the shape
//! of a real model, written as a stream so multi-gigabyte files never sit in
//! memory. Tensor names, types and metadata are what llama.cpp's converter
//! and `llama-quantize` produce for the architecture, so llama.cpp loads the
//! same file and the two engines can be timed on identical bytes.

mod blocks;
mod quant;
mod shape;
mod vocab;

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tandem_gguf::{Array, GgmlType, GgufWriter, Value};

pub use blocks::{fill, WEIGHT_STD};
pub use quant::{use_more_bits, Quant, Role};
pub use shape::{MlaShape, MoeShape, Shape, VocabStyle};
pub use vocab::{build as build_vocab, byte_char, Vocab};

use crate::BenchError;

/// One tensor of the file to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// How to fill it.
    pub init: Init,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Random weights, std [`WEIGHT_STD`].
    Random,
    /// All ones (RMSNorm weights).
    Ones,
    /// Small random values (biases).
    Small,
}

impl TensorPlan {
    pub fn n_bytes(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        self.ty
            .bytes_for(self.dims.first().copied().unwrap_or(1), n)
            .unwrap_or(0)
    }
}

/// The tensors of `shape` in `quant`, in the order llama.cpp writes them.
pub fn plan(shape: &Shape, quant: Quant) -> Vec<TensorPlan> {
    let (h, ffn, nl) = (shape.hidden as u64, shape.ffn as u64, shape.n_layers);
    let (q, kv, vocab) = (
        shape.q_dim() as u64,
        shape.kv_dim() as u64,
        shape.vocab as u64,
    );
    let mut out = Vec::new();
    let mut push = |name: String, dims: Vec<u64>, ty, init| {
        out.push(TensorPlan {
            name,
            dims,
            ty,
            init,
        })
    };
    let ty = |role, layer| quant.tensor_type(role, layer, nl, shape.tied);
    push(
        "token_embd.weight".into(),
        vec![h, vocab],
        ty(Role::TokenEmbd, 0),
        Init::Random,
    );
    for i in 0..nl {
        let n = |s: &str| format!("blk.{i}.{s}");
        push(n("attn_norm.weight"), vec![h], GgmlType::F32, Init::Ones);
        if let Some(m) = &shape.mla {
            let (heads, qk) = (shape.n_heads as u64, (m.qk_nope + m.qk_rope) as u64);
            let (ql, kl, v) = (m.q_lora as u64, m.kv_lora as u64, m.v_head as u64);
            push(
                n("attn_q_a.weight"),
                vec![h, ql],
                ty(Role::AttnQ, i),
                Init::Random,
            );
            push(
                n("attn_q_a_norm.weight"),
                vec![ql],
                GgmlType::F32,
                Init::Ones,
            );
            push(
                n("attn_q_b.weight"),
                vec![ql, heads * qk],
                ty(Role::AttnQ, i),
                Init::Random,
            );
            push(
                n("attn_kv_a_mqa.weight"),
                vec![h, kl + m.qk_rope as u64],
                ty(Role::AttnK, i),
                Init::Random,
            );
            push(
                n("attn_kv_a_norm.weight"),
                vec![kl],
                GgmlType::F32,
                Init::Ones,
            );
            // 128 columns: no k-quant fits; llama-quantize falls back
            // (to Q5_0 for Q4_K); Q8_0 here, a few MiB per layer.
            let k_b = match ty(Role::AttnK, i) {
                t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0) => t,
                _ => GgmlType::Q8_0,
            };
            push(
                n("attn_k_b.weight"),
                vec![m.qk_nope as u64, kl, heads],
                k_b,
                Init::Random,
            );
            push(
                n("attn_v_b.weight"),
                vec![kl, v, heads],
                ty(Role::AttnV, i),
                Init::Random,
            );
            push(
                n("attn_output.weight"),
                vec![heads * v, h],
                ty(Role::AttnOut, i),
                Init::Random,
            );
        }
        let gqa = [
            ("attn_q", q, Role::AttnQ),
            ("attn_k", kv, Role::AttnK),
            ("attn_v", kv, Role::AttnV),
        ];
        let n_gqa = if shape.mla.is_some() { 0 } else { gqa.len() };
        for (s, rows, role) in gqa.into_iter().take(n_gqa) {
            push(
                n(&format!("{s}.weight")),
                vec![h, rows],
                ty(role, i),
                Init::Random,
            );
            if shape.qkv_bias {
                push(
                    n(&format!("{s}.bias")),
                    vec![rows],
                    GgmlType::F32,
                    Init::Small,
                );
            }
        }
        if shape.qk_norm {
            let hd = shape.head_dim() as u64;
            push(n("attn_q_norm.weight"), vec![hd], GgmlType::F32, Init::Ones);
            push(n("attn_k_norm.weight"), vec![hd], GgmlType::F32, Init::Ones);
        }
        let gpt_oss = shape.arch == "gpt-oss";
        if shape.mla.is_none() {
            push(
                n("attn_output.weight"),
                vec![q, h],
                ty(Role::AttnOut, i),
                Init::Random,
            );
        }
        if gpt_oss {
            push(n("attn_output.bias"), vec![h], GgmlType::F32, Init::Small);
            push(
                n("attn_sinks.weight"),
                vec![shape.n_heads as u64],
                GgmlType::F32,
                Init::Small,
            );
        }
        // gpt-oss names the FFN's norm after the attention.
        let ffn_norm = if gpt_oss {
            "post_attention_norm.weight"
        } else {
            "ffn_norm.weight"
        };
        push(n(ffn_norm), vec![h], GgmlType::F32, Init::Ones);
        if let Some(m) = shape.moe.as_ref().filter(|m| i >= m.leading_dense) {
            // llama-quantize leaves the router in F32; experts follow the
            // dense roles (ffn_down_exps gets ffn_down's extra bits).
            let (e, f) = (m.n_experts as u64, m.expert_ffn as u64);
            push(
                n("ffn_gate_inp.weight"),
                vec![h, e],
                GgmlType::F32,
                Init::Random,
            );
            push(
                n("ffn_gate_exps.weight"),
                vec![h, f, e],
                ty(Role::ExpGate, i),
                Init::Random,
            );
            push(
                n("ffn_up_exps.weight"),
                vec![h, f, e],
                ty(Role::ExpUp, i),
                Init::Random,
            );
            push(
                n("ffn_down_exps.weight"),
                vec![f, h, e],
                ty(Role::ExpDown, i),
                Init::Random,
            );
            if m.deepseek.is_some() {
                push(n("exp_probs_b.bias"), vec![e], GgmlType::F32, Init::Small);
            }
            if gpt_oss {
                push(n("ffn_gate_inp.bias"), vec![e], GgmlType::F32, Init::Small);
                for (s, rows) in [("gate", f), ("up", f), ("down", h)] {
                    push(
                        n(&format!("ffn_{s}_exps.bias")),
                        vec![rows, e],
                        GgmlType::F32,
                        Init::Small,
                    );
                }
            }
            if m.shared_ffn > 0 {
                let sf = m.shared_ffn as u64;
                push(
                    n("ffn_gate_shexp.weight"),
                    vec![h, sf],
                    ty(Role::FfnGate, i),
                    Init::Random,
                );
                push(
                    n("ffn_up_shexp.weight"),
                    vec![h, sf],
                    ty(Role::FfnUp, i),
                    Init::Random,
                );
                push(
                    n("ffn_down_shexp.weight"),
                    vec![sf, h],
                    ty(Role::FfnDown, i),
                    Init::Random,
                );
            }
            continue;
        }
        push(
            n("ffn_gate.weight"),
            vec![h, ffn],
            ty(Role::FfnGate, i),
            Init::Random,
        );
        push(
            n("ffn_up.weight"),
            vec![h, ffn],
            ty(Role::FfnUp, i),
            Init::Random,
        );
        push(
            n("ffn_down.weight"),
            vec![ffn, h],
            ty(Role::FfnDown, i),
            Init::Random,
        );
    }
    push(
        "output_norm.weight".into(),
        vec![h],
        GgmlType::F32,
        Init::Ones,
    );
    if !shape.tied {
        push(
            "output.weight".into(),
            vec![h, vocab],
            ty(Role::Output, 0),
            Init::Random,
        );
    }
    out
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(v.to_vec()))
}

/// The writer with all metadata and tensor infos (no data yet).
pub fn writer(
    shape: &Shape,
    quant: Quant,
    tensors: &[TensorPlan],
) -> Result<GgufWriter, BenchError> {
    let vocab = vocab::build(shape.vocab_style, shape.vocab)?;
    let a = shape.arch;
    let mut w = GgufWriter::new();
    let u32v = |x: usize| Value::U32(u32::try_from(x).unwrap_or(u32::MAX));
    w.add_metadata("general.architecture", Value::from(a));
    w.add_metadata(
        "general.name",
        Value::from(format!("{} {} (synthetic)", shape.name, quant.name()).as_str()),
    );
    w.add_metadata("general.file_type", Value::U32(quant.file_type()));
    w.add_metadata("general.quantization_version", Value::U32(2));
    w.add_metadata(format!("{a}.context_length"), u32v(shape.context_length));
    w.add_metadata(format!("{a}.embedding_length"), u32v(shape.hidden));
    w.add_metadata(format!("{a}.block_count"), u32v(shape.n_layers));
    w.add_metadata(format!("{a}.feed_forward_length"), u32v(shape.ffn));
    w.add_metadata(format!("{a}.attention.head_count"), u32v(shape.n_heads));
    w.add_metadata(
        format!("{a}.attention.head_count_kv"),
        u32v(shape.n_kv_heads),
    );
    w.add_metadata(format!("{a}.rope.freq_base"), Value::F32(shape.rope_theta));
    w.add_metadata(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(shape.norm_eps),
    );
    match &shape.mla {
        Some(m) => {
            w.add_metadata(format!("{a}.rope.dimension_count"), u32v(m.qk_rope));
            w.add_metadata(format!("{a}.attention.q_lora_rank"), u32v(m.q_lora));
            w.add_metadata(format!("{a}.attention.kv_lora_rank"), u32v(m.kv_lora));
            w.add_metadata(format!("{a}.attention.key_length"), u32v(shape.head_dim()));
            w.add_metadata(format!("{a}.attention.value_length"), u32v(m.kv_lora));
            w.add_metadata(
                format!("{a}.attention.key_length_mla"),
                u32v(m.qk_nope + m.qk_rope),
            );
            w.add_metadata(format!("{a}.attention.value_length_mla"), u32v(m.v_head));
            // DeepSeek-V3's YaRN (factor 40 over 4096 positions).
            w.add_metadata(format!("{a}.rope.scaling.type"), Value::from("yarn"));
            w.add_metadata(format!("{a}.rope.scaling.factor"), Value::F32(40.0));
            w.add_metadata(
                format!("{a}.rope.scaling.original_context_length"),
                u32v(4096),
            );
            w.add_metadata(
                format!("{a}.rope.scaling.yarn_log_multiplier"),
                Value::F32(0.1),
            );
        }
        None => w.add_metadata(format!("{a}.rope.dimension_count"), u32v(shape.head_dim())),
    }
    if let Some(k) = shape.key_length {
        w.add_metadata(format!("{a}.attention.key_length"), u32v(k));
        w.add_metadata(format!("{a}.attention.value_length"), u32v(k));
    }
    if let Some(m) = &shape.moe {
        w.add_metadata(format!("{a}.expert_count"), u32v(m.n_experts));
        w.add_metadata(format!("{a}.expert_used_count"), u32v(m.top_k));
        w.add_metadata(
            format!("{a}.expert_feed_forward_length"),
            u32v(m.expert_ffn),
        );
        if m.shared_ffn > 0 {
            w.add_metadata(
                format!("{a}.expert_shared_count"),
                u32v(m.shared_ffn / m.expert_ffn.max(1)),
            );
        }
        if m.leading_dense > 0 {
            w.add_metadata(
                format!("{a}.leading_dense_block_count"),
                u32v(m.leading_dense),
            );
        }
        if let Some((groups, used, scale)) = m.deepseek {
            w.add_metadata(format!("{a}.expert_gating_func"), Value::U32(2));
            w.add_metadata(format!("{a}.expert_group_count"), u32v(groups));
            w.add_metadata(format!("{a}.expert_group_used_count"), u32v(used));
            w.add_metadata(format!("{a}.expert_weights_scale"), Value::F32(scale));
            w.add_metadata(format!("{a}.expert_weights_norm"), Value::Bool(true));
        }
    }
    if let Some(win) = shape.window {
        w.add_metadata(format!("{a}.attention.sliding_window"), u32v(win));
        // gpt-oss's YaRN (factor 32 over 4096 positions).
        w.add_metadata(format!("{a}.rope.scaling.type"), Value::from("yarn"));
        w.add_metadata(format!("{a}.rope.scaling.factor"), Value::F32(32.0));
        w.add_metadata(
            format!("{a}.rope.scaling.original_context_length"),
            u32v(4096),
        );
    }
    if a == "llama" || a == "deepseek2" {
        w.add_metadata(format!("{a}.vocab_size"), u32v(shape.vocab));
    }
    w.add_metadata("tokenizer.ggml.model", Value::from("gpt2"));
    w.add_metadata("tokenizer.ggml.pre", Value::from(vocab.pre));
    w.add_metadata("tokenizer.ggml.tokens", strings(&vocab.tokens));
    w.add_metadata(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(vocab.types.clone())),
    );
    w.add_metadata("tokenizer.ggml.merges", strings(&vocab.merges));
    w.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(vocab.bos));
    w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(vocab.eos));
    if let Some(eot) = vocab.eot {
        w.add_metadata("tokenizer.ggml.eot_token_id", Value::U32(eot));
    }
    w.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(vocab.add_bos));
    w.add_metadata("tokenizer.chat_template", Value::from(vocab.chat_template));
    for t in tensors {
        w.add_tensor_info(t.name.clone(), t.dims.clone(), t.ty)?;
    }
    Ok(w)
}

/// Size of a generation chunk: whole blocks of every type, a few MiB.
const CHUNK_BLOCKS: usize = 4 * 2 * 3 * 5 * 7 * 256;

/// Streams one tensor's data into `out`, calling `progress(bytes)` per chunk.
fn write_tensor<W: Write>(
    t: &TensorPlan,
    seed: u64,
    out: &mut tandem_gguf::GgufStream<'_, W>,
    buf: &mut Vec<u8>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), std::io::Error> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let block = usize::try_from(t.ty.block_bytes()).unwrap_or(1);
    let chunk = block * CHUNK_BLOCKS / 256;
    let mut left = usize::try_from(t.n_bytes()).unwrap_or(usize::MAX);
    while left > 0 {
        let n = left.min(chunk);
        buf.resize(n, 0);
        match t.init {
            Init::Random => fill(t.ty, &mut rng, buf).map_err(std::io::Error::other)?,
            Init::Ones => buf
                .chunks_exact_mut(4)
                .for_each(|w| w.copy_from_slice(&1f32.to_le_bytes())),
            Init::Small => {
                fill(t.ty, &mut rng, buf).map_err(std::io::Error::other)?;
                for w in buf.chunks_exact_mut(4) {
                    let v = f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * 0.5;
                    w.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        out.write_data(buf)?;
        progress(n as u64);
        left -= n;
    }
    Ok(())
}

/// Total bytes of tensor data `plan` describes.
pub fn data_bytes(tensors: &[TensorPlan]) -> u64 {
    tensors.iter().map(TensorPlan::n_bytes).sum()
}

/// Writes the synthetic model to `path` (via a temporary file renamed at the
/// end, so an interrupted run leaves no half file under the final name).
/// `progress` gets the data bytes written so far and the total.
pub fn write_model(
    shape: &Shape,
    quant: Quant,
    path: &Path,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), BenchError> {
    let tensors = plan(shape, quant);
    let w = writer(shape, quant, &tensors)?;
    let total = data_bytes(&tensors);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".partial");
    let tmp = std::path::PathBuf::from(tmp_name);
    let io = |e| BenchError::io(&tmp, e);
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let result = (|| -> Result<(), std::io::Error> {
        let mut s = w.stream(BufWriter::with_capacity(1 << 20, file))?;
        let mut buf = Vec::new();
        let mut done = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            let tseed = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            write_tensor(t, tseed, &mut s, &mut buf, &mut |n| {
                done += n;
                progress(done, total);
            })?;
        }
        let bw = s.finish()?;
        let file = bw.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| BenchError::io(path, e))
}
