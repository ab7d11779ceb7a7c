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

// Index loops run over the accumulator arrays and the loaded registers alike.
#![allow(clippy::needless_range_loop)]

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

/// An element type: how to widen up to 16 elements (static dispatch:
/// closures would not inherit the target features and stay out of line).
trait Widen {
    type T: Copy;
    const BYTES: usize;
    /// `m`-masked elements at `p + i`, widened to f32 (masked-off lanes 0).
    unsafe fn load(p: *const Self::T, i: usize, m: __mmask16) -> __m512;
}

struct F32;
struct F16;
struct Bf16;

impl Widen for F32 {
    type T = f32;
    const BYTES: usize = 4;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const f32, i: usize, m: __mmask16) -> __m512 {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm512_maskz_loadu_ps(m, p.add(i)) }
    }
}

impl Widen for F16 {
    type T = u16;
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u16, i: usize, m: __mmask16) -> __m512 {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(i) as *const i16)) }
    }
}

impl Widen for Bf16 {
    type T = u16;
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load(p: *const u16, i: usize, m: __mmask16) -> __m512 {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            let h = _mm256_maskz_loadu_epi16(m, p.add(i) as *const i16);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

/// Shared tile body.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<E: Widen, A: Widen, const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
    arows: [*const A::T; N],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert_tile(w, rb, E::BYTES, R, acts, b0, N, out);
        let n = rb / E::BYTES;
        let mut wrows = [w.as_ptr() as *const E::T; R];
        for (r, p) in wrows.iter_mut().enumerate() {
            *p = w.as_ptr().add(r * rb) as *const E::T;
        }
        let mut acc = [[[_mm512_setzero_ps(); 2]; N]; R];
        let np = n & !31;
        let mut i = 0;
        while i < np {
            for h in 0..2 {
                let mut x = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    x[r] = E::load(wrows[r], i + 16 * h, 0xFFFF);
                }
                for k in 0..N {
                    let y = A::load(arows[k], i + 16 * h, 0xFFFF);
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
                let mut x = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    x[r] = E::load(wrows[r], i + 16 * h, mh);
                }
                for k in 0..N {
                    let y = A::load(arows[k], i + 16 * h, mh);
                    for r in 0..R {
                        acc[r][k][h] = _mm512_fmadd_ps(x[r], y, acc[r][k][h]);
                    }
                }
            }
        }
        let n_b = acts.n_rows();
        for (r, acc) in acc.iter().enumerate() {
            for (k, a) in acc.iter().enumerate() {
                out[r * n_b + b0 + k] = hsum(_mm512_add_ps(a[0], a[1]));
            }
        }
    }
}

/// Activation row pointers `b0..b0 + N` of the f32 values of an F32 buffer
/// (or the widened values of an F16 one), each `n` long.
fn f32_rows<const N: usize>(acts: &QuantizedActivations, b0: usize, n: usize) -> [*const f32; N] {
    std::array::from_fn(|k| {
        let a = acts.f32_row(b0 + k);
        assert!(a.len() == n);
        a.as_ptr()
    })
}

/// Activation row pointers `b0..b0 + N` of an F16/BF16 buffer, each `n` long.
fn u16_rows<const N: usize>(acts: &QuantizedActivations, b0: usize, n: usize) -> [*const u16; N] {
    std::array::from_fn(|k| {
        let a = acts.u16_row(b0 + k);
        assert!(a.len() == n);
        a.as_ptr()
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_f32<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let arows = f32_rows::<N>(acts, b0, rb / 4);
        run::<F32, F32, R, N>(w, rb, acts, b0, out, arows);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_f16<const R: usize, const N: usize>(
    w: &[u8],
    rb: usize,
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        // the F16 buffer also holds the activations widened to f32 (exact):
        // one conversion per weight instead of one per weight and activation row
        let arows = f32_rows::<N>(acts, b0, rb / 2);
        run::<F16, F32, R, N>(w, rb, acts, b0, out, arows);
    }
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let arows = u16_rows::<N>(acts, b0, rb / 2);
        run::<Bf16, Bf16, R, N>(w, rb, acts, b0, out, arows);
    }
}

/// 32 masked bf16 at `p + i`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
unsafe fn load_bh(p: *const u16, i: usize, m: __mmask32) -> __m512bh {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        // SAFETY (of the transmute): __m512bh and __m512i are both 64 plain bytes.
        std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(
            m,
            p.add(i) as *const i16,
        ))
    }
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
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        assert_tile(w, rb, 2, R, acts, b0, N, out);
        let n = rb / 2;
        let arows = u16_rows::<N>(acts, b0, n);
        let mut wrows = [w.as_ptr() as *const u16; R];
        for (r, p) in wrows.iter_mut().enumerate() {
            *p = w.as_ptr().add(r * rb) as *const u16;
        }
        let zero: __m512bh = std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512());
        let mut acc = [[[_mm512_setzero_ps(); 2]; N]; R];
        let mut i = 0;
        while i < n {
            for h in 0..2 {
                let at = i + 32 * h;
                if at >= n {
                    break;
                }
                let m = mask32(n - at);
                let mut x = [zero; R];
                for r in 0..R {
                    x[r] = load_bh(wrows[r], at, m);
                }
                for k in 0..N {
                    let y = load_bh(arows[k], at, m);
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
}
