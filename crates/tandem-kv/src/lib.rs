//! # tandem-kv
//!
//! The paged KV store. Key and value rows live in fixed-size pages of
//! `page_tokens` positions, allocated once in a pool per NUMA node; a
//! sequence is a block table of page ids, so no cache ever needs one
//! contiguous allocation, and sequences that share a prefix share its pages.
//!
//! | module | role |
//! | --- | --- |
//! | `pages` | [`PageTable`]: reference counts, free list, prefix index, LRU of cached pages (no memory) |
//! | `store` | [`KvStore`] (page memory per node + the table) and [`Sequence`] (a block table per page group) |
//! | `layout` | layer groups: which layers share a page, which pages a windowed group releases |
//! | `disk` | [`DiskTier`]: evicted and persisted pages as checked files, read back on a prefix hit |
//! | `page_image` | [`PageImage`]: a sequence's rows inside one page as checked bytes, for handing KV between processes |
//!
//! A page id names the same page in every node's pool: node `n`'s part
//! holds the KV heads `node_heads[n]` that node computes attention for, so
//! attention reads node-local memory only. Within a node's page the layout
//! is `[layer][K|V][head][token][head_dim]`: one head's rows of one page
//! are a contiguous slab, which is exactly a block for
//! `tandem_kernels::attention::attend_block`. A latent (MLA) cache
//! ([`KvValues::InKeys`]) stores K slabs only: a value is a prefix of its
//! key row. It has one head, so one node's pool holds it; with several
//! nodes that memory is interleaved over all of them, because every
//! node's threads attend over it.
//!
//! Does not know: models, tokens' meaning, attention arithmetic, threads.
//! It is told the geometry and the token ids that filled each page.

mod disk;
mod layout;
mod page_image;
mod pages;
mod store;

pub use disk::{DiskStats, DiskTier, ModelIdentity};
pub use page_image::{encode_page_image, image_bytes, max_image_bytes, PageImage};
pub use pages::{chain_hash, Evicted, PageCounts, PageId, PageTable, ROOT_HASH};
pub use store::{KvGeometry, KvStore, KvValues, RowKey, Sequence, HOLE};
pub use tandem_kernels::attention::KvFormat;

/// Errors of the KV store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The pool cannot hold what was asked.
    #[error("KV pool full: {needed} pages needed, {available} of {total} available")]
    OutOfPages {
        needed: usize,
        available: usize,
        total: usize,
    },
    /// The sequence's own limit (its context length) is reached.
    #[error("context full: {needed} tokens needed, the context holds {limit}")]
    LimitReached { needed: usize, limit: usize },
    #[error("invalid KV geometry: {0}")]
    Geometry(String),
    #[error("KV pool size overflows")]
    TooLarge,
    #[error("KV memory: {0}")]
    Memory(String),
    /// The disk tier's directory cannot be used.
    #[error("KV disk tier: {0}")]
    Disk(String),
    /// A page image (`page_image.rs`) that does not check out.
    #[error("bad KV page image: {0}")]
    BadImage(String),
    /// A broken invariant of this crate (a bug), reported instead of a panic.
    #[error("KV store internal error: {0}")]
    Internal(&'static str),
}
