//! Page bookkeeping without memory: reference counts, the free list, the
//! prefix index and the LRU of cached pages nobody references.
//!
//! A page is in exactly one of three states:
//!
//! | state | `refs` | indexed | where |
//! | --- | --- | --- | --- |
//! | free | 0 | no | `free` |
//! | in use | ≥ 1 | maybe | block tables of sequences |
//! | cached | 0 | yes | `lru` (oldest release first) |
//!
//! [`PageTable::alloc`] takes a free page, else evicts the least recently
//! released cached page (it leaves the index). Releasing the last reference
//! of an indexed page makes it cached; of any other page, free. A page is
//! indexed only when full, under the hash chained over (parent page hash,
//! its token ids); a lookup compares the tokens and the parent hash too, so
//! a hash collision is a miss, never a wrong page.
//!
//! Writers: a sequence may write into a page only while it holds the only
//! reference and the page is not indexed ([`PageTable::is_private`]);
//! anything else is copied first (copy-on-write, done by the store).

use std::collections::{BTreeMap, HashMap};

/// Index of a page in every node's pool.
pub type PageId = u32;

#[derive(Clone, Debug, Default)]
struct Meta {
    refs: u32,
    /// Chain hash under which the page is indexed.
    hash: Option<u64>,
    /// Parent hash of an indexed page.
    parent: u64,
    /// Key in `lru` while cached.
    lru_tick: Option<u64>,
}

/// Counts of pages per state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PageCounts {
    pub free: usize,
    pub in_use: usize,
    pub cached: usize,
}

/// An indexed page's identity: a cached page evicted to make room (what
/// the store may spill), or a page to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evicted {
    pub page: PageId,
    pub hash: u64,
    pub parent: u64,
    pub tokens: Box<[u32]>,
}

/// The bookkeeping of a pool of pages. Registering, retaining and
/// releasing pages never allocates (the index and the token store are
/// sized for every page up front), so a decode step that fills a page
/// allocates nothing; only the LRU's tree nodes and an eviction's report
/// do.
#[derive(Debug)]
pub struct PageTable {
    meta: Vec<Meta>,
    free: Vec<PageId>,
    lru: BTreeMap<u64, PageId>,
    tick: u64,
    index: HashMap<u64, PageId>,
    /// Token ids of each indexed page (`page_tokens` per page).
    tokens: Vec<u32>,
    page_tokens: usize,
}

/// The hash of a full page: chained over its parent's hash and its tokens.
/// Stable across runs and builds (xxh3 of little-endian token ids, seeded
/// with the parent hash), so the disk tier can key files by it.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(parent);
    tokens.iter().for_each(|t| h.update(&t.to_le_bytes()));
    h.digest()
}

/// The parent hash of a sequence's first page.
pub const ROOT_HASH: u64 = 0x7461_6e64_656d_6b76; // "tandemkv"

impl PageTable {
    /// A table of `n_pages` free pages of `page_tokens` tokens.
    pub fn new(n_pages: usize, page_tokens: usize) -> PageTable {
        PageTable {
            meta: vec![Meta::default(); n_pages],
            // Pop from the end: low ids first.
            free: (0..n_pages as PageId).rev().collect(),
            lru: BTreeMap::new(),
            tick: 0,
            index: HashMap::with_capacity(n_pages),
            tokens: vec![0; n_pages * page_tokens],
            page_tokens,
        }
    }

    fn page_tokens_of(&self, p: PageId) -> &[u32] {
        let i = p as usize * self.page_tokens;
        &self.tokens[i..i + self.page_tokens]
    }

    pub fn n_pages(&self) -> usize {
        self.meta.len()
    }

    pub fn counts(&self) -> PageCounts {
        let cached = self.lru.len();
        let free = self.free.len();
        PageCounts {
            free,
            cached,
            in_use: self.meta.len() - free - cached,
        }
    }

    /// Pages an `alloc` can return now (free + cached).
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    pub fn refs(&self, p: PageId) -> u32 {
        self.meta[p as usize].refs
    }

    /// Whether the only holder may write into `p`.
    pub fn is_private(&self, p: PageId) -> bool {
        let m = &self.meta[p as usize];
        m.refs == 1 && m.hash.is_none()
    }

    /// A page with one reference, or None when every page is in use. An
    /// evicted cached page is reported so its contents can be spilled
    /// before they are overwritten.
    pub fn alloc(&mut self) -> Option<(PageId, Option<Evicted>)> {
        if let Some(p) = self.free.pop() {
            self.meta[p as usize].refs = 1;
            return Some((p, None));
        }
        let (_, p) = self.lru.pop_first()?;
        let m = &mut self.meta[p as usize];
        m.lru_tick = None;
        m.refs = 1;
        let hash = m.hash.take();
        let parent = m.parent;
        let evicted = hash.map(|hash| {
            self.index.remove(&hash);
            Evicted {
                page: p,
                hash,
                parent,
                tokens: self.page_tokens_of(p).into(),
            }
        });
        Some((p, evicted))
    }

    /// One more reference to an in-use or cached page.
    pub fn retain(&mut self, p: PageId) {
        let m = &mut self.meta[p as usize];
        if let Some(t) = m.lru_tick.take() {
            self.lru.remove(&t);
        }
        m.refs += 1;
    }

    /// Drops a reference; the last one makes the page cached (indexed) or
    /// free.
    pub fn release(&mut self, p: PageId) {
        let m = &mut self.meta[p as usize];
        debug_assert!(m.refs > 0, "release of unreferenced page {p}");
        m.refs = m.refs.saturating_sub(1);
        if m.refs > 0 {
            return;
        }
        if m.hash.is_some() {
            self.tick += 1;
            m.lru_tick = Some(self.tick);
            self.lru.insert(self.tick, p);
        } else {
            self.free.push(p);
        }
    }

    /// Indexes full page `p` (held by the caller) under `hash`. Returns
    /// false (and changes nothing) when the hash is already indexed, e.g.
    /// by another sequence that computed the same prefix.
    pub fn register(&mut self, p: PageId, hash: u64, parent: u64, tokens: &[u32]) -> bool {
        if tokens.len() != self.page_tokens
            || self.index.contains_key(&hash)
            || self.meta[p as usize].hash.is_some()
        {
            return false;
        }
        self.index.insert(hash, p);
        let i = p as usize * self.page_tokens;
        self.tokens[i..i + self.page_tokens].copy_from_slice(tokens);
        let m = &mut self.meta[p as usize];
        m.hash = Some(hash);
        m.parent = parent;
        true
    }

    /// The page indexed for exactly (parent, tokens), if any.
    pub fn lookup(&self, hash: u64, parent: u64, tokens: &[u32]) -> Option<PageId> {
        let &p = self.index.get(&hash)?;
        (self.meta[p as usize].parent == parent && self.page_tokens_of(p) == tokens).then_some(p)
    }

    /// Every indexed page (in use or cached) with its hash, parent and
    /// tokens, retained once each so none is evicted while the caller
    /// reads it; the caller releases them. In prefix order: a page comes
    /// after its parent (when the parent is indexed), so a writer that
    /// stops halfway has written whole prefixes.
    pub fn retain_indexed(&mut self) -> Vec<Evicted> {
        let mut out = Vec::with_capacity(self.index.len());
        for (&hash, &p) in &self.index {
            out.push(Evicted {
                page: p,
                hash,
                parent: self.meta[p as usize].parent,
                tokens: self.page_tokens_of(p).into(),
            });
        }
        // Depth in the chain of indexed pages (0: the parent is not
        // indexed), memoized; the walk is iterative and bounded by the
        // number of pages, so a (impossible) cycle cannot hang it.
        let mut depth: HashMap<u64, usize> = HashMap::with_capacity(out.len());
        let mut path = Vec::new();
        for e in &out {
            let mut h = e.hash;
            path.clear();
            let base = loop {
                if let Some(&d) = depth.get(&h) {
                    break d + 1;
                }
                let Some(&p) = self.index.get(&h) else {
                    break 0;
                };
                if path.len() > self.index.len() {
                    break 0;
                }
                path.push(h);
                h = self.meta[p as usize].parent;
            };
            for (i, &h) in path.iter().rev().enumerate() {
                depth.insert(h, base + i);
            }
        }
        out.sort_by_key(|e| (depth.get(&e.hash).copied().unwrap_or(0), e.hash));
        for e in &out {
            self.retain(e.page);
        }
        out
    }

    /// Drops every cached page from the index (they become free).
    pub fn clear_cache(&mut self) {
        while let Some((_, p)) = self.lru.pop_first() {
            let m = &mut self.meta[p as usize];
            m.lru_tick = None;
            if let Some(h) = m.hash.take() {
                self.index.remove(&h);
            }
            self.free.push(p);
        }
    }
}
