//! Where a prefill runs: CPU or GPU, decided by a cost model over a
//! measured [`Profile`] (`tandem calibrate`).
//!
//! The CPU's prefill is compute bound: `flops(n) / cpu_flops`. The GPU's
//! is the slower of streaming the weights over PCIe and computing, plus a
//! fixed start-up cost (launches, the first layer's upload that nothing
//! overlaps), plus the new K/V coming back:
//!
//! ```text
//! gpu(n) = max(stream_bytes(n) / h2d, flops(n) / gpu_flops)
//!          + first_layer_bytes / h2d + kv_bytes(n) / d2h + overhead
//! ```
//!
//! For an MoE model `stream_bytes(n)` counts only the experts `n` tokens
//! are expected to route to. The GPU is chosen when it is faster by the
//! margin (default 1.25: a GPU prefill also takes PCIe and host memory
//! bandwidth the decode streams share).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::GpuError;

/// `--prefill auto|cpu|gpu`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum PrefillMode {
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl std::str::FromStr for PrefillMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PrefillMode::Auto),
            "cpu" => Ok(PrefillMode::Cpu),
            "gpu" => Ok(PrefillMode::Gpu),
            _ => Err(format!("--prefill {s}: expected auto, cpu or gpu")),
        }
    }
}

/// Where one prefill goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PrefillRoute {
    Cpu,
    Gpu,
}

/// What `tandem calibrate` measured on this machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The GPU, as its driver names it.
    pub device: String,
    /// Host → device, page-locked source, GB/s (1e9 bytes).
    pub h2d_gbps: f64,
    /// Device → host, GB/s.
    pub d2h_gbps: f64,
    /// Dense GEMM rate in f16 with f32 accumulation, TFLOP/s.
    pub gemm_tflops: f64,
    /// The CPU's prefill rate, GFLOP/s of matrix work (measured on a model
    /// and divided by its FLOPs per token, so it carries over to others).
    pub cpu_prefill_gflops: f64,
    /// Fixed cost of one GPU prefill, seconds.
    #[serde(default = "default_overhead")]
    pub gpu_overhead_s: f64,
}

fn default_overhead() -> f64 {
    0.01
}

impl Profile {
    /// Where profiles are kept: `$TANDEM_GPU_PROFILE`, else
    /// `$XDG_CONFIG_HOME/tandem/gpu-profile.json`, else
    /// `~/.config/tandem/gpu-profile.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("TANDEM_GPU_PROFILE") {
            return Some(PathBuf::from(p));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("tandem").join("gpu-profile.json"))
    }

    pub fn load(path: &Path) -> Result<Profile, GpuError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GpuError::Io(format!("{}: {e}", path.display())))?;
        let p: Profile = serde_json::from_str(&text)
            .map_err(|e| GpuError::Io(format!("{}: {e}", path.display())))?;
        p.check()
            .map_err(|m| GpuError::Io(format!("{}: {m}", path.display())))?;
        Ok(p)
    }

    pub fn save(&self, path: &Path) -> Result<(), GpuError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| GpuError::Io(format!("{}: {e}", dir.display())))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| GpuError::Io(e.to_string()))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| GpuError::Io(format!("{}: {e}", path.display())))
    }

    /// Every rate positive and finite.
    fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("h2d_gbps", self.h2d_gbps),
            ("d2h_gbps", self.d2h_gbps),
            ("gemm_tflops", self.gemm_tflops),
            ("cpu_prefill_gflops", self.cpu_prefill_gflops),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, is {v}"));
            }
        }
        if !(self.gpu_overhead_s.is_finite() && self.gpu_overhead_s >= 0.0) {
            return Err("gpu_overhead_s must be ≥ 0".into());
        }
        Ok(())
    }
}

/// What the cost model needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCost {
    /// Matrix FLOPs per token (2 × weights each token uses).
    pub flops_per_token: f64,
    /// Bytes streamed for any prompt: attention, dense FFNs, routers,
    /// shared experts, the output head.
    pub dense_bytes: f64,
    /// Routed experts: per MoE layer, experts, bytes of one, top-k.
    pub moe_layers: usize,
    pub n_experts: usize,
    pub expert_bytes: f64,
    pub top_k: usize,
    /// Bytes of the largest layer (uploaded before anything overlaps).
    pub first_layer_bytes: f64,
    /// K/V bytes per token written back.
    pub kv_bytes_per_token: f64,
    /// Attention FLOPs per (query, key) pair over all layers.
    pub attn_flops_per_pair: f64,
}

impl ModelCost {
    /// Expected bytes streamed for `n` tokens: every expert a uniform
    /// router would hit at least once.
    pub fn stream_bytes(&self, n: usize) -> f64 {
        if self.n_experts == 0 {
            return self.dense_bytes;
        }
        let e = self.n_experts as f64;
        let picks = (n * self.top_k) as f64;
        let hit = e * (1.0 - (1.0 - 1.0 / e).powf(picks));
        self.dense_bytes + self.moe_layers as f64 * hit * self.expert_bytes
    }

    pub fn flops(&self, n: usize) -> f64 {
        let nf = n as f64;
        nf * self.flops_per_token + self.attn_flops_per_pair * nf * (nf + 1.0) / 2.0
    }
}

/// Seconds on the CPU and on the GPU for a prefill of `n` tokens.
pub fn estimate(p: &Profile, m: &ModelCost, n: usize) -> (f64, f64) {
    let flops = m.flops(n);
    let cpu = flops / (p.cpu_prefill_gflops * 1e9);
    let h2d = p.h2d_gbps * 1e9;
    let gpu = (m.stream_bytes(n) / h2d).max(flops / (p.gemm_tflops * 1e12))
        + m.first_layer_bytes / h2d
        + m.kv_bytes_per_token * n as f64 / (p.d2h_gbps * 1e9)
        + p.gpu_overhead_s;
    (cpu, gpu)
}

/// Margin the GPU must win by.
pub const GPU_MARGIN: f64 = 1.25;

/// The route for a prefill of `n` tokens under `mode`: `auto` uses the
/// profile (CPU when there is none or no GPU).
pub fn decide(
    mode: PrefillMode,
    profile: Option<&Profile>,
    m: &ModelCost,
    n: usize,
) -> PrefillRoute {
    match mode {
        PrefillMode::Cpu => PrefillRoute::Cpu,
        PrefillMode::Gpu => PrefillRoute::Gpu,
        PrefillMode::Auto => match profile {
            None => PrefillRoute::Cpu,
            Some(p) => {
                let (cpu, gpu) = estimate(p, m, n);
                if gpu * GPU_MARGIN < cpu {
                    PrefillRoute::Gpu
                } else {
                    PrefillRoute::Cpu
                }
            }
        },
    }
}

/// The smallest prompt that goes to the GPU under `auto` (None: none up
/// to `limit`).
pub fn crossover(p: &Profile, m: &ModelCost, limit: usize) -> Option<usize> {
    let gpu = |n| decide(PrefillMode::Auto, Some(p), m, n) == PrefillRoute::Gpu;
    if !gpu(limit) {
        return None;
    }
    let (mut lo, mut hi) = (1, limit);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if gpu(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

impl ModelCost {
    /// The cost of the model whose weights are `w`, with K/V stored as
    /// `kv_row_bytes` per head row.
    pub fn of(w: &crate::weights::ModelWeights, kv_row_bytes: usize) -> ModelCost {
        use crate::weights::FfnWeights;
        let c = &w.config;
        let mut dense = w.output.n_bytes() as f64;
        let mut flops = 2.0 * w.output.n_elements() as f64;
        let (mut moe_layers, mut ne, mut eb, mut topk) = (0, 0, 0.0, 0);
        let mut first = 0f64;
        for l in &w.layers {
            let slot: usize = l.slot_matrices().iter().map(|m| m.n_bytes()).sum();
            dense += slot as f64;
            first = first.max(slot as f64);
            flops += 2.0
                * l.slot_matrices()
                    .iter()
                    .map(|m| m.n_elements())
                    .sum::<usize>() as f64;
            if let FfnWeights::Moe { cfg, experts, .. } = &l.ffn {
                moe_layers += 1;
                ne = cfg.n_experts;
                topk = cfg.top_k;
                if let Some(e) = experts.first() {
                    eb = e.n_bytes() as f64;
                    let el: usize = e.matrices().iter().map(|m| m.n_elements()).sum();
                    flops += 2.0 * (cfg.top_k * el) as f64;
                }
            }
        }
        ModelCost {
            flops_per_token: flops,
            dense_bytes: dense,
            moe_layers,
            n_experts: ne,
            expert_bytes: eb,
            top_k: topk,
            first_layer_bytes: first,
            kv_bytes_per_token: (2 * c.n_layers * c.n_kv_heads * kv_row_bytes) as f64,
            attn_flops_per_pair: (4 * c.n_layers * c.n_heads * c.head_dim) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4090 on PCIe 4.0 beside a desktop CPU.
    fn desktop() -> Profile {
        Profile {
            device: "synthetic 4090".into(),
            h2d_gbps: 25.0,
            d2h_gbps: 25.0,
            gemm_tflops: 150.0,
            cpu_prefill_gflops: 1500.0,
            gpu_overhead_s: 0.01,
        }
    }

    /// Llama 3 8B at Q4_K_M: ~4.6 GB, 16 GFLOP per token.
    fn llama8b() -> ModelCost {
        ModelCost {
            flops_per_token: 16e9,
            dense_bytes: 4.6e9,
            moe_layers: 0,
            n_experts: 0,
            expert_bytes: 0.0,
            top_k: 0,
            first_layer_bytes: 0.14e9,
            kv_bytes_per_token: 131072.0,
            attn_flops_per_pair: (4 * 32 * 32 * 128) as f64,
        }
    }

    /// DeepSeek V3 at ~4.5 bits: 58 MoE layers of 256 experts.
    fn deepseek() -> ModelCost {
        ModelCost {
            flops_per_token: 75e9,
            dense_bytes: 12e9,
            moe_layers: 58,
            n_experts: 256,
            expert_bytes: 23e6,
            top_k: 8,
            first_layer_bytes: 0.4e9,
            kv_bytes_per_token: 70e3,
            attn_flops_per_pair: (4 * 61 * 128 * 192) as f64,
        }
    }

    #[test]
    fn a_chat_turn_stays_on_the_cpu_and_a_document_goes_to_the_gpu() {
        let p = desktop();
        for m in [llama8b(), deepseek()] {
            assert_eq!(
                decide(PrefillMode::Auto, Some(&p), &m, 20),
                PrefillRoute::Cpu
            );
            assert_eq!(
                decide(PrefillMode::Auto, Some(&p), &m, 20_000),
                PrefillRoute::Gpu
            );
            let x = crossover(&p, &m, 1 << 20).expect("a crossover");
            assert!(x > 20 && x < 20_000, "crossover at {x}");
        }
    }

    #[test]
    fn forced_modes_and_no_profile() {
        let m = llama8b();
        assert_eq!(decide(PrefillMode::Gpu, None, &m, 1), PrefillRoute::Gpu);
        assert_eq!(
            decide(PrefillMode::Cpu, Some(&desktop()), &m, 1 << 20),
            PrefillRoute::Cpu
        );
        assert_eq!(
            decide(PrefillMode::Auto, None, &m, 1 << 20),
            PrefillRoute::Cpu
        );
    }

    #[test]
    fn a_slow_link_moves_the_crossover_up() {
        let m = llama8b();
        let fast = crossover(&desktop(), &m, 1 << 20).expect("crossover");
        let slow = Profile {
            h2d_gbps: 6.0,
            ..desktop()
        };
        let slow_x = crossover(&slow, &m, 1 << 20).expect("crossover");
        assert!(slow_x > fast, "{slow_x} vs {fast}");
    }

    #[test]
    fn moe_streams_only_what_short_prompts_route_to() {
        let m = deepseek();
        assert!(m.stream_bytes(1) < m.stream_bytes(100));
        let all = m.dense_bytes + m.moe_layers as f64 * m.n_experts as f64 * m.expert_bytes;
        assert!((m.stream_bytes(1 << 20) - all).abs() / all < 1e-6);
    }

    #[test]
    fn profiles_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/profile.json");
        desktop().save(&path).expect("save");
        assert_eq!(Profile::load(&path).expect("load"), desktop());
        std::fs::write(
            &path,
            r#"{"device":"x","h2d_gbps":0,"d2h_gbps":1,"gemm_tflops":1,"cpu_prefill_gflops":1}"#,
        )
        .expect("write");
        let e = Profile::load(&path).expect_err("zero bandwidth");
        assert!(e.to_string().contains("h2d_gbps"), "{e}");
        std::fs::write(&path, "{").expect("write");
        assert!(Profile::load(&path).is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse(), Ok(PrefillMode::Auto));
        assert_eq!("gpu".parse(), Ok(PrefillMode::Gpu));
        assert!("fast".parse::<PrefillMode>().is_err());
    }
}
