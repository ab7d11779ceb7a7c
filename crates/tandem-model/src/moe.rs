//! The mixture-of-experts feed-forward block on the NUMA engine.
//!
//! Every expert is split across engine nodes like a dense FFN: gate and up
//! by the expert's FFN rows, down by hidden rows, so every node holds a
//! slice of every expert and no expert is copied. One MoE layer is three
//! pool runs that compute, plus one or two that quantize:
//!
//! 1. **Router**: the router matrix times the normed input (a row-split
//!    run); the routing itself (softmax or sigmoid, grouped top-k, weights)
//!    is a few hundred floats per token and runs on the calling thread
//!    ([`route_token`]).
//! 2. **Gate/up**: the batch's tokens are grouped by expert (a counting
//!    sort), each selected expert is a *slot* holding its tokens' rows, and
//!    the run's work items are chunks of the slots' FFN rows: each selected
//!    expert's gate and up rows are read once for all the tokens routed to
//!    it (decode reads only the selected experts; prefill reads each
//!    selected expert once per chunk). Gate and up run fused, SwiGLU
//!    applied in place.
//! 3. **Down**: work items are chunks of hidden rows; a chunk runs every
//!    slot's down rows and adds each token's weighted results, so no two
//!    workers write the same output and no reduction pass is needed.
//!
//! A shared expert is one more slot that every token uses with weight 1.
//! Between the runs, each slot's input rows are gathered and quantized,
//! and its SwiGLU rows quantized for down, in pool runs of one slot per
//! claim ([`quantize_inputs`], [`quantize_hidden`]); for one token every
//! slot reads the batch's one quantized row and no gather runs.

use std::ops::Range;

use tandem_kernels::matmul_rows_layout;
use tandem_numa::{Pool, Worker};

use crate::config::{Gating, MoeConfig};
use crate::parallel::{chunk_rows, gated_rows};
use crate::shard::ShardedMatrix;
use crate::workspace::{ActsCache, Claimed, PerWorker, SharedOut};
use crate::ModelError;

/// One gated expert, each matrix sharded over the nodes.
pub(crate) struct Expert {
    pub gate: ShardedMatrix,
    pub up: ShardedMatrix,
    pub down: ShardedMatrix,
    /// Biases of gate, up (FFN wide) and down (hidden wide): gpt-oss.
    pub bias: Option<ExpertBias>,
}

/// An expert's biases, whole (each node reads its rows' part).
pub(crate) struct ExpertBias {
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

impl Expert {
    pub fn n_bytes(&self) -> usize {
        self.gate.n_bytes() + self.up.n_bytes() + self.down.n_bytes()
    }
    pub fn matrices(&self) -> [&ShardedMatrix; 3] {
        [&self.gate, &self.up, &self.down]
    }
}

/// A loaded MoE FFN block.
pub(crate) struct MoeFfn {
    pub cfg: MoeConfig,
    /// `[n_experts, hidden]`, split by rows.
    pub router: ShardedMatrix,
    /// Selection bias of sigmoid routing (`exp_probs_b`).
    pub bias: Option<Vec<f32>>,
    /// Added to the router's logits (`ffn_gate_inp.bias`, gpt-oss).
    pub router_bias: Option<Vec<f32>>,
    pub experts: Vec<Expert>,
    pub shared: Option<Expert>,
}

impl MoeFfn {
    /// Bytes one token's decode reads: the router, `top_k` experts and the
    /// shared expert.
    pub fn bytes_per_token(&self) -> usize {
        let expert = self.experts.first().map_or(0, Expert::n_bytes);
        self.router.n_bytes()
            + self.cfg.top_k * expert
            + self.shared.as_ref().map_or(0, Expert::n_bytes)
    }
}

/// One selected expert of a batch and the tokens routed to it.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    /// Expert index, or `usize::MAX` for the shared expert.
    pub expert: usize,
    /// Its entries in the workspace's token/weight lists.
    pub rows: Range<usize>,
    /// Where its `[tokens × ffn]` gate/up values start in the FFN buffers.
    pub h_off: usize,
}

pub(crate) const SHARED: usize = usize::MAX;

/// Where each slot's quantized input rows are.
#[derive(Clone, Copy)]
pub(crate) enum SlotActs<'a> {
    /// One token: every slot reads the same row.
    Shared(&'a ActsCache),
    /// Slot `i` reads `per_slot[i]`.
    PerSlot(&'a [ActsCache]),
}

impl<'a> SlotActs<'a> {
    fn get(self, slot: usize) -> Result<&'a ActsCache, ModelError> {
        match self {
            SlotActs::Shared(a) => Ok(a),
            SlotActs::PerSlot(v) => v
                .get(slot)
                .ok_or_else(|| ModelError::Kernel(format!("no activations for slot {slot}"))),
        }
    }
}

impl MoeFfn {
    fn expert(&self, s: &Slot) -> Option<&Expert> {
        if s.expert == SHARED {
            self.shared.as_ref()
        } else {
            self.experts.get(s.expert)
        }
    }
}

/// Routing of one token: writes its `top_k` (expert, weight) pairs to
/// `out`, as llama.cpp's `build_moe_ffn` and transformers compute them:
/// probabilities by softmax or sigmoid; selection on the probabilities
/// plus the bias (sigmoid routing), restricted to the best
/// `groups_used` groups (a group scores the sum of its two best experts)
/// when experts are grouped; weights are the selected probabilities,
/// renormalised if asked, times `scale`. Ties go to the lower index.
/// `probs` and `choice` are scratch of `n_experts` values.
pub fn route_token(
    cfg: &MoeConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    probs: &mut [f32],
    choice: &mut [f32],
    out: &mut [(u32, f32)],
) {
    let n = cfg.n_experts;
    let (probs, choice) = (&mut probs[..n], &mut choice[..n]);
    probs.copy_from_slice(&logits[..n]);
    match cfg.gating {
        Gating::Softmax => crate::ops::softmax(probs),
        Gating::Sigmoid => probs
            .iter_mut()
            .for_each(|p| *p = 1.0 / (1.0 + (-*p).exp())),
        // Selected on the logits; the softmax comes after the top k.
        Gating::SoftmaxTopK => {}
    }
    choice.copy_from_slice(probs);
    if let Some(b) = bias {
        choice.iter_mut().zip(b).for_each(|(c, &b)| *c += b);
    }
    if cfg.n_groups > 1 && cfg.groups_used < cfg.n_groups {
        let per = n / cfg.n_groups;
        // Group score: its two best choices (one if a group has one expert).
        let score = |g: usize| {
            let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for &v in &choice[g * per..(g + 1) * per] {
                if v > a {
                    b = a;
                    a = v;
                } else if v > b {
                    b = v;
                }
            }
            if per == 1 {
                a
            } else {
                a + b
            }
        };
        // Drop the worst groups one at a time until `groups_used` remain.
        // `MoeConfig::validate` bounds the groups by the mask's size.
        let mut kept = [true; crate::config::MAX_EXPERT_GROUPS];
        let groups = cfg.n_groups.min(kept.len());
        for _ in cfg.groups_used..groups {
            let worst = (0..groups)
                .filter(|&g| kept[g])
                .min_by(|&x, &y| score(x).total_cmp(&score(y)).then(y.cmp(&x)));
            if let Some(w) = worst {
                kept[w] = false;
            }
        }
        for (g, k) in kept.iter().enumerate().take(groups) {
            if !k {
                choice[g * per..(g + 1) * per].fill(f32::NEG_INFINITY);
            }
        }
    }
    // Top k by selection score, ties to the lower index (k is small:
    // repeated selection, no allocation). A taken expert becomes NaN, which
    // is skipped; should fewer than k be selectable (NaN scores from a bad
    // file), the rest get weight 0.
    let k = cfg.top_k.min(out.len());
    for slot in out.iter_mut().take(k) {
        let mut best: Option<(usize, f32)> = None;
        for (i, &v) in choice.iter().enumerate() {
            if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        *slot = match best {
            Some((i, _)) => {
                choice[i] = f32::NAN;
                (i as u32, probs[i])
            }
            None => (0, 0.0),
        };
    }
    if cfg.gating == Gating::SoftmaxTopK {
        let max = out
            .iter()
            .take(k)
            .map(|p| p.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for p in out.iter_mut().take(k) {
            p.1 = (p.1 - max).exp();
            sum += p.1;
        }
        if sum > 0.0 {
            out.iter_mut().take(k).for_each(|p| p.1 /= sum);
        }
    }
    if cfg.norm_top_k {
        let sum: f32 = out.iter().take(k).map(|p| p.1).sum();
        if sum > 0.0 {
            out.iter_mut().take(k).for_each(|p| p.1 /= sum);
        }
    }
    if cfg.scale != 1.0 {
        out.iter_mut().take(k).for_each(|p| p.1 *= cfg.scale);
    }
}

/// Runs `f` once per slot, in one pool run: the slots are dealt to nodes
/// round-robin and claimed by the node's workers, and `f` gets the slot's
/// expert and its own `acts[slot]`.
fn per_slot<F>(
    pool: &Pool,
    moe: &MoeFfn,
    slots: &[Slot],
    acts: &mut [ActsCache],
    f: F,
) -> Result<(), ModelError>
where
    F: Fn(&Worker<'_>, &Slot, &Expert, &mut ActsCache) -> Result<(), ModelError> + Sync,
{
    let acts = Claimed::new(acts);
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        loop {
            let si = w.claim() * w.n_nodes + w.node;
            let Some(s) = slots.get(si) else {
                return Ok(());
            };
            // SAFETY: slot `si` went to this worker alone (node by `si %
            // n_nodes`, then the node's claim counter).
            let (Some(e), Some(a)) = (moe.expert(s), unsafe { acts.get(si) }) else {
                continue;
            };
            f(&w, s, e, a)?;
        }
    })
}

/// The slots' inputs: each slot's token rows of `xn` (`hidden` wide)
/// gathered and quantized for its gate and up into `acts[slot]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_inputs(
    pool: &Pool,
    moe: &MoeFfn,
    slots: &[Slot],
    tokens: &[u32],
    xn: &[f32],
    hidden: usize,
    acts: &mut [ActsCache],
    gather: &PerWorker<Vec<f32>>,
) -> Result<(), ModelError> {
    per_slot(pool, moe, slots, acts, |w, s, e, a| {
        // SAFETY: worker `w.index` is the only user of its buffer.
        let buf = unsafe { gather.get(w.index) };
        let rows = s.rows.len();
        if buf.len() < rows * hidden {
            buf.resize(rows * hidden, 0.0);
        }
        for (dst, &t) in buf.chunks_exact_mut(hidden).zip(&tokens[s.rows.clone()]) {
            let t = t as usize;
            dst.copy_from_slice(&xn[t * hidden..(t + 1) * hidden]);
        }
        a.invalidate();
        for f in [
            e.gate.format.activation_format(),
            e.up.format.activation_format(),
        ] {
            a.prepare(f, &buf[..rows * hidden], rows, hidden)?;
        }
        Ok(())
    })
}

/// The slots' SwiGLU rows (`g`, each slot's `[tokens × ffn]` block)
/// quantized for their down into `acts[slot]`.
pub(crate) fn quantize_hidden(
    pool: &Pool,
    moe: &MoeFfn,
    slots: &[Slot],
    g: &[f32],
    acts: &mut [ActsCache],
) -> Result<(), ModelError> {
    per_slot(pool, moe, slots, acts, |_, s, e, a| {
        let (rows, f) = (s.rows.len(), e.gate.rows);
        a.invalidate();
        a.prepare(
            e.down.format.activation_format(),
            &g[s.h_off..s.h_off + rows * f],
            rows,
            f,
        )
    })
}

/// Run 2: `g = silu(gate · x) * (up · x)` for every slot, into `g` (the
/// slot's `[tokens × ffn]` block at `h_off`); `u` is scratch of the same
/// shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_up(
    pool: &Pool,
    moe: &MoeFfn,
    slots: &[Slot],
    acts: SlotActs<'_>,
    g: SharedOut,
    u: SharedOut,
    scratch: &PerWorker<Vec<f32>>,
) -> Result<(), ModelError> {
    let max_tokens = slots.iter().map(|s| s.rows.len()).max().unwrap_or(1);
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let node = w.node;
        let total: usize = slots
            .iter()
            .filter_map(|s| moe.expert(s))
            .map(|e| e.gate.shards[node].n_rows())
            .sum();
        if total == 0 {
            return Ok(());
        }
        let chunk = chunk_rows(total, w.threads_in_node, max_tokens);
        // SAFETY: worker `w.index` is the only user of its scratch.
        let scratch = unsafe { scratch.get(w.index) };
        loop {
            let start = w.claim() * chunk;
            if start >= total {
                return Ok(());
            }
            let end = (start + chunk).min(total);
            let mut base = 0;
            for (si, s) in slots.iter().enumerate() {
                let Some(e) = moe.expert(s) else { continue };
                let (gs, us) = (&e.gate.shards[node], &e.up.shards[node]);
                let r = gs.n_rows();
                let (a, b) = (start.max(base), end.min(base + r));
                base += r;
                if a >= b || gs.is_empty() {
                    continue;
                }
                let local = a - (base - r)..b - (base - r);
                let n = s.rows.len();
                let ffn = e.gate.rows;
                let cache = acts.get(si)?;
                let (ga, ua) = (
                    cache.get(e.gate.format.activation_format())?,
                    cache.get(e.up.format.activation_format())?,
                );
                let (gm, um) = ((&e.gate, gs, ga), (&e.up, us, ua));
                gated_rows(
                    gm,
                    um,
                    moe.cfg.act,
                    e.bias.as_ref().map(|b| (&b.gate[..], &b.up[..])),
                    local,
                    n,
                    g,
                    u,
                    s.h_off,
                    ffn,
                    scratch,
                )?;
            }
        }
    })
}

/// Run 3: `out[token] = Σ_slots weight · (down · g)` over each node's
/// hidden rows; `out` is `[n_tokens × hidden]`, overwritten.
#[allow(clippy::too_many_arguments)]
pub(crate) fn down(
    pool: &Pool,
    moe: &MoeFfn,
    slots: &[Slot],
    tokens: &[u32],
    weights: &[f32],
    n_tokens: usize,
    acts: SlotActs<'_>,
    out: SharedOut,
    scratch: &PerWorker<Vec<f32>>,
) -> Result<(), ModelError> {
    let hidden = moe.router.cols;
    let max_tokens = slots.iter().map(|s| s.rows.len()).max().unwrap_or(1);
    let kernel_err = |e: tandem_kernels::KernelError| ModelError::Kernel(e.to_string());
    pool.try_run(|w: Worker<'_>| -> Result<(), ModelError> {
        let node = w.node;
        // Every expert's down is split by the same hidden rows.
        let Some(first) = moe.experts.first() else {
            return Ok(());
        };
        let rows = first.down.shards[node].rows.clone();
        let total = rows.len();
        if total == 0 {
            return Ok(());
        }
        let chunk = chunk_rows(total, w.threads_in_node, max_tokens);
        // SAFETY: worker `w.index` is the only user of its scratch.
        let scratch = unsafe { scratch.get(w.index) };
        loop {
            let start = w.claim() * chunk;
            if start >= total {
                return Ok(());
            }
            let local = start..(start + chunk).min(total);
            let len = local.len();
            for t in 0..n_tokens {
                // SAFETY: rows of this chunk, all tokens: this worker's only.
                unsafe { out.slice(t * hidden + rows.start + local.start, len) }.fill(0.0);
            }
            for (si, s) in slots.iter().enumerate() {
                let Some(e) = moe.expert(s) else { continue };
                let sh = &e.down.shards[node];
                if sh.is_empty() {
                    continue;
                }
                let n = s.rows.len();
                let qa = acts.get(si)?.get(e.down.format.activation_format())?;
                let tmp = &mut scratch[..len * n];
                matmul_rows_layout(
                    e.down.format,
                    e.down.layout,
                    sh.bytes(),
                    sh.n_cols(),
                    local.clone(),
                    qa,
                    tmp,
                )
                .map_err(kernel_err)?;
                for (b, (&tok, &wt)) in tokens[s.rows.clone()]
                    .iter()
                    .zip(&weights[s.rows.clone()])
                    .enumerate()
                {
                    // SAFETY: as above.
                    let dst =
                        unsafe { out.slice(tok as usize * hidden + rows.start + local.start, len) };
                    match &e.bias {
                        Some(eb) => {
                            let bias = &eb.down[rows.start + local.start..][..len];
                            for ((r, d), &bb) in dst.iter_mut().enumerate().zip(bias) {
                                *d += wt * (tmp[r * n + b] + bb);
                            }
                        }
                        None => {
                            for (r, d) in dst.iter_mut().enumerate() {
                                *d += wt * tmp[r * n + b];
                            }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(gating: Gating, n: usize, k: usize, groups: (usize, usize), norm: bool) -> MoeConfig {
        MoeConfig {
            n_experts: n,
            top_k: k,
            expert_ffn: 8,
            shared_ffn: 0,
            leading_dense: 0,
            gating,
            norm_top_k: norm,
            scale: 1.0,
            n_groups: groups.0,
            groups_used: groups.1,
            act: crate::spec::Activation::Silu,
        }
    }

    #[test]
    fn softmax_after_top_k_weighs_the_selected_logits_only() {
        // gpt-oss: pick the two largest logits, softmax over those two.
        let c = cfg(Gating::SoftmaxTopK, 4, 2, (1, 1), false);
        let got = route(&c, &[0.5, 2.0, -1.0, 1.0], None);
        let (a, b) = (2.0f32.exp(), 1.0f32.exp());
        assert_eq!(got[0].0, 1);
        assert_eq!(got[1].0, 3);
        assert!((got[0].1 - a / (a + b)).abs() < 1e-6);
        assert!((got[1].1 - b / (a + b)).abs() < 1e-6);
    }

    fn route(c: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> Vec<(u32, f32)> {
        let n = c.n_experts;
        let (mut p, mut ch) = (vec![0.0; n], vec![0.0; n]);
        let mut out = vec![(0, 0.0); c.top_k];
        route_token(c, logits, bias, &mut p, &mut ch, &mut out);
        out
    }

    #[test]
    fn softmax_top_k_with_and_without_renormalisation() {
        let logits = [0.5, 2.0, -1.0, 1.0];
        let z: f32 = logits.iter().map(|x: &f32| x.exp()).sum();
        let p = |i: usize| logits[i].exp() / z;
        let r = route(&cfg(Gating::Softmax, 4, 2, (1, 1), false), &logits, None);
        assert_eq!((r[0].0, r[1].0), (1, 3));
        assert!((r[0].1 - p(1)).abs() < 1e-6 && (r[1].1 - p(3)).abs() < 1e-6);
        let r = route(&cfg(Gating::Softmax, 4, 2, (1, 1), true), &logits, None);
        let s = p(1) + p(3);
        assert!((r[0].1 - p(1) / s).abs() < 1e-6 && (r[1].1 - p(3) / s).abs() < 1e-6);
        // Ties go to the lower index.
        let r = route(&cfg(Gating::Softmax, 4, 2, (1, 1), false), &[1.0; 4], None);
        assert_eq!((r[0].0, r[1].0), (0, 1));
    }

    #[test]
    fn sigmoid_with_bias_and_groups_selects_as_deepseek() {
        // 8 experts in 4 groups of 2, keep 2 groups, top 2.
        let logits = [3.0, -3.0, 0.5, 0.4, 2.0, 1.9, -1.0, -2.0];
        let mut c = cfg(Gating::Sigmoid, 8, 2, (4, 2), true);
        c.scale = 2.5;
        // Bias lifts expert 7's selection score but not its weight.
        let bias = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0];
        let r = route(&c, &logits, Some(&bias));
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        // Group scores: g0 = s(3)+s(-3), g1 = s(.5)+s(.4), g2 = s(2)+s(1.9),
        // g3 = s(-1)+s(-2)+10: groups 3 and 2 win; experts 7 then 4.
        assert_eq!((r[0].0, r[1].0), (7, 4));
        let (a, b) = (sig(-2.0), sig(2.0));
        assert!((r[0].1 - 2.5 * a / (a + b)).abs() < 1e-6);
        assert!((r[1].1 - 2.5 * b / (a + b)).abs() < 1e-6);
        // Without the bias: groups 2 (1.75) and 1 (1.22) beat group 0
        // (1.0) although expert 0 is the best single one: experts 4, 5.
        let r = route(&c, &logits, None);
        assert_eq!((r[0].0, r[1].0), (4, 5));
    }
}
