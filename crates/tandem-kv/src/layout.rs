//! Layer groups: which layers share a page, and which pages a sequence
//! may let go of.
//!
//! When every layer attends to the whole prefix there is one group and a
//! page holds every layer (the layout before groups existed, byte for
//! byte). With sliding-window layers (gpt-oss, Gemma 2/3) a windowed
//! layer never reads a position more than its window behind the newest
//! one, so its rows there are dead weight. Layers are then grouped by
//! window, and each group has its own block table in every sequence; a
//! windowed group's pages that fell behind the window are released.
//!
//! Every group has the same number of layer slots, so pages stay one size
//! and one pool and one page table serve all groups (vLLM's hybrid
//! allocator does the same): gpt-oss's 18 + 18 layers are two groups of
//! 18; Gemma 3's 5:1 pattern gives groups of the global layers' count,
//! the last windowed group padded. A group's page registers in the prefix
//! cache under the chain hash salted with the group, so its pages, the
//! disk tier's files and the LRU treat each group's pages like any other.
//!
//! Does not know: attention. It is told each layer's window.

use crate::pages::chain_hash;
use crate::store::KvGeometry;

/// The groups of a geometry (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Layer slots in a page (every group has this many).
    pub slots: usize,
    /// `(group, slot)` of each layer.
    pub home: Vec<(usize, usize)>,
    /// The window of each group's layers (None: the whole prefix).
    pub windows: Vec<Option<usize>>,
}

impl Layout {
    /// The groups for `g` (its `windows`; empty: every layer full).
    pub fn new(g: &KvGeometry) -> Layout {
        let n = g.n_layers;
        let win = |l: usize| g.windows.get(l).copied().flatten();
        // Kinds of layer, the whole-prefix kind first.
        let mut kinds: Vec<Option<usize>> = Vec::new();
        for l in 0..n {
            if !kinds.contains(&win(l)) {
                kinds.push(win(l));
            }
        }
        kinds.sort_unstable();
        let count = |k: Option<usize>| (0..n).filter(|&l| win(l) == k).count();
        let slots = kinds.iter().map(|&k| count(k)).min().unwrap_or(n).max(1);
        let mut home = vec![(0, 0); n];
        let mut windows = Vec::new();
        for &k in &kinds {
            let layers: Vec<usize> = (0..n).filter(|&l| win(l) == k).collect();
            for chunk in layers.chunks(slots) {
                for (slot, &l) in chunk.iter().enumerate() {
                    home[l] = (windows.len(), slot);
                }
                windows.push(k);
            }
        }
        if windows.is_empty() {
            windows.push(None);
        }
        Layout {
            slots,
            home,
            windows,
        }
    }

    pub fn n_groups(&self) -> usize {
        self.windows.len()
    }

    /// Whether some group is windowed (else one whole-prefix group: the
    /// layout before groups).
    pub fn has_windows(&self) -> bool {
        self.windows.iter().any(Option::is_some)
    }

    /// Groups whose pages a long sequence keeps all of.
    pub fn full_groups(&self) -> usize {
        self.windows.iter().filter(|w| w.is_none()).count()
    }

    /// Pages a windowed group's table keeps alive at most, beyond which
    /// [`Layout::dead_pages`] releases: the window, the partial page at
    /// each end, and one page of slack so a sequence can step back a
    /// page (a re-run last token) without reading a released row.
    pub fn window_pages(window: usize, page_tokens: usize) -> usize {
        window.div_ceil(page_tokens) + 3
    }

    /// Pages at the front of a group's table that no query at position
    /// `len` or later reads, for a group of window `window`: those whose
    /// last position is before `len + 1 - window`, less one page of
    /// slack. Page `i` is dead when `i < dead_pages`.
    pub fn dead_pages(window: usize, len: usize, page_tokens: usize) -> usize {
        // First position a query at `len - page_tokens` still reads.
        let first_read = (len + 1).saturating_sub(window + page_tokens);
        first_read / page_tokens
    }

    /// Pages one sequence of `tokens` tokens holds at most, over groups.
    pub fn pages_for(&self, tokens: usize, page_tokens: usize) -> usize {
        let p = tokens.div_ceil(page_tokens);
        self.windows
            .iter()
            .map(|w| match w {
                None => p,
                Some(w) => p.min(Layout::window_pages(*w, page_tokens)),
            })
            .sum()
    }
}

/// The prefix-cache key of group `group`'s page whose chain hash is `h`
/// (group 0: `h` itself, so a one-group store keys pages as before).
pub(crate) fn salted(h: u64, group: usize) -> u64 {
    if group == 0 {
        h
    } else {
        chain_hash(h, &[u32::MAX - group as u32])
    }
}
