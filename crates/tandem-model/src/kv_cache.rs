//! The model's side of the paged KV store (`tandem-kv`): the store's
//! geometry for this model, private stores for callers that want "a cache
//! of N tokens", and the check that a sequence belongs to this model.
//!
//! A [`KvCache`] is a `tandem_kv::Sequence`: a block table into a
//! [`KvStore`]. Many sequences can share one store (and its prefix cache);
//! `Model::new_cache` makes a store of its own for one sequence.

pub use tandem_kv::{KvFormat, KvStore, RowKey, Sequence as KvCache};

use crate::ModelError;

/// How KV caches of a model are laid out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KvOptions {
    /// Element type of stored keys and values (`--kv-type`).
    pub format: KvFormat,
    /// Tokens per page (`--kv-page-tokens`).
    pub page_tokens: usize,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            format: KvFormat::F16,
            page_tokens: DEFAULT_PAGE_TOKENS,
        }
    }
}

/// Tokens per KV page unless told otherwise.
///
/// 16, as vLLM: measured on the 3B Llama-shaped Q4_K_M model (2 threads,
/// f16), 16, 32 and 64-token pages decode and prefill at the same speed
/// within this machine's run-to-run noise (at 16k context 4.6–5.0 tok/s
/// for 16, 5.1 for 32 and 64; pp512 60–61 vs 57–70 vs 63–67), while a
/// smaller page shares more of a prefix (only full pages are reused: a
/// turn re-prefills on average half a page) and makes copy-on-write and
/// disk-tier transfers smaller.
pub const DEFAULT_PAGE_TOKENS: usize = 16;

/// `MemAvailable` from /proc/meminfo, in bytes (None where unknown).
pub fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses a pool larger than the memory available now: Linux overcommits,
/// so a too-large mapping succeeds and the process is killed later.
pub(crate) fn check_fits(what: impl Fn() -> String, bytes: usize) -> Result<(), ModelError> {
    if available_memory().is_some_and(|avail| bytes > avail) {
        return Err(ModelError::OutOfMemory {
            what: what(),
            bytes,
        });
    }
    Ok(())
}
