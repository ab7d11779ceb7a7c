//! Blockwise attention: the SIMD primitives against the scalar reference,
//! and the whole online-softmax algorithm against a naive two-pass
//! attention computed in f64, across block splits, causal limits, head
//! sizes with tails, and every stored format.

use rand::Rng;

use super::rng;
use crate::attention::{attend_block, axpy, dot, finish, merge, KvBlock, KvFormat, SoftmaxState};
use crate::convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::{Isa, KernelError};

const FORMATS: [KvFormat; 3] = [KvFormat::F32, KvFormat::F16, KvFormat::BF16];

fn isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
}

/// Stores `x` in `format`; returns the bytes and the values as stored.
fn store(format: KvFormat, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
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
            for (t, n) in [1usize, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 128, 129, 256]
                .into_iter()
                .enumerate()
            {
                let q = random(n, 2.0, 100 + t as u64);
                let (k, kv) = store(format, &random(n, 3.0, 200 + t as u64));
                let ours = dot(isa, format, &q, &k).expect("dot");
                let want = dot(Isa::Scalar, format, &q, &k).expect("ref dot");
                // Two summation orders of n products: each partial sum is
                // bounded by Σ|q·k|, and each side rounds at most n times.
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
                    // fused vs unfused multiply-add: one rounding apart.
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
    let mut scores = vec![0f32; block];
    let mut p0 = 0;
    while p0 < n {
        let bn = block.min(n - p0);
        let vis: Vec<usize> = limits
            .iter()
            .map(|&l| l.saturating_sub(p0).min(bn))
            .collect();
        let blk = KvBlock {
            format,
            k: &k[p0 * stride..],
            v: &v[p0 * stride..],
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
                (128, 100, 16, 1.0),
                (128, 100, 32, 4.0),
                (80, 257, 64, 2.0),
                (17, 33, 16, 1.0),
                (128, 513, 128, 8.0), // sharp softmax: max moves often
            ] {
                // A stride with other heads' values between rows.
                let pad = 3 * hd;
                let stride = (hd + pad) * format.value_bytes();
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
                // Causal-like limits: the last rows of a prefill chunk, plus
                // a query that sees everything and one on a block boundary.
                let mut limits: Vec<usize> = (0..4).map(|i| n_keys.saturating_sub(i)).collect();
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
                format: KvFormat::F32,
                k: &k[a * stride..],
                v: &v[a * stride..],
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
        format: KvFormat::F32,
        k: &k,
        v: &k,
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
