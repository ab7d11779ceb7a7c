//! The key/value cache of one sequence: contiguous f32 rows per layer.
//!
//! This is the simplest store that is correct. The paged, NUMA-sharded,
//! prefix-sharing store of the KV issue replaces it behind the same three
//! operations the forward pass uses: `store` rows at positions, read the
//! `keys`/`values` of positions `0..n`, and `advance` the length.

use crate::ModelError;

#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
}

/// `MemAvailable` from /proc/meminfo, in bytes (None where unknown).
fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn zeroed(n: usize) -> Option<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, 0.0);
    Some(v)
}

impl KvCache {
    /// Allocates the cache; a size the machine cannot hold is an error
    /// naming the size, not an abort.
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> Result<KvCache, ModelError> {
        let per_layer = kv_dim.checked_mul(capacity);
        let total_bytes = per_layer.and_then(|n| n.checked_mul(2 * n_layers * 4));
        let oom = || ModelError::OutOfMemory {
            what: format!("a KV cache of {capacity} tokens"),
            bytes: total_bytes.unwrap_or(usize::MAX),
        };
        let (per_layer, total) = per_layer.zip(total_bytes).ok_or_else(oom)?;
        // Linux overcommits: a reservation larger than the machine succeeds
        // and the process is killed later. Refuse what cannot fit now.
        if available_memory().is_some_and(|avail| total > avail) {
            return Err(oom());
        }
        let mut k = Vec::with_capacity(n_layers);
        let mut v = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            k.push(zeroed(per_layer).ok_or_else(oom)?);
            v.push(zeroed(per_layer).ok_or_else(oom)?);
        }
        Ok(KvCache {
            k,
            v,
            kv_dim,
            len: 0,
            capacity,
        })
    }

    /// Tokens cached so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets everything (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Forgets positions `n..`.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Raw K and V pointers of `layer` (`capacity × kv_dim` values each),
    /// for pool workers that write disjoint (position, head) slots.
    pub(crate) fn layer_raw(&mut self, layer: usize) -> (*mut f32, *mut f32) {
        (self.k[layer].as_mut_ptr(), self.v[layer].as_mut_ptr())
    }

    pub(crate) fn n_layers(&self) -> usize {
        self.k.len()
    }

    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
