//! Tensor-parallel placement: which engine node holds which part of each
//! weight matrix, and copying those parts into node-local memory.
//!
//! Megatron-style split (see ARCHITECTURE.md, "decode engine"):
//! Q/K/V and gate/up are split by output rows (whole KV groups, FFN
//! columns), O and down by input columns, the output head by rows. A node's
//! part of a matrix is a [`Shard`]: a dense row-major matrix of its own, so
//! kernels see an ordinary matrix. Column shards start and end on block
//! boundaries of the weight format (a Q4_K row cannot be cut inside a
//! 256-value block), which is why head and FFN splits move in aligned units.
//!
//! A shard is also stored in the layout its kernels run fastest on
//! ([`WeightLayout`], chosen by the caller per matrix): ggml's row-major
//! blocks as in the file, or 8 rows interleaved (converted while copying).
//!
//! With one node and the file's layout nothing is copied: the shard is the
//! mapped tensor itself. Otherwise each node's shards are packed into one
//! [`NodeMemory`] bound to that node and filled by that node's pinned
//! workers (first touch), and the file's pages are dropped afterwards, so
//! the model is resident exactly once however many nodes there are.

use std::ops::Range;
use std::sync::Arc;

use tandem_kernels::{interleave_group, WeightFormat, WeightLayout, GROUP_ROWS};
use tandem_numa::{NodeMemory, Pool};

use crate::linear::Matrix;
use crate::tensor::Tensor;
use crate::ModelError;

/// How a matrix is divided among nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Each node holds a range of output rows (all columns).
    Rows,
    /// Each node holds a range of input columns (all rows); results are
    /// partial sums to be added across nodes.
    Cols,
}

#[derive(Clone)]
enum ShardBytes {
    /// A byte range of the mapped tensor (single-node placement).
    File { tensor: Tensor, range: Range<usize> },
    /// A byte range of a node's memory.
    Node {
        mem: Arc<NodeMemory>,
        range: Range<usize>,
    },
}

/// One node's part of a matrix: rows `rows` × columns `cols` of the whole,
/// stored densely (row-major, `cols.len()` columns per row).
#[derive(Clone)]
pub struct Shard {
    bytes: ShardBytes,
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

impl Shard {
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            ShardBytes::File { tensor, range } => &tensor.bytes()[range.clone()],
            ShardBytes::Node { mem, range } => &mem.as_slice()[range.clone()],
        }
    }
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }
    pub fn n_cols(&self) -> usize {
        self.cols.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() || self.cols.is_empty()
    }
}

/// A matrix split over the engine's nodes (`shards[node]`).
#[derive(Clone)]
pub struct ShardedMatrix {
    pub format: WeightFormat,
    /// How every shard's rows are stored.
    pub layout: WeightLayout,
    pub rows: usize,
    pub cols: usize,
    pub split: Split,
    pub shards: Vec<Shard>,
}

impl ShardedMatrix {
    /// Bytes of the whole matrix (what one multiplication reads).
    pub fn n_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.bytes().len()).sum()
    }
}

/// `n` ranges covering `0..units` as evenly as possible (some may be empty).
pub fn even_ranges(units: usize, n: usize) -> Vec<Range<usize>> {
    (0..n).map(|k| k * units / n..(k + 1) * units / n).collect()
}

/// Splits `0..total` into `n` ranges whose boundaries (except `total`
/// itself) are multiples of `align`.
pub fn aligned_ranges(total: usize, align: usize, n: usize) -> Vec<Range<usize>> {
    let align = align.max(1);
    let units = total.div_ceil(align);
    even_ranges(units, n)
        .into_iter()
        .map(|r| (r.start * align).min(total)..(r.end * align).min(total))
        .collect()
}

/// The KV heads each node owns: whole KV groups, moving in the smallest
/// unit of KV heads whose query columns (`unit × group × head_dim`) start on
/// a block boundary of the O projection's format.
pub fn kv_head_ranges(
    n_kv_heads: usize,
    group: usize,
    head_dim: usize,
    o_block_len: usize,
    n_nodes: usize,
) -> Vec<Range<usize>> {
    let unit = (1..=n_kv_heads)
        .find(|u| (u * group * head_dim).is_multiple_of(o_block_len.max(1)))
        .unwrap_or(n_kv_heads.max(1));
    aligned_ranges(n_kv_heads, unit, n_nodes)
}

struct CopyJob {
    src: Tensor,
    format: WeightFormat,
    layout: WeightLayout,
    cols: usize,
    shard_rows: Range<usize>,
    shard_cols: Range<usize>,
    dst: Range<usize>,
}

/// Collects matrices to place, then copies every shard at once.
pub struct Placer<'p> {
    pool: &'p Pool,
    /// Per node: bytes used so far, and copy jobs.
    nodes: Vec<(usize, Vec<CopyJob>)>,
    /// Per added matrix: (format, rows, cols, split, per node (rows, cols, dst or file)).
    pending: Vec<PendingMatrix>,
}

/// Where a shard's bytes will be: a range of the tensor, or of its node's memory.
enum PartBytes {
    File(Range<usize>),
    Node(Range<usize>),
}

struct PendingMatrix {
    tensor: Tensor,
    format: WeightFormat,
    layout: WeightLayout,
    rows: usize,
    cols: usize,
    split: Split,
    parts: Vec<(Range<usize>, Range<usize>, PartBytes)>,
}

/// Where shards go: 64-byte aligned offsets (cache lines; AVX-512 loads).
const SHARD_ALIGN: usize = 64;

impl<'p> Placer<'p> {
    pub fn new(pool: &'p Pool) -> Placer<'p> {
        Placer {
            pool,
            nodes: (0..pool.n_nodes()).map(|_| (0, Vec::new())).collect(),
            pending: Vec::new(),
        }
    }

    /// Queues `m`, split by `split` into `ranges[node]` (rows or columns),
    /// each shard stored in `layout`. Returns its index in
    /// [`finish`](Placer::finish)'s result.
    pub fn add(
        &mut self,
        m: &Matrix,
        split: Split,
        ranges: &[Range<usize>],
        layout: WeightLayout,
    ) -> Result<usize, ModelError> {
        let n_nodes = self.nodes.len();
        if ranges.len() != n_nodes {
            return Err(ModelError::Kernel(format!(
                "{}: {} shard ranges for {n_nodes} nodes",
                m.tensor.name(),
                ranges.len()
            )));
        }
        let row_bytes = |cols: usize| {
            m.format.row_bytes(cols).ok_or_else(|| {
                ModelError::bad_tensor(
                    m.tensor.name(),
                    format!(
                        "{cols} columns do not split into {} blocks",
                        m.format.name()
                    ),
                )
            })
        };
        let mut parts = Vec::with_capacity(n_nodes);
        for (node, r) in ranges.iter().enumerate() {
            let (rows, cols) = match split {
                Split::Rows => (r.clone(), 0..m.cols),
                Split::Cols => (0..m.rows, r.clone()),
            };
            if rows.end > m.rows
                || cols.end > m.cols
                || (split == Split::Cols && cols.start % m.format.block_len() != 0)
            {
                return Err(ModelError::Kernel(format!(
                    "{}: bad shard {rows:?} x {cols:?}",
                    m.tensor.name()
                )));
            }
            let len = if rows.is_empty() || cols.is_empty() {
                0
            } else {
                rows.len() * row_bytes(cols.len())?
            };
            let dst = if n_nodes == 1 && layout == WeightLayout::Rows {
                // Single node, file layout: the shard is the mapped tensor itself.
                PartBytes::File(0..len)
            } else {
                let (used, jobs) = &mut self.nodes[node];
                let start = used.next_multiple_of(SHARD_ALIGN);
                *used = start + len;
                if len > 0 {
                    jobs.push(CopyJob {
                        src: m.tensor.clone(),
                        format: m.format,
                        layout,
                        cols: m.cols,
                        shard_rows: rows.clone(),
                        shard_cols: cols.clone(),
                        dst: start..start + len,
                    });
                }
                PartBytes::Node(start..start + len)
            };
            parts.push((rows, cols, dst));
        }
        self.pending.push(PendingMatrix {
            tensor: m.tensor.clone(),
            format: m.format,
            layout,
            rows: m.rows,
            cols: m.cols,
            split,
            parts,
        });
        Ok(self.pending.len() - 1)
    }

    /// Allocates node memory, copies every shard with the owning node's
    /// workers, and returns the matrices in the order they were added.
    pub fn finish(self) -> Result<Vec<ShardedMatrix>, ModelError> {
        let layout = self.pool.layout();
        // Linux overcommits: a copy larger than the memory there is would
        // map, then get the process killed half-way through the load.
        let total: usize = self.nodes.iter().map(|(used, _)| *used).sum();
        crate::kv_cache::check_fits(
            || {
                format!(
                    "a copy of the weights in node memory ({:.1} GiB, more than is available; \
                     --no-repack --numa off runs from the file's mapping instead)",
                    total as f64 / (1u64 << 30) as f64
                )
            },
            total,
        )?;
        let mut mems = Vec::with_capacity(self.nodes.len());
        for (node, (used, _)) in self.nodes.iter().enumerate() {
            if *used == 0 {
                mems.push(None);
                continue;
            }
            let mem_node = layout.nodes.get(node).and_then(|n| n.memory_node);
            mems.push(Some(NodeMemory::new(*used, mem_node).map_err(|e| {
                ModelError::OutOfMemory {
                    what: format!("node {node}'s weight shards ({e})"),
                    bytes: *used,
                }
            })?));
        }
        // First touch by the node's own workers. Each job writes a disjoint
        // destination range, so raw pointers are shared across workers.
        let bases: Vec<SendPtr> = mems
            .iter_mut()
            .map(|m| SendPtr(m.as_mut().map_or(std::ptr::null_mut(), |m| m.as_mut_ptr())))
            .collect();
        let jobs: Vec<&Vec<CopyJob>> = self.nodes.iter().map(|n| &n.1).collect();
        self.pool.try_run(|w| -> Result<(), ModelError> {
            let node_jobs = jobs[w.node];
            loop {
                let j = w.claim();
                let Some(job) = node_jobs.get(j) else { break };
                // SAFETY: `dst` lies inside this node's mapping (sized from
                // the same offsets, so non-null when a job exists) and no
                // other job writes it.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        bases[w.node].0.add(job.dst.start),
                        job.dst.len(),
                    )
                };
                copy_shard(job, dst)?;
            }
            Ok(())
        })?;
        // The file's copy of copied weights is no longer read (except
        // embedding rows, which fault back in): drop it from the resident
        // set, so the model is resident once, in node memory.
        for p in &self.pending {
            if p.parts
                .iter()
                .any(|(_, _, b)| matches!(b, PartBytes::Node(_)))
            {
                p.tensor.release_file_pages();
            }
        }
        let mems: Vec<Option<Arc<NodeMemory>>> =
            mems.into_iter().map(|m| m.map(Arc::new)).collect();
        self.pending
            .into_iter()
            .map(|p| {
                let shards = p
                    .parts
                    .into_iter()
                    .enumerate()
                    .map(|(node, (rows, cols, bytes))| {
                        let bytes = match bytes {
                            PartBytes::File(range) => ShardBytes::File {
                                tensor: p.tensor.clone(),
                                range,
                            },
                            PartBytes::Node(range) => ShardBytes::Node {
                                mem: mems[node].clone().ok_or_else(|| {
                                    ModelError::Kernel(format!("node {node} has no shard memory"))
                                })?,
                                range,
                            },
                        };
                        Ok(Shard { bytes, rows, cols })
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                Ok(ShardedMatrix {
                    format: p.format,
                    layout: p.layout,
                    rows: p.rows,
                    cols: p.cols,
                    split: p.split,
                    shards,
                })
            })
            .collect()
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: used only to write disjoint ranges from pool workers while the
// owning NodeMemory is alive (Placer::finish waits for the run).
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send` above.
unsafe impl Sync for SendPtr {}

fn copy_shard(job: &CopyJob, dst: &mut [u8]) -> Result<(), ModelError> {
    let bad = || ModelError::bad_tensor(job.src.name(), "shard outside the tensor");
    let full = job.format.row_bytes(job.cols).ok_or_else(bad)?;
    let bl = job.format.block_len();
    let bb = job.format.block_bytes();
    let c0 = job.shard_cols.start / bl * bb;
    let c1 = job.shard_cols.end.div_ceil(bl) * bb;
    let part = c1 - c0;
    let src = job.src.bytes();
    let row = |r: usize| src.get(r * full + c0..r * full + c1).ok_or_else(bad);
    let n_rows = job.shard_rows.len();
    // Interleaved: full groups of rows are gathered (row-major) into a
    // buffer, then converted into place; the tail is copied as is.
    let grouped = match job.layout {
        WeightLayout::Rows => 0,
        WeightLayout::Interleaved8 => n_rows / GROUP_ROWS * GROUP_ROWS,
    };
    if grouped > 0 {
        let mut tmp = vec![0u8; GROUP_ROWS * part];
        for g in 0..grouped / GROUP_ROWS {
            for (i, chunk) in tmp.chunks_exact_mut(part).enumerate() {
                chunk.copy_from_slice(row(job.shard_rows.start + g * GROUP_ROWS + i)?);
            }
            let out = dst
                .get_mut(g * GROUP_ROWS * part..(g + 1) * GROUP_ROWS * part)
                .ok_or_else(bad)?;
            interleave_group(job.format, job.shard_cols.len(), &tmp, out)
                .map_err(|e| ModelError::bad_tensor(job.src.name(), e.to_string()))?;
        }
    }
    for i in grouped..n_rows {
        dst.get_mut(i * part..(i + 1) * part)
            .ok_or_else(bad)?
            .copy_from_slice(row(job.shard_rows.start + i)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_and_align() {
        assert_eq!(even_ranges(5, 2), vec![0..2, 2..5]);
        assert_eq!(
            aligned_ranges(1024, 256, 3),
            vec![0..256, 256..512, 512..1024]
        );
        assert_eq!(aligned_ranges(100, 32, 2), vec![0..64, 64..100]);
        assert_eq!(aligned_ranges(10, 1, 4), vec![0..2, 2..5, 5..7, 7..10]);
        // More nodes than units: some nodes get nothing, nothing is lost.
        let r = aligned_ranges(256, 256, 3);
        assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), 256);
        // 8 KV heads, group 3, head_dim 128, Q4_K O: 2 KV heads per unit.
        assert_eq!(kv_head_ranges(8, 3, 128, 256, 2), vec![0..4, 4..8]);
        assert_eq!(kv_head_ranges(8, 3, 128, 256, 3), vec![0..2, 2..4, 4..8]);
        assert_eq!(kv_head_ranges(2, 1, 16, 256, 2), vec![0..0, 0..2]);
    }
}
