//! The prefix cache's two payoffs, timed on one conversation:
//!
//! * **Turn 2 on a cached turn 1**: a turn-1 prompt of N tokens is
//!   prefilled cold; turn 2 adds M tokens and is prefilled on top of the
//!   cached turn 1 — its time to first token (prefill of M tokens and the
//!   logits of the first reply token) against a cold prefill of the whole
//!   N + M conversation (the two prefills together: the same computation
//!   in chunks of the same size).
//! * **Restore from the disk tier vs recompute**: the turn-1 pages are
//!   written to the disk tier, dropped from RAM and from the OS's page
//!   cache, and looked up again: restoring them against prefilling them.
//!
//! Prompt tokens are random ids (prefill speed does not depend on them).

use std::path::Path;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tandem_model::{DiskTier, Logits, Model};

use crate::BenchError;

/// What [`run`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreResult {
    /// Turn-1 tokens (N) and turn-2 tokens (M).
    pub turn1_tokens: usize,
    pub turn2_tokens: usize,
    /// Cold prefill of turn 1, seconds.
    pub prefill_turn1_s: f64,
    /// Turn 2's time to first token on the cached turn 1, seconds.
    pub turn2_ttft_s: f64,
    /// `turn2_ttft_s` / (cold prefill of N + M), percent.
    pub turn2_pct_of_cold: f64,
    /// Writing turn 1's full pages to the disk tier, seconds.
    pub persist_s: f64,
    /// Tokens found on disk and their restore time, seconds.
    pub restored_tokens: usize,
    pub restore_s: f64,
    /// Bytes read back / restore time, 10^9 B/s.
    pub restore_gbps: f64,
    /// Recompute time of the restored tokens (from `prefill_turn1_s`) /
    /// restore time.
    pub restore_speedup: f64,
}

/// Runs the conversation of the module docs with a disk tier under `dir`.
pub fn run(
    model: &Model,
    turn1: usize,
    turn2: usize,
    chunk: usize,
    dir: &Path,
) -> Result<RestoreResult, BenchError> {
    let kv = model.kv_options();
    let geom = model.kv_geometry(kv);
    let pages = (turn1 + turn2).div_ceil(geom.page_tokens) + 2;
    let file_bytes = DiskTier::file_bytes(&geom);
    let disk = DiskTier::open(dir, model.identity(), file_bytes * (pages as u64 + 1))
        .map_err(|e| BenchError::Invalid(e.to_string()))?;
    let store = model.new_kv_store_tiered(kv, pages * geom.page_bytes(), Some(disk))?;
    let mut rng = SmallRng::seed_from_u64(99);
    let vocab = model.config.vocab_size as u32;
    let tokens: Vec<u32> = (0..turn1 + turn2)
        .map(|_| rng.random_range(0..vocab))
        .collect();

    let prefill = |seq: &mut tandem_model::KvCache, toks: &[u32]| -> Result<(), BenchError> {
        let n = toks.len().div_ceil(chunk.max(1));
        for (i, part) in toks.chunks(chunk.max(1)).enumerate() {
            let want = if i + 1 == n {
                Logits::Last
            } else {
                Logits::None
            };
            model.forward(part, seq, want)?;
        }
        Ok(())
    };
    let mut seq = store.new_sequence();
    let t = Instant::now();
    prefill(&mut seq, &tokens[..turn1])?;
    let prefill_turn1_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    prefill(&mut seq, &tokens[turn1..])?;
    let turn2_ttft_s = t.elapsed().as_secs_f64();
    drop(seq);

    let t = Instant::now();
    store.persist();
    let persist_s = t.elapsed().as_secs_f64();
    let disk = store
        .disk()
        .ok_or_else(|| BenchError::Invalid("no disk tier".into()))?;
    disk.drop_os_cache();
    store.clear_cache();
    let read_before = disk.stats().read;

    let t = Instant::now();
    let seq = store.sequence_with_prefix(&tokens[..turn1 + 1]);
    let restore_s = t.elapsed().as_secs_f64();
    let restored_pages = disk.stats().read - read_before;
    let restored_tokens = seq.len();
    let cold = prefill_turn1_s + turn2_ttft_s;
    let recompute = prefill_turn1_s * restored_tokens as f64 / turn1.max(1) as f64;
    Ok(RestoreResult {
        turn1_tokens: turn1,
        turn2_tokens: turn2,
        prefill_turn1_s,
        turn2_ttft_s,
        turn2_pct_of_cold: 100.0 * turn2_ttft_s / cold.max(1e-12),
        persist_s,
        restored_tokens,
        restore_s,
        restore_gbps: (restored_pages * file_bytes) as f64 / restore_s.max(1e-12) / 1e9,
        restore_speedup: recompute / restore_s.max(1e-12),
    })
}

impl RestoreResult {
    /// Lines for the human report.
    pub fn to_text(&self) -> String {
        format!(
            "turn 1: {n} tokens prefilled cold in {p:.3} s\n\
             turn 2: {m} new tokens on the cached turn 1, first token after {t:.3} s \
             = {pct:.1}% of a cold prefill of all {total} tokens ({cold:.3} s)\n\
             disk tier: {r} tokens restored in {rs:.3} s ({gb:.2} GB/s) vs recomputed in {rc:.3} s \
             ({x:.1}x faster); writing them took {ps:.3} s\n",
            n = self.turn1_tokens,
            p = self.prefill_turn1_s,
            m = self.turn2_tokens,
            t = self.turn2_ttft_s,
            pct = self.turn2_pct_of_cold,
            total = self.turn1_tokens + self.turn2_tokens,
            cold = self.prefill_turn1_s + self.turn2_ttft_s,
            r = self.restored_tokens,
            rs = self.restore_s,
            gb = self.restore_gbps,
            rc = self.prefill_turn1_s * self.restored_tokens as f64
                / self.turn1_tokens.max(1) as f64,
            x = self.restore_speedup,
            ps = self.persist_s,
        )
    }
}
