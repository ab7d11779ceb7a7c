//! The store: page memory on every node, the page table behind a mutex, and
//! [`Sequence`], a block table that holds references to pages.
//!
//! # Memory protocol
//!
//! Page memory is read and written through raw pointers by the decode
//! engine's workers, without the mutex. That is sound because of three
//! rules, each kept by this file:
//!
//! 1. A sequence writes only positions `len..len + n` after
//!    [`Sequence::reserve`]`(n)`, and `reserve` makes the pages holding them
//!    private (one reference, not indexed), copying a shared partial last
//!    page first (copy-on-write). No one else can reach a private page.
//! 2. Pages shared between sequences, or indexed in the prefix cache, are
//!    only read, and only at positions below every holder's `len`.
//! 3. A page returns to the free list or the LRU only when its last
//!    reference is dropped, so memory a sequence reads stays its own until
//!    it releases it, and `&mut Sequence` is needed for every change.
//!
//! The mutex guards the page table only (allocation, reference counts, the
//! index); it is taken per page event, never per token row.
//!
//! The disk tier follows the same rules: an evicted page is written to
//! disk by the sequence that just allocated it (it is private, and that
//! sequence writes it only after `reserve` returns); a page restored from
//! disk is read into a just-allocated page before it is indexed; pages
//! persisted are indexed (read-only) and retained while they are written.
//! File I/O never happens under the table's lock.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use tandem_kernels::attention::KvFormat;
use tandem_numa::NodeMemory;

use crate::disk::DiskTier;
use crate::layout::{salted, Layout};
use crate::pages::{chain_hash, Evicted, PageCounts, PageId, PageTable, ROOT_HASH};
use crate::KvError;

/// Where a position's values are.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum KvValues {
    /// Value rows of `head_dim` values, in slabs of their own.
    #[default]
    Separate,
    /// A position's value is a prefix of its key row (MLA's latent cache:
    /// the key is `[latent | rope part]`, the value the latent), so no
    /// value slabs are stored and reading a value row reads the key row.
    InKeys,
}

/// Shape of the store: what a page of each node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    pub n_layers: usize,
    /// Values per stored key row (and value row, when separate).
    pub head_dim: usize,
    pub values: KvValues,
    /// Tokens per page.
    pub page_tokens: usize,
    pub format: KvFormat,
    /// KV heads held by each node's pool (the decode engine's head split),
    /// in order and together covering `0..n_kv_heads`.
    pub node_heads: Vec<Range<usize>>,
    /// Each layer's sliding window: a query at position `p` reads
    /// positions `p + 1 - window ..= p` of that layer only (None, or an
    /// empty list: the whole prefix). Windowed layers get page groups of
    /// their own whose pages behind the window are released (`layout.rs`).
    pub windows: Vec<Option<usize>>,
}

impl KvGeometry {
    /// Checks the shape: positive sizes, consecutive node head ranges, a
    /// head size the format can store as whole rows (Q8_0: a multiple of
    /// 32), and a page size that fits in `usize`. [`KvStore::new`] calls
    /// it; the size methods below assume it passed.
    pub fn validate(&self) -> Result<(), KvError> {
        let bad = |m: &str| Err(KvError::Geometry(m.to_string()));
        if self.n_layers == 0 || self.head_dim == 0 || self.page_tokens == 0 {
            return bad("layers, head size and page tokens must be positive");
        }
        let block = self.format.block_len();
        if !self.head_dim.is_multiple_of(block) {
            return Err(KvError::Geometry(format!(
                "{} KV needs a head size that is a multiple of {block}, this model's is {}",
                self.format, self.head_dim
            )));
        }
        if self.node_heads.is_empty() {
            return bad("no nodes");
        }
        if !self.windows.is_empty() && self.windows.len() != self.n_layers {
            return bad("one window per layer, or none");
        }
        if self.windows.contains(&Some(0)) {
            return bad("a sliding window must be positive");
        }
        let mut next = 0;
        for r in &self.node_heads {
            if r.start != next || r.end < r.start {
                return bad("node head ranges must be consecutive");
            }
            next = r.end;
        }
        if next == 0 {
            return bad("no KV heads");
        }
        let page = self
            .format
            .row_bytes(self.head_dim)
            .and_then(|r| r.checked_mul(self.page_tokens))
            .and_then(|s| s.checked_mul(self.slots()))
            .and_then(|s| s.checked_mul(self.planes()))
            .and_then(|s| s.checked_mul(next));
        if page.is_none() {
            return Err(KvError::TooLarge);
        }
        Ok(())
    }

    /// Bytes of one token's values of one head (`format.row_bytes`). For a
    /// geometry that [`validate`](Self::validate) refuses because of its
    /// head size, 0.
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.head_dim).unwrap_or(0)
    }

    /// Bytes of one head's rows in one page (a contiguous `page_tokens ×
    /// head_dim` slab).
    pub fn slab_bytes(&self) -> usize {
        self.page_tokens * self.row_bytes()
    }

    /// Slabs per (layer, head): K and V, or K alone when values live in
    /// the keys.
    pub fn planes(&self) -> usize {
        match self.values {
            KvValues::Separate => 2,
            KvValues::InKeys => 1,
        }
    }

    /// Layers one page holds: all of them, unless windowed layers split
    /// them into groups (`layout.rs`).
    pub fn slots(&self) -> usize {
        Layout::new(self).slots
    }

    /// Page groups a sequence has one block table for (1 without windows).
    pub fn n_groups(&self) -> usize {
        Layout::new(self).n_groups()
    }

    /// The geometry of one page as the disk tier and page files see it:
    /// its layer slots, no windows.
    pub fn page_geometry(&self) -> KvGeometry {
        KvGeometry {
            n_layers: self.slots(),
            windows: Vec::new(),
            ..self.clone()
        }
    }

    /// Bytes of one page in `node`'s pool (0 for a node that holds no
    /// heads: an MLA cache has one).
    pub fn node_page_bytes(&self, node: usize) -> usize {
        self.slots() * self.planes() * self.node_heads[node].len() * self.slab_bytes()
    }

    /// Bytes of one page summed over nodes.
    pub fn page_bytes(&self) -> usize {
        (0..self.node_heads.len())
            .map(|n| self.node_page_bytes(n))
            .sum()
    }

    /// KV bytes one layer stores per position (all heads, K and V).
    pub fn layer_bytes(&self) -> usize {
        self.row_bytes() * self.planes() * self.n_kv_heads()
    }

    /// KV bytes one token occupies (all layers, heads, K and V; windowed
    /// layers counted as if they kept every position).
    pub fn token_bytes(&self) -> usize {
        self.n_groups() * self.page_bytes() / self.page_tokens
    }

    /// KV heads over all nodes.
    pub fn n_kv_heads(&self) -> usize {
        self.node_heads.last().map_or(0, |r| r.end)
    }

    /// The node holding global KV head `head`, and its index there.
    pub fn head_home(&self, head: usize) -> (usize, usize) {
        for (node, r) in self.node_heads.iter().enumerate() {
            if r.contains(&head) {
                return (node, head - r.start);
            }
        }
        (0, 0)
    }

    /// Offset of a head's slab within a node's page: slot-major (a
    /// layer's slot in its group's page: [`KvStore::layer_home`]), then K
    /// (0) or V (1), then the node-local head. With values in the keys,
    /// V's slab is K's.
    pub fn slab_offset(&self, node: usize, slot: usize, kv: usize, local_head: usize) -> usize {
        let planes = self.planes();
        let kv = kv.min(planes - 1);
        ((slot * planes + kv) * self.node_heads[node].len() + local_head) * self.slab_bytes()
    }
}

/// A page pool on every node, shared by sequences (see the module docs for
/// who may touch which bytes).
pub struct KvStore {
    geom: KvGeometry,
    /// The layer groups of `geom`, and one page's geometry (`page_geometry`).
    layout: Layout,
    page_geom: KvGeometry,
    /// `geom.node_page_bytes(n)` for each node.
    node_page: Vec<usize>,
    n_pages: usize,
    /// Base of each node's pages (inside `_memory`).
    bases: Vec<*mut u8>,
    _memory: Vec<NodeMemory>,
    table: Mutex<PageTable>,
    /// Where evicted pages go and prefix lookups continue.
    disk: Option<DiskTier>,
}

// SAFETY: the raw bases point into `_memory`, owned by the store and
// never moved or freed while it lives; access to page bytes follows the
// protocol of the module docs, and the page table is behind a mutex.
unsafe impl Send for KvStore {}
// SAFETY: as for `Send` above.
unsafe impl Sync for KvStore {}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("geometry", &self.geom)
            .field("n_pages", &self.n_pages)
            .field("counts", &self.counts())
            .finish()
    }
}

impl KvStore {
    /// A store of `n_pages` pages; node `i`'s memory is placed on machine
    /// node `machine_nodes[i]` (None: anywhere). Memory is mapped, not yet
    /// touched.
    pub fn new(
        geom: KvGeometry,
        n_pages: usize,
        machine_nodes: &[Option<usize>],
    ) -> Result<Arc<KvStore>, KvError> {
        KvStore::new_tiered(geom, n_pages, machine_nodes, None)
    }

    /// [`KvStore::new`] with a disk tier below the pool: evicted pages are
    /// written there and prefix lookups continue there.
    pub fn new_tiered(
        geom: KvGeometry,
        n_pages: usize,
        machine_nodes: &[Option<usize>],
        disk: Option<DiskTier>,
    ) -> Result<Arc<KvStore>, KvError> {
        geom.validate()?;
        if machine_nodes.len() != geom.node_heads.len() {
            return Err(KvError::Geometry(format!(
                "{} memory nodes for {} engine nodes",
                machine_nodes.len(),
                geom.node_heads.len()
            )));
        }
        if n_pages == 0 || n_pages > PageId::MAX as usize {
            return Err(KvError::Geometry(format!("{n_pages} pages")));
        }
        // A latent cache (one head, attended by every node's threads) is
        // spread over every machine node; a head-split cache lives where
        // its heads are attended.
        let mut spread: Vec<usize> = machine_nodes.iter().flatten().copied().collect();
        spread.sort_unstable();
        spread.dedup();
        let shared = geom.values == KvValues::InKeys && machine_nodes.len() > 1;
        let mut memory = Vec::with_capacity(machine_nodes.len());
        for (node, &m) in machine_nodes.iter().enumerate() {
            let bytes = geom
                .node_page_bytes(node)
                .checked_mul(n_pages)
                .ok_or(KvError::TooLarge)?;
            let mem = if shared && bytes > 0 {
                NodeMemory::interleaved(bytes, &spread)
            } else {
                NodeMemory::new(bytes, m)
            };
            memory.push(mem.map_err(|e| KvError::Memory(e.to_string()))?);
        }
        let bases = memory.iter_mut().map(|m| m.as_mut_ptr()).collect();
        let table = Mutex::new(PageTable::new(n_pages, geom.page_tokens));
        let node_page = (0..geom.node_heads.len())
            .map(|n| geom.node_page_bytes(n))
            .collect();
        Ok(Arc::new(KvStore {
            layout: Layout::new(&geom),
            page_geom: geom.page_geometry(),
            node_page,
            geom,
            n_pages,
            bases,
            _memory: memory,
            table,
            disk,
        }))
    }

    /// A store of as many pages as fit in `bytes` (at least one).
    pub fn with_memory(
        geom: KvGeometry,
        bytes: usize,
        machine_nodes: &[Option<usize>],
    ) -> Result<Arc<KvStore>, KvError> {
        geom.validate()?;
        let pages = (bytes / geom.page_bytes().max(1)).max(1);
        KvStore::new(geom, pages, machine_nodes)
    }

    /// Commits the whole pool (every page faulted in on its node, the
    /// bytes left as they are), so a server's pool costs no page faults
    /// while it serves and its resident size is what it will be. Safe at
    /// any time, also while sequences use the pool (the kernel only maps
    /// the pages; it writes nothing), so a server can run it on a thread
    /// of its own while it starts serving. An error where the kernel
    /// cannot (`MADV_POPULATE_WRITE` needs Linux 5.14): the pool then
    /// stays lazy, as before.
    pub fn commit_memory(&self) -> Result<(), KvError> {
        for mem in &self._memory {
            mem.populate()
                .map_err(|e| KvError::Memory(format!("cannot commit the pool: {e}")))?;
        }
        Ok(())
    }

    pub fn geometry(&self) -> &KvGeometry {
        &self.geom
    }

    pub fn n_pages(&self) -> usize {
        self.n_pages
    }

    /// Tokens one sequence can hold in the whole pool (every page full;
    /// windowed groups holding their window).
    pub fn capacity_tokens(&self) -> usize {
        let p = self.geom.page_tokens;
        if !self.layout.has_windows() {
            return self.n_pages * p;
        }
        let full = self.layout.full_groups();
        let windowed: usize = (0..self.layout.n_groups())
            .filter_map(|g| self.layout.windows[g])
            .map(|w| Layout::window_pages(w, p))
            .sum();
        match full {
            // Every layer windowed: any length fits in the window's pages.
            0 if windowed <= self.n_pages => usize::MAX / 2,
            0 => 0,
            _ => self.n_pages.saturating_sub(windowed) / full * p,
        }
    }

    /// Pages a sequence of `tokens` tokens holds at most (over its
    /// groups' block tables).
    pub fn pages_for(&self, tokens: usize) -> usize {
        self.layout.pages_for(tokens, self.geom.page_tokens)
    }

    /// The page group and slot of `layer` (see `layout.rs`).
    pub fn layer_home(&self, layer: usize) -> (usize, usize) {
        self.layout.home.get(layer).copied().unwrap_or((0, 0))
    }

    /// Byte offset of (`layer`, K/V, node-local head)'s slab inside a page
    /// of `layer`'s group in `node`'s pool.
    pub fn slab_offset(&self, node: usize, layer: usize, kv: usize, local_head: usize) -> usize {
        self.geom
            .slab_offset(node, self.layer_home(layer).1, kv, local_head)
    }

    pub fn counts(&self) -> PageCounts {
        self.lock().counts()
    }

    /// The disk tier, if any.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
    }

    /// Writes every indexed page the disk tier lacks to it (e.g. before
    /// exiting, so a restarted process finds the conversations); returns
    /// how many were written. Without a disk tier, does nothing.
    ///
    /// Pages are written in prefix order (a page after its parent), each
    /// one whole or not at all, so a process killed halfway leaves whole
    /// prefixes that the next run uses.
    pub fn persist(&self) -> usize {
        let Some(disk) = &self.disk else { return 0 };
        let pages = self.lock().retain_indexed();
        let mut written = 0;
        for e in &pages {
            if !disk.contains(e.hash) && !disk.write_disabled() {
                // SAFETY: indexed pages are full and read-only (rule 2),
                // and retained until released below.
                written += usize::from(unsafe { self.spill(disk, e) });
            }
        }
        let mut t = self.lock();
        for e in &pages {
            t.release(e.page);
        }
        written
    }

    /// Writes page `e` to the disk tier.
    ///
    /// # Safety
    /// Nobody may write the page meanwhile (the caller holds it, or it is
    /// indexed and retained).
    unsafe fn spill(&self, disk: &DiskTier, e: &Evicted) -> bool {
        let g = &self.page_geom;
        disk.write_page(g, e.hash, e.parent, &e.tokens, |layer, kv, head| {
            let (node, local) = g.head_home(head);
            // SAFETY: the slab is inside the page, which the caller keeps
            // unwritten for the call.
            unsafe {
                std::slice::from_raw_parts(
                    self.slab_ptr(node, e.page, layer, kv, local),
                    g.slab_bytes(),
                )
            }
        })
    }

    /// Spills pages the pool evicted, now held by the caller and not yet
    /// written (rule 1: a just-allocated page is private).
    fn spill_evicted(&self, evicted: &[Evicted]) {
        if let Some(disk) = &self.disk {
            for e in evicted {
                if !disk.contains(e.hash) {
                    // SAFETY: the page was just allocated by the caller,
                    // who writes it only after this returns.
                    unsafe { self.spill(disk, e) };
                }
            }
        }
    }

    /// Start of the slab of (layer `slot`, K/V, node-local head) of `page`
    /// in `node`'s pool.
    fn slab_ptr(&self, node: usize, page: PageId, slot: usize, kv: usize, local: usize) -> *mut u8 {
        let off = self.geom.slab_offset(node, slot, kv, local);
        // SAFETY: slab offsets are inside the node's page.
        unsafe { self.page_ptr(node, page).add(off) }
    }

    /// Forgets every cached (unreferenced) page.
    pub fn clear_cache(&self) {
        self.lock().clear_cache();
    }

    fn lock(&self) -> MutexGuard<'_, PageTable> {
        // The table's invariants hold between calls; a panic elsewhere
        // while holding the lock cannot break them halfway.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start of page `page` in `node`'s pool. Reading or writing through
    /// it must follow the module's protocol.
    pub fn page_ptr(&self, node: usize, page: PageId) -> *mut u8 {
        assert!((page as usize) < self.n_pages && node < self.bases.len());
        // SAFETY: in bounds of the node's mapping (asserted above).
        unsafe { self.bases[node].add(page as usize * self.node_page[node]) }
    }

    /// An empty sequence.
    pub fn new_sequence(self: &Arc<Self>) -> Sequence {
        self.sequence_with_capacity(0)
    }

    /// An empty sequence whose block table is sized for `tokens` tokens, so
    /// growing up to there allocates nothing.
    pub fn sequence_with_capacity(self: &Arc<Self>, tokens: usize) -> Sequence {
        let pages = tokens.div_ceil(self.geom.page_tokens);
        let groups = self.layout.n_groups();
        Sequence {
            store: Arc::clone(self),
            tables: vec![Vec::with_capacity(pages); groups],
            live_from: vec![0; groups],
            release: true,
            cow: Vec::with_capacity(groups),
            len: 0,
            tokens: Vec::with_capacity(tokens),
            hashes: Vec::with_capacity(pages),
            limit: None,
            ahead: VecDeque::new(),
            ahead_base: 0,
        }
    }

    /// A sequence that starts with the longest cached prefix of `tokens`
    /// (whole pages, leaving at least one token to compute so there are
    /// logits to sample from). Its `len()` says how many tokens it holds.
    ///
    /// Pages are found in RAM, else in the disk tier. A page found in
    /// neither (evicted, or its file damaged) is a hole, not the end: the
    /// cached pages after it are held too, and [`Sequence::resume_at`]
    /// says where they start. The caller computes the hole's tokens (their
    /// K/V do not depend on later positions), and the commit that fills
    /// the hole makes the sequence take those pages over: a missing page
    /// costs only its own tokens. A caller that writes past
    /// `resume_at` in one step gets them recomputed instead (correct, only
    /// slower).
    ///
    /// With page groups (windowed layers), a prefix needs every group's
    /// pages except a windowed group's pages behind the window at its
    /// end; the lookup stops at the first page a whole-prefix group lacks
    /// (no holes there).
    pub fn sequence_with_prefix(self: &Arc<Self>, tokens: &[u32]) -> Sequence {
        if self.layout.has_windows() {
            return self.grouped_prefix(tokens);
        }
        let p = self.geom.page_tokens;
        let mut seq = self.new_sequence();
        let mut parent = ROOT_HASH;
        let mut ahead: VecDeque<Option<AheadPage>> = VecDeque::new();
        for chunk in tokens[..tokens.len().saturating_sub(1)].chunks_exact(p) {
            let h = chain_hash(parent, chunk);
            match self.find_page(0, parent, h, chunk) {
                Some(page) if ahead.is_empty() => {
                    seq.tables[0].push(page);
                    seq.hashes.push(h);
                }
                Some(page) => ahead.push_back(Some(AheadPage {
                    page,
                    hash: h,
                    tokens: chunk.into(),
                })),
                None => ahead.push_back(None),
            }
            parent = h;
        }
        while let Some(None) = ahead.back() {
            ahead.pop_back();
        }
        seq.len = seq.tables[0].len() * p;
        seq.tokens.extend_from_slice(&tokens[..seq.len]);
        seq.ahead_base = seq.tables[0].len();
        seq.ahead = ahead;
        seq
    }

    /// Held page of group `g` for the chunk of chain hash `h`, from RAM
    /// or the disk tier.
    fn find_page(&self, g: usize, parent: u64, h: u64, chunk: &[u32]) -> Option<PageId> {
        let (sh, sp) = (salted(h, g), salted(parent, g));
        let in_ram = {
            let mut t = self.lock();
            let page = t.lookup(sh, sp, chunk);
            if let Some(page) = page {
                t.retain(page);
            }
            page
        };
        in_ram.or_else(|| self.restore(sp, sh, chunk))
    }

    /// [`KvStore::sequence_with_prefix`] with page groups.
    fn grouped_prefix(self: &Arc<Self>, tokens: &[u32]) -> Sequence {
        let p = self.geom.page_tokens;
        let groups = self.layout.n_groups();
        let mut seq = self.new_sequence();
        // found[g][i]: group g's page of chunk i (None: a windowed miss).
        let mut found: Vec<Vec<Option<PageId>>> = vec![Vec::new(); groups];
        let mut hashes = Vec::new();
        let mut parent = ROOT_HASH;
        for chunk in tokens[..tokens.len().saturating_sub(1)].chunks_exact(p) {
            let h = chain_hash(parent, chunk);
            let pages: Vec<Option<PageId>> = (0..groups)
                .map(|g| self.find_page(g, parent, h, chunk))
                .collect();
            let whole = (0..groups).all(|g| self.layout.windows[g].is_some() || pages[g].is_some());
            if !whole {
                let mut t = self.lock();
                pages.into_iter().flatten().for_each(|pg| t.release(pg));
                break;
            }
            for (g, pg) in pages.into_iter().enumerate() {
                found[g].push(pg);
            }
            hashes.push(h);
            parent = h;
        }
        // The longest prefix whose windowed groups hold their window.
        let intact = |l: usize| {
            (0..groups).all(|g| match self.layout.windows[g] {
                None => true,
                Some(w) => {
                    let first = (l * p + 1).saturating_sub(w) / p;
                    found[g][first.min(l)..l].iter().all(Option::is_some)
                }
            })
        };
        let mut l = hashes.len();
        while l > 0 && !intact(l) {
            l -= 1;
        }
        let mut t = self.lock();
        for (g, pages) in found.into_iter().enumerate() {
            let dead = match self.layout.windows[g] {
                Some(w) => Layout::dead_pages(w, l * p, p).min(l),
                None => 0,
            };
            for (i, pg) in pages.into_iter().enumerate() {
                match pg {
                    Some(pg) if i < l && i >= dead => seq.tables[g].push(pg),
                    Some(pg) => {
                        t.release(pg);
                        if i < l {
                            seq.tables[g].push(HOLE);
                        }
                    }
                    None if i < l => seq.tables[g].push(HOLE),
                    None => {}
                }
            }
            seq.live_from[g] = dead;
        }
        drop(t);
        hashes.truncate(l);
        seq.hashes = hashes;
        seq.len = l * p;
        seq.tokens.extend_from_slice(&tokens[..seq.len]);
        seq
    }

    /// Reads the page of (`parent`, `chunk`) from the disk tier into a new
    /// page, indexes it and returns it (held once). None when there is no
    /// disk tier, no usable file or no page to put it in.
    fn restore(&self, parent: u64, h: u64, chunk: &[u32]) -> Option<PageId> {
        let disk = self.disk.as_ref()?;
        if !disk.contains(h) {
            return None;
        }
        let (page, evicted) = self.lock().alloc()?;
        self.spill_evicted(evicted.as_slice());
        let g = &self.page_geom;
        let ok = disk.read_page(g, h, parent, chunk, |layer, kv, head| {
            let (node, local) = g.head_home(head);
            // SAFETY: `page` was just allocated (private, rule 1) and its
            // slab is inside it.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.slab_ptr(node, page, layer, kv, local),
                    g.slab_bytes(),
                )
            }
        });
        let mut t = self.lock();
        if !ok {
            t.release(page);
            return None;
        }
        t.register(page, h, parent, chunk);
        Some(page)
    }

    /// Copies every node's bytes of page `from` to page `to`.
    fn copy_page(&self, from: PageId, to: PageId) {
        for node in 0..self.bases.len() {
            let n = self.node_page[node];
            // SAFETY: `to` is private to the caller (just allocated) and
            // `from` is only read; both are in bounds and distinct pages.
            unsafe {
                std::ptr::copy_nonoverlapping(self.page_ptr(node, from), self.page_ptr(node, to), n)
            };
        }
    }
}

/// Which stored row [`Sequence::append_rows`] asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RowKey {
    pub node: usize,
    pub layer: usize,
    /// 0: key, 1: value.
    pub kv: usize,
    /// Head index within the node's heads.
    pub head: usize,
    pub pos: usize,
}

/// A released page's place in a windowed group's block table.
pub const HOLE: PageId = PageId::MAX;

/// The held pages among `pages` (not [`HOLE`]s).
fn live<'a>(pages: impl IntoIterator<Item = &'a PageId>) -> impl Iterator<Item = PageId> {
    pages.into_iter().copied().filter(|&p| p != HOLE)
}

/// A cached page past a hole of [`KvStore::sequence_with_prefix`], held
/// until the sequence reaches it.
struct AheadPage {
    page: PageId,
    hash: u64,
    tokens: Box<[u32]>,
}

/// One sequence's cached tokens: a block table of page references.
/// Dropping it releases the pages (indexed full pages stay cached).
pub struct Sequence {
    store: Arc<KvStore>,
    /// A block table per page group (`layout.rs`); all equally long, a
    /// windowed group's released pages are [`HOLE`]s.
    tables: Vec<Vec<PageId>>,
    /// Per group, the pages before this index are released (holes).
    live_from: Vec<usize>,
    /// Whether windowed groups release pages behind the window.
    release: bool,
    /// `reserve`'s copy-on-write list (group, fresh page), kept to reuse
    /// its allocation (decode reserves every step).
    cow: Vec<(usize, PageId)>,
    len: usize,
    /// The token at each cached position (the prefix cache's keys).
    tokens: Vec<u32>,
    /// Chain hash of each full page, in order.
    hashes: Vec<u64>,
    /// Most tokens the sequence may hold (None: what the pool gives).
    limit: Option<usize>,
    /// Pages `ahead_base..` past a hole (None: a page to compute; never
    /// last), taken over when the sequence reaches them.
    ahead: VecDeque<Option<AheadPage>>,
    ahead_base: usize,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("len", &self.len)
            .field("pages", &self.tables)
            .finish()
    }
}

impl Sequence {
    /// Tokens cached (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The first page group's block table: page `i` holds positions
    /// `i·P..(i+1)·P` (the whole table when no layer is windowed).
    pub fn pages(&self) -> &[PageId] {
        &self.tables[0]
    }

    /// The block table of `layer`'s page group (a windowed group's pages
    /// behind the window are [`HOLE`]s), and the layer's slot in them.
    pub fn layer_pages(&self, layer: usize) -> (&[PageId], usize) {
        let (g, slot) = self.store.layer_home(layer);
        (&self.tables[g], slot)
    }

    /// Pages this sequence holds, over every group (held ahead too).
    pub fn held_pages(&self) -> usize {
        live(self.tables.iter().flatten()).count() + self.ahead.iter().flatten().count()
    }

    /// Keeps every row of windowed layers (no release behind the window):
    /// for a prefill worker, whose pages are copied out after they are
    /// written.
    pub fn keep_window_rows(mut self) -> Sequence {
        self.release = false;
        self
    }

    /// Releases windowed groups' pages that no query at `len` or later
    /// reads (see [`Layout::dead_pages`]).
    fn release_dead(&mut self) {
        if !self.release {
            return;
        }
        let p = self.store.geom.page_tokens;
        for g in 0..self.tables.len() {
            let Some(w) = self.store.layout.windows[g] else {
                continue;
            };
            let dead = Layout::dead_pages(w, self.len, p).min(self.tables[g].len());
            if dead <= self.live_from[g] {
                continue;
            }
            let mut t = self.store.lock();
            for page in &mut self.tables[g][self.live_from[g]..dead] {
                if *page != HOLE {
                    t.release(*page);
                    *page = HOLE;
                }
            }
            self.live_from[g] = dead;
        }
    }

    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    /// Caps the tokens this sequence may hold (a context length), below
    /// what its pool could give it.
    pub fn with_limit(mut self, tokens: usize) -> Sequence {
        self.limit = Some(tokens);
        self
    }

    /// Where cached pages past a hole start (see
    /// [`KvStore::sequence_with_prefix`]): a writer should end a step
    /// there; the commit that reaches it moves `len` past those pages.
    /// None: nothing cached ahead.
    pub fn resume_at(&self) -> Option<usize> {
        let first = self.ahead.iter().position(Option::is_some)?;
        Some((self.ahead_base + first) * self.store.geom.page_tokens)
    }

    /// Releases the pages held past a hole.
    fn drop_ahead(&mut self) {
        if self.ahead.is_empty() {
            return;
        }
        let mut t = self.store.lock();
        for a in self.ahead.drain(..).flatten() {
            t.release(a.page);
        }
    }

    /// Takes over the pages held ahead once `len` reaches them.
    fn absorb_ahead(&mut self) {
        let p = self.store.geom.page_tokens;
        while !self.ahead.is_empty() && self.len.is_multiple_of(p) {
            let next = self.len / p;
            if next < self.ahead_base {
                return;
            }
            if next > self.ahead_base {
                // The hole at ahead_base was computed.
                if let Some(Some(skipped)) = self.ahead.pop_front() {
                    // Written over instead of taken: not ours any more.
                    self.store.lock().release(skipped.page);
                }
                self.ahead_base += 1;
                continue;
            }
            match self.ahead.front() {
                Some(Some(_)) if self.tables[0].len() == next && self.hashes.len() == next => {
                    if let Some(Some(a)) = self.ahead.pop_front() {
                        self.tables[0].push(a.page);
                        self.hashes.push(a.hash);
                        self.tokens.extend_from_slice(&a.tokens);
                        self.len += p;
                        self.ahead_base += 1;
                    }
                }
                Some(Some(_)) => return self.drop_ahead(),
                _ => return,
            }
        }
    }

    /// The most tokens the sequence can hold now: its limit, else what it
    /// has plus every page the pool could still hand out.
    pub fn capacity(&self) -> usize {
        let p = self.store.geom.page_tokens;
        let held = self.tables[0].len() + self.ahead.iter().flatten().count();
        let growing = self.store.layout.full_groups();
        let pool = match growing {
            // Every layer windowed: the window's pages are reused.
            0 => usize::MAX / 2,
            n => (held + self.store.lock().available() / n) * p,
        };
        self.limit.map_or(pool, |l| l.min(pool.max(self.len)))
    }

    /// Makes positions `len..len + n` writable: allocates the pages they
    /// need and copies a shared or indexed partial last page. All or
    /// nothing: on error the sequence is unchanged.
    pub fn reserve(&mut self, n: usize) -> Result<(), KvError> {
        self.reserve_pages(n, false)
    }

    /// [`reserve`](Self::reserve) for `n` positions whose rows all arrive
    /// from elsewhere before any query here reads them (a prefill
    /// worker's page images): a windowed group gets no page for the
    /// positions no query at `len + n` or later reads (they stay
    /// [`HOLE`]s, see [`is_hole`](Self::is_hole), and their rows are not
    /// written), so a long prompt handed off takes its windowed layers'
    /// window, not the whole prompt, from the pool. A forward pass here
    /// must not write the reserved positions as they are (its queries
    /// read the rows behind them): to compute them here instead,
    /// [`truncate`](Self::truncate) first.
    pub fn reserve_final(&mut self, n: usize) -> Result<(), KvError> {
        self.reserve_pages(n, true)
    }

    /// Whether `layer`'s row at `pos` has no page (its windowed group
    /// released it, or [`reserve_final`](Self::reserve_final) never took
    /// one); false for positions past the reserved pages.
    pub fn is_hole(&self, layer: usize, pos: usize) -> bool {
        let (group, _) = self.store.layer_home(layer);
        let p = self.store.geom.page_tokens.max(1);
        self.tables.get(group).and_then(|t| t.get(pos / p)) == Some(&HOLE)
    }

    fn reserve_pages(&mut self, n: usize, final_rows: bool) -> Result<(), KvError> {
        let p = self.store.geom.page_tokens;
        if let Some(limit) = self.limit {
            if self.len + n > limit {
                return Err(KvError::LimitReached {
                    needed: self.len + n,
                    limit,
                });
            }
        }
        if self.resume_at().is_some_and(|r| self.len + n > r) {
            // This step would write over pages held ahead: recompute them.
            self.drop_ahead();
        }
        let need_pages = (self.len + n).div_ceil(p);
        let new_pages = need_pages.saturating_sub(self.tables[0].len());
        let partial = !self.len.is_multiple_of(p) && n > 0;
        let groups = self.tables.len();
        let last = self.len / p;
        let mut evicted: Vec<Evicted> = Vec::new();
        let mut t = self.store.lock();
        // A group's partial last page is shared or indexed: copy it.
        let cow = |t: &PageTable, tables: &[Vec<PageId>], g: usize| {
            partial && tables[g][last] != HOLE && !t.is_private(tables[g][last])
        };
        let cows = (0..groups).filter(|&g| cow(&t, &self.tables, g)).count();
        // Per group, the new pages left as holes (`reserve_final`): the
        // pages a windowed group releases once `len + n` is committed.
        let have = self.tables[0].len();
        let holes = |g: usize| match self.store.layout.windows[g] {
            Some(w) if final_rows && self.release => Layout::dead_pages(w, self.len + n, p)
                .saturating_sub(have)
                .min(new_pages),
            _ => 0,
        };
        let wanted = (0..groups).map(|g| new_pages - holes(g)).sum::<usize>() + cows;
        if t.available() < wanted {
            return Err(KvError::OutOfPages {
                needed: wanted,
                available: t.available(),
                total: t.n_pages(),
            });
        }
        for g in 0..groups {
            if cow(&t, &self.tables, g) {
                let (fresh, ev) = t.alloc().ok_or(KvError::Internal("alloc after check"))?;
                evicted.extend(ev);
                // Copy-on-write: the shared page stays retained by this
                // sequence until the copy is done, so it cannot be
                // reused; the copy waits for the spills below.
                self.cow.push((g, fresh));
            }
            let h = holes(g);
            self.tables[g].extend(std::iter::repeat_n(HOLE, h));
            for _ in h..new_pages {
                let (fresh, ev) = t.alloc().ok_or(KvError::Internal("alloc after check"))?;
                evicted.extend(ev);
                self.tables[g].push(fresh);
            }
        }
        drop(t);
        // The new pages are this sequence's alone and written only after
        // `reserve` returns: their old contents can go to disk now,
        // outside the table's lock.
        self.store.spill_evicted(&evicted);
        while let Some((g, fresh)) = self.cow.pop() {
            let old = self.tables[g][last];
            self.store.copy_page(old, fresh);
            self.store.lock().release(old);
            self.tables[g][last] = fresh;
        }
        Ok(())
    }

    /// Records that positions `len..len + tokens.len()` were written (after
    /// `reserve`), and indexes the pages this fills.
    pub fn commit(&mut self, tokens: &[u32]) -> Result<(), KvError> {
        let p = self.store.geom.page_tokens;
        if (self.len + tokens.len()).div_ceil(p) > self.tables[0].len() {
            return Err(KvError::Internal("commit beyond reserved pages"));
        }
        self.tokens.extend_from_slice(tokens);
        self.len += tokens.len();
        let full = self.len / p;
        if full > self.hashes.len() {
            let mut t = self.store.lock();
            for i in self.hashes.len()..full {
                let parent = i.checked_sub(1).map_or(ROOT_HASH, |j| self.hashes[j]);
                let chunk = &self.tokens[i * p..(i + 1) * p];
                let h = chain_hash(parent, chunk);
                for (g, table) in self.tables.iter().enumerate() {
                    if table[i] != HOLE {
                        t.register(table[i], salted(h, g), salted(parent, g), chunk);
                    }
                }
                self.hashes.push(h);
            }
        }
        self.release_dead();
        self.absorb_ahead();
        Ok(())
    }

    /// Whether every row a query at position `n` reads is held (a
    /// windowed group may have released some, or never taken them:
    /// [`reserve_final`](Self::reserve_final)), so that the sequence can
    /// be truncated to `n` and go on from there.
    pub fn resumable_at(&self, n: usize) -> bool {
        let p = self.store.geom.page_tokens;
        !(0..self.tables.len()).any(|g| {
            self.store.layout.windows[g].is_some_and(|w| {
                let first = (n + 1).saturating_sub(w) / p;
                let keep = n.div_ceil(p).min(self.tables[g].len());
                self.tables[g][first.min(keep)..keep].contains(&HOLE)
            })
        })
    }

    /// Forgets positions `n..` (pages past them are released).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        self.drop_ahead();
        let p = self.store.geom.page_tokens;
        // A windowed group that released rows a query at `n` reads
        // cannot resume there: start over (correct, only slower).
        let n = if self.resumable_at(n) { n } else { 0 };
        self.release_pages_from(n.div_ceil(p));
        self.hashes.truncate(n / p);
        self.tokens.truncate(n);
        self.len = n;
    }

    /// Gives back the pages reserved past `len` (holes included), so that
    /// the next [`reserve`](Self::reserve) takes them afresh: a hand-off
    /// taken back is computed here, by a forward pass that writes every
    /// layer's rows ([`reserve_final`](Self::reserve_final) left holes).
    pub fn release_reserved(&mut self) {
        self.release_pages_from(self.len.div_ceil(self.store.geom.page_tokens));
    }

    /// Releases every group's pages from index `keep` on.
    fn release_pages_from(&mut self, keep: usize) {
        let mut t = self.store.lock();
        for table in &mut self.tables {
            live(&table[keep.min(table.len())..]).for_each(|page| t.release(page));
            table.truncate(keep);
        }
        drop(t);
        for l in &mut self.live_from {
            *l = (*l).min(keep);
        }
    }

    /// Forgets everything (pages held ahead too).
    pub fn clear(&mut self) {
        self.drop_ahead();
        self.truncate(0);
    }

    /// A second sequence sharing every page of this one (copy-on-write on
    /// the next write to a shared partial page).
    pub fn fork(&self) -> Sequence {
        let mut t = self.store.lock();
        live(self.tables.iter().flatten()).for_each(|page| t.retain(page));
        drop(t);
        Sequence {
            store: Arc::clone(&self.store),
            tables: self.tables.clone(),
            live_from: self.live_from.clone(),
            release: self.release,
            cow: Vec::new(),
            len: self.len,
            tokens: self.tokens.clone(),
            hashes: self.hashes.clone(),
            limit: self.limit,
            ahead: VecDeque::new(),
            ahead_base: 0,
        }
    }

    /// Appends `tokens` whose stored K/V rows `write` fills in, without a
    /// model: for benchmarks that need a long context in seconds, and for
    /// tests. `write` is called once per (node, layer, K/V, node-local head,
    /// position) with that row's bytes. All or nothing, as `reserve`.
    pub fn append_rows(
        &mut self,
        tokens: &[u32],
        mut write: impl FnMut(RowKey, &mut [u8]),
    ) -> Result<(), KvError> {
        self.reserve(tokens.len())?;
        let g = &self.store.geom;
        for (node, heads) in g.node_heads.iter().enumerate() {
            for layer in 0..g.n_layers {
                for kv in 0..g.planes() {
                    for head in 0..heads.len() {
                        for pos in self.len..self.len + tokens.len() {
                            let key = RowKey {
                                node,
                                layer,
                                kv,
                                head,
                                pos,
                            };
                            let ptr = self.row_ptr(node, layer, kv, head, pos)?;
                            // SAFETY: `pos` was reserved just now (a private
                            // page, rule 1 of the module docs) and the row is
                            // `row_bytes` inside it.
                            let row = unsafe { std::slice::from_raw_parts_mut(ptr, g.row_bytes()) };
                            write(key, row);
                        }
                    }
                }
            }
        }
        self.commit(tokens)
    }

    /// Where position `pos`'s row of (`layer`, K = 0 / V = 1, node-local
    /// head) is in `node`'s pool: `row_bytes` bytes inside a page this
    /// sequence holds. Every index is checked (an error, not a pointer
    /// outside the pool); reading or writing through the pointer is the
    /// caller's `unsafe`, under the module's memory protocol (write only
    /// reserved positions of private pages, read only positions below
    /// every holder's `len`).
    pub fn row_ptr(
        &self,
        node: usize,
        layer: usize,
        kv: usize,
        local_head: usize,
        pos: usize,
    ) -> Result<*mut u8, KvError> {
        let g = &self.store.geom;
        let heads = g.node_heads.get(node).map_or(0, |r| r.len());
        let (group, slot) = self.store.layer_home(layer);
        let page = self.tables[group].get(pos / g.page_tokens.max(1));
        let Some(&page) = page
            .filter(|&&p| p != HOLE && layer < g.n_layers && kv < g.planes() && local_head < heads)
        else {
            return Err(KvError::Geometry(format!(
                "row (node {node}, layer {layer}, kv {kv}, head {local_head}, position {pos}) \
                 outside the sequence's pages"
            )));
        };
        let off = g.slab_offset(node, slot, kv, local_head) + (pos % g.page_tokens) * g.row_bytes();
        // SAFETY: with the indices checked above, `off` plus a row lies
        // within the node's page (slab offsets are), and `page` is held.
        Ok(unsafe { self.store.page_ptr(node, page).add(off) })
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        self.drop_ahead();
        let mut t = self.store.lock();
        live(self.tables.iter().flatten()).for_each(|page| t.release(page));
    }
}
