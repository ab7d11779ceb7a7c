//! Blockwise attention with an online softmax (the "flash" formulation).
//!
//! Keys and values are read block by block, where a block is any run of
//! cached positions whose rows sit at a fixed byte stride: a page of the
//! paged KV store, or a slice of a contiguous cache. Each query row keeps a
//! running state — the largest score seen ([`SoftmaxState::max`]), the sum
//! of `exp(score − max)` and an unnormalised output accumulator — so a
//! block is visited once, in any order, and no score buffer longer than a
//! block is needed:
//!
//! 1. scores `s_j = (q · k_j) · scale` for the keys of the block the query
//!    may see (causality is the caller's `visible` count per query);
//! 2. `m' = max(m, max_j s_j)`; when it grew, the sum and the accumulator
//!    are multiplied by `exp(m − m')`;
//! 3. for each key `p_j = exp(s_j − m')`, `sum += p_j`, `acc += p_j · v_j`.
//!
//! [`finish`] divides by the sum. [`merge`] combines two states over
//! disjoint key sets (flash-decoding: threads take parts of a long context
//! and the parts are merged), which is the same rescaling applied to a whole
//! state.
//!
//! Stored rows are [`KvFormat`] values (f32, f16, bf16, or ggml's Q8_0
//! blocks: an f16 scale and 32 `i8`s), widened to f32; all arithmetic is
//! f32. The only ISA-specific parts are the two vector primitives — `q · k`
//! and `acc += p · v` — in `scalar` (the reference, summing in index order)
//! and `x86` (AVX2 and AVX-512, several accumulators); the algorithm around
//! them is this file's, shared by all. One exception, for speed: a family
//! may also run a whole block step itself ([`Prims`]'s `fused`, AVX-512 and
//! AVX2 for decode-sized blocks: scores kept in registers or on the stack,
//! each stored row widened once, prefetches of [`KvBlock::ahead`] spread
//! over the rows); it must give this file's bits with the family's
//! primitives exactly, and a test compares. SIMD and scalar results therefore
//! differ only by the reassociation of the dot products (for Q8_0 also by
//! where a block's scale is multiplied in: once per block instead of once
//! per value), and the tests bound exactly that. The NEON family uses the
//! scalar primitives for now.
//!
//! Row sizes come from [`KvFormat::row_bytes`], never from a per-value
//! width: a Q8_0 row is whole blocks (34 bytes per 32 values), so its head
//! size must be a multiple of 32 and every entry point checks that.
//!
//! Numerics versus a two-pass softmax: the online form reaches the same
//! values up to a few ulps (the rescaling multiplies by `exp(m − m')`
//! instead of subtracting the final max once). See the model's attention
//! docs for why a few ulps can matter on tiny quantized fixtures.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::blocks::{Q8_0_BYTES, QK8_0};
use crate::{Isa, KernelError, KernelFamily};

/// Element type of stored K/V rows.
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvFormat {
    F32,
    F16,
    BF16,
    /// ggml's `block_q8_0`: per 32 values an f16 scale `d` then 32 `i8`
    /// `q` (value = `d · q`), 34 bytes; half of f16's memory (+6%).
    Q8_0,
}

impl KvFormat {
    /// The weight format with the same block layout (a stored KV row
    /// decodes with `dequantize_row` of it).
    pub const fn weight_format(self) -> crate::WeightFormat {
        match self {
            KvFormat::F32 => crate::WeightFormat::F32,
            KvFormat::F16 => crate::WeightFormat::F16,
            KvFormat::BF16 => crate::WeightFormat::BF16,
            KvFormat::Q8_0 => crate::WeightFormat::Q8_0,
        }
    }

    /// Every format, in declaration order.
    pub const ALL: [KvFormat; 4] = [KvFormat::F32, KvFormat::F16, KvFormat::BF16, KvFormat::Q8_0];

    /// Values per block (1 for the float formats).
    pub const fn block_len(self) -> usize {
        match self {
            KvFormat::F32 | KvFormat::F16 | KvFormat::BF16 => 1,
            KvFormat::Q8_0 => QK8_0,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            KvFormat::F32 => 4,
            KvFormat::F16 | KvFormat::BF16 => 2,
            KvFormat::Q8_0 => Q8_0_BYTES,
        }
    }

    /// Bytes of one stored row of `head_dim` values; `None` when `head_dim`
    /// is not a whole number of blocks (Q8_0: not a multiple of 32) or the
    /// size overflows.
    pub const fn row_bytes(self, head_dim: usize) -> Option<usize> {
        if !head_dim.is_multiple_of(self.block_len()) {
            return None;
        }
        (head_dim / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Lower-case name (`f32`, `f16`, `bf16`, `q8_0`).
    pub const fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
            KvFormat::BF16 => "bf16",
            KvFormat::Q8_0 => "q8_0",
        }
    }
}

impl std::str::FromStr for KvFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvFormat::F32),
            "f16" => Ok(KvFormat::F16),
            "bf16" => Ok(KvFormat::BF16),
            "q8_0" => Ok(KvFormat::Q8_0),
            _ => Err(format!(
                "unknown KV type {s:?} (expected f16, bf16, f32 or q8_0)"
            )),
        }
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Keys and values of one head at `n` consecutive positions: row `j` of
/// `k` starts at byte `j * stride` and holds `head_dim` values; row `j` of
/// `v` likewise holds `v_dim` values (`v` may be `k` itself when values
/// are a prefix of the key rows).
#[derive(Copy, Clone, Debug)]
pub struct KvBlock<'a> {
    pub format: KvFormat,
    pub k: &'a [u8],
    pub v: &'a [u8],
    /// Values per value row: the head size, or fewer where the value is a
    /// prefix of the key row (MLA's latent cache: keys `[latent | rope]`,
    /// values the latent). The accumulators hold this many per query.
    pub v_dim: usize,
    /// Bytes from one position's row to the next (≥ the rows' bytes).
    pub stride: usize,
    /// Positions in the block.
    pub n: usize,
    /// Bytes that will be read soon after this block (typically the K and
    /// V of a later block; empty for none): a hint. The kernel asks the
    /// CPU to start loading them while it works on this block, spread over
    /// its rows so the requests never pile up in the miss queues.
    pub ahead: [&'a [u8]; 2],
}

impl<'a> KvBlock<'a> {
    /// Nothing to prefetch: the value of [`KvBlock::ahead`] when there is
    /// no later block.
    pub const NOTHING_AHEAD: [&'static [u8]; 2] = [&[], &[]];
}

/// Running online-softmax state of one query row (its accumulator is kept
/// by the caller, `head_dim` floats, zero at the start).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SoftmaxState {
    /// Largest score seen so far (−∞ before the first key).
    pub max: f32,
    /// Σ exp(score − max) over the keys seen.
    pub sum: f32,
}

impl SoftmaxState {
    /// The state before any key.
    pub const EMPTY: SoftmaxState = SoftmaxState {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };
}

impl Default for SoftmaxState {
    fn default() -> Self {
        SoftmaxState::EMPTY
    }
}

/// The vector primitives of one ISA family and K/V format. The SIMD ones
/// are handed out only after the CPU was checked, which is what makes them
/// safe to call.
///
/// `dot` and `axpy` work on one row. `scores` and `accumulate` do the same
/// for a whole block and several queries; a family may implement them
/// directly (widening each stored row once for all queries, keeping
/// accumulators in registers) or use [`rows`]'s loops over `dot`/`axpy`,
/// which sum in the same order. `exp_sum` is the softmax's exponential.
#[derive(Copy, Clone)]
struct Prims {
    /// `q · k`, `k` holding `q.len()` stored values.
    dot: fn(&[f32], &[u8]) -> f32,
    /// `acc += p · v`, `v` holding `acc.len()` stored values.
    axpy: fn(&mut [f32], f32, &[u8]),
    /// `out[i·n + j] = q_i · k_j` for the `q.len() / hd` query rows and the
    /// `n` key rows at `stride` (checked by the caller).
    scores: ScoresFn,
    /// `acc_i += Σ_j p[i·n + j] · v_j`, rows in order.
    accumulate: AccumulateFn,
    /// `x_j = exp(x_j − m)` for every j; returns the sum of the results.
    exp_sum: fn(&mut [f32], f32) -> f32,
    /// The whole of [`attend_block`] after its checks, for the shapes a
    /// family handles in registers (decode: a page of keys, a few
    /// queries); `false` leaves the block to the steps above. It must give
    /// the same bits as those steps, so which path ran never shows.
    fused: Option<FusedFn>,
}

/// `fused(q, head_dim, scale, block, visible, states, acc)`, arguments as
/// [`attend_block`]'s (checked by it).
type FusedFn =
    fn(&[f32], usize, f32, &KvBlock<'_>, &[usize], &mut [SoftmaxState], &mut [f32]) -> bool;

/// `scores(prims, q, head_dim, k, stride, n, out)`.
type ScoresFn = fn(&Prims, &[f32], usize, &[u8], usize, usize, &mut [f32]);
/// `accumulate(prims, acc, head_dim, p, v, stride, n)`.
type AccumulateFn = fn(&Prims, &mut [f32], usize, &[f32], &[u8], usize, usize);

/// Block primitives as loops over the row primitives: the reference
/// order (rows in order; for `accumulate`, each query's rows in order).
mod rows {
    use super::Prims;

    pub(super) fn scores(
        p: &Prims,
        q: &[f32],
        hd: usize,
        k: &[u8],
        stride: usize,
        n: usize,
        out: &mut [f32],
    ) {
        for (i, qi) in q.chunks_exact(hd).enumerate() {
            for j in 0..n {
                out[i * n + j] = (p.dot)(qi, &k[j * stride..]);
            }
        }
    }

    pub(super) fn accumulate(
        p: &Prims,
        acc: &mut [f32],
        hd: usize,
        probs: &[f32],
        v: &[u8],
        stride: usize,
        n: usize,
    ) {
        for j in 0..n {
            for (i, ai) in acc.chunks_exact_mut(hd).enumerate() {
                let pij = probs[i * n + j];
                if pij != 0.0 {
                    (p.axpy)(ai, pij, &v[j * stride..]);
                }
            }
        }
    }

    pub(super) fn exp_sum(x: &mut [f32], m: f32) -> f32 {
        let mut sum = 0.0;
        for v in x.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        sum
    }
}

/// Const-generic tags of the stored formats, shared by the primitive
/// families (`F` parameters).
mod tag {
    pub const F32: u8 = 0;
    pub const F16: u8 = 1;
    pub const BF16: u8 = 2;
    pub const Q8_0: u8 = 3;
}

/// The format of tag `F`.
const fn tag_format(f: u8) -> KvFormat {
    match f {
        tag::F32 => KvFormat::F32,
        tag::F16 => KvFormat::F16,
        tag::BF16 => KvFormat::BF16,
        _ => KvFormat::Q8_0,
    }
}

/// Whether `row` holds `n` stored values of tag `F` (and `n` is a whole
/// number of blocks): what the primitives assert before reading.
fn holds<const F: u8>(row: &[u8], n: usize) -> bool {
    tag_format(F).row_bytes(n).is_some_and(|b| row.len() >= b)
}

/// Value `i` of a stored row of tag `F`, widened. A Q8_0 value is found
/// through its block (`i / 32`): the scale at the block's start, the quant
/// 2 + `i % 32` bytes in.
///
/// # Safety
/// `p` must hold the row's values up to `i` (Q8_0: up to the end of the
/// block of `i`).
#[inline]
unsafe fn read_value<const F: u8>(p: *const u8, i: usize) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        match F {
            tag::F32 => (p.add(4 * i) as *const f32).read_unaligned(),
            tag::F16 => crate::convert::f16_to_f32((p.add(2 * i) as *const u16).read_unaligned()),
            tag::BF16 => crate::convert::bf16_to_f32((p.add(2 * i) as *const u16).read_unaligned()),
            _ => {
                let blk = p.add(i / QK8_0 * Q8_0_BYTES);
                let d = crate::convert::f16_to_f32((blk as *const u16).read_unaligned());
                d * f32::from((blk.add(2 + i % QK8_0) as *const i8).read())
            }
        }
    }
}

/// The [`Prims`] of one family: `$dot` and `$axpy` instantiated for the tag
/// of `$format`, with the block primitives of [`rows`] and its `exp_sum`.
/// A family with its own block primitives replaces fields afterwards.
macro_rules! prims_of {
    ($format:expr, $dot:ident, $axpy:ident) => {{
        use $crate::attention::{tag, KvFormat, Prims};
        let (dot, axpy): (fn(&[f32], &[u8]) -> f32, fn(&mut [f32], f32, &[u8])) = match $format {
            KvFormat::F32 => ($dot::<{ tag::F32 }>, $axpy::<{ tag::F32 }>),
            KvFormat::F16 => ($dot::<{ tag::F16 }>, $axpy::<{ tag::F16 }>),
            KvFormat::BF16 => ($dot::<{ tag::BF16 }>, $axpy::<{ tag::BF16 }>),
            KvFormat::Q8_0 => ($dot::<{ tag::Q8_0 }>, $axpy::<{ tag::Q8_0 }>),
        };
        Prims {
            dot,
            axpy,
            scores: $crate::attention::rows::scores,
            accumulate: $crate::attention::rows::accumulate,
            exp_sum: $crate::attention::rows::exp_sum,
            fused: None,
        }
    }};
}
pub(crate) use prims_of;

fn prims(isa: Isa, format: KvFormat) -> Result<Prims, KernelError> {
    if !isa.is_available() {
        return Err(KernelError::IsaUnavailable(isa));
    }
    Ok(match isa.kernels() {
        #[cfg(target_arch = "x86_64")]
        KernelFamily::Avx512 => x86::avx512_prims(format),
        #[cfg(target_arch = "x86_64")]
        KernelFamily::Avx2 => x86::avx2_prims(format),
        _ => scalar::prims(format),
    })
}

fn check(what: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::SizeMismatch {
            what,
            expected,
            actual,
        })
    }
}

/// Bytes of a stored row of `n` values: an error when `n` is not a whole
/// number of the format's blocks.
fn checked_row_bytes(format: KvFormat, n: usize) -> Result<usize, KernelError> {
    match format.row_bytes(n) {
        Some(b) => Ok(b),
        None if !n.is_multiple_of(format.block_len()) => Err(KernelError::NotBlockAligned {
            format: format.name(),
            n_cols: n,
            block_len: format.block_len(),
        }),
        None => Err(KernelError::Overflow),
    }
}

/// Bytes a block of `n` rows of `row_bytes` at `stride` spans.
fn span(n: usize, stride: usize, row_bytes: usize) -> Option<usize> {
    match n {
        0 => Some(0),
        _ => (n - 1).checked_mul(stride)?.checked_add(row_bytes),
    }
}

/// What limits a query's scores besides the causal end: the first position
/// of the block it sees (a sliding window's start) and a soft-cap
/// (`cap · tanh(s / cap)` of the scaled score, Gemma 2). The default limits
/// nothing. Blocks with either take the step-by-step path.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScoreLimits<'a> {
    /// Per query: positions of the block before this one are not seen.
    pub starts: Option<&'a [usize]>,
    pub softcap: Option<f32>,
}

/// Folds one block of keys/values into the states of `visible.len()` query
/// rows.
///
/// `q` holds the query rows (`head_dim` floats each, the key rows' width),
/// `acc` their accumulators (`block.v_dim` floats each) and `states` their
/// softmax states; query `i` sees the
/// first `visible[i]` positions of the block (≤ `block.n`; 0 skips it).
/// `scores` is scratch of at least `visible.len() × block.n` floats.
#[allow(clippy::too_many_arguments)]
pub fn attend_block<'a>(
    isa: Isa,
    q: &[f32],
    head_dim: usize,
    scale: f32,
    block: &KvBlock<'a>,
    visible: &[usize],
    states: &mut [SoftmaxState],
    acc: &mut [f32],
    scores: &mut [f32],
) -> Result<(), KernelError> {
    attend_block_limited(
        isa,
        q,
        head_dim,
        scale,
        block,
        visible,
        ScoreLimits::default(),
        states,
        acc,
        scores,
    )
}

/// [`attend_block`] where query `i` sees positions
/// `limits.starts[i]..visible[i]` of the block (a sliding window), with
/// scores soft-capped if asked.
#[allow(clippy::too_many_arguments)]
pub fn attend_block_limited<'a>(
    isa: Isa,
    q: &[f32],
    head_dim: usize,
    scale: f32,
    block: &KvBlock<'a>,
    visible: &[usize],
    limits: ScoreLimits<'_>,
    states: &mut [SoftmaxState],
    acc: &mut [f32],
    scores: &mut [f32],
) -> Result<(), KernelError> {
    attend(
        isa, q, head_dim, scale, block, visible, limits, states, acc, scores, true,
    )
}

/// [`attend_block`] without the family's fused path (tests: both paths
/// must give the same bits).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_block_unfused(
    isa: Isa,
    q: &[f32],
    head_dim: usize,
    scale: f32,
    block: &KvBlock<'_>,
    visible: &[usize],
    states: &mut [SoftmaxState],
    acc: &mut [f32],
    scores: &mut [f32],
) -> Result<(), KernelError> {
    attend(
        isa,
        q,
        head_dim,
        scale,
        block,
        visible,
        ScoreLimits::default(),
        states,
        acc,
        scores,
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn attend(
    isa: Isa,
    q: &[f32],
    head_dim: usize,
    scale: f32,
    block: &KvBlock<'_>,
    visible: &[usize],
    limits: ScoreLimits<'_>,
    states: &mut [SoftmaxState],
    acc: &mut [f32],
    scores: &mut [f32],
    allow_fused: bool,
) -> Result<(), KernelError> {
    let nq = visible.len();
    if let Some(st) = limits.starts {
        check("window starts", nq, st.len())?;
    }
    if let Some(c) = limits.softcap {
        if !(c.is_finite() && c > 0.0) {
            return Err(KernelError::SizeMismatch {
                what: "soft-cap (must be positive)",
                expected: 1,
                actual: 0,
            });
        }
    }
    let starts_at = |i: usize| limits.starts.map_or(0, |s| s[i]);
    let limited = limits.softcap.is_some() || (0..nq).any(|i| starts_at(i) > 0);
    if head_dim == 0 {
        return Err(KernelError::ZeroColumns);
    }
    let vd = block.v_dim;
    if vd == 0 {
        return Err(KernelError::ZeroColumns);
    }
    let q_len = nq.checked_mul(head_dim).ok_or(KernelError::Overflow)?;
    check("query values", q_len, q.len())?;
    let acc_len = nq.checked_mul(vd).ok_or(KernelError::Overflow)?;
    check("accumulator values", acc_len, acc.len())?;
    check("softmax states", nq, states.len())?;
    let row_bytes = checked_row_bytes(block.format, head_dim)?;
    let v_row_bytes = checked_row_bytes(block.format, vd)?;
    let widest = row_bytes.max(v_row_bytes);
    if block.n > 0 && block.stride < widest {
        return Err(KernelError::SizeMismatch {
            what: "KV row stride",
            expected: widest,
            actual: block.stride,
        });
    }
    let need_k = span(block.n, block.stride, row_bytes).ok_or(KernelError::Overflow)?;
    let need_v = span(block.n, block.stride, v_row_bytes).ok_or(KernelError::Overflow)?;
    for (what, buf, need) in [
        ("key bytes", block.k, need_k),
        ("value bytes", block.v, need_v),
    ] {
        if buf.len() < need {
            return Err(KernelError::SizeMismatch {
                what,
                expected: need,
                actual: buf.len(),
            });
        }
    }
    let need_scores = nq.checked_mul(block.n).ok_or(KernelError::Overflow)?;
    if scores.len() < need_scores {
        return Err(KernelError::SizeMismatch {
            what: "score scratch",
            expected: need_scores,
            actual: scores.len(),
        });
    }
    if let Some(&bad) = visible.iter().find(|&&n| n > block.n) {
        return Err(KernelError::RowRange {
            start: 0,
            end: bad,
            n_rows: block.n,
        });
    }
    let p = prims(isa, block.format)?;
    let n = block.n;
    if n == 0 || (0..nq).all(|i| visible[i] <= starts_at(i)) {
        return Ok(());
    }
    if let Some(fused) = p
        .fused
        .filter(|_| allow_fused && !limited && vd == head_dim)
    {
        if fused(q, head_dim, scale, block, visible, states, acc) {
            return Ok(());
        }
    }
    block.ahead.iter().for_each(|b| prefetch(b));
    let sc = &mut scores[..nq * n];
    (p.scores)(&p, q, head_dim, block.k, block.stride, n, sc);
    for (i, &vis) in visible.iter().enumerate() {
        let row = &mut sc[i * n..(i + 1) * n];
        let start = starts_at(i).min(vis);
        row[vis..].fill(0.0);
        let seen = &mut row[start..vis];
        let step_scale = match limits.softcap {
            // Scaled and capped here, so the step's own scaling is 1.
            Some(cap) => {
                seen.iter_mut()
                    .for_each(|s| *s = cap * (*s * scale / cap).tanh());
                1.0
            }
            None => scale,
        };
        if let Some(c) = row_softmax_step(seen, step_scale, &mut states[i], p.exp_sum) {
            acc[i * vd..(i + 1) * vd].iter_mut().for_each(|a| *a *= c);
        }
        // Positions before the window weigh nothing.
        row[..start].fill(0.0);
    }
    (p.accumulate)(&p, acc, vd, sc, block.v, block.stride, n);
    Ok(())
}

/// Asks the CPU to start loading `bytes` into the L2 cache (a hint; no
/// effect on results), all at once: what the step-by-step path does with
/// [`KvBlock::ahead`] (the fused path spreads the same requests over its
/// rows). The hint is T1: on the Zen 4 machine we measure on, T0 requests
/// three blocks ahead (24 KiB) crowd the 32 KiB L1 and gave 16k-context
/// decode 5.3–5.9 tok/s, T1 7.0–7.8.
pub fn prefetch(bytes: &[u8]) {
    prefetch_lines(bytes, 0, usize::MAX);
}

/// [`prefetch`] of the 64-byte lines `from..to` of `bytes` (those inside
/// it).
#[inline(always)]
pub(crate) fn prefetch_lines(bytes: &[u8], from: usize, to: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = bytes.as_ptr();
        for l in from..to.min(bytes.len().div_ceil(64)) {
            // SAFETY: a prefetch of an address inside `bytes` (SSE is part
            // of x86_64); it cannot fault or change memory.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(l * 64) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, from, to);
}

/// The share of `bytes` a fused step prefetches while it works on rows
/// `rows` of its `n`: lines `start·L/n..end·L/n` of the `L` lines, so
/// the requests are spread evenly over the block.
#[inline(always)]
pub(crate) fn prefetch_share(bytes: &[u8], rows: std::ops::Range<usize>, n: usize) {
    let lines = bytes.len().div_ceil(64);
    prefetch_lines(bytes, rows.start * lines / n, rows.end * lines / n);
}

/// The softmax step of one query over the scores of the keys it sees in a
/// block (`seen`, raw dot products): scales them, turns them into
/// `exp(s − m')` with `exp_sum` in place, and folds them into `st`.
/// Returns the factor `exp(m − m')` its accumulator must be multiplied by
/// when the max grew from `m` to `m'` (None when nothing needs rescaling).
pub(crate) fn row_softmax_step(
    seen: &mut [f32],
    scale: f32,
    st: &mut SoftmaxState,
    exp_sum: fn(&mut [f32], f32) -> f32,
) -> Option<f32> {
    if seen.is_empty() {
        return None;
    }
    let mut block_max = f32::NEG_INFINITY;
    for s in seen.iter_mut() {
        *s *= scale;
        block_max = block_max.max(*s);
    }
    let m = st.max.max(block_max);
    let mut rescale = None;
    if m > st.max && st.sum > 0.0 {
        let c = (st.max - m).exp();
        st.sum *= c;
        rescale = Some(c);
    }
    st.max = m;
    st.sum += exp_sum(seen, m);
    rescale
}

/// Folds an attention sink into a query's state: a learned logit (already
/// scaled) that joins the softmax's denominator with no value (gpt-oss),
/// so the weights of the real keys sum to less than one.
pub fn add_sink(state: &mut SoftmaxState, acc: &mut [f32], sink: f32) {
    let m = state.max.max(sink);
    let c = if state.sum > 0.0 {
        (state.max - m).exp()
    } else {
        0.0
    };
    if c != 1.0 {
        acc.iter_mut().for_each(|a| *a *= c);
    }
    state.sum = state.sum * c + (sink - m).exp();
    state.max = m;
}

/// `out = acc / sum`: the attention output of a query row whose keys have
/// all been folded in. A row that saw no key gives zeros.
pub fn finish(state: &SoftmaxState, acc: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check("output values", acc.len(), out.len())?;
    if state.sum > 0.0 {
        let inv = 1.0 / state.sum;
        out.iter_mut().zip(acc).for_each(|(o, &a)| *o = a * inv);
    } else {
        out.fill(0.0);
    }
    Ok(())
}

/// Folds the state and accumulator of another part of the keys (`src`)
/// into `dst`: afterwards `dst` is the state over both parts.
pub fn merge(
    dst: &mut SoftmaxState,
    dst_acc: &mut [f32],
    src: &SoftmaxState,
    src_acc: &[f32],
) -> Result<(), KernelError> {
    check("accumulator values", dst_acc.len(), src_acc.len())?;
    if src.sum <= 0.0 {
        return Ok(());
    }
    if dst.sum <= 0.0 {
        *dst = *src;
        dst_acc.copy_from_slice(src_acc);
        return Ok(());
    }
    let m = dst.max.max(src.max);
    let (cd, cs) = ((dst.max - m).exp(), (src.max - m).exp());
    dst.sum = dst.sum * cd + src.sum * cs;
    dst.max = m;
    dst_acc
        .iter_mut()
        .zip(src_acc)
        .for_each(|(d, &s)| *d = *d * cd + s * cs);
    Ok(())
}

/// Stores a row of f32 values in `format` (f16 and bf16 round to nearest
/// even, as ggml's conversions do; Q8_0 quantizes as ggml's
/// `quantize_row_q8_0_ref`: `d = amax / 127`, `q = roundf(x / d)`).
pub fn encode_row(format: KvFormat, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    check(
        "stored row bytes",
        checked_row_bytes(format, src.len())?,
        dst.len(),
    )?;
    match format {
        KvFormat::F32 => src
            .iter()
            .zip(dst.chunks_exact_mut(4))
            .for_each(|(&x, d)| d.copy_from_slice(&x.to_le_bytes())),
        KvFormat::F16 => src
            .iter()
            .zip(dst.chunks_exact_mut(2))
            .for_each(|(&x, d)| d.copy_from_slice(&crate::convert::f32_to_f16(x).to_le_bytes())),
        KvFormat::BF16 => src
            .iter()
            .zip(dst.chunks_exact_mut(2))
            .for_each(|(&x, d)| d.copy_from_slice(&crate::convert::f32_to_bf16(x).to_le_bytes())),
        KvFormat::Q8_0 => {
            for (x, blk) in src
                .chunks_exact(QK8_0)
                .zip(dst.chunks_exact_mut(Q8_0_BYTES))
            {
                let (mut qs, mut d_bits, mut d) = ([0i8; QK8_0], [0u16], [0f32]);
                crate::reference::quantize::q8_0_ref(x, &mut qs, &mut d_bits, &mut d);
                blk[..2].copy_from_slice(&d_bits[0].to_le_bytes());
                blk[2..].iter_mut().zip(qs).for_each(|(b, q)| *b = q as u8);
            }
        }
    }
    Ok(())
}

/// The softmax exponential of `isa`'s family, `x = exp(x − m)` with the
/// sum returned (for tests against `f64::exp`).
#[cfg(test)]
pub(crate) fn exp_sum(isa: Isa, x: &mut [f32], m: f32) -> Result<f32, KernelError> {
    Ok((prims(isa, KvFormat::F32)?.exp_sum)(x, m))
}

/// `q · k` for one stored key row: the primitive [`attend_block`] uses,
/// exposed for tests and benchmarks.
pub fn dot(isa: Isa, format: KvFormat, q: &[f32], k: &[u8]) -> Result<f32, KernelError> {
    check("key bytes", checked_row_bytes(format, q.len())?, k.len())?;
    Ok((prims(isa, format)?.dot)(q, k))
}

/// `acc += p · v` for one stored value row: the other primitive.
pub fn axpy(
    isa: Isa,
    format: KvFormat,
    acc: &mut [f32],
    p: f32,
    v: &[u8],
) -> Result<(), KernelError> {
    check(
        "value bytes",
        checked_row_bytes(format, acc.len())?,
        v.len(),
    )?;
    (prims(isa, format)?.axpy)(acc, p, v);
    Ok(())
}
