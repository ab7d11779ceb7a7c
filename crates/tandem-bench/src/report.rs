//! Output: a llama-bench-style markdown table for people, or one JSON
//! document for scripts (`--json`).
//!
//! ## JSON fields (schema `tandem-bench/1`; fields are only ever added)
//!
//! * `schema`: `"tandem-bench/1"`.
//! * `model`: `path`, `name`, `arch`, `size_bytes` (all tensor data),
//!   `n_params`, `n_layers`, `hidden`, `vocab_size`.
//! * `threads`, `isa`: worker threads and the kernels' instruction set.
//! * `token_bytes`: `weights`, `embedding_row`, `kv_per_position` (bytes a
//!   decode step reads; sliding-window layers apart: `kv_windowed` per
//!   position, at most `kv_window` positions), `model_size`, `n_params`.
//! * `probe`: `bytes`, `threads`, `samples_gbps`, `gbps` (best), `isa`;
//!   `null` with `--probe-mib 0`.
//! * `tests[]`: `name` (`pp512`, `tg128`, `tg128@b8`, `tg128@d16384`),
//!   `kind` (`pp`/`tg`), `n_prompt`, `n_gen`, `batch`, `ctx` (positions
//!   cached before the first decoded token, `--ctx`), `samples_ts`, `avg_ts`, `stddev_ts`
//!   (tok/s, as llama-bench's fields of the same names; a batch counts all
//!   its sequences' tokens), `bytes_per_step`, `gbps` (effective: bytes per
//!   step × steps/s / 10^9), `pct_of_probe` (`null` for `pp`).
//! * `sync`: `--verbose` only: `runs_per_token` (fork-joins of the worker
//!   pool per decoded token), `empty_run_us` (cost of one empty fork-join),
//!   `barrier_us_per_token` (driver waiting for workers at the end of runs),
//!   `allreduce_us_per_token` (adding nodes' results into the residual).
//! * `restore`: `--restore N` only: `turn1_tokens`, `turn2_tokens`,
//!   `prefill_turn1_s`, `turn2_ttft_s`, `turn2_pct_of_cold`, `persist_s`,
//!   `restored_tokens`, `restore_s`, `restore_gbps`, `restore_speedup`
//!   (see tandem-bench's `restore` module).

use std::fmt::Write;

use serde::Serialize;

use crate::measure::{SyncStats, TestResult, TokenBytes};
use crate::probe::ProbeResult;

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub name: String,
    pub arch: String,
    pub size_bytes: u64,
    pub n_params: u64,
    pub n_layers: usize,
    pub hidden: usize,
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub model: ModelInfo,
    pub threads: usize,
    pub isa: String,
    pub token_bytes: TokenBytes,
    pub probe: Option<ProbeResult>,
    pub tests: Vec<TestResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStats>,
    /// `--restore N` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::restore::RestoreResult>,
}

pub const SCHEMA: &str = "tandem-bench/1";

impl Report {
    /// Fills each test's `pct_of_probe`.
    pub fn new(
        model: ModelInfo,
        threads: usize,
        token_bytes: TokenBytes,
        probe: Option<ProbeResult>,
        mut tests: Vec<TestResult>,
        sync: Option<SyncStats>,
    ) -> Report {
        for t in &mut tests {
            t.pct_of_probe = pct(t, probe.as_ref());
        }
        Report {
            schema: SCHEMA,
            model,
            threads,
            isa: tandem_kernels::detected_isa().name().to_string(),
            token_bytes,
            probe,
            tests,
            sync,
            restore: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The markdown table (and, with `verbose`, the details under it).
    pub fn to_table(&self, verbose: bool) -> String {
        let mut out = String::new();
        let head = [
            "model",
            "size",
            "params",
            "threads",
            "test",
            "t/s",
            "GB/s",
            "probe GB/s",
            "% of probe",
        ];
        let probe = self
            .probe
            .as_ref()
            .map_or("-".to_string(), |p| format!("{:.2}", p.gbps));
        let rows: Vec<[String; 9]> = self
            .tests
            .iter()
            .map(|t| {
                [
                    self.model.name.clone(),
                    human_size(self.model.size_bytes),
                    human_params(self.model.n_params),
                    self.threads.to_string(),
                    t.name.clone(),
                    format!("{:.2} ± {:.2}", t.avg_ts, t.stddev_ts),
                    t.gbps.map_or("-".into(), |g| format!("{g:.2}")),
                    probe.clone(),
                    t.pct_of_probe.map_or("-".into(), |p| format!("{p:.0}%")),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..head.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([head[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(c.chars().count());
                // Numbers right-aligned, text left-aligned, as llama-bench.
                if i >= 1 && i != 4 {
                    s.push_str(&format!(" {}{} |", " ".repeat(pad), c));
                } else {
                    s.push_str(&format!(" {}{} |", c, " ".repeat(pad)));
                }
            }
            s
        };
        let head: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(out, "{}", line(&head));
        let sep: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                if i >= 1 && i != 4 {
                    format!("{}:", "-".repeat(w.saturating_sub(1)))
                } else {
                    "-".repeat(w)
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line(&sep));
        for r in &rows {
            let _ = writeln!(out, "{}", line(r));
        }
        if verbose {
            let b = &self.token_bytes;
            let _ = writeln!(
                out,
                "\nbytes per decode step: weights {} + per sequence: embedding row {} + KV {} per cached position \
                 (+ the routed experts, as read: in each test's bytes_per_step)",
                b.weights, b.embedding_row, b.kv_per_position
            );
            if b.kv_window > 0 {
                let _ = writeln!(
                    out,
                    "sliding-window layers: KV {} per cached position, at most {} positions",
                    b.kv_windowed, b.kv_window
                );
            }
            for (name, b) in self
                .tests
                .iter()
                .filter_map(|r| r.bytes_per_step.map(|b| (&r.name, b)))
            {
                let _ = writeln!(out, "{name}: {b:.0} bytes per step");
            }
            if let Some(p) = &self.probe {
                let s: Vec<String> = p.samples_gbps.iter().map(|g| format!("{g:.2}")).collect();
                let _ = writeln!(
                    out,
                    "probe: {} MiB, {} threads, {} kernel, GB/s per rep: {}",
                    p.bytes >> 20,
                    p.threads,
                    p.isa,
                    s.join(" ")
                );
            }
            let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.1} µs"));
            if let Some(s) = &self.sync {
                let _ = writeln!(
                    out,
                    "per token: {} pool runs (empty run {}), barrier wait {}, all-reduce {}",
                    s.runs_per_token
                        .map_or("n/a".to_string(), |r| format!("{r:.0}")),
                    fmt(s.empty_run_us),
                    fmt(s.barrier_us_per_token),
                    fmt(s.allreduce_us_per_token)
                );
            }
            let _ = writeln!(out, "isa: {}", self.isa);
        }
        if let Some(r) = &self.restore {
            let _ = write!(out, "\n{}", r.to_text());
        }
        out
    }
}

fn pct(t: &TestResult, probe: Option<&ProbeResult>) -> Option<f64> {
    let p = probe?.gbps;
    (p > 0.0).then(|| t.gbps.map(|g| 100.0 * g / p)).flatten()
}

fn human_size(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}
