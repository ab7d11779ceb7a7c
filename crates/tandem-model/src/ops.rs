//! The f32 element-wise operations of the decoder: RMSNorm, RoPE, SwiGLU,
//! softmax. Plain loops: they touch activations only (kilobytes per token),
//! never the weights, so they are not where decode time goes.

use crate::arch::RopeLayout;
use crate::config::RopeConfig;

/// `out = x / rms(x) * w` for each row of `x` (rows of `w.len()` values).
/// The sum of squares is accumulated in f64, as ggml does.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f64 = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let scale = (1.0 / (ss / n as f64 + f64::from(eps)).sqrt()) as f32;
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// In place: `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// In place: `gate = gelu(gate) * up`, GELU's tanh approximation
/// (`gelu_pytorch_tanh`, ggml's `ggml_gelu`), computed in f32.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh()) * u;
    }
}

/// [`gelu_tanh_mul`] as ggml computes it on the CPU (`GGML_GELU_FP16`):
/// the input rounded to f16, GELU looked up in a table of f16 results
/// (here: computed, then rounded to f16), 0 below -10 and the identity
/// above 10. GGUF models run this so their logits track llama.cpp's.
pub fn gelu_tanh_f16_mul(gate: &mut [f32], up: &[f32]) {
    use half::f16;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            let mut v = [f16::from_f32(x).to_f32()];
            gelu_tanh_mul(&mut v, &[1.0]);
            f16::from_f32(v[0]).to_f32() * u
        };
    }
}

/// In place: gpt-oss's clamped SwiGLU with `alpha = 1.702`, `limit = 7`:
/// `gate = min(gate, limit)`, `up = clamp(up, -limit, limit)`,
/// `gate = gate · sigmoid(alpha · gate) · (up + 1)`.
pub fn swiglu_oai_mul(gate: &mut [f32], up: &[f32]) {
    const ALPHA: f32 = 1.702;
    const LIMIT: f32 = 7.0;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = g.min(LIMIT);
        let y = u.clamp(-LIMIT, LIMIT);
        *g = x / (1.0 + (-x * ALPHA).exp()) * (y + 1.0);
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Rotary position embedding with precomputed inverse frequencies.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    layout: RopeLayout,
    n_rot: usize,
    /// Multiplies every sine and cosine (YaRN's magnitude scaling).
    mscale: f32,
}

/// YaRN's correction range: the pair indices between which frequencies go
/// from extrapolated (fast, below `low`) to interpolated (slow, above
/// `high`). Rounded out to whole dimensions in f32 as ggml's
/// `ggml_rope_yarn_corr_dims`; without `truncate`, unrounded in f64 as
/// transformers computes it for configs that ask so (gpt-oss).
pub(crate) fn yarn_corr_dims(y: &crate::config::Yarn, n_rot: usize, base: f32) -> (f32, f32) {
    let (n, ctx) = (n_rot as f64, y.orig_ctx as f64);
    let dim = |beta: f32| {
        n * (ctx / (f64::from(beta) * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * f64::from(base).ln())
    };
    let dim32 = |beta: f32| {
        n_rot as f32 * (y.orig_ctx as f32 / (beta * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let (low, high) = match y.truncate {
        true => (dim32(y.beta_fast).floor(), dim32(y.beta_slow).ceil()),
        false => (dim(y.beta_fast) as f32, dim(y.beta_slow) as f32),
    };
    (low.max(0.0), high.min(n_rot as f32 - 1.0))
}

impl Rope {
    pub fn new(cfg: &RopeConfig) -> Rope {
        let half = cfg.n_rot / 2;
        let ramp = cfg
            .yarn
            .as_ref()
            .map(|y| yarn_corr_dims(y, cfg.n_rot, cfg.theta));
        let inv_freq = (0..half)
            .map(|i| {
                let base = f64::from(cfg.theta).powf(-((2 * i) as f64) / cfg.n_rot as f64);
                let factor = cfg
                    .freq_factors
                    .as_ref()
                    .and_then(|f| f.get(i))
                    .copied()
                    .unwrap_or(1.0);
                let fs = f64::from(cfg.freq_scale);
                // YaRN mixes the interpolated (×freq_scale) and the
                // extrapolated frequency by ggml's `rope_yarn_ramp`.
                let scale = match ramp {
                    Some((low, high)) => {
                        let y = (i as f32 - low) / (high - low).max(0.001);
                        let mix = f64::from(1.0 - y.clamp(0.0, 1.0));
                        fs * (1.0 - mix) + mix
                    }
                    None => fs,
                };
                base * scale / f64::from(factor)
            })
            .collect();
        Rope {
            inv_freq,
            layout: cfg.layout,
            n_rot: cfg.n_rot,
            mscale: cfg.yarn.as_ref().map_or(1.0, |y| y.mscale),
        }
    }

    /// Rotates every `head_dim`-sized head in `x` for position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let mut table = vec![(0.0, 0.0); self.table_len()];
        self.table(pos, &mut table);
        for head in x.chunks_exact_mut(head_dim) {
            self.apply_with(head, &table);
        }
    }

    /// Length of a [`table`](Rope::table): one (sin, cos) per rotated pair.
    pub fn table_len(&self) -> usize {
        self.inv_freq.len()
    }

    /// The (sin, cos) pairs of position `pos`, computed once per token and
    /// shared by every head of every layer.
    pub fn table(&self, pos: usize, out: &mut [(f32, f32)]) {
        for (o, &f) in out.iter_mut().zip(&self.inv_freq) {
            let (sin, cos) = (pos as f64 * f).sin_cos();
            *o = (sin as f32 * self.mscale, cos as f32 * self.mscale);
        }
    }

    /// Rotates one head with a precomputed [`table`](Rope::table).
    pub fn apply_with(&self, head: &mut [f32], table: &[(f32, f32)]) {
        let half = self.n_rot / 2;
        for (i, &(sin, cos)) in table.iter().enumerate() {
            let (a, b) = match self.layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::Halves => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0, 4.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0, 1.0], 1e-6, &mut out);
        assert!((out[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
        assert!((out[1] - 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(out[2], 0.0);
    }

    #[test]
    fn rope_layouts_agree_after_permutation() {
        // Interleaved on a permuted head equals halves on the original one:
        // this is exactly the permutation llama.cpp's converter applies.
        let cfg = RopeConfig {
            theta: 10000.0,
            layout: RopeLayout::Halves,
            n_rot: 8,
            freq_scale: 1.0,
            freq_factors: None,
            yarn: None,
        };
        let halves = Rope::new(&cfg);
        let inter = Rope::new(&RopeConfig {
            layout: RopeLayout::Interleaved,
            ..cfg
        });
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let perm = [0, 4, 1, 5, 2, 6, 3, 7];
        let mut a = x.clone();
        halves.apply(&mut a, 8, 17);
        let mut b: Vec<f32> = perm.iter().map(|&p| x[p]).collect();
        inter.apply(&mut b, 8, 17);
        for (k, &p) in perm.iter().enumerate() {
            assert!((b[k] - a[p]).abs() < 1e-6);
        }
    }
}
