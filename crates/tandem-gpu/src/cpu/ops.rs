//! The compute ops as plain loops: what [`super::CpuDevice`] runs, and the
//! reference the CUDA kernels (`crate::cuda::kernels`) are written after
//! (same element types, same formulas; the order of f32 sums differs).

use half::{bf16, f16};
use tandem_kernels::WeightFormat;
use tandem_model::RopeLayout;

use crate::device::DType;
use crate::GpuError;

/// One value of type `ty` at element `i` of `b`, as f32.
#[inline]
pub fn load(ty: DType, b: &[u8], i: usize) -> f32 {
    match ty {
        DType::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        DType::F16 => f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        DType::BF16 => bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
    }
}

/// f32 values to `ty` (round to nearest even).
pub fn convert(src: &[f32], dst: &mut [u8], ty: DType) {
    match ty {
        DType::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
    }
}

/// `n` values of `format` (the file's blocks) to `ty`: ggml's exact
/// dequantization (`tandem_kernels::dequantize_row`), then rounded.
pub fn dequantize(
    format: WeightFormat,
    src: &[u8],
    dst: &mut [u8],
    ty: DType,
    n: usize,
) -> Result<(), GpuError> {
    let mut tmp = vec![0f32; n];
    tandem_kernels::dequantize_row(format, src, &mut tmp)
        .map_err(|e| GpuError::Shape(format!("dequantize {}: {e}", format.name())))?;
    convert(&tmp, dst, ty);
    Ok(())
}

/// `y[t][r] (+)= Σ_c x[t][c] · w[r][c]`; operands of `ty`, f32 sums.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ty: DType,
    w: &[u8],
    x: &[u8],
    y: &mut [f32],
    n: usize,
    rows: usize,
    cols: usize,
    ldy: usize,
    accumulate: bool,
    w_transposed: bool,
) {
    let xf: Vec<f32> = (0..n * cols).map(|i| load(ty, x, i)).collect();
    let mut wrow = vec![0f32; cols];
    for r in 0..rows {
        for (c, v) in wrow.iter_mut().enumerate() {
            *v = match w_transposed {
                false => load(ty, w, r * cols + c),
                true => load(ty, w, c * rows + r),
            };
        }
        for t in 0..n {
            let xr = &xf[t * cols..(t + 1) * cols];
            let dot: f32 = xr.iter().zip(&wrow).map(|(a, b)| a * b).sum();
            let o = &mut y[t * ldy + r];
            *o = if accumulate { *o + dot } else { dot };
        }
    }
}

/// RoPE in place (see `device::RopeArgs`).
pub fn rope(
    x: &mut [f32],
    table: &[f32],
    heads: usize,
    hd: usize,
    pairs: usize,
    layout: RopeLayout,
) {
    for (r, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        let t = &table[r * pairs * 2..(r + 1) * pairs * 2];
        for head in row.chunks_exact_mut(hd) {
            for i in 0..pairs {
                let (sin, cos) = (t[2 * i], t[2 * i + 1]);
                let (a, b) = match layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + pairs),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// The shape of one [`attend`] call (`device::Attend` without buffers).
#[derive(Clone, Copy, Debug)]
pub struct AttendShape {
    pub kv_heads: usize,
    pub group: usize,
    pub head_dim: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub k_head_stride: usize,
    pub q_pos0: usize,
    pub k_pos0: usize,
    pub scale: f32,
    pub window: Option<usize>,
    pub softcap: Option<f32>,
}

impl AttendShape {
    /// Whether query position `qp` sees key position `kp`.
    #[inline]
    pub fn visible(&self, qp: usize, kp: usize) -> bool {
        kp <= qp && self.window.is_none_or(|w| kp + w > qp)
    }
}

/// Folds the block's keys into the states (online softmax, as
/// `tandem_kernels::attention`: block max, rescale, exponentials).
pub fn attend(p: &AttendShape, q: &[f32], k: &[f32], v: &[f32], st: &mut [f32], acc: &mut [f32]) {
    let hd = p.head_dim;
    let mut scores = vec![0f32; p.n_k];
    for g in 0..p.kv_heads {
        let kh = &k[g * p.k_head_stride..];
        let vh = &v[g * p.k_head_stride..];
        for t in 0..p.n_q {
            let qp = p.q_pos0 + t;
            for h in 0..p.group {
                let row = (g * p.n_q + t) * p.group + h;
                let qr = &q[row * hd..(row + 1) * hd];
                let mut bmax = f32::NEG_INFINITY;
                let mut any = false;
                for (j, s) in scores.iter_mut().enumerate() {
                    if !p.visible(qp, p.k_pos0 + j) {
                        *s = f32::NEG_INFINITY;
                        continue;
                    }
                    let kr = &kh[j * hd..(j + 1) * hd];
                    let d: f32 = qr.iter().zip(kr).map(|(a, b)| a * b).sum();
                    *s = match p.softcap {
                        Some(c) => c * (d * p.scale / c).tanh(),
                        None => d * p.scale,
                    };
                    bmax = bmax.max(*s);
                    any = true;
                }
                if !any {
                    continue;
                }
                let (m, sum) = (st[2 * row], st[2 * row + 1]);
                let m_new = m.max(bmax);
                let a = &mut acc[row * hd..(row + 1) * hd];
                let mut total = sum;
                if sum > 0.0 && m_new > m {
                    let c = (m - m_new).exp();
                    total *= c;
                    a.iter_mut().for_each(|x| *x *= c);
                }
                for (j, &s) in scores.iter().enumerate() {
                    if s == f32::NEG_INFINITY {
                        continue;
                    }
                    let e = (s - m_new).exp();
                    total += e;
                    let vr = &vh[j * hd..(j + 1) * hd];
                    a.iter_mut().zip(vr).for_each(|(x, &vv)| *x += e * vv);
                }
                st[2 * row] = m_new;
                st[2 * row + 1] = total;
            }
        }
    }
}

/// `out = acc / sum` per row, with the sink folded in first
/// (`tandem_kernels::attention::add_sink`'s formula).
#[allow(clippy::too_many_arguments)]
pub fn attn_finish(
    st: &[f32],
    acc: &[f32],
    sinks: Option<&[f32]>,
    out: &mut [f32],
    kv_heads: usize,
    n_q: usize,
    group: usize,
    hd: usize,
) {
    for g in 0..kv_heads {
        for t in 0..n_q {
            for h in 0..group {
                let row = (g * n_q + t) * group + h;
                let (mut m, mut sum) = (st[2 * row], st[2 * row + 1]);
                let mut scale = 1.0f32;
                if let Some(sk) = sinks {
                    let sink = sk[g * group + h];
                    let m2 = m.max(sink);
                    let c = if sum > 0.0 { (m - m2).exp() } else { 0.0 };
                    scale = c;
                    sum = sum * c + (sink - m2).exp();
                    m = m2;
                }
                let _ = m;
                let o = &mut out[row * hd..(row + 1) * hd];
                let a = &acc[row * hd..(row + 1) * hd];
                if sum > 0.0 {
                    let inv = 1.0 / sum;
                    o.iter_mut().zip(a).for_each(|(o, &x)| *o = x * scale * inv);
                } else {
                    o.fill(0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention computed directly: every visible score, one
    /// softmax (with the sink in the denominator), the weighted sum.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        p: &AttendShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        sinks: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let hd = p.head_dim;
        for g in 0..p.kv_heads {
            for t in 0..p.n_q {
                for h in 0..p.group {
                    let row = (g * p.n_q + t) * p.group + h;
                    let qr = &q[row * hd..(row + 1) * hd];
                    let mut s: Vec<(usize, f32)> = Vec::new();
                    for j in 0..p.n_k {
                        if !p.visible(p.q_pos0 + t, p.k_pos0 + j) {
                            continue;
                        }
                        let kr = &k[g * p.k_head_stride + j * hd..][..hd];
                        let d: f32 = qr.iter().zip(kr).map(|(a, b)| a * b).sum();
                        let sc = match p.softcap {
                            Some(c) => c * (d * p.scale / c).tanh(),
                            None => d * p.scale,
                        };
                        s.push((j, sc));
                    }
                    let sink = sinks.map(|sk| sk[g * p.group + h]);
                    let m = s
                        .iter()
                        .map(|x| x.1)
                        .chain(sink)
                        .fold(f32::NEG_INFINITY, f32::max);
                    let den: f32 = s.iter().map(|x| (x.1 - m).exp()).sum::<f32>()
                        + sink.map_or(0.0, |sk| (sk - m).exp());
                    let o = &mut out[row * hd..(row + 1) * hd];
                    o.fill(0.0);
                    for &(j, sc) in &s {
                        let w = (sc - m).exp() / den;
                        let vr = &v[g * p.k_head_stride + j * hd..][..hd];
                        o.iter_mut().zip(vr).for_each(|(a, &b)| *a += w * b);
                    }
                }
            }
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn blockwise_online_softmax_equals_naive_attention() {
        let (kvh, group, hd, n_q, n_k) = (2, 3, 8, 5, 37);
        for (window, softcap, sinks) in [
            (None, None, false),
            (Some(6), None, false),
            (None, Some(3.0), true),
            (Some(20), Some(5.0), true),
        ] {
            let p0 = n_k - n_q; // queries are the last positions
            let full = AttendShape {
                kv_heads: kvh,
                group,
                head_dim: hd,
                n_q,
                n_k,
                k_head_stride: n_k * hd,
                q_pos0: p0,
                k_pos0: 0,
                scale: 0.7,
                window,
                softcap,
            };
            let q = values(kvh * n_q * group * hd, 1);
            let k = values(kvh * n_k * hd, 2);
            let v = values(kvh * n_k * hd, 3);
            let sk = values(kvh * group, 4);
            let sk = sinks.then_some(&sk[..]);
            let mut want = vec![0f32; q.len()];
            naive(&full, &q, &k, &v, sk, &mut want);
            // The same keys in blocks of 8, each a separate call on a
            // block copied out as the prefill stages host pages.
            let rows = kvh * n_q * group;
            let mut st: Vec<f32> = (0..rows).flat_map(|_| [f32::NEG_INFINITY, 0.0]).collect();
            let mut acc = vec![0f32; rows * hd];
            for b0 in (0..n_k).step_by(8) {
                let nb = 8.min(n_k - b0);
                let mut kb = vec![0f32; kvh * 8 * hd];
                let mut vb = vec![0f32; kvh * 8 * hd];
                for g in 0..kvh {
                    let from = g * n_k * hd + b0 * hd;
                    kb[g * 8 * hd..][..nb * hd].copy_from_slice(&k[from..from + nb * hd]);
                    vb[g * 8 * hd..][..nb * hd].copy_from_slice(&v[from..from + nb * hd]);
                }
                let blk = AttendShape {
                    n_k: nb,
                    k_head_stride: 8 * hd,
                    k_pos0: b0,
                    ..full
                };
                attend(&blk, &q, &kb, &vb, &mut st, &mut acc);
            }
            let mut got = vec![0f32; q.len()];
            attn_finish(&st, &acc, sk, &mut got, kvh, n_q, group, hd);
            let d = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-5, "window {window:?} softcap {softcap:?}: {d}");
        }
    }

    #[test]
    fn gemm_accumulates_half_operands_in_f32() {
        let (n, rows, cols) = (3, 4, 5);
        let w = values(rows * cols, 5);
        let x = values(n * cols, 6);
        for ty in [DType::F32, DType::F16, DType::BF16] {
            let (mut wb, mut xb) = (
                vec![0u8; w.len() * ty.size()],
                vec![0u8; x.len() * ty.size()],
            );
            convert(&w, &mut wb, ty);
            convert(&x, &mut xb, ty);
            let mut y = vec![1f32; n * 6];
            gemm(ty, &wb, &xb, &mut y, n, rows, cols, 6, true, false);
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols)
                        .map(|c| load(ty, &wb, r * cols + c) * load(ty, &xb, t * cols + c))
                        .sum::<f32>()
                        + 1.0;
                    assert!((y[t * 6 + r] - want).abs() < 1e-6);
                }
                assert_eq!(y[t * 6 + 5], 1.0, "past the rows, untouched");
            }
            // The same matrix stored transposed gives the same product.
            let mut wt = vec![0u8; wb.len()];
            let es = ty.size();
            for r in 0..rows {
                for c in 0..cols {
                    let (from, to) = ((r * cols + c) * es, (c * rows + r) * es);
                    wt[to..to + es].copy_from_slice(&wb[from..from + es]);
                }
            }
            let mut yt = vec![1f32; n * 6];
            gemm(ty, &wt, &xb, &mut yt, n, rows, cols, 6, true, true);
            assert_eq!(y, yt);
        }
    }
}
