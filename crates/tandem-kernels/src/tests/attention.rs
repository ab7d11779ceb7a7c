//! Blockwise attention: the SIMD primitives against the scalar reference,
//! and the whole online-softmax algorithm against a naive two-pass
//! attention computed in f64, across block splits, causal limits, head
//! sizes with tails, and every stored format. Q8_0 takes only head sizes
//! that are whole blocks (multiples of 32; others must be errors), and the
//! naive reference sees its dequantized values, so the comparison tests the
//! attention arithmetic, not the quantization (which has tests of its own).

use rand::Rng;

use super::rng;
use crate::attention::{
    add_sink, attend_block, attend_block_limited, axpy, dot, encode_row, finish, merge, KvBlock,
    KvFormat, ScoreLimits, SoftmaxState,
};
use crate::convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::{dequantize_row, Isa, KernelError, WeightFormat};

const FORMATS: [KvFormat; 4] = KvFormat::ALL;

fn isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
}

/// Stores `x` in `format`; returns the bytes and the values as stored.
/// Q8_0 goes through `encode_row` (whole blocks of `x`) and comes back
/// through the Q8_0 weight dequantizer, which reads ggml's `block_q8_0`.
fn store(format: KvFormat, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    if format == KvFormat::Q8_0 {
        let mut bytes = vec![0u8; format.row_bytes(x.len()).expect("whole blocks")];
        encode_row(format, x, &mut bytes).expect("encode");
        let mut vals = vec![0f32; x.len()];
        dequantize_row(WeightFormat::Q8_0, &bytes, &mut vals).expect("dequantize");
        return (bytes, vals);
    }
    let mut bytes = Vec::new();
    let mut vals = Vec::new();
    for &v in x {
        match format {
            KvFormat::F32 => {
                bytes.extend_from_slice(&v.to_le_bytes());
                vals.push(v);
            }
            KvFormat::F16 => {
                let h = f32_to_f16(v);
                bytes.extend_from_slice(&h.to_le_bytes());
                vals.push(f16_to_f32(h));
            }
            KvFormat::BF16 => {
                let h = f32_to_bf16(v);
                bytes.extend_from_slice(&h.to_le_bytes());
                vals.push(bf16_to_f32(h));
            }
            KvFormat::Q8_0 => unreachable!("stored by blocks above"),
        }
    }
    (bytes, vals)
}

fn random(n: usize, amp: f32, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(-amp..amp)).collect()
}

#[test]
fn simd_primitives_match_the_scalar_reference() {
    for isa in isas() {
        for format in FORMATS {
            for (t, n) in [
                1usize, 7, 8, 15, 16, 17, 31, 32, 33, 64, 96, 100, 128, 129, 256,
            ]
            .into_iter()
            .enumerate()
            {
                if format.row_bytes(n).is_none() {
                    continue; // Q8_0: whole blocks only
                }
                let q = random(n, 2.0, 100 + t as u64);
                let (k, kv) = store(format, &random(n, 3.0, 200 + t as u64));
                let ours = dot(isa, format, &q, &k).expect("dot");
                let want = dot(Isa::Scalar, format, &q, &k).expect("ref dot");
                // Two summation orders of n products: each partial sum is
                // bounded by Σ|q·k|, and each side rounds at most n times
                // (Q8_0's SIMD scaling per block adds one rounding).
                let mag: f32 = q.iter().zip(&kv).map(|(a, b)| (a * b).abs()).sum();
                let bound = 2.0 * n as f32 * f32::EPSILON * mag;
                assert!(
                    (ours - want).abs() <= bound,
                    "{isa} {format} n={n}: dot {ours} vs {want} (bound {bound})"
                );

                let base = random(n, 1.0, 300 + t as u64);
                let (mut a, mut b) = (base.clone(), base.clone());
                axpy(isa, format, &mut a, 0.37, &k).expect("axpy");
                axpy(Isa::Scalar, format, &mut b, 0.37, &k).expect("ref axpy");
                for i in 0..n {
                    // fused vs unfused multiply-add: one rounding apart
                    // (Q8_0's SIMD rounds p·d once, the reference p·(d·q)).
                    let tol = 2.0 * f32::EPSILON * (base[i].abs() + (0.37 * kv[i]).abs());
                    assert!(
                        (a[i] - b[i]).abs() <= tol,
                        "{isa} {format} n={n} i={i}: axpy {} vs {}",
                        a[i],
                        b[i]
                    );
                }
            }
        }
    }
}

/// softmax(q·Kᵀ·scale)·V over the first `n` rows, in f64.
fn naive(q: &[f32], k: &[f32], v: &[f32], hd: usize, n: usize, scale: f32) -> Vec<f64> {
    let s: Vec<f64> = (0..n)
        .map(|j| {
            let d: f64 = (0..hd)
                .map(|i| f64::from(q[i]) * f64::from(k[j * hd + i]))
                .sum();
            d * f64::from(scale)
        })
        .collect();
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    (0..hd)
        .map(|i| (0..n).map(|j| e[j] * f64::from(v[j * hd + i])).sum::<f64>() / z)
        .collect()
}

/// Runs `attend_block` over the keys split into blocks of `block` rows
/// (rows `row_pad` values apart, as in a page that holds other heads), for
/// `nq` query rows where query `i` sees `limits[i]` keys.
#[allow(clippy::too_many_arguments)]
fn blockwise(
    isa: Isa,
    format: KvFormat,
    q: &[f32],
    k: &[u8],
    v: &[u8],
    hd: usize,
    stride: usize,
    limits: &[usize],
    block: usize,
    scale: f32,
) -> Vec<f32> {
    let nq = limits.len();
    let n = *limits.iter().max().unwrap_or(&0);
    let mut states = vec![SoftmaxState::EMPTY; nq];
    let mut acc = vec![0f32; nq * hd];
    let mut scores = vec![0f32; nq * block];
    let mut p0 = 0;
    while p0 < n {
        let bn = block.min(n - p0);
        let vis: Vec<usize> = limits
            .iter()
            .map(|&l| l.saturating_sub(p0).min(bn))
            .collect();
        let blk = KvBlock {
            ahead: KvBlock::NOTHING_AHEAD,
            format,
            k: &k[p0 * stride..],
            v: &v[p0 * stride..],
            v_dim: hd,
            stride,
            n: bn,
        };
        attend_block(
            isa,
            q,
            hd,
            scale,
            &blk,
            &vis,
            &mut states,
            &mut acc,
            &mut scores,
        )
        .expect("attend_block");
        p0 += bn;
    }
    let mut out = vec![0f32; nq * hd];
    for i in 0..nq {
        finish(
            &states[i],
            &acc[i * hd..(i + 1) * hd],
            &mut out[i * hd..(i + 1) * hd],
        )
        .expect("finish");
    }
    out
}

fn rel_max(ours: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    ours.iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - b).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn blockwise_attention_matches_naive_attention() {
    let mut r = rng(7);
    for isa in isas() {
        for format in FORMATS {
            for &(hd, n_keys, block, amp) in &[
                (64usize, 1usize, 16usize, 1.0f32),
                (32, 40, 16, 1.0),
                (128, 100, 16, 1.0),
                (128, 100, 32, 4.0),
                (96, 70, 32, 2.0),
                (80, 257, 64, 2.0),
                (17, 33, 16, 1.0),
                (128, 513, 128, 8.0), // sharp softmax: max moves often
            ] {
                if format.row_bytes(hd).is_none() {
                    continue; // Q8_0 with a head size of partial blocks
                }
                // A stride with other heads' values between rows (whole
                // Q8_0 blocks: each row is quantized on its own).
                let pad = 3 * hd;
                let stride = format.row_bytes(hd + pad).expect("row bytes");
                let kf = random(n_keys * (hd + pad), amp, r.random());
                let vf = random(n_keys * (hd + pad), 1.0, r.random());
                let (k, kst) = store(format, &kf);
                let (v, vst) = store(format, &vf);
                // Stored values of this head only, for the naive reference.
                let head = |all: &[f32]| -> Vec<f32> {
                    (0..n_keys)
                        .flat_map(|j| all[j * (hd + pad)..j * (hd + pad) + hd].to_vec())
                        .collect()
                };
                let (kh, vh) = (head(&kst), head(&vst));
                // Causal-like limits: the last rows of a prefill chunk (more
                // than one register group of queries), plus
                // a query that sees everything and one on a block boundary.
                let mut limits: Vec<usize> = (0..11).map(|i| n_keys.saturating_sub(i)).collect();
                limits.push(block.min(n_keys));
                limits.retain(|&l| l > 0);
                let q = random(limits.len() * hd, 1.0, r.random());
                let scale = 1.0 / (hd as f32).sqrt();
                let out = blockwise(isa, format, &q, &k, &v, hd, stride, &limits, block, scale);
                for (i, &lim) in limits.iter().enumerate() {
                    let want = naive(&q[i * hd..(i + 1) * hd], &kh, &vh, hd, lim, scale);
                    let d = rel_max(&out[i * hd..(i + 1) * hd], &want);
                    assert!(
                        d < 1e-5,
                        "{isa} {format} hd={hd} keys={lim} block={block}: rel diff {d:.2e}"
                    );
                }
            }
        }
    }
}

/// The fused decode path (a family's whole block step in registers) gives
/// the bits of the step-by-step path, whatever the query count, causal
/// limits, running state (a later block with a larger max rescales) and
/// format: so decode and prefill agree bit for bit whichever path each
/// takes.
#[test]
fn fused_block_step_equals_the_unfused_steps_bit_for_bit() {
    use crate::attention::attend_block_unfused;
    let mut r = rng(21);
    for isa in isas() {
        for format in [KvFormat::F32, KvFormat::F16, KvFormat::BF16, KvFormat::Q8_0] {
            for &(hd, n, nq) in &[
                (128usize, 16usize, 3usize),
                (128, 16, 8),
                (64, 13, 6),
                (128, 5, 1),
                (64, 16, 9),
                (96, 16, 3),
            ] {
                let stride = format.row_bytes(hd + 64).expect("row bytes");
                let rows = 2 * n; // two blocks: the second rescales
                let (k, _) = store(format, &random(rows * (hd + 64), 3.0, r.random()));
                let (v, _) = store(format, &random(rows * (hd + 64), 1.0, r.random()));
                let q = random(nq * hd, 1.0, r.random());
                let mut vis: Vec<usize> = (0..nq).map(|i| n.saturating_sub(i % 4)).collect();
                vis[0] = 0; // a query that sees nothing of the first block
                let mut out = Vec::new();
                for fused in [true, false] {
                    let mut states = vec![SoftmaxState::EMPTY; nq];
                    let mut acc = vec![0f32; nq * hd];
                    let mut scores = vec![0f32; nq * n];
                    for b in 0..2 {
                        let blk = KvBlock {
                            ahead: KvBlock::NOTHING_AHEAD,
                            format,
                            k: &k[b * n * stride..],
                            v: &v[b * n * stride..],
                            v_dim: hd,
                            stride,
                            n,
                        };
                        let step = if fused {
                            attend_block
                        } else {
                            attend_block_unfused
                        };
                        let vis_b: Vec<usize> = if b == 0 { vis.clone() } else { vec![n; nq] };
                        step(
                            isa,
                            &q,
                            hd,
                            0.3,
                            &blk,
                            &vis_b,
                            &mut states,
                            &mut acc,
                            &mut scores,
                        )
                        .expect("attend");
                    }
                    out.push((states, acc));
                }
                let bits = |(s, a): &(Vec<SoftmaxState>, Vec<f32>)| -> Vec<u32> {
                    s.iter()
                        .flat_map(|x| [x.max.to_bits(), x.sum.to_bits()])
                        .chain(a.iter().map(|x| x.to_bits()))
                        .collect()
                };
                assert_eq!(
                    bits(&out[0]),
                    bits(&out[1]),
                    "{isa} {format} hd={hd} n={n} nq={nq}"
                );
            }
        }
    }
}

#[test]
fn merged_parts_equal_one_pass() {
    let (hd, n) = (64usize, 200usize);
    let (k, _) = store(KvFormat::F32, &random(n * hd, 3.0, 11));
    let (v, _) = store(KvFormat::F32, &random(n * hd, 1.0, 12));
    let q = random(hd, 1.0, 13);
    let scale = 0.125;
    let stride = hd * 4;
    let whole = blockwise(
        Isa::Scalar,
        KvFormat::F32,
        &q,
        &k,
        &v,
        hd,
        stride,
        &[n],
        64,
        scale,
    );
    for split in [1usize, 50, 64, 199] {
        let mut parts = Vec::new();
        for (a, b) in [(0, split), (split, n)] {
            let blk = KvBlock {
                ahead: KvBlock::NOTHING_AHEAD,
                format: KvFormat::F32,
                k: &k[a * stride..],
                v: &v[a * stride..],
                v_dim: hd,
                stride,
                n: b - a,
            };
            let mut st = [SoftmaxState::EMPTY];
            let mut acc = vec![0f32; hd];
            let mut scores = vec![0f32; n];
            attend_block(
                Isa::Scalar,
                &q,
                hd,
                scale,
                &blk,
                &[b - a],
                &mut st,
                &mut acc,
                &mut scores,
            )
            .expect("part");
            parts.push((st[0], acc));
        }
        // Merge in the "wrong" order too: the result must not care.
        let (mut st, mut acc) = parts[1].clone();
        merge(&mut st, &mut acc, &parts[0].0, &parts[0].1).expect("merge");
        let mut out = vec![0f32; hd];
        finish(&st, &acc, &mut out).expect("finish");
        let want: Vec<f64> = whole.iter().map(|&x| f64::from(x)).collect();
        let d = rel_max(&out, &want);
        assert!(d < 1e-6, "split {split}: merged differs by {d:.2e}");
    }
    // Merging an empty part changes nothing.
    let mut st = SoftmaxState { max: 1.0, sum: 2.0 };
    let mut acc = vec![1f32; hd];
    merge(&mut st, &mut acc, &SoftmaxState::EMPTY, &vec![0f32; hd]).expect("merge");
    assert_eq!((st.max, st.sum, acc[0]), (1.0, 2.0, 1.0));
}

#[test]
fn bad_sizes_are_errors() {
    let hd = 16;
    let k = vec![0u8; 4 * hd * 3];
    let blk = |n, stride| KvBlock {
        ahead: KvBlock::NOTHING_AHEAD,
        format: KvFormat::F32,
        k: &k,
        v: &k,
        v_dim: hd,
        stride,
        n,
    };
    let q = vec![0f32; hd];
    let mut st = [SoftmaxState::EMPTY];
    let mut acc = vec![0f32; hd];
    let mut sc = vec![0f32; 8];
    let mut run = |b: KvBlock<'_>, vis: &[usize], q: &[f32], sc: &mut [f32]| {
        attend_block(Isa::Scalar, q, hd, 1.0, &b, vis, &mut st, &mut acc, sc)
    };
    // More rows than the bytes hold.
    assert!(matches!(
        run(blk(4, 4 * hd), &[1], &q, &mut sc),
        Err(KernelError::SizeMismatch {
            what: "key bytes",
            ..
        })
    ));
    // A stride shorter than a row.
    assert!(matches!(
        run(blk(2, 4 * hd - 4), &[1], &q, &mut sc),
        Err(KernelError::SizeMismatch {
            what: "KV row stride",
            ..
        })
    ));
    // A query that sees more keys than the block has.
    assert!(matches!(
        run(blk(3, 4 * hd), &[4], &q, &mut sc),
        Err(KernelError::RowRange { .. })
    ));
    // Query rows that do not match the states.
    assert!(matches!(
        run(blk(3, 4 * hd), &[1], &q[..hd - 1], &mut sc),
        Err(KernelError::SizeMismatch { .. })
    ));
    // Scratch shorter than the block.
    assert!(matches!(
        run(blk(3, 4 * hd), &[1], &q, &mut sc[..2]),
        Err(KernelError::SizeMismatch {
            what: "score scratch",
            ..
        })
    ));
    assert!(dot(Isa::Scalar, KvFormat::F16, &q, &k[..3]).is_err());
}

#[test]
fn kv_format_names_and_row_sizes() {
    for f in KvFormat::ALL {
        assert_eq!(f.name().parse::<KvFormat>(), Ok(f));
        assert_eq!(f.name().to_uppercase().parse::<KvFormat>(), Ok(f));
    }
    let err = "q4_0".parse::<KvFormat>().expect_err("unknown");
    assert!(err.contains("q8_0"), "{err}");
    assert_eq!(KvFormat::F32.row_bytes(17), Some(68));
    assert_eq!(KvFormat::BF16.row_bytes(17), Some(34));
    assert_eq!(KvFormat::Q8_0.row_bytes(64), Some(68));
    assert_eq!(KvFormat::Q8_0.row_bytes(128), Some(136));
    assert_eq!(KvFormat::Q8_0.row_bytes(16), None);
    assert_eq!(KvFormat::Q8_0.row_bytes(48), None);
    assert_eq!(KvFormat::F32.row_bytes(usize::MAX / 2), None);
}

#[test]
fn q8_0_head_sizes_of_partial_blocks_are_errors() {
    let f = KvFormat::Q8_0;
    let bytes = vec![0u8; 4 * 34];
    for hd in [17usize, 48] {
        let x = vec![0.5f32; hd];
        let not_aligned = |r: Result<(), KernelError>| {
            matches!(
                r,
                Err(KernelError::NotBlockAligned {
                    format: "q8_0",
                    block_len: 32,
                    ..
                })
            )
        };
        // Whatever the destination's size: the head size itself is refused.
        for len in [hd, hd / 32 * 34, hd.div_ceil(32) * 34] {
            let r = encode_row(f, &x, &mut vec![0u8; len]);
            assert!(not_aligned(r.clone()), "hd={hd} len={len}: {r:?}");
        }
        for isa in isas() {
            let r = dot(isa, f, &x, &bytes[..hd.div_ceil(32) * 34]).map(|_| ());
            assert!(not_aligned(r.clone()), "{isa} hd={hd}: dot {r:?}");
            let mut acc = vec![0f32; hd];
            let r = axpy(isa, f, &mut acc, 1.0, &bytes[..hd.div_ceil(32) * 34]);
            assert!(not_aligned(r.clone()), "{isa} hd={hd}: axpy {r:?}");
            let blk = KvBlock {
                ahead: KvBlock::NOTHING_AHEAD,
                format: f,
                k: &bytes,
                v: &bytes,
                v_dim: hd,
                stride: 2 * 34,
                n: 2,
            };
            let mut st = [SoftmaxState::EMPTY];
            let r = attend_block(
                isa,
                &x,
                hd,
                1.0,
                &blk,
                &[2],
                &mut st,
                &mut acc,
                &mut [0.0; 2],
            );
            assert!(not_aligned(r.clone()), "{isa} hd={hd}: attend_block {r:?}");
        }
    }
}

/// The bytes `encode_row` gives one Q8_0 block.
fn q8_0_block(x: &[f32; 32]) -> Vec<u8> {
    let mut b = vec![0u8; 34];
    encode_row(KvFormat::Q8_0, x, &mut b).expect("encode");
    b
}

#[test]
fn q8_0_encodes_as_ggml_quantize_row_q8_0_ref() {
    // amax = 127: d = 1 exactly (f16 0x3C00), quants are x rounded half
    // away from zero (C's roundf; ties to even would give 2 for 2.5).
    let mut x = [0f32; 32];
    x[..8].copy_from_slice(&[127.0, -127.0, 0.5, -0.5, 1.49, 2.5, -2.5, 126.6]);
    let mut want = vec![0x00, 0x3C, 127, (-127i8) as u8, 1, (-1i8) as u8, 1, 3];
    want.extend([(-3i8) as u8, 127]);
    want.resize(34, 0);
    assert_eq!(q8_0_block(&x), want);

    // amax = 63.5: d = 0.5 (f16 0x3800); 0.25 is half a step: 1 (away
    // from zero); -0.75 is a step and a half: -2.
    let mut x = [0f32; 32];
    x[..4].copy_from_slice(&[-63.5, 0.25, -0.75, 10.0]);
    x[31] = 63.5;
    let mut want = vec![0x00, 0x38, (-127i8) as u8, 1, (-2i8) as u8, 20];
    want.resize(33, 0);
    want.push(127);
    assert_eq!(q8_0_block(&x), want);

    // All zeros: d = 0, quants 0 (no division by zero).
    assert_eq!(q8_0_block(&[0.0; 32]), vec![0u8; 34]);
}

#[test]
fn q8_0_round_trips_within_half_a_step() {
    let mut x = random(16 * 32, 5.0, 21);
    // Blocks of other magnitudes: tiny (subnormal f16 scale), zero, large.
    x[32..64].iter_mut().for_each(|v| *v *= 1e-6);
    x[64..96].fill(0.0);
    x[96..128].iter_mut().for_each(|v| *v *= 1e3);
    let (bytes, vals) = store(KvFormat::Q8_0, &x);
    assert_eq!(bytes.len(), 16 * 34);
    for (b, blk) in bytes.chunks_exact(34).enumerate() {
        let xb = &x[b * 32..(b + 1) * 32];
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let exact_d = amax / 127.0;
        let bits = u16::from_le_bytes([blk[0], blk[1]]);
        assert_eq!(bits, f32_to_f16(exact_d), "block {b}: scale");
        let d = f16_to_f32(bits);
        let qs: Vec<i8> = blk[2..].iter().map(|&q| q as i8).collect();
        if amax > 0.0 {
            assert!(qs.iter().any(|&q| q.unsigned_abs() == 127), "block {b}");
        }
        for (j, (&v, &q)) in xb.iter().zip(&qs).enumerate() {
            let back = vals[b * 32 + j];
            assert_eq!(back, d * f32::from(q), "block {b} value {j}");
            // Half a step of the scale quantized with (x / d rounded; a
            // relative 1e-4 for the rounding of x · (1/d)), plus the
            // scale's rounding to f16, times the quant.
            let bound = exact_d * 0.5 * (1.0 + 1e-4) + f32::from(q).abs() * (d - exact_d).abs();
            assert!(
                (v - back).abs() <= bound,
                "block {b} value {j}: {v} -> {back} (bound {bound})"
            );
        }
    }
}

#[test]
fn softmax_exponential_is_within_a_few_ulp_of_f64() {
    // Scores minus the running max: from 0 down past f32's underflow.
    let xs: Vec<f32> = (0..20_000)
        .map(|i| -(i as f32) * 0.0051)
        .chain([-1e-7, -200.0, f32::NEG_INFINITY])
        .collect();
    for isa in isas() {
        let mut y = xs.clone();
        let sum = crate::attention::exp_sum(isa, &mut y, 0.0).expect("exp_sum");
        let mut want_sum = 0f64;
        for (&x, &got) in xs.iter().zip(&y) {
            let want = (x as f64).exp();
            want_sum += want;
            if want < 1e-37 {
                assert!(got.abs() < 1e-37, "{isa:?} exp({x}) = {got}");
                continue;
            }
            let rel = ((got as f64 - want) / want).abs();
            assert!(
                rel < 3.0 * f32::EPSILON as f64,
                "{isa:?} exp({x}) = {got}, want {want}: {rel:e}"
            );
        }
        assert!(
            ((sum as f64 - want_sum) / want_sum).abs() < 1e-5,
            "{isa:?} sum"
        );
        // The shift by m is applied: exp(x − m).
        let mut z = [3.0f32, 1.0];
        crate::attention::exp_sum(isa, &mut z, 3.0).expect("exp_sum");
        assert!(
            (z[0] - 1.0).abs() < 1e-7 && (z[1] - (-2f32).exp()).abs() < 1e-7,
            "{isa:?} {z:?}"
        );
    }
}

/// Sliding windows (query `i` sees keys `starts[i]..ends[i]`), soft-caps
/// and sinks against a naive f64 attention over the same keys, for every
/// ISA and format, blocks of 16 (so windows start inside and at the edges
/// of blocks, and some blocks are wholly outside a query's window).
#[test]
fn windows_soft_caps_and_sinks_match_naive_attention() {
    let mut r = rng(33);
    let (hd, n_keys, block) = (64usize, 100usize, 16usize);
    for isa in isas() {
        for format in FORMATS {
            let stride = format.row_bytes(hd).expect("row bytes");
            let kf = random(n_keys * hd, 3.0, r.random());
            let vf = random(n_keys * hd, 1.0, r.random());
            let (k, kst) = store(format, &kf);
            let (v, vst) = store(format, &vf);
            let ends: Vec<usize> = vec![100, 99, 64, 17, 5, 100];
            let starts: Vec<usize> = vec![0, 40, 48, 16, 4, 99];
            let q = random(ends.len() * hd, 1.0, r.random());
            let scale = 1.0 / (hd as f32).sqrt();
            for (softcap, sink) in [(None, None), (Some(2.0f32), None), (None, Some(1.5f32))] {
                let nq = ends.len();
                let mut states = vec![SoftmaxState::EMPTY; nq];
                let mut acc = vec![0f32; nq * hd];
                let mut scores = vec![0f32; nq * block];
                for p0 in (0..n_keys).step_by(block) {
                    let bn = block.min(n_keys - p0);
                    let vis: Vec<usize> =
                        ends.iter().map(|&e| e.saturating_sub(p0).min(bn)).collect();
                    let st: Vec<usize> = starts
                        .iter()
                        .map(|&s| s.saturating_sub(p0).min(bn))
                        .collect();
                    let blk = KvBlock {
                        ahead: KvBlock::NOTHING_AHEAD,
                        format,
                        k: &k[p0 * stride..],
                        v: &v[p0 * stride..],
                        v_dim: hd,
                        stride,
                        n: bn,
                    };
                    let limits = ScoreLimits {
                        starts: Some(&st),
                        softcap,
                    };
                    attend_block_limited(
                        isa,
                        &q,
                        hd,
                        scale,
                        &blk,
                        &vis,
                        limits,
                        &mut states,
                        &mut acc,
                        &mut scores,
                    )
                    .expect("attend");
                }
                for i in 0..nq {
                    let a = &mut acc[i * hd..(i + 1) * hd];
                    if let Some(s) = sink {
                        add_sink(&mut states[i], a, s);
                    }
                    let mut out = vec![0f32; hd];
                    finish(&states[i], a, &mut out).expect("finish");
                    // Naive: scores of the window, capped, plus the sink.
                    let qi = &q[i * hd..(i + 1) * hd];
                    let mut sc: Vec<f64> = (starts[i]..ends[i])
                        .map(|j| {
                            let d: f64 = (0..hd)
                                .map(|c| f64::from(qi[c]) * f64::from(kst[j * hd + c]))
                                .sum::<f64>()
                                * f64::from(scale);
                            match softcap {
                                Some(cap) => f64::from(cap) * (d / f64::from(cap)).tanh(),
                                None => d,
                            }
                        })
                        .collect();
                    let extra = sink.map(f64::from);
                    let m = sc
                        .iter()
                        .copied()
                        .chain(extra)
                        .fold(f64::NEG_INFINITY, f64::max);
                    sc.iter_mut().for_each(|x| *x = (*x - m).exp());
                    let z: f64 = sc.iter().sum::<f64>() + extra.map_or(0.0, |e| (e - m).exp());
                    let want: Vec<f64> = (0..hd)
                        .map(|c| {
                            sc.iter()
                                .zip(starts[i]..ends[i])
                                .map(|(e, j)| e * f64::from(vst[j * hd + c]))
                                .sum::<f64>()
                                / z
                        })
                        .collect();
                    let d = rel_max(&out, &want);
                    assert!(
                        d < 1e-5,
                        "{isa} {format} query {i} ({}..{}) cap {softcap:?} sink {sink:?}: rel diff {d:.2e}",
                        starts[i],
                        ends[i]
                    );
                }
            }
        }
    }
}

/// Values narrower than keys, read from the key rows themselves (MLA's
/// latent cache: key `[latent | rope part]`, value the latent): every
/// family against the naive f64 attention whose value rows are the keys'
/// prefixes, over several blocks, and the fused decode path refused
/// (it handles equal widths only) without changing the result.
#[test]
fn values_that_are_a_prefix_of_the_key_rows() {
    let mut r = rng(11);
    for isa in isas() {
        for format in FORMATS {
            // (key width, value width): DeepSeek's 576/512 scaled down,
            // and a 128-wide key with a 64-wide value (fused shapes).
            for &(hd, vd, n_keys, block) in &[
                (96usize, 64usize, 70usize, 16usize),
                (128, 64, 40, 16),
                (576, 512, 33, 16),
            ] {
                if format.row_bytes(hd).is_none() || format.row_bytes(vd).is_none() {
                    continue;
                }
                let stride = format.row_bytes(hd).expect("row bytes");
                let kf = random(n_keys * hd, 2.0, r.random());
                let (k, kst) = store(format, &kf);
                let prefix: Vec<f32> = (0..n_keys)
                    .flat_map(|j| kst[j * hd..j * hd + vd].to_vec())
                    .collect();
                let nq = 5;
                let q = random(nq * hd, 1.0, r.random());
                let scale = 1.0 / (hd as f32).sqrt();
                let mut states = vec![SoftmaxState::EMPTY; nq];
                let mut acc = vec![0f32; nq * vd];
                let mut scores = vec![0f32; nq * block];
                let mut p0 = 0;
                while p0 < n_keys {
                    let bn = block.min(n_keys - p0);
                    let blk = KvBlock {
                        ahead: KvBlock::NOTHING_AHEAD,
                        format,
                        k: &k[p0 * stride..],
                        v: &k[p0 * stride..],
                        v_dim: vd,
                        stride,
                        n: bn,
                    };
                    attend_block(
                        isa,
                        &q,
                        hd,
                        scale,
                        &blk,
                        &vec![bn; nq],
                        &mut states,
                        &mut acc,
                        &mut scores,
                    )
                    .expect("attend_block");
                    p0 += bn;
                }
                for i in 0..nq {
                    let mut out = vec![0f32; vd];
                    finish(&states[i], &acc[i * vd..(i + 1) * vd], &mut out).expect("finish");
                    // The naive reference with value rows of width `vd`:
                    // scores over the full keys, weights over the prefixes.
                    let s: Vec<f64> = (0..n_keys)
                        .map(|j| {
                            (0..hd)
                                .map(|d| f64::from(q[i * hd + d]) * f64::from(kst[j * hd + d]))
                                .sum::<f64>()
                                * f64::from(scale)
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let want: Vec<f64> = (0..vd)
                        .map(|d| {
                            (0..n_keys)
                                .map(|j| e[j] * f64::from(prefix[j * vd + d]))
                                .sum::<f64>()
                                / z
                        })
                        .collect();
                    let err = rel_max(&out, &want);
                    assert!(err < 1e-5, "{isa} {format} {hd}/{vd}: rel err {err:.2e}");
                }
            }
        }
    }
}

/// A value width the stride cannot hold, or zero, is an error.
#[test]
fn value_width_is_checked() {
    let k = vec![0u8; 4 * 64 * 4];
    let q = vec![0f32; 64];
    let (mut st, mut sc) = (vec![SoftmaxState::EMPTY], vec![0f32; 4]);
    for (vd, ok) in [(0usize, false), (32, true), (64, true), (80, false)] {
        let blk = KvBlock {
            ahead: KvBlock::NOTHING_AHEAD,
            format: KvFormat::F32,
            k: &k,
            v: &k,
            v_dim: vd,
            stride: 64 * 4,
            n: 4,
        };
        let mut acc = vec![0f32; vd];
        let r = attend_block(
            Isa::Scalar,
            &q,
            64,
            1.0,
            &blk,
            &[4],
            &mut st,
            &mut acc,
            &mut sc,
        );
        assert_eq!(r.is_ok(), ok, "v_dim {vd}: {r:?}");
    }
}
