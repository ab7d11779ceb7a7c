//! The parallel operations of a forward pass, each one [`Pool::run`]:
//! every node multiplies its own shards, its workers claiming chunks of
//! rows among themselves (never across nodes).
//!
//! Kernels write weight-row-major (`out[r*B + b]`); buffers here are
//! token-major (`buf[b*stride + col]`). With one token the two coincide and
//! kernels write in place; otherwise each worker multiplies into its
//! scratch and scatters.

use std::ops::Range;

use tandem_kernels::{matmul_rows_layout, QuantizedActivations, GROUP_ROWS};
use tandem_numa::{Pool, Worker};

use crate::shard::{Shard, ShardedMatrix};
use crate::workspace::{grow, ActsCache, HeadScratch, PerWorker, SharedOut};
use crate::ModelError;

/// Most scratch values per worker for matmul chunks (×4 bytes).
pub(crate) const SCRATCH: usize = 64 * 1024;

/// Rows per claimed chunk: a few chunks per worker for balance, a multiple
/// of the interleaved group (8 rows: whole groups per chunk, which also
/// amortises the claim), and no more than the scratch holds (the scratch is
/// at least 8 rows × n).
pub(crate) fn chunk_rows(node_rows: usize, threads: usize, n: usize) -> usize {
    let balanced = node_rows
        .div_ceil(threads.max(1) * 16)
        .next_multiple_of(GROUP_ROWS);
    let cap = (SCRATCH / n.max(1)) / GROUP_ROWS * GROUP_ROWS;
    balanced.min(cap).max(GROUP_ROWS)
}

fn kernel_err(e: tandem_kernels::KernelError) -> ModelError {
    ModelError::Kernel(e.to_string())
}

/// Multiplies shard rows `local` by `acts` (n rows) and stores
/// `out[b*stride + col0 + r]` for each local row `r`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into(
    sh: &Shard,
    m: &ShardedMatrix,
    local: Range<usize>,
    acts: &QuantizedActivations,
    n: usize,
    out: SharedOut,
    stride: usize,
    col0: usize,
    scratch: &mut [f32],
) -> Result<(), ModelError> {
    if n == 1 {
        // SAFETY: chunks of one run cover disjoint rows, hence disjoint
        // output columns of the single token row.
        let dst = unsafe { out.slice(col0 + local.start, local.len()) };
        return matmul_rows_layout(
            m.format,
            m.layout,
            sh.bytes(),
            sh.n_cols(),
            local,
            acts,
            dst,
        )
        .map_err(kernel_err);
    }
    let tmp = &mut scratch[..local.len() * n];
    matmul_rows_layout(
        m.format,
        m.layout,
        sh.bytes(),
        sh.n_cols(),
        local.clone(),
        acts,
        tmp,
    )
    .map_err(kernel_err)?;
    // Transpose [row][b] → [b][col] in strips of 16 rows: each token row
    // gets one contiguous 64-byte run, and the strip's 16 source rows stay
    // in L1 while b walks them.
    const STRIP: usize = 16;
    let rows = local.len();
    let mut i0 = 0;
    while i0 < rows {
        let len = STRIP.min(rows - i0);
        for b in 0..n {
            // SAFETY: as above, elements (b, col0 + local.start + i0..+len)
            // belong to this chunk only.
            let dst = unsafe { out.slice(b * stride + col0 + local.start + i0, len) };
            for (k, d) in dst.iter_mut().enumerate() {
                *d = tmp[(i0 + k) * n + b];
            }
        }
        i0 += len;
    }
    Ok(())
}

/// A row-split matrix and where its output goes.
pub(crate) struct RowTarget<'a> {
    pub m: &'a ShardedMatrix,
    pub out: SharedOut,
    /// Values per token row of `out` (the matrix's full row count).
    pub stride: usize,
}

/// `out = m · x` for row-split matrices that read the same input (Q/K/V;
/// the output head), each node computing its own rows.
pub(crate) fn row_split(
    pool: &Pool,
    targets: &[RowTarget<'_>],
    acts: &ActsCache,
    n: usize,
    scratch: &PerWorker<Vec<f32>>,
) -> Result<(), ModelError> {
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let node = w.node;
        let total: usize = targets.iter().map(|t| t.m.shards[node].n_rows()).sum();
        if total == 0 {
            return Ok(());
        }
        let chunk = chunk_rows(total, w.threads_in_node, n);
        // SAFETY: worker `w.index` is the only user of its scratch.
        let scratch = unsafe { scratch.get(w.index) };
        loop {
            let start = w.claim() * chunk;
            if start >= total {
                return Ok(());
            }
            let end = (start + chunk).min(total);
            // Map [start, end) of the concatenated row space to matrices.
            let mut base = 0;
            for t in targets {
                let sh = &t.m.shards[node];
                let r = sh.n_rows();
                let (a, b) = (start.max(base), end.min(base + r));
                if a < b && !sh.is_empty() {
                    let qa = acts.get(t.m.format.activation_format())?;
                    matmul_into(
                        sh,
                        t.m,
                        a - base..b - base,
                        qa,
                        n,
                        t.out,
                        t.stride,
                        sh.rows.start,
                        scratch,
                    )?;
                }
                base += r;
            }
        }
    })
}

/// `gate = act(gate_m · x) * (up_m · x)` over each node's FFN rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_up(
    pool: &Pool,
    gate_m: &ShardedMatrix,
    up_m: &ShardedMatrix,
    act: crate::spec::Activation,
    gate: SharedOut,
    up: SharedOut,
    acts: &ActsCache,
    n: usize,
    scratch: &PerWorker<Vec<f32>>,
) -> Result<(), ModelError> {
    let ffn = gate_m.rows;
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let (gs, us) = (&gate_m.shards[w.node], &up_m.shards[w.node]);
        let total = gs.n_rows();
        if total == 0 || gs.is_empty() {
            return Ok(());
        }
        let chunk = chunk_rows(total, w.threads_in_node, n);
        // SAFETY: worker `w.index` is the only user of its scratch.
        let scratch = unsafe { scratch.get(w.index) };
        let (ga, ua) = (
            acts.get(gate_m.format.activation_format())?,
            acts.get(up_m.format.activation_format())?,
        );
        loop {
            let start = w.claim() * chunk;
            if start >= total {
                return Ok(());
            }
            let local = start..(start + chunk).min(total);
            let (gm, um) = ((gate_m, gs, ga), (up_m, us, ua));
            gated_rows(gm, um, act, None, local, n, gate, up, 0, ffn, scratch)?;
        }
    })
}

/// One chunk of a gated FFN: rows `local` of a node's gate and up shards
/// times `n` activation rows, then `gate = act(gate) * up` in place. The
/// outputs are `[n × stride]` blocks starting at `base` of `gate`/`up`
/// (column `shard.rows.start + r` for local row `r`). Shared by the dense
/// FFN and every MoE slot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_rows(
    (gate_m, gs, ga): (&ShardedMatrix, &Shard, &QuantizedActivations),
    (up_m, us, ua): (&ShardedMatrix, &Shard, &QuantizedActivations),
    act: crate::spec::Activation,
    bias: Option<(&[f32], &[f32])>,
    local: Range<usize>,
    n: usize,
    gate: SharedOut,
    up: SharedOut,
    base: usize,
    stride: usize,
    scratch: &mut [f32],
) -> Result<(), ModelError> {
    let col0 = base + gs.rows.start;
    matmul_into(
        gs,
        gate_m,
        local.clone(),
        ga,
        n,
        gate,
        stride,
        col0,
        scratch,
    )?;
    matmul_into(us, up_m, local.clone(), ua, n, up, stride, col0, scratch)?;
    for b in 0..n {
        let off = col0 + b * stride + local.start;
        // SAFETY: this chunk's columns, written only by this worker.
        let (g, u) = unsafe { (gate.slice(off, local.len()), up.slice(off, local.len())) };
        if let Some((gb, ub)) = bias {
            let r0 = gs.rows.start + local.start;
            g.iter_mut().zip(&gb[r0..]).for_each(|(x, &b)| *x += b);
            u.iter_mut().zip(&ub[r0..]).for_each(|(x, &b)| *x += b);
        }
        act.apply(g, u);
    }
    Ok(())
}

/// `partial[node] = m[:, cols of node] · x[:, cols of node]` for a
/// column-split matrix (O, down): each node's partial sums over all rows.
pub(crate) fn col_split(
    pool: &Pool,
    m: &ShardedMatrix,
    node_acts: &[ActsCache],
    partials: &[SharedOut],
    n: usize,
    scratch: &PerWorker<Vec<f32>>,
) -> Result<(), ModelError> {
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let sh = &m.shards[w.node];
        if sh.is_empty() {
            return Ok(());
        }
        let total = sh.n_rows();
        let chunk = chunk_rows(total, w.threads_in_node, n);
        let acts = node_acts[w.node].get(m.format.activation_format())?;
        // SAFETY: worker `w.index` is the only user of its scratch.
        let scratch = unsafe { scratch.get(w.index) };
        loop {
            let start = w.claim() * chunk;
            if start >= total {
                return Ok(());
            }
            let local = start..(start + chunk).min(total);
            matmul_into(sh, m, local, acts, n, partials[w.node], m.rows, 0, scratch)?;
        }
    })
}

/// Where [`per_head`] reads each head's input and writes its output:
/// token `t`'s input of head `h` is `in_len` values at `t·in_stride +
/// h·in_head`, its output `rows_per_head` values at `t·out_stride +
/// h·out_head`.
pub(crate) struct HeadIo<'a> {
    pub input: &'a [f32],
    pub in_stride: usize,
    pub in_head: usize,
    pub in_len: usize,
    pub out: SharedOut,
    pub out_stride: usize,
    pub out_head: usize,
}

/// `out_h = m_h · in_h` for a matrix whose rows are `n_heads` blocks of
/// `rows_per_head`, block `h` multiplying head `h`'s own input (MLA's
/// per-head `k_b` and `v_b`). Shards hold whole heads; each node does
/// its heads, its workers claiming (head, chunk of tokens) items and
/// quantizing that head's inputs themselves.
pub(crate) fn per_head(
    pool: &Pool,
    m: &ShardedMatrix,
    rows_per_head: usize,
    n: usize,
    io: &HeadIo<'_>,
    scratch: &PerWorker<Vec<f32>>,
    heads: &PerWorker<HeadScratch>,
) -> Result<(), ModelError> {
    let rph = rows_per_head.max(1);
    let chunk = (SCRATCH / rph).clamp(1, n.max(1));
    let t_chunks = n.div_ceil(chunk);
    let fmt = m.format.activation_format();
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let sh = &m.shards[w.node];
        if sh.is_empty() {
            return Ok(());
        }
        let (h0, h1) = (sh.rows.start / rph, sh.rows.end / rph);
        let items = (h1 - h0) * t_chunks;
        // SAFETY: worker `w.index` is the only user of its buffers.
        let (scratch, hs) = unsafe { (scratch.get(w.index), heads.get(w.index)) };
        loop {
            let item = w.claim();
            if item >= items {
                return Ok(());
            }
            let h = h0 + item / t_chunks;
            let t0 = (item % t_chunks) * chunk;
            let nt = chunk.min(n - t0);
            grow(&mut hs.gather, nt * io.in_len);
            for (b, dst) in hs.gather.chunks_exact_mut(io.in_len).take(nt).enumerate() {
                let at = (t0 + b) * io.in_stride + h * io.in_head;
                let src = io
                    .input
                    .get(at..at + io.in_len)
                    .ok_or_else(|| ModelError::Kernel("per-head input out of range".into()))?;
                dst.copy_from_slice(src);
            }
            hs.acts.invalidate();
            hs.acts
                .prepare(fmt, &hs.gather[..nt * io.in_len], nt, io.in_len)?;
            let local = h * rph - sh.rows.start..(h + 1) * rph - sh.rows.start;
            let tmp = &mut scratch[..rph * nt];
            matmul_rows_layout(
                m.format,
                m.layout,
                sh.bytes(),
                sh.n_cols(),
                local,
                hs.acts.get(fmt)?,
                tmp,
            )
            .map_err(kernel_err)?;
            for b in 0..nt {
                // SAFETY: (token, head) output runs are disjoint between
                // items, and each item writes only its own.
                let dst = unsafe {
                    io.out
                        .slice((t0 + b) * io.out_stride + h * io.out_head, rph)
                };
                for (r, d) in dst.iter_mut().enumerate() {
                    *d = tmp[r * nt + b];
                }
            }
        }
    })
}
