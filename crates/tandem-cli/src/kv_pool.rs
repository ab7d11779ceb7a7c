//! The shared KV page pool of a long-running command: its size (`--kv-memory`
//! or the default share of free memory) and the line that reports it.

use std::sync::Arc;

use anyhow::Context;
use tandem_model::kv_cache::{available_memory, KvStore};
use tandem_model::DiskTier;
use tandem_model::Model;

use crate::Common;

/// Full contexts the default pool holds at most: enough for a few
/// conversations and their cached prefixes, without mapping half of a
/// terabyte for a model whose context is small.
const DEFAULT_CONTEXTS: usize = 16;

/// Bytes of the pool: `--kv-memory`, else half of the memory available now
/// (after the weights were loaded), at most [`DEFAULT_CONTEXTS`] contexts
/// of `ctx` tokens.
pub fn pool_bytes(model: &Model, common: &Common, ctx: usize) -> usize {
    if let Some(b) = common.kv_memory {
        return usize::try_from(b.as_u64()).unwrap_or(usize::MAX);
    }
    let geom = model.kv_geometry(model.kv_options());
    let contexts = ctx
        .saturating_mul(DEFAULT_CONTEXTS)
        .saturating_mul(geom.token_bytes());
    match available_memory() {
        Some(avail) => (avail / 2).min(contexts),
        None => contexts,
    }
}

/// Makes the pool (over the disk tier of `--kv-disk`) and reports it on
/// stderr: size, type, page size, tokens; the tier's directory and size.
pub fn open_pool(model: &Model, common: &Common, ctx: usize) -> anyhow::Result<Arc<KvStore>> {
    let bytes = pool_bytes(model, common, ctx);
    let disk = match &common.kv_disk {
        Some(dir) => Some(
            DiskTier::open(dir, model.identity(), common.kv_disk_size.as_u64())
                .context("--kv-disk")?,
        ),
        None => None,
    };
    let store = model
        .new_kv_store_tiered(model.kv_options(), bytes, disk)
        .context("cannot allocate the KV cache (lower --kv-memory)")?;
    let g = store.geometry();
    eprintln!(
        "KV cache: {} {} in {} pages of {} tokens = {} tokens ({} per token){}",
        bytesize::ByteSize((store.n_pages() * g.page_bytes()) as u64)
            .display()
            .iec(),
        g.format,
        store.n_pages(),
        g.page_tokens,
        store.capacity_tokens(),
        bytesize::ByteSize(g.token_bytes() as u64).display().iec(),
        if common.kv_memory.is_some() {
            ""
        } else {
            " [default; --kv-memory to change]"
        },
    );
    if let Some(d) = store.disk() {
        let st = d.stats();
        eprintln!(
            "KV disk tier: {} holds {} pages ({} of at most {})",
            d.dir().display(),
            st.files,
            bytesize::ByteSize(st.bytes).display().iec(),
            bytesize::ByteSize(d.max_bytes()).display().iec(),
        );
    }
    Ok(store)
}
