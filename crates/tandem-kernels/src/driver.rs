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
