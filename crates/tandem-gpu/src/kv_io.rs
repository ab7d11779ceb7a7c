//! K/V between the device and `tandem-kv`'s host pages.
//!
//! - **Write-back**: a layer's new rows arrive on the host as
//!   `[K|V][kv head][token][row]` (encoded in the store's format on the
//!   device) and are copied into the sequence's pages, node by node as the
//!   store places each head, so the pages are exactly what the CPU path's
//!   attention would have stored.
//! - **Prefix blocks**: the cached positions before a chunk are read page
//!   by page, each page's run of a layer's K (then V, unless the values
//!   are in the keys: MLA) slabs — one
//!   contiguous run per node — into a staging layout `[page][kv head]
//!   [page token][row]`.

use tandem_kv::Sequence;

use crate::GpuError;

/// Copies the `n` new rows of `layer` (positions `p0..p0 + n`) from
/// `stage` (`[planes][kv_heads][n][row_bytes]`: K and V, or K alone for
/// a latent cache) into the sequence's pages.
///
/// The positions must have been reserved by `seq` (private pages, rule 1
/// of `tandem-kv`'s memory protocol) and not committed yet.
pub(crate) fn scatter_layer(
    seq: &Sequence,
    layer: usize,
    p0: usize,
    n: usize,
    stage: &[u8],
) -> Result<(), GpuError> {
    let g = seq.store().geometry();
    let (rb, pt, kvh) = (g.row_bytes(), g.page_tokens, g.n_kv_heads());
    if stage.len() < g.planes() * kvh * n * rb {
        return Err(GpuError::Protocol("write-back staging too small".into()));
    }
    for kv in 0..g.planes() {
        for head in 0..kvh {
            let (node, local) = g.head_home(head);
            let base = (kv * kvh + head) * n * rb;
            let mut i = 0;
            while i < n {
                let pos = p0 + i;
                let run = (pt - pos % pt).min(n - i);
                let dst = seq.row_ptr(node, layer, kv, local, pos)?;
                let src = &stage[base + i * rb..base + (i + run) * rb];
                // SAFETY: `row_ptr` checked the row is inside a page the
                // sequence holds; rows of one page and head are contiguous
                // (`run` stays in the page), and the positions were
                // reserved by this sequence (private, written only here).
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
                i += run;
            }
        }
    }
    Ok(())
}

/// One host run to upload: `len` bytes at `src` to staging offset `dst`
/// (a null `src`: zeros).
pub(crate) struct Run {
    pub src: *const u8,
    pub dst: usize,
    pub len: usize,
}

/// The runs that bring pages `pages` (block-table indices) of `layer`
/// into staging: K of page `i` of the block at `(i · kv_heads + head) ·
/// slab`, V after all K (`v_base`; a latent cache has no V slabs).
pub(crate) fn block_runs(
    seq: &Sequence,
    layer: usize,
    pages: std::ops::Range<usize>,
) -> Result<(Vec<Run>, usize), GpuError> {
    let g = seq.store().geometry();
    let (slab, kvh) = (g.slab_bytes(), g.n_kv_heads());
    let v_base = pages.len() * kvh * slab;
    let mut runs = Vec::with_capacity(pages.len() * g.node_heads.len() * 2);
    for (bi, pi) in pages.enumerate() {
        let page = *seq
            .layer_pages(layer)
            .0
            .get(pi)
            .ok_or_else(|| GpuError::Protocol(format!("page {pi} not in the sequence")))?;
        for (node, heads) in g.node_heads.iter().enumerate() {
            if heads.is_empty() {
                continue;
            }
            for kv in 0..g.planes() {
                let dst = kv * v_base + (bi * kvh + heads.start) * slab;
                if page == tandem_kv::HOLE {
                    // Released behind a window (no query reads it): zeros.
                    runs.push(Run {
                        src: std::ptr::null(),
                        dst,
                        len: heads.len() * slab,
                    });
                    continue;
                }
                let off = seq.store().slab_offset(node, layer, kv, 0);
                // SAFETY: the slab offset of local head 0 plus the node's
                // heads' slabs lies within the node's page.
                let src = unsafe { seq.store().page_ptr(node, page).add(off) } as *const u8;
                runs.push(Run {
                    src,
                    dst,
                    len: heads.len() * slab,
                });
            }
        }
    }
    Ok((runs, v_base))
}
