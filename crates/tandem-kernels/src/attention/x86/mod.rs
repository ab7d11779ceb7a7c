//! AVX2 and AVX-512 primitives: the same loop as `scalar`, several values
//! per instruction and two accumulators, so a dot product sums in another
//! order than the reference (the only difference the tests allow). Both
//! families also have a vector exponential (one Cephes polynomial) and a
//! fused block step for decode (`fused`), which must match their own
//! step-by-step primitives bit for bit.
//!
//! Stored values are widened in registers: f16 with `vcvtph2ps`, bf16 by
//! shifting into the high half of an f32, Q8_0 quants by sign-extending
//! bytes to i32 and converting to f32. Rows whose length is not a multiple
//! of the vector width finish with masked loads (AVX-512) or scalar steps
//! (AVX2).
//!
//! Q8_0 rows are whole 32-value blocks, so their loops go block by block
//! (no tails): `q · k` sums a block's 32 products `q_i · k_i` (integer
//! `k_i`, exact in f32) and multiplies the sum by the block's scale once;
//! `acc += p · v` multiplies `p` by the scale once per block and adds
//! `(p·d) · v_i` with one fused multiply-add. The reference widens every
//! value to `d · q` first; the difference is one rounding per product,
//! within what the tests allow for reassociation.

use std::arch::x86_64::*;

use super::tag::{F16, F32, Q8_0};
use super::{
    holds, prefetch_share, read_value, row_softmax_step, KvBlock, KvFormat, Prims, SoftmaxState,
};
use crate::blocks::{Q8_0_BYTES, QK8_0};

/// The AVX-512 primitives; call only when `avx512_available()`. F32, F16
/// and BF16 rows also get block primitives of their own (each stored row
/// widened once for all queries of the tile, accumulators in registers)
/// and a vector exponential.
pub(super) fn avx512_prims(format: KvFormat) -> Prims {
    let mut p = super::prims_of!(format, dot512, axpy512);
    p.exp_sum = exp_sum512;
    match format {
        KvFormat::F32 => {
            p.scores = scores512::<F32>;
            p.accumulate = accumulate512::<F32>;
            p.fused = Some(fused512::<F32>);
        }
        KvFormat::F16 => {
            p.scores = scores512::<F16>;
            p.accumulate = accumulate512::<F16>;
            p.fused = Some(fused512::<F16>);
        }
        KvFormat::BF16 => {
            p.scores = scores512::<{ super::tag::BF16 }>;
            p.accumulate = accumulate512::<{ super::tag::BF16 }>;
            p.fused = Some(fused512::<{ super::tag::BF16 }>);
        }
        KvFormat::Q8_0 => p.fused = Some(fused512::<Q8_0>),
    }
    p
}

/// Bytes `n` rows at `stride` of `hd` values of tag `F` span.
fn block_holds<const F: u8>(buf: &[u8], hd: usize, stride: usize, n: usize) -> bool {
    n == 0 || ((n - 1) * stride < buf.len() && holds::<F>(&buf[(n - 1) * stride..], hd))
}

fn scores512<const F: u8>(
    _: &Prims,
    q: &[f32],
    hd: usize,
    k: &[u8],
    stride: usize,
    n: usize,
    out: &mut [f32],
) {
    assert!(block_holds::<F>(k, hd, stride, n) && hd > 0);
    assert!(out.len() >= q.len() / hd * n);
    // SAFETY: handed out by `avx512_prims` only, after the CPU check; the
    // rows and outputs it touches are in bounds (asserted above).
    unsafe { avx512::scores::<F>(q, hd, k.as_ptr(), stride, n, out) }
}

fn accumulate512<const F: u8>(
    _: &Prims,
    acc: &mut [f32],
    hd: usize,
    p: &[f32],
    v: &[u8],
    stride: usize,
    n: usize,
) {
    assert!(block_holds::<F>(v, hd, stride, n) && hd > 0);
    assert!(p.len() >= acc.len() / hd * n);
    // SAFETY: as in `scores512`.
    unsafe { avx512::accumulate::<F>(acc, hd, p, v.as_ptr(), stride, n) }
}

/// What both families' fused steps read and write is in bounds: the
/// block's K and V rows, and `q`, `acc`, `states` for every query, whose
/// `visible` counts stay within the block (`attend_block` checked all of
/// it; the fused steps assert it again before their unchecked reads).
fn fused_args_hold<const F: u8>(
    q: &[f32],
    hd: usize,
    block: &KvBlock<'_>,
    visible: &[usize],
    states: &[SoftmaxState],
    acc: &[f32],
) -> bool {
    let (n, nq) = (block.n, visible.len());
    block_holds::<F>(block.k, hd, block.stride, n)
        && block_holds::<F>(block.v, hd, block.stride, n)
        && q.len() == nq * hd
        && acc.len() == nq * hd
        && states.len() == nq
        && visible.iter().all(|&v| v <= n)
}

/// [`avx512::fused`] for blocks of at most 16 rows and heads of 64 or 128
/// values (Q8_0: any whole number of blocks); `false` for any other shape.
fn fused512<const F: u8>(
    q: &[f32],
    hd: usize,
    scale: f32,
    block: &KvBlock<'_>,
    visible: &[usize],
    states: &mut [SoftmaxState],
    acc: &mut [f32],
) -> bool {
    let n = block.n;
    let head_ok = match F {
        Q8_0 => hd.is_multiple_of(QK8_0) && hd > 0,
        _ => hd == 64 || hd == 128,
    };
    if n > avx512::FUSED_ROWS || !head_ok {
        return false;
    }
    assert!(fused_args_hold::<F>(q, hd, block, visible, states, acc));
    // SAFETY: handed out by `avx512_prims` only, after the CPU check; the
    // rows, queries, accumulators and states it touches are in bounds
    // (asserted above).
    unsafe { avx512::fused::<F>(q, hd, scale, block, visible, states, acc) };
    true
}

fn exp_sum512(x: &mut [f32], m: f32) -> f32 {
    // SAFETY: handed out by `avx512_prims` only, after the CPU check.
    unsafe { avx512::exp_sum(x, m) }
}

/// The AVX2 primitives; call only when `avx2_available()`.
/// AVX2 also has a vector exponential, and for F32, F16 and BF16 rows a
/// fused step ([`avx2::fused`]).
pub(super) fn avx2_prims(format: KvFormat) -> Prims {
    let mut p = super::prims_of!(format, dot256, axpy256);
    p.exp_sum = exp_sum256;
    p.fused = match format {
        KvFormat::F32 => Some(fused256::<F32>),
        KvFormat::F16 => Some(fused256::<F16>),
        KvFormat::BF16 => Some(fused256::<{ super::tag::BF16 }>),
        KvFormat::Q8_0 => None,
    };
    p
}

fn exp_sum256(x: &mut [f32], m: f32) -> f32 {
    // SAFETY: handed out by `avx2_prims` only, after the CPU check.
    unsafe { avx2::exp_sum(x, m) }
}

/// [`avx2::fused`] for blocks of at most 16 rows and head sizes that are
/// multiples of 16; `false` for any other shape.
fn fused256<const F: u8>(
    q: &[f32],
    hd: usize,
    scale: f32,
    block: &KvBlock<'_>,
    visible: &[usize],
    states: &mut [SoftmaxState],
    acc: &mut [f32],
) -> bool {
    let n = block.n;
    if n > avx2::FUSED_ROWS || hd == 0 || !hd.is_multiple_of(16) {
        return false;
    }
    assert!(fused_args_hold::<F>(q, hd, block, visible, states, acc));
    // SAFETY: handed out by `avx2_prims` only, after the CPU check; what
    // it touches is in bounds (asserted above).
    unsafe { avx2::fused::<F>(q, hd, scale, block, visible, states, acc) };
    true
}

fn dot512<const F: u8>(q: &[f32], k: &[u8]) -> f32 {
    assert!(holds::<F>(k, q.len()));
    // SAFETY: handed out by `avx512_prims` only, after the CPU check; the
    // kernel reads `q.len()` values of both slices (asserted above; for
    // Q8_0 that is whole blocks).
    unsafe { avx512::dot::<F>(q, k.as_ptr()) }
}

fn axpy512<const F: u8>(acc: &mut [f32], p: f32, v: &[u8]) {
    assert!(holds::<F>(v, acc.len()));
    // SAFETY: as in `dot512`.
    unsafe { avx512::axpy::<F>(acc, p, v.as_ptr()) }
}

fn dot256<const F: u8>(q: &[f32], k: &[u8]) -> f32 {
    assert!(holds::<F>(k, q.len()));
    // SAFETY: handed out by `avx2_prims` only, after the CPU check.
    unsafe { avx2::dot::<F>(q, k.as_ptr()) }
}

fn axpy256<const F: u8>(acc: &mut [f32], p: f32, v: &[u8]) {
    assert!(holds::<F>(v, acc.len()));
    // SAFETY: as in `dot256`.
    unsafe { avx2::axpy::<F>(acc, p, v.as_ptr()) }
}

/// The f16 scale at the start of a Q8_0 block, widened with `vcvtph2ps`
/// (exact, like the reference's conversion).
///
/// # Safety
/// F16C must be available; `blk` must hold 2 bytes.
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn q8_0_scale(blk: *const u8) -> f32 {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let bits = (blk as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }
}

mod avx512;

mod avx2;
