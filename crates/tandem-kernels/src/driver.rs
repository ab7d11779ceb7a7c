//! The one tile driver every SIMD family runs its kernels through.
//!
//! A family's kernel computes a *tile*: up to `row_tile` consecutive weight
//! rows times up to `act_tile` consecutive activation rows. The driver walks
//! a row range and all B activation rows in such tiles, handing the kernel
//! the tile's weight rows, its first activation row `b0`, its activation
//! count `n` and the output rows it covers (`nr × B` values, row-major).
//! Families differ only in their tile shapes and kernels, never in how a
//! matmul is cut up, so "results do not depend on B, tile or row range"
//! has to hold for each kernel alone.

use std::ops::Range;

/// Walk `rows × n_b` in tiles of at most `row_tile × act_tile`, calling
/// `kernel(w, b0, n, out_rows)` with `w` the tile's `nr` weight rows
/// (`nr * row_bytes` bytes) and `out_rows` their `nr * n_b` outputs.
/// Sizes must have been validated (`out.len() == rows.len() * n_b`,
/// `rows.end * row_bytes <= weights.len()`).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn drive(
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    n_b: usize,
    row_tile: usize,
    act_tile: usize,
    out: &mut [f32],
    mut kernel: impl FnMut(&[u8], usize, usize, &mut [f32]),
) {
    let (row_tile, act_tile) = (row_tile.max(1), act_tile.max(1));
    let mut r = rows.start;
    while r < rows.end {
        let nr = (rows.end - r).min(row_tile);
        let w = &weights[r * row_bytes..(r + nr) * row_bytes];
        let o0 = (r - rows.start) * n_b;
        let o = &mut out[o0..o0 + nr * n_b];
        let mut b0 = 0;
        while b0 < n_b {
            let n = (n_b - b0).min(act_tile);
            kernel(w, b0, n, o);
            b0 += n;
        }
        r += nr;
    }
}

/// Activation rows per pass over a chunk of interleaved groups: the pass's
/// activations (64 rows of a 4096-wide Q8_K input are ~270 KB) stay in L2
/// while every group of the chunk is multiplied against them.
#[cfg(target_arch = "x86_64")]
pub(crate) const ACT_BLOCK: usize = 64;

/// Activation rows per group-kernel call (the group tile's width).
#[cfg(target_arch = "x86_64")]
pub(crate) const GROUP_ACT_TILE: usize = 4;

/// The interleaved counterpart of [`drive`], shared by every family with
/// group kernels: walks the [`GROUP_ROWS`]-row groups overlapping `rows`
/// (within the `packed` rows that are interleaved), in passes of
/// [`ACT_BLOCK`] activation rows, calling `kernel(group bytes, b0, n, tile)`
/// for up to [`GROUP_ACT_TILE`] activation rows at a time; the kernel writes
/// `tile[k * GROUP_ROWS + r]` and only the requested rows are stored.
/// Sizes must have been validated; the row-major tail past `packed` is the
/// caller's.
///
/// [`GROUP_ROWS`]: crate::interleaved::GROUP_ROWS
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive_groups(
    weights: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    packed: usize,
    n_b: usize,
    out: &mut [f32],
    mut kernel: impl FnMut(
        &[u8],
        usize,
        usize,
        &mut [f32; crate::interleaved::GROUP_ROWS * GROUP_ACT_TILE],
    ),
) {
    use crate::interleaved::GROUP_ROWS;
    if rows.start >= packed {
        return;
    }
    let g_bytes = GROUP_ROWS * row_bytes;
    let mut tile = [0f32; GROUP_ROWS * GROUP_ACT_TILE];
    let groups = rows.start / GROUP_ROWS..rows.end.min(packed).div_ceil(GROUP_ROWS);
    let mut a0 = 0;
    while a0 < n_b {
        let a1 = (a0 + ACT_BLOCK).min(n_b);
        for g in groups.clone() {
            let w = &weights[g * g_bytes..(g + 1) * g_bytes];
            let mut b0 = a0;
            while b0 < a1 {
                let n = (a1 - b0).min(GROUP_ACT_TILE);
                kernel(w, b0, n, &mut tile);
                for r in 0..GROUP_ROWS {
                    let row = g * GROUP_ROWS + r;
                    if rows.contains(&row) {
                        let o = (row - rows.start) * n_b + b0;
                        for k in 0..n {
                            out[o + k] = tile[k * GROUP_ROWS + r];
                        }
                    }
                }
                b0 += n;
            }
        }
        a0 = a1;
    }
}
