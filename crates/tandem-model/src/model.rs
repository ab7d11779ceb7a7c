//! The decoder forward pass, one implementation for every supported
//! architecture and both file formats.
//!
//! Per layer: `x += Wo · attn(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x))`, then
//! `x += Wdown · (silu(Wgate·n(x)) * Wup·n(x))`, with RMSNorm `n`. The
//! architecture switches (QKV bias, QK-norm) and the RoPE layout come from
//! [`ModelConfig`]; tensor names from the canonical (GGUF) naming.

use rayon::prelude::*;
use tandem_tokenizer::Tokenizer;

use crate::config::ModelConfig;
use crate::kv_cache::KvCache;
use crate::linear::{Activations, Matrix};
use crate::ops::{rms_norm, silu_mul, softmax, Rope};
use crate::source::{ModelFiles, SourceFormat};
use crate::tensor::Tensor;
use crate::ModelError;

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
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
}

/// A loaded model: configuration, tokenizer and weights.
pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub format: SourceFormat,
    pub name: Option<String>,
    embd: Tensor,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Matrix,
    rope: Rope,
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

impl Model {
    /// Builds the model from opened files, checking every tensor's shape and type.
    pub fn load(files: ModelFiles) -> Result<Model, ModelError> {
        let c = files.config.clone();
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let m = |s: &str, rows, cols| Matrix::new(files.require(&n(s))?, rows, cols);
            let bias = |s: &str, len| -> Result<Option<Vec<f32>>, ModelError> {
                if c.arch.has_qkv_bias() {
                    vector(&files, &n(s), len).map(Some)
                } else {
                    optional_vector(&files, &n(s), len)
                }
            };
            let qk_norm = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
                if c.arch.has_qk_norm() {
                    vector(&files, &n(s), c.head_dim).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: vector(&files, &n("attn_norm.weight"), c.hidden)?,
                wq: m("attn_q.weight", q_dim, c.hidden)?,
                wk: m("attn_k.weight", kv_dim, c.hidden)?,
                wv: m("attn_v.weight", kv_dim, c.hidden)?,
                wo: m("attn_output.weight", c.hidden, q_dim)?,
                bq: bias("attn_q.bias", q_dim)?,
                bk: bias("attn_k.bias", kv_dim)?,
                bv: bias("attn_v.bias", kv_dim)?,
                q_norm: qk_norm("attn_q_norm.weight")?,
                k_norm: qk_norm("attn_k_norm.weight")?,
                ffn_norm: vector(&files, &n("ffn_norm.weight"), c.hidden)?,
                w_gate: m("ffn_gate.weight", c.ffn_hidden, c.hidden)?,
                w_up: m("ffn_up.weight", c.ffn_hidden, c.hidden)?,
                w_down: m("ffn_down.weight", c.hidden, c.ffn_hidden)?,
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
        Ok(Model {
            rope: Rope::new(&c.rope),
            out_norm: vector(&files, "output_norm.weight", c.hidden)?,
            config: c,
            tokenizer: files.tokenizer,
            format: files.format,
            name: files.name,
            embd,
            layers,
            output,
        })
    }

    /// An empty KV cache for up to `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        let c = &self.config;
        KvCache::new(c.n_layers, c.n_kv_heads * c.head_dim, capacity)
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
        let c = &self.config;
        let (t, p0) = (tokens.len(), cache.len());
        if t == 0 {
            return Ok(Vec::new());
        }
        if p0 + t > cache.capacity() {
            return Err(ModelError::ContextFull {
                needed: p0 + t,
                capacity: cache.capacity(),
            });
        }
        let (h, hd) = (c.hidden, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);

        let mut x = vec![0.0f32; t * h];
        for (row, &tok) in x.chunks_exact_mut(h).zip(tokens) {
            if tok as usize >= c.vocab_size {
                return Err(ModelError::BadToken {
                    id: tok,
                    vocab: c.vocab_size,
                });
            }
            self.embd.row_f32(tok as usize, row)?;
        }
        let mut xn = vec![0.0f32; t * h];
        let (mut q, mut k, mut v) = (
            vec![0.0f32; t * q_dim],
            vec![0.0f32; t * kv_dim],
            vec![0.0f32; t * kv_dim],
        );
        let mut attn = vec![0.0f32; t * q_dim];
        let mut proj = vec![0.0f32; t * h];
        let (mut gate, mut up) = (
            vec![0.0f32; t * c.ffn_hidden],
            vec![0.0f32; t * c.ffn_hidden],
        );
        let mut acts = Activations::default();

        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&x, &l.attn_norm, c.norm_eps, &mut xn);
            acts.invalidate();
            acts.matmul(&l.wq, &xn, t, &mut q)?;
            acts.matmul(&l.wk, &xn, t, &mut k)?;
            acts.matmul(&l.wv, &xn, t, &mut v)?;
            for (buf, bias) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
                if let Some(b) = bias {
                    for row in buf.chunks_exact_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(y, &bb)| *y += bb);
                    }
                }
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                let tmp = q.clone();
                rms_norm(&tmp, qn, c.norm_eps, &mut q);
                let tmp = k.clone();
                rms_norm(&tmp, kn, c.norm_eps, &mut k);
            }
            for i in 0..t {
                self.rope
                    .apply(&mut q[i * q_dim..(i + 1) * q_dim], hd, p0 + i);
                self.rope
                    .apply(&mut k[i * kv_dim..(i + 1) * kv_dim], hd, p0 + i);
            }
            cache.store(li, p0, &k, &v);
            let (keys, values) = cache.layer(li, p0 + t);
            attention(c, &q, keys, values, p0, &mut attn);

            acts.invalidate();
            acts.matmul(&l.wo, &attn, t, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(a, &b)| *a += b);

            rms_norm(&x, &l.ffn_norm, c.norm_eps, &mut xn);
            acts.invalidate();
            acts.matmul(&l.w_gate, &xn, t, &mut gate)?;
            acts.matmul(&l.w_up, &xn, t, &mut up)?;
            silu_mul(&mut gate, &up);
            acts.invalidate();
            acts.matmul(&l.w_down, &gate, t, &mut proj)?;
            x.iter_mut().zip(&proj).for_each(|(a, &b)| *a += b);
        }
        cache.advance(t);

        let rows = match want {
            Logits::None => return Ok(Vec::new()),
            Logits::Last => &x[(t - 1) * h..],
            Logits::All => &x[..],
            Logits::Tail(n) => &x[(t - n.clamp(1, t)) * h..],
        };
        let n = rows.len() / h;
        let mut normed = vec![0.0f32; rows.len()];
        rms_norm(rows, &self.out_norm, c.norm_eps, &mut normed);
        let mut logits = vec![0.0f32; n * c.vocab_size];
        acts.invalidate();
        acts.matmul(&self.output, &normed, n, &mut logits)?;
        Ok(logits)
    }
}

/// Causal attention of `t` new queries (positions `p0..p0+t`) over the
/// cached keys/values of positions `0..p0+t`, one task per (token, head).
fn attention(c: &ModelConfig, q: &[f32], keys: &[f32], values: &[f32], p0: usize, out: &mut [f32]) {
    let hd = c.head_dim;
    let group = c.n_heads / c.n_kv_heads;
    let kv_dim = c.n_kv_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (ti, head) = (i / c.n_heads, i % c.n_heads);
        let kvh = head / group;
        let qv = &q[i * hd..(i + 1) * hd];
        let n_keys = p0 + ti + 1;
        let mut scores: Vec<f32> = (0..n_keys)
            .map(|j| {
                let kr = &keys[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                qv.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale
            })
            .collect();
        softmax(&mut scores);
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let vr = &values[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
            o.iter_mut().zip(vr).for_each(|(a, &b)| *a += p * b);
        }
    });
}
