//! F32 / F16 / BF16 weights × same-format activations.
//!
//! Per (weight row, activation row) pair: two 16-lane f32 accumulators;
//! step s of 32 values adds values `32s..32s+16` into the first and
//! `32s+16..32s+32` into the second (`fma`, or `vdpbf16ps` for BF16 when the
//! CPU has AVX512-BF16: there each lane takes two adjacent values, 32 per
//! register, so the two accumulators take 64 values per step). The ragged
//! end is read with masked loads (masked-off elements read as 0 and are
//! never touched in memory). The result is `hsum(acc0 + acc1)`.
//!
//! `vdpbf16ps` flushes denormal inputs and outputs to zero (ggml's AVX512-BF16
//! path does the same); the error is below 2^-126 per product.

use std::arch::x86_64::*;

use super::assert_tile;
use super::helpers::*;
use crate::QuantizedActivations;

/// Lane mask of the first `n` (≤ 32) elements.
#[inline]
fn mask32(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// Shared tile body: `load(p, i, m)` widens up to 16 elements at element
/// offset `i` of row pointer `p` under mask `m` (16 bits).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn run<const R: usize, const N: usize, T: Copy>(
    n: usize,
    wrows: [*const T; R],
    arows: [*const T; N],
    out: &mut [f32],
    n_b: usize,
    b0: usize,
    load: impl Fn(*const T, usize, __mmask16) -> __m512,
) {
    let mut acc = [[[_mm512_setzero_ps(); 2]; N]; R];
    let np = n & !31;
    let mut i = 0;
    while i < np {
        for h in 0..2 {
            let x: [__m512; R] = std::array::from_fn(|r| load(wrows[r], i + 16 * h, 0xFFFF));
            for k in 0..N {
                let y = load(arows[k], i + 16 * h, 0xFFFF);
                for r in 0..R {
                    acc[r][k][h] = _mm512_fmadd_ps(x[r], y, acc[r][k][h]);
                }
            }
        }
        i += 32;
    }
    if i < n {
        let m = mask32(n - i);
        for h in 0..2 {
            let mh = (m >> (16 * h)) as __mmask16;
            if mh == 0 {
                break;
            }
            let x: [__m512; R] = std::array::from_fn(|r| load(wrows[r], i + 16 * h, mh));
            for k in 0..N {
                let y = load(arows[k], i + 16 * h, mh);
                for r in 0..R {
                    acc[r][k][h] = _mm512_fmadd_ps(x[r], y, acc[r][k][h]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (k, a) in acc.iter().enumerate() {
            out[r * n_b + b0 + k] = hsum(_mm512_add_ps(a[0], a[1]));
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_f32<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    assert_tile(w, rb, 4, R, acts, b0, N, out);
    let n = rb / 4;
    let arows: [*const f32; N] = std::array::from_fn(|k| {
        let a = acts.f32_row(b0 + k);
        assert!(a.len() == n);
        a.as_ptr()
    });
    // rows read with unaligned loads only
    let wrows: [*const f32; R] = std::array::from_fn(|r| w.as_ptr().add(r * rb) as *const f32);
    run::<R, N, f32>(n, wrows, arows, out, acts.n_rows(), b0, |p, i, m| {
        _mm512_maskz_loadu_ps(m, p.add(i))
    });
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_f16<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    assert_tile(w, rb, 2, R, acts, b0, N, out);
    let n = rb / 2;
    let arows: [*const u16; N] = std::array::from_fn(|k| {
        let a = acts.u16_row(b0 + k);
        assert!(a.len() == n);
        a.as_ptr()
    });
    let wrows: [*const u16; R] = std::array::from_fn(|r| w.as_ptr().add(r * rb) as *const u16);
    run::<R, N, u16>(n, wrows, arows, out, acts.n_rows(), b0, |p, i, m| {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(i) as *const i16))
    });
}

/// BF16 without `vdpbf16ps`: widen (shift into the upper half) and `fma`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    assert_tile(w, rb, 2, R, acts, b0, N, out);
    let n = rb / 2;
    let arows: [*const u16; N] = std::array::from_fn(|k| {
        let a = acts.u16_row(b0 + k);
        assert!(a.len() == n);
        a.as_ptr()
    });
    let wrows: [*const u16; R] = std::array::from_fn(|r| w.as_ptr().add(r * rb) as *const u16);
    run::<R, N, u16>(n, wrows, arows, out, acts.n_rows(), b0, |p, i, m| {
        let h = _mm256_maskz_loadu_epi16(m, p.add(i) as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    });
}

/// BF16 with `vdpbf16ps` (AVX512-BF16).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16_dp<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    assert_tile(w, rb, 2, R, acts, b0, N, out);
    let n = rb / 2;
    let arows: [*const u16; N] = std::array::from_fn(|k| {
        let a = acts.u16_row(b0 + k);
        assert!(a.len() == n);
        a.as_ptr()
    });
    let wrows: [*const u16; R] = std::array::from_fn(|r| w.as_ptr().add(r * rb) as *const u16);
    let load = |p: *const u16, i: usize, m: __mmask32| -> __m512bh {
        std::mem::transmute(_mm512_maskz_loadu_epi16(m, p.add(i) as *const i16))
    };
    let mut acc = [[[_mm512_setzero_ps(); 2]; N]; R];
    let mut i = 0;
    while i < n {
        for h in 0..2 {
            let at = i + 32 * h;
            if at >= n {
                break;
            }
            let m = mask32(n - at);
            let x: [__m512bh; R] = std::array::from_fn(|r| load(wrows[r], at, m));
            for k in 0..N {
                let y = load(arows[k], at, m);
                for r in 0..R {
                    acc[r][k][h] = _mm512_dpbf16_ps(acc[r][k][h], x[r], y);
                }
            }
        }
        i += 64;
    }
    let n_b = acts.n_rows();
    for (r, acc) in acc.iter().enumerate() {
        for (k, a) in acc.iter().enumerate() {
            out[r * n_b + b0 + k] = hsum(_mm512_add_ps(a[0], a[1]));
        }
    }
}
