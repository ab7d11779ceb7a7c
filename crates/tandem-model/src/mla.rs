//! Multi-head latent attention (MLA: DeepSeek-V2/V3/R1, Kimi-K2), as a step
//! before and a step after the generic attention (`crate::attention`).
//!
//! Per token, with RMSNorm `n`:
//!
//! - `Q = q_b · n(q_a · x)` (or `q · x` without a low-rank Q), per head a
//!   part without RoPE (`q_nope`, `qk_nope` wide) and a rotated part
//!   (`q_pe`, `qk_rope` wide);
//! - `[latent | k_pe] = kv_a · x`; the cached row is
//!   `[n(latent) | rope(k_pe)]`, `kv_lora_rank + qk_rope` values, shared by
//!   every head: all the KV cache holds.
//!
//! Transformers decompresses every cached latent into per-head keys and
//! values (`kv_b`). tandem absorbs the decompression into the query and
//! the output instead (llama.cpp's MLA path does the same):
//!
//! - `q_abs_h = k_b_h · q_nope_h` (`kv_lora_rank` wide), so that
//!   `q_h · k_t = q_abs_h · latent_t + q_pe_h · k_pe_t`: the dot product of
//!   the query row `[q_abs_h | rope(q_pe_h)]` with the cached row;
//! - the softmax-weighted sum of cached rows begins with the weighted sum
//!   of latents `o_h`, and the head's output is `v_b_h · o_h`.
//!
//! The attention in between is therefore plain multi-query attention: one
//! KV head whose key is the cached row and whose value is its latent prefix
//! (`tandem_kv::KvValues::InKeys`). Decode reads `kv_lora_rank + qk_rope`
//! values per cached token and layer, whatever the head count.
//!
//! Files come with `k_b`/`v_b` (newer GGUF converters) or with `kv_b`
//! (older GGUF files; Hugging Face's `kv_b_proj`): from it, `v_b`'s rows are
//! copied and `k_b` is transposed at load ([`split_kv_b`]).

use tandem_kernels::WeightFormat;
use tandem_numa::Pool;

use crate::config::MlaConfig;
use crate::ops::{rms_norm, Rope};
use crate::parallel::{per_head, row_split, HeadIo, RowTarget};
use crate::shard::ShardedMatrix;
use crate::tensor::Tensor;
use crate::workspace::{grow, SharedOut, Workspace};
use crate::ModelError;

/// One layer's MLA weights, placed.
pub(crate) struct MlaWeights {
    pub cfg: MlaConfig,
    /// Low-rank Q: `q_a` and its norm (None: `q_b` reads x directly).
    pub q_a: Option<(ShardedMatrix, Vec<f32>)>,
    /// `[n_heads·qk_head × (q_lora_rank | hidden)]`.
    pub q_b: ShardedMatrix,
    /// `[kv_lora_rank + qk_rope × hidden]`.
    pub kv_a: ShardedMatrix,
    pub kv_a_norm: Vec<f32>,
    /// `[n_heads·kv_lora_rank × qk_nope]`: per head, the latent rows.
    pub k_b: ShardedMatrix,
    /// `[n_heads·v_head × kv_lora_rank]`.
    pub v_b: ShardedMatrix,
    /// `[n_heads·qk_nope × kv_lora_rank]`: `k_b` transposed per head, the
    /// keys' decompression for the expanded prefill (`crate::mla_expanded`;
    /// None when the model prefills absorbed only).
    pub k_b_t: Option<ShardedMatrix>,
}

impl MlaWeights {
    pub fn matrices(&self) -> impl Iterator<Item = &ShardedMatrix> {
        self.q_a
            .iter()
            .map(|(m, _)| m)
            .chain([&self.q_b, &self.kv_a, &self.k_b, &self.v_b])
            .chain(self.k_b_t.as_ref())
    }
}

/// `k_b` and `v_b` of one layer from `kv_b` (`[n_heads·(qk_nope + v_head)
/// × kv_lora_rank]`, per head its key rows then its value rows): `v_b`'s
/// rows are copied as stored; `k_b` is the transpose of the key rows per
/// head, dequantized (f32 from an f32 file, else f16: a row of 512
/// latents per key value cannot keep a 256-wide quantized block).
pub(crate) fn split_kv_b(
    kv_b: &Tensor,
    m: &MlaConfig,
    n_heads: usize,
) -> Result<(Tensor, Tensor), ModelError> {
    let (nope, v, lora) = (m.qk_nope, m.v_head, m.kv_lora_rank);
    let per_head = nope + v;
    let fmt = kv_b.expect_matrix(n_heads * per_head, lora)?;
    let row_bytes = fmt
        .row_bytes(lora)
        .ok_or_else(|| ModelError::bad_tensor(kv_b.name(), "rows not block aligned"))?;
    let bytes = kv_b.bytes();
    let mut vb = Vec::with_capacity(n_heads * v * row_bytes);
    let (k_fmt, k_name) = match fmt {
        WeightFormat::F32 => (WeightFormat::F32, "F32"),
        _ => (WeightFormat::F16, "F16"),
    };
    let k_width = match k_fmt {
        WeightFormat::F32 => 4,
        _ => 2,
    };
    let mut kb = vec![0u8; n_heads * lora * nope * k_width];
    let mut row = vec![0f32; lora];
    for h in 0..n_heads {
        for d in 0..nope {
            kv_b.row_f32(h * per_head + d, &mut row)?;
            for (c, &x) in row.iter().enumerate() {
                let at = ((h * lora + c) * nope + d) * k_width;
                match k_fmt {
                    WeightFormat::F32 => kb[at..at + 4].copy_from_slice(&x.to_le_bytes()),
                    _ => kb[at..at + 2]
                        .copy_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
                }
            }
        }
        let r0 = (h * per_head + nope) * row_bytes;
        let src = bytes
            .get(r0..r0 + v * row_bytes)
            .ok_or_else(|| ModelError::bad_tensor(kv_b.name(), "value rows out of range"))?;
        vb.extend_from_slice(src);
    }
    let name = kv_b.name();
    let k_b = Tensor::owned(
        format!("{name}[k_b]"),
        k_fmt,
        k_name,
        vec![n_heads * lora, nope],
        kb,
    )?;
    let v_b = Tensor::owned(
        format!("{name}[v_b]"),
        fmt,
        kv_b.type_name(),
        vec![n_heads * v, lora],
        vb,
    )?;
    Ok((k_b, v_b))
}

/// Layer `layer`'s `k_b` (`[n_heads·kv_lora_rank × qk_nope]`, per head
/// its latent rows) and `v_b` (`[n_heads·v_head × kv_lora_rank]`) from
/// either layout: the split `attn_k_b`/`attn_v_b`, or `attn_kv_b` split
/// here ([`split_kv_b`]). The CPU model and the GPU prefill both load
/// them through this.
pub fn k_b_v_b(
    files: &crate::ModelFiles,
    layer: usize,
    m: &MlaConfig,
    n_heads: usize,
) -> Result<(Tensor, Tensor), ModelError> {
    let n = |s: &str| format!("blk.{layer}.{s}");
    let lora = m.kv_lora_rank;
    match files.tensor(&n("attn_k_b.weight")) {
        Some(kb) => Ok((
            kb.as_matrix(n_heads * lora, m.qk_nope)?,
            files
                .require(&n("attn_v_b.weight"))?
                .as_matrix(n_heads * m.v_head, lora)?,
        )),
        None => split_kv_b(files.require(&n("attn_kv_b.weight"))?, m, n_heads),
    }
}

/// `k_b` (`[n_heads·kv_lora_rank × qk_nope]`) transposed per head:
/// `[n_heads·qk_nope × kv_lora_rank]`, each head's key rows of `kv_b`
/// (f32 from f32, else f16, as [`split_kv_b`]).
pub(crate) fn transpose_k_b(
    k_b: &Tensor,
    m: &MlaConfig,
    n_heads: usize,
) -> Result<Tensor, ModelError> {
    let (nope, lora) = (m.qk_nope, m.kv_lora_rank);
    let fmt = k_b.expect_matrix(n_heads * lora, nope)?;
    let (out_fmt, name, width) = match fmt {
        WeightFormat::F32 => (WeightFormat::F32, "F32", 4),
        _ => (WeightFormat::F16, "F16", 2),
    };
    let mut out = vec![0u8; n_heads * nope * lora * width];
    let mut row = vec![0f32; nope];
    for h in 0..n_heads {
        for c in 0..lora {
            k_b.row_f32(h * lora + c, &mut row)?;
            for (d, &x) in row.iter().enumerate() {
                let at = ((h * nope + d) * lora + c) * width;
                match out_fmt {
                    WeightFormat::F32 => out[at..at + 4].copy_from_slice(&x.to_le_bytes()),
                    _ => out[at..at + 2]
                        .copy_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
                }
            }
        }
    }
    Tensor::owned(
        format!("{}[transposed]", k_b.name()),
        out_fmt,
        name,
        vec![n_heads * nope, lora],
        out,
    )
}

/// The step before attention: fills `ws.q` with each token's absorbed
/// query rows (`n_heads` rows of the cached row's width) and `ws.k` with
/// its cached row, from the normed input in `ws.xn` (already prepared in
/// `ws.acts`). Token `t`'s RoPE table is at `ws.rope[rope_at + t·pairs]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare(
    pool: &Pool,
    w: &MlaWeights,
    n_heads: usize,
    hidden: usize,
    eps: f32,
    rope: &Rope,
    rope_at: usize,
    ws: &mut Workspace,
    n: usize,
) -> Result<(), ModelError> {
    let m = &w.cfg;
    let (qk, row, lora) = (m.qk_head(), m.row(), m.kv_lora_rank);
    let mb = &mut ws.mla;
    grow(&mut mb.q, n * n_heads * qk);
    grow(&mut mb.kva, n * row);
    // Projections of x: Q's low rank (or Q itself) and the latent.
    for mat in w.q_a.iter().map(|(m, _)| m).chain([&w.kv_a, &w.q_b]) {
        if mat.cols == hidden {
            ws.acts.prepare(
                mat.format.activation_format(),
                &ws.xn[..n * hidden],
                n,
                hidden,
            )?;
        }
    }
    let kva = RowTarget {
        m: &w.kv_a,
        out: SharedOut::new(&mut mb.kva),
        stride: row,
    };
    match &w.q_a {
        Some((q_a, q_a_norm)) => {
            let r = m.q_lora_rank;
            grow(&mut mb.low, n * r);
            grow(&mut mb.low_n, n * r);
            let low = RowTarget {
                m: q_a,
                out: SharedOut::new(&mut mb.low),
                stride: r,
            };
            row_split(pool, &[low, kva], &ws.acts, n, &ws.scratch)?;
            rms_norm(&mb.low[..n * r], q_a_norm, eps, &mut mb.low_n[..n * r]);
            ws.acts.invalidate();
            ws.acts
                .prepare(w.q_b.format.activation_format(), &mb.low_n[..n * r], n, r)?;
            let q = RowTarget {
                m: &w.q_b,
                out: SharedOut::new(&mut mb.q),
                stride: n_heads * qk,
            };
            row_split(pool, &[q], &ws.acts, n, &ws.scratch)?;
        }
        None => {
            let q = RowTarget {
                m: &w.q_b,
                out: SharedOut::new(&mut mb.q),
                stride: n_heads * qk,
            };
            row_split(pool, &[q, kva], &ws.acts, n, &ws.scratch)?;
        }
    }
    // Cached rows, and the queries' rotated parts in place.
    let pairs = rope.table_len();
    for t in 0..n {
        let tab = &ws.rope[rope_at + t * pairs..rope_at + (t + 1) * pairs];
        let src = &mb.kva[t * row..(t + 1) * row];
        let dst = &mut ws.k[t * row..(t + 1) * row];
        rms_norm(&src[..lora], &w.kv_a_norm, eps, &mut dst[..lora]);
        dst[lora..].copy_from_slice(&src[lora..]);
        rope.apply_with(&mut dst[lora..], tab);
        for h in 0..n_heads {
            let q_pe = &mut mb.q[(t * n_heads + h) * qk + m.qk_nope..(t * n_heads + h + 1) * qk];
            rope.apply_with(q_pe, tab);
            let at = (t * n_heads + h) * row + lora;
            ws.q[at..at + m.qk_rope].copy_from_slice(q_pe);
        }
    }
    ws.mla.heads.ensure_workers(pool.n_threads());
    // Absorbed queries: q_abs_h = k_b_h · q_nope_h, before each rotated
    // part; for the rows of sequences that attend absorbed (`ws.mla_rows`;
    // all rows when it is empty).
    let all = [(0..n, false)];
    let ranges = match ws.mla_rows.is_empty() {
        true => &all[..],
        false => &ws.mla_rows[..],
    };
    for (rows, expanded) in ranges.iter().cloned() {
        if expanded || rows.is_empty() {
            continue;
        }
        let io = HeadIo {
            input: &ws.mla.q[rows.start * n_heads * qk..rows.end * n_heads * qk],
            in_stride: n_heads * qk,
            in_head: qk,
            in_len: m.qk_nope,
            out: SharedOut::new(&mut ws.q[rows.start * n_heads * row..rows.end * n_heads * row]),
            out_stride: n_heads * row,
            out_head: row,
        };
        per_head(
            pool,
            &w.k_b,
            lora,
            rows.len(),
            &io,
            &ws.scratch,
            &ws.mla.heads,
        )?;
    }
    Ok(())
}

/// The step after attention: `ws.mla.o` gets each head's `v_b_h · o_h`
/// from the attention output in `ws.attn` (rows of the cached width whose
/// latent prefix is `o_h`), for the batch rows `rows`.
pub(crate) fn output(
    pool: &Pool,
    w: &MlaWeights,
    n_heads: usize,
    ws: &mut Workspace,
    rows: std::ops::Range<usize>,
) -> Result<(), ModelError> {
    let m = &w.cfg;
    let (row, vh) = (m.row(), m.v_head);
    grow(&mut ws.mla.o, rows.end * n_heads * vh);
    ws.mla.heads.ensure_workers(pool.n_threads());
    let io = HeadIo {
        input: &ws.attn[rows.start * n_heads * row..rows.end * n_heads * row],
        in_stride: n_heads * row,
        in_head: row,
        in_len: m.kv_lora_rank,
        out: SharedOut::new(&mut ws.mla.o[rows.start * n_heads * vh..rows.end * n_heads * vh]),
        out_stride: n_heads * vh,
        out_head: vh,
    };
    per_head(
        pool,
        &w.v_b,
        vh,
        rows.len(),
        &io,
        &ws.scratch,
        &ws.mla.heads,
    )
}
