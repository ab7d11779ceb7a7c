//! Page images: a run of K/V rows of one sequence, inside one page, as a
//! checked byte string that another process can send and this one can
//! write into a sequence's reserved positions (disaggregated prefill: a
//! prefill worker fills its own pages and hands them to the decode
//! server's pool).
//!
//! The format is the disk tier's (`disk.rs`) with what a transfer needs
//! instead of what a cache file needs: a *stream* id (the prefill job)
//! and the first position instead of the chain hash and parent, and a
//! row count, so a page's tail can travel before the page is full.
//!
//! ```text
//! "TANDEMPI" | version u32 | kv type (8 bytes, name) | page_tokens u32 |
//! head_dim u32 | n_layers u32 | n_kv_heads u32 | model identity (16) |
//! stream u64 | start u64 | n u32 | tokens (n × u32) |
//! rows: for layer, K/V, KV head (global order): n rows | xxh3-64 of all above
//! ```
//!
//! Integers are little-endian; rows are in global head order whatever
//! the NUMA split of the writer or the reader. [`PageImage::parse`]
//! accepts an image only if its size is exactly what its header implies,
//! every header field equals the reader's (format, geometry, identity),
//! `1 <= n`, the rows stay inside one page, and the checksum holds;
//! [`PageImage::write_into`] then writes it only at the sequence's next
//! positions (`start == len`), after reserving them, so an image can
//! never touch a page the sequence does not hold privately (rule 1 of
//! `store.rs`), let alone another sequence's.
//!
//! Does not know: what the stream ids mean, sockets, models (it is told
//! the identity).

use crate::disk::ModelIdentity;
use crate::store::{KvGeometry, Sequence};
use crate::KvError;

const MAGIC: &[u8; 8] = b"TANDEMPI";
const VERSION: u32 = 1;
/// Bytes before the tokens.
const FIXED: usize = 8 + 4 + 8 + 16 + 16 + 8 + 8 + 4;

fn bad(m: impl Into<String>) -> KvError {
    KvError::BadImage(m.into())
}

fn fixed_header(g: &KvGeometry, identity: ModelIdentity) -> Vec<u8> {
    let mut h = Vec::with_capacity(FIXED);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    let mut name = [0u8; 8];
    let n = g.format.name().as_bytes();
    let k = n.len().min(8);
    name[..k].copy_from_slice(&n[..k]);
    h.extend_from_slice(&name);
    for v in [g.page_tokens, g.head_dim, g.n_layers, g.n_kv_heads()] {
        h.extend_from_slice(&(v as u32).to_le_bytes());
    }
    h.extend_from_slice(&identity.0.to_le_bytes());
    h
}

/// Bytes of an image of `n` rows per (layer, K/V, head) of geometry `g`
/// (None: overflow).
pub fn image_bytes(g: &KvGeometry, n: usize) -> Option<usize> {
    let rows = g
        .n_layers
        .checked_mul(g.planes())?
        .checked_mul(g.n_kv_heads())?
        .checked_mul(n)?
        .checked_mul(g.row_bytes())?;
    FIXED
        .checked_add(n.checked_mul(4)?)?
        .checked_add(rows)?
        .checked_add(8)
}

/// The largest image of geometry `g` (a whole page): a reader's bound on
/// what it accepts before looking at it.
pub fn max_image_bytes(g: &KvGeometry) -> usize {
    image_bytes(g, g.page_tokens).unwrap_or(usize::MAX)
}

/// Encodes positions `start..start + n` of `seq` (all cached, inside one
/// page) as an image of stream `stream`.
pub fn encode_page_image(
    seq: &Sequence,
    identity: ModelIdentity,
    stream: u64,
    start: usize,
    n: usize,
) -> Result<Vec<u8>, KvError> {
    let g = seq.store().geometry().clone();
    let end = start
        .checked_add(n)
        .ok_or_else(|| bad("position overflow"))?;
    if n == 0 || end > seq.len() || start / g.page_tokens != (end - 1) / g.page_tokens {
        return Err(bad(format!(
            "rows {start}..{end} are not cached positions inside one page (the sequence holds {})",
            seq.len()
        )));
    }
    let total = image_bytes(&g, n).ok_or(KvError::TooLarge)?;
    let mut out = fixed_header(&g, identity);
    out.reserve(total - out.len());
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&(start as u64).to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for t in &seq.tokens()[start..end] {
        out.extend_from_slice(&t.to_le_bytes());
    }
    let rb = g.row_bytes();
    for layer in 0..g.n_layers {
        for kv in 0..g.planes() {
            for head in 0..g.n_kv_heads() {
                let (node, local) = g.head_home(head);
                for pos in start..end {
                    let p = seq.row_ptr(node, layer, kv, local, pos)?;
                    // SAFETY: `pos < len`: a cached row, only read (rule 2
                    // of `store.rs`), `row_bytes` long inside a held page.
                    out.extend_from_slice(unsafe { std::slice::from_raw_parts(p, rb) });
                }
            }
        }
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// A checked image (see the module docs), borrowing its bytes.
#[derive(Debug)]
pub struct PageImage<'a> {
    stream: u64,
    start: usize,
    tokens: Vec<u32>,
    rows: &'a [u8],
    geom: KvGeometry,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> PageImage<'a> {
    /// Checks `bytes` against the reader's geometry and model identity.
    pub fn parse(
        bytes: &'a [u8],
        g: &KvGeometry,
        identity: ModelIdentity,
    ) -> Result<PageImage<'a>, KvError> {
        let want = fixed_header(g, identity);
        let fixed = want.len();
        if bytes.len() < FIXED + 8 || bytes.len() > max_image_bytes(g) {
            return Err(bad(format!("{} bytes is no page image", bytes.len())));
        }
        if bytes[..fixed] != want[..] {
            let what = if bytes[..8] != MAGIC[..] {
                "not a page image"
            } else if u32_at(bytes, 8) != Some(VERSION) {
                "another version of the page image format"
            } else if bytes[12..20] != want[12..20] {
                "another KV type"
            } else if bytes[20..36] != want[20..36] {
                "another KV geometry"
            } else {
                "another model's KV"
            };
            return Err(bad(what));
        }
        let (Some(stream), Some(start), Some(n)) = (
            u64_at(bytes, fixed),
            u64_at(bytes, fixed + 8),
            u32_at(bytes, fixed + 16),
        ) else {
            return Err(bad("truncated header"));
        };
        let n = n as usize;
        if n == 0 || n > g.page_tokens {
            return Err(bad(format!(
                "{n} rows (a page holds {} tokens)",
                g.page_tokens
            )));
        }
        let start = usize::try_from(start).map_err(|_| bad("start position overflows"))?;
        let end = start
            .checked_add(n)
            .ok_or_else(|| bad("position overflow"))?;
        if start / g.page_tokens != (end - 1) / g.page_tokens {
            return Err(bad(format!("rows {start}..{end} cross a page boundary")));
        }
        if image_bytes(g, n) != Some(bytes.len()) {
            return Err(bad(format!(
                "{} bytes for {n} rows (expected {:?})",
                bytes.len(),
                image_bytes(g, n)
            )));
        }
        let body = bytes.len() - 8;
        let sum = u64_at(bytes, body).ok_or_else(|| bad("truncated"))?;
        if xxhash_rust::xxh3::xxh3_64(&bytes[..body]) != sum {
            return Err(bad("checksum mismatch"));
        }
        let tok_at = fixed + 20;
        let tokens = (0..n)
            .map(|i| u32_at(bytes, tok_at + 4 * i))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| bad("truncated tokens"))?;
        Ok(PageImage {
            stream,
            start,
            tokens,
            rows: &bytes[tok_at + 4 * n..body],
            geom: g.clone(),
        })
    }

    /// The stream (job) the writer named.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// The first position.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The tokens at positions `start..start + n`.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Appends the image to `seq`: positions `start..start + n` must be
    /// the next ones (`start == seq.len()`), and `seq` must have this
    /// image's geometry. Reserves them (copy-on-write as for any write),
    /// writes the rows and commits the tokens; all or nothing up to the
    /// commit (an error leaves `len` unchanged). A row whose page the
    /// sequence left a hole (a windowed layer's rows that no later query
    /// reads, [`Sequence::reserve_final`]) is skipped.
    pub fn write_into(&self, seq: &mut Sequence) -> Result<(), KvError> {
        let g = seq.store().geometry().clone();
        if g.format != self.geom.format
            || g.page_tokens != self.geom.page_tokens
            || g.head_dim != self.geom.head_dim
            || g.n_layers != self.geom.n_layers
            || g.n_kv_heads() != self.geom.n_kv_heads()
        {
            return Err(bad("the sequence's store has another geometry"));
        }
        if self.start != seq.len() {
            return Err(bad(format!(
                "rows start at {}, the sequence's next position is {}",
                self.start,
                seq.len()
            )));
        }
        let n = self.tokens.len();
        seq.reserve(n)?;
        let rb = g.row_bytes();
        let mut src = self.rows.chunks_exact(rb);
        for layer in 0..g.n_layers {
            for kv in 0..g.planes() {
                for head in 0..g.n_kv_heads() {
                    let (node, local) = g.head_home(head);
                    for pos in self.start..self.start + n {
                        let row = src.next().ok_or_else(|| bad("too few rows"))?;
                        if seq.is_hole(layer, pos) {
                            continue;
                        }
                        let p = seq.row_ptr(node, layer, kv, local, pos)?;
                        // SAFETY: `pos` was reserved just now (a private
                        // page, rule 1 of `store.rs`); the row is
                        // `row_bytes` inside it and `row` is as long.
                        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), p, rb) };
                    }
                }
            }
        }
        seq.commit(&self.tokens)
    }
}
