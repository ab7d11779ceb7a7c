//! Q4_K / Q5_K / Q6_K weights × Q8_K activations (ports of ggml's AVX2
//! `ggml_vec_dot_q{4,5,6}_K_q8_K`).
//!
//! Per super-block: 6-bit sub-block scales multiply `maddubs` pair sums with
//! `madd` into 8 i32 lanes (exact: Q4_K pair sums ≤ 2·15·127, Q5_K ≤ 2·31·127,
//! Q6_K ≤ 2·63·127 minus the `32·q8` offset, all far from i16 saturation);
//! the lanes are converted and FMA-ed with `d = y.d * x.d`.
//! Mins: Q4_K keeps ggml's 4-lane `acc_m` (FMA of `-y.d*x.dmin` with
//! `madd(mins, hadd(bsums))`); Q5_K adds `dmin * Σ` into a scalar `summs`.

use std::arch::x86_64::*;

use super::helpers::*;
use crate::activations::Q8KRow;
use crate::blocks::*;
use crate::QuantizedActivations;

#[inline]
fn rows<const N: usize>(acts: &QuantizedActivations, b0: usize, nb: usize) -> [Q8KRow<'_>; N] {
    let rows: [Q8KRow<'_>; N] = std::array::from_fn(|k| acts.q8_k_row(b0 + k));
    for r in &rows {
        assert!(r.qs.len() == nb * QK_K && r.d.len() == nb && r.bsums.len() == nb * 16);
    }
    rows
}

/// Scales (low 128 bits, 8 × i16) and mins (high 128 bits) of a Q4_K/Q5_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mins_and_scales(blk: *const u8) -> (__m256i, [u8; 8]) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let s = std::slice::from_raw_parts(blk.add(K_SCALES_OFF), 12);
        let utmp = unpack_scales_mins_k4(s);
        let ms = _mm256_cvtepu8_epi16(_mm_set_epi32(
            utmp[3] as i32,
            utmp[2] as i32,
            utmp[1] as i32,
            utmp[0] as i32,
        ));
        (ms, scales_mins_bytes(utmp).0)
    }
}

/// `madd(mins, hadd(bsums))`: 4 lanes, lane k = Σ over sub-blocks 2k, 2k+1 of min·Σq8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mins_prod(mins: __m128i, bsums: *const i16) -> __m128i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let q8sums = load256(bsums);
        let q8s = _mm_hadd_epi16(
            _mm256_castsi256_si128(q8sums),
            _mm256_extracti128_si256::<1>(q8sums),
        );
        _mm_madd_epi16(mins, q8s)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / Q4_K_BYTES;
        assert!(w.len() == nb * Q4_K_BYTES && out.len() == N);
        let rows = rows::<N>(acts, b0, nb);
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut acc_m = [_mm_setzero_ps(); N];
        let wp = w.as_ptr();
        for i in 0..nb {
            let blk = wp.add(i * Q4_K_BYTES);
            let xd = f16_at(blk);
            let xdmin = f16_at(blk.add(2));
            let (ms, scales) = mins_and_scales(blk);
            let mins = _mm256_extracti128_si256::<1>(ms);
            for k in 0..N {
                let yd = *rows[k].d.get_unchecked(i);
                let dmin = -yd * xdmin;
                let prod = mins_prod(mins, rows[k].bsums.as_ptr().add(16 * i));
                acc_m[k] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[k]);
            }
            let mut sumi = [_mm256_setzero_si256(); N];
            let q4 = blk.add(Q4_K_QS_OFF);
            for j in 0..QK_K / 64 {
                let scale_l = _mm256_set1_epi16(i16::from(scales[2 * j]));
                let scale_h = _mm256_set1_epi16(i16::from(scales[2 * j + 1]));
                let q4bits = load256(q4.add(32 * j));
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits), m4);
                for k in 0..N {
                    let q8 = rows[k].qs.as_ptr().add(QK_K * i + 64 * j);
                    let q8l = load256(q8);
                    let q8h = load256(q8.add(32));
                    let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                    let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p16l, p16h));
                }
            }
            for k in 0..N {
                let d = *rows[k].d.get_unchecked(i) * xd;
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
            }
        }
        for k in 0..N {
            let mut am = acc_m[k];
            am = _mm_add_ps(am, _mm_movehl_ps(am, am));
            am = _mm_add_ss(am, _mm_movehdup_ps(am));
            out[k] = hsum_float_8(acc[k]) + _mm_cvtss_f32(am);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / Q5_K_BYTES;
        assert!(w.len() == nb * Q5_K_BYTES && out.len() == N);
        let rows = rows::<N>(acts, b0, nb);
        let m4 = _mm256_set1_epi8(0xF);
        let m16 = _mm256_set1_epi8(16);
        let mzero = _mm_setzero_si128();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut summs = [0.0f32; N];
        let wp = w.as_ptr();
        for i in 0..nb {
            let blk = wp.add(i * Q5_K_BYTES);
            let xd = f16_at(blk);
            let xdmin = f16_at(blk.add(2));
            let (ms, scales) = mins_and_scales(blk);
            let mins = _mm256_extracti128_si256::<1>(ms);
            for k in 0..N {
                let yd = *rows[k].d.get_unchecked(i);
                let dmin = -yd * xdmin;
                let prod = mins_prod(mins, rows[k].bsums.as_ptr().add(16 * i));
                let hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);
                summs[k] += dmin * _mm_extract_epi32::<0>(hsum) as f32;
            }
            let hbits = load256(blk.add(Q5_K_QH_OFF));
            let q5 = blk.add(Q5_K_QS_OFF);
            let mut hmask = _mm256_set1_epi8(1);
            let mut sumi = [_mm256_setzero_si256(); N];
            for j in 0..QK_K / 64 {
                let scale_0 = _mm256_set1_epi16(i16::from(scales[2 * j]));
                let scale_1 = _mm256_set1_epi16(i16::from(scales[2 * j + 1]));
                let q5bits = load256(q5.add(32 * j));
                // high bit -> 16 (ggml shifts the masked bit down and up again; same bytes)
                let q5h_0 = _mm256_and_si256(
                    _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask),
                    m16,
                );
                let q5_0 = _mm256_add_epi8(_mm256_and_si256(q5bits, m4), q5h_0);
                hmask = _mm256_slli_epi16::<1>(hmask);
                let q5h_1 = _mm256_and_si256(
                    _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask),
                    m16,
                );
                let q5_1 =
                    _mm256_add_epi8(_mm256_and_si256(_mm256_srli_epi16::<4>(q5bits), m4), q5h_1);
                hmask = _mm256_slli_epi16::<1>(hmask);
                for k in 0..N {
                    let q8 = rows[k].qs.as_ptr().add(QK_K * i + 64 * j);
                    let p16_0 = _mm256_madd_epi16(scale_0, _mm256_maddubs_epi16(q5_0, load256(q8)));
                    let p16_1 =
                        _mm256_madd_epi16(scale_1, _mm256_maddubs_epi16(q5_1, load256(q8.add(32))));
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p16_0, p16_1));
                }
            }
            for k in 0..N {
                let d = *rows[k].d.get_unchecked(i) * xd;
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
            }
        }
        for k in 0..N {
            out[k] = hsum_float_8(acc[k]) + summs[k];
        }
    }
}

/// ggml `get_scale_shuffle(i)`: bytes [2i ×8, 2i+1 ×8].
const Q6_SCALE_SHUFFLE: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut i = 0;
    while i < 8 {
        let mut j = 0;
        while j < 16 {
            t[i][j] = (2 * i + j / 8) as u8;
            j += 1;
        }
        i += 1;
    }
    t
};

/// 16 × i16: scale of sub-block 2i in lanes 0..8, of 2i+1 in lanes 8..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_scale(scales: __m128i, i: usize) -> __m256i {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
            scales,
            load128(Q6_SCALE_SHUFFLE[i].as_ptr()),
        ))
    }
}

/// `madd(scale, maddubs(q, q8) - maddubs(32, q8))`: the -32 offset of the
/// 6-bit quants applied in i16 (exact, see module docs).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_part(q: __m256i, q8: __m256i, scale: __m256i, m32s: __m256i) -> __m256i {
    let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q, q8), _mm256_maddubs_epi16(m32s, q8));
    _mm256_madd_epi16(scale, p16)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k<const N: usize>(
    w: &[u8],
    acts: &QuantizedActivations,
    b0: usize,
    out: &mut [f32],
) {
    // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
    unsafe {
        let nb = w.len() / Q6_K_BYTES;
        assert!(w.len() == nb * Q6_K_BYTES && out.len() == N);
        let rows = rows::<N>(acts, b0, nb);
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let m32s = _mm256_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); N];
        let wp = w.as_ptr();
        for i in 0..nb {
            let blk = wp.add(i * Q6_K_BYTES);
            let xd = f16_at(blk.add(Q6_K_D_OFF));
            let scales = load128(blk.add(Q6_K_SCALES_OFF));
            let mut sumi = [_mm256_setzero_si256(); N];
            for j in 0..QK_K / 128 {
                let is = 4 * j;
                let scale_0 = q6_scale(scales, is);
                let scale_1 = q6_scale(scales, is + 1);
                let scale_2 = q6_scale(scales, is + 2);
                let scale_3 = q6_scale(scales, is + 3);
                let q4bits1 = load256(blk.add(64 * j));
                let q4bits2 = load256(blk.add(64 * j + 32));
                let q4bits_h = load256(blk.add(Q6_K_QH_OFF + 32 * j));
                let q4h_0 = _mm256_slli_epi16::<4>(_mm256_and_si256(q4bits_h, m2));
                let q4h_1 =
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(q4bits_h), m2));
                let q4h_2 =
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(q4bits_h), m2));
                let q4h_3 =
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(q4bits_h), m2));
                let q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0);
                let q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1);
                let q4_2 =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4bits1), m4), q4h_2);
                let q4_3 =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4bits2), m4), q4h_3);
                for k in 0..N {
                    let q8 = rows[k].qs.as_ptr().add(QK_K * i + 128 * j);
                    let p0 = q6_part(q4_0, load256(q8), scale_0, m32s);
                    let p1 = q6_part(q4_1, load256(q8.add(32)), scale_1, m32s);
                    let p2 = q6_part(q4_2, load256(q8.add(64)), scale_2, m32s);
                    let p3 = q6_part(q4_3, load256(q8.add(96)), scale_3, m32s);
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p0, p1));
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p2, p3));
                }
            }
            for k in 0..N {
                let d = *rows[k].d.get_unchecked(i) * xd;
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
            }
        }
        for k in 0..N {
            out[k] = hsum_float_8(acc[k]);
        }
    }
}
