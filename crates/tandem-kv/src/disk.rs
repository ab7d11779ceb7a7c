//! The disk tier: full pages that leave host RAM, kept as one file each
//! under `DIR/<model identity>/`, found again by their chained hash.
//!
//! A page is written when the pool evicts it (it was cached, nobody held
//! it, and its memory is needed) and when the owner persists the cache
//! (`KvStore::persist`, e.g. at the end of a chat), so a conversation
//! resumed after a restart finds its prefix here. Reading is the other
//! half of a prefix lookup: past the last page found in RAM, the lookup
//! continues with files.
//!
//! # Files
//!
//! ```text
//! "TANDEMKV" | version u32 | kv type (8 bytes, name) | page_tokens u32 |
//! head_dim u32 | n_layers u32 | n_kv_heads u32 | model identity (16) |
//! hash u64 | parent u64 | tokens (page_tokens × u32) |
//! rows: for layer, K/V, KV head: page_tokens rows | xxh3-64 of all above
//! ```
//!
//! All integers little-endian. Rows are in global head order, whatever
//! the NUMA split that wrote them, so a file serves any `--numa`. A file
//! is used only if its size, header, identity, geometry, hash, parent and
//! tokens are the ones looked for and its checksum holds; anything else —
//! missing, truncated, corrupted, another model's, another KV type's — is
//! a miss: the file is deleted and the page is recomputed. Files are
//! written to a temporary name and renamed, so a crash leaves either the
//! old state or the whole file. A miss costs only its own page: the
//! prefix lookup goes on past it (`KvStore::sequence_with_prefix` leaves a
//! hole that the caller recomputes), so one damaged file never discards
//! the pages after it.
//!
//! A write that fails (disk full, a file-size limit, permissions)
//! disables writing for the rest of the process with one warning; reads
//! go on. The process ignores `SIGXFSZ` once a tier is open, so a
//! file-size limit is an error here rather than a signal that kills it.
//!
//! The tier keeps at most `max_bytes` of files, deleting the least
//! recently used (by write or read in this process; files found at start
//! are ordered by modification time).
//!
//! Does not know: page memory (the store hands it slabs), models (it is
//! told an identity).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::store::KvGeometry;
use crate::KvError;

const MAGIC: &[u8; 8] = b"TANDEMKV";
const VERSION: u32 = 1;
const EXT: &str = "page";

/// What identifies the model whose K/V a page holds (weights and
/// tokenizer): pages of other models are never used.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelIdentity(pub u128);

impl ModelIdentity {
    fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Counters of the tier since it was opened.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Pages written (evicted or persisted).
    pub written: u64,
    /// Pages read back into RAM on a prefix hit.
    pub read: u64,
    /// Files found bad (truncated, corrupted, another model's ...) and
    /// deleted.
    pub rejected: u64,
    /// Writes that failed (disk full, permissions): the page is lost.
    pub write_errors: u64,
    /// Files deleted to stay within the size limit.
    pub dropped: u64,
    /// Files and their bytes now.
    pub files: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Index {
    /// hash → (file bytes, LRU tick).
    files: HashMap<u64, (u64, u64)>,
    lru: BTreeMap<u64, u64>,
    tick: u64,
    stats: DiskStats,
}

impl Index {
    fn touch(&mut self, hash: u64, bytes: u64) {
        self.tick += 1;
        if let Some((old_bytes, t)) = self.files.insert(hash, (bytes, self.tick)) {
            self.lru.remove(&t);
            self.stats.bytes -= old_bytes;
        } else {
            self.stats.files += 1;
        }
        self.stats.bytes += bytes;
        self.lru.insert(self.tick, hash);
    }

    fn forget(&mut self, hash: u64) {
        if let Some((bytes, t)) = self.files.remove(&hash) {
            self.lru.remove(&t);
            self.stats.bytes -= bytes;
            self.stats.files -= 1;
        }
    }
}

/// Page files of one model under one directory.
pub struct DiskTier {
    dir: PathBuf,
    identity: ModelIdentity,
    max_bytes: u64,
    index: Mutex<Index>,
    /// Set by the first failed write: no more writes.
    write_disabled: AtomicBool,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> KvError {
    KvError::Disk(format!("{what} {}: {e}", path.display()))
}

impl DiskTier {
    /// Opens (creating it if needed) the tier of `identity` under `dir`,
    /// keeping at most `max_bytes` of page files. Existing files are
    /// indexed by name; their contents are checked when read.
    pub fn open(dir: &Path, identity: ModelIdentity, max_bytes: u64) -> Result<DiskTier, KvError> {
        let dir = dir.join(identity.hex());
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err("cannot list", &dir, e))? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // A write that did not finish.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(&format!(".{EXT}")) else {
                continue;
            };
            let Ok(hash) = u64::from_str_radix(stem, 16) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            let mtime = meta.modified().ok();
            found.push((mtime, hash, meta.len()));
        }
        found.sort();
        let mut index = Index::default();
        for (_, hash, bytes) in found {
            index.touch(hash, bytes);
        }
        ignore_file_size_signal();
        let tier = DiskTier {
            dir,
            identity,
            max_bytes,
            index: Mutex::new(index),
            write_disabled: AtomicBool::new(false),
        };
        tier.shrink(0);
        Ok(tier)
    }

    /// The directory holding this model's pages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Whether a failed write turned writing off.
    pub fn write_disabled(&self) -> bool {
        self.write_disabled.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, hash: u64) -> PathBuf {
        self.dir.join(format!("{hash:016x}.{EXT}"))
    }

    /// Whether a file for `hash` exists (its contents are checked on read).
    pub fn contains(&self, hash: u64) -> bool {
        self.lock().files.contains_key(&hash)
    }

    /// Deletes least recently used files until `extra` more bytes fit.
    fn shrink(&self, extra: u64) {
        let mut victims = Vec::new();
        {
            let mut ix = self.lock();
            while ix.stats.bytes + extra > self.max_bytes {
                let Some((_, hash)) = ix.lru.pop_first() else {
                    break;
                };
                if let Some((bytes, _)) = ix.files.remove(&hash) {
                    ix.stats.bytes -= bytes;
                    ix.stats.files -= 1;
                    ix.stats.dropped += 1;
                }
                victims.push(hash);
            }
        }
        for hash in victims {
            let _ = std::fs::remove_file(self.path(hash));
        }
    }

    fn header(&self, g: &KvGeometry, hash: u64, parent: u64, tokens: &[u32]) -> Vec<u8> {
        let mut h = Vec::with_capacity(64 + 4 * tokens.len());
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        let mut name = [0u8; 8];
        let n = g.format.name().as_bytes();
        name[..n.len().min(8)].copy_from_slice(&n[..n.len().min(8)]);
        h.extend_from_slice(&name);
        for v in [g.page_tokens, g.head_dim, g.n_layers, g.n_kv_heads()] {
            h.extend_from_slice(&(v as u32).to_le_bytes());
        }
        h.extend_from_slice(&self.identity.0.to_le_bytes());
        h.extend_from_slice(&hash.to_le_bytes());
        h.extend_from_slice(&parent.to_le_bytes());
        for t in tokens {
            h.extend_from_slice(&t.to_le_bytes());
        }
        h
    }

    /// Bytes of a page file of geometry `g`.
    pub fn file_bytes(g: &KvGeometry) -> u64 {
        let header = 8 + 4 + 8 + 16 + 16 + 16 + 4 * g.page_tokens;
        let rows = g.n_layers * g.planes() * g.n_kv_heads() * g.slab_bytes();
        (header + rows + 8) as u64
    }

    /// Writes the page of `hash` (whose slabs `slab(layer, kv, head)`
    /// returns, heads in global order). A failure is counted, not
    /// returned: the tier is a cache. The first failure turns writing off
    /// (one warning on stderr); later calls do nothing. True: written.
    pub(crate) fn write_page<'a>(
        &self,
        g: &KvGeometry,
        hash: u64,
        parent: u64,
        tokens: &[u32],
        slab: impl Fn(usize, usize, usize) -> &'a [u8],
    ) -> bool {
        let bytes = Self::file_bytes(g);
        if bytes > self.max_bytes || self.write_disabled() {
            return false;
        }
        self.shrink(bytes);
        let path = self.path(hash);
        let tmp = path.with_extension("tmp");
        let result = (|| -> std::io::Result<()> {
            let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            let mut sum = xxhash_rust::xxh3::Xxh3::new();
            let header = self.header(g, hash, parent, tokens);
            sum.update(&header);
            f.write_all(&header)?;
            for layer in 0..g.n_layers {
                for kv in 0..g.planes() {
                    for head in 0..g.n_kv_heads() {
                        let s = slab(layer, kv, head);
                        sum.update(s);
                        f.write_all(s)?;
                    }
                }
            }
            f.write_all(&sum.digest().to_le_bytes())?;
            f.into_inner().map_err(|e| e.into_error())?;
            std::fs::rename(&tmp, &path)
        })();
        let mut ix = self.lock();
        match result {
            Ok(()) => {
                ix.touch(hash, bytes);
                ix.stats.written += 1;
                true
            }
            Err(e) => {
                drop(ix);
                let _ = std::fs::remove_file(&tmp);
                self.lock().stats.write_errors += 1;
                if !self.write_disabled.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "warning: KV disk tier: cannot write {}: {e}; no more pages are saved there in this run",
                        tmp.display()
                    );
                }
                false
            }
        }
    }

    /// Reads the page of (`hash`, `parent`, `tokens`) into the slabs
    /// `slab(layer, kv, head)` returns. Ok(false): no usable file (it is
    /// deleted if it exists); the slabs' contents are then unspecified.
    pub(crate) fn read_page<'a>(
        &self,
        g: &KvGeometry,
        hash: u64,
        parent: u64,
        tokens: &[u32],
        mut slab: impl FnMut(usize, usize, usize) -> &'a mut [u8],
    ) -> bool {
        let path = self.path(hash);
        let ok = (|| -> Option<()> {
            let mut f = File::open(&path).ok()?;
            let len = f.metadata().ok()?.len();
            if len != Self::file_bytes(g) {
                return None;
            }
            let want = self.header(g, hash, parent, tokens);
            let mut got = vec![0u8; want.len()];
            f.read_exact(&mut got).ok()?;
            if got != want {
                return None;
            }
            let mut f = std::io::BufReader::with_capacity(1 << 20, f);
            let mut sum = xxhash_rust::xxh3::Xxh3::new();
            sum.update(&got);
            for layer in 0..g.n_layers {
                for kv in 0..g.planes() {
                    for head in 0..g.n_kv_heads() {
                        let s = slab(layer, kv, head);
                        f.read_exact(s).ok()?;
                        sum.update(s);
                    }
                }
            }
            let mut trailer = [0u8; 8];
            f.read_exact(&mut trailer).ok()?;
            (u64::from_le_bytes(trailer) == sum.digest()).then_some(())
        })()
        .is_some();
        let mut ix = self.lock();
        if ok {
            let bytes = Self::file_bytes(g);
            ix.touch(hash, bytes);
            ix.stats.read += 1;
        } else {
            let existed = ix.files.contains_key(&hash);
            ix.forget(hash);
            if existed {
                ix.stats.rejected += 1;
            }
            drop(ix);
            let _ = std::fs::remove_file(&path);
        }
        ok
    }

    /// Asks the OS to drop its cached copies of the tier's files (after
    /// flushing them), so that the next reads come from the device: for
    /// benchmarks of restoring. Best effort.
    pub fn drop_os_cache(&self) {
        let hashes: Vec<u64> = self.lock().files.keys().copied().collect();
        for hash in hashes {
            if let Ok(f) = File::open(self.path(hash)) {
                let _ = f.sync_all();
                #[cfg(target_os = "linux")]
                {
                    use std::os::fd::AsRawFd;
                    // SAFETY: a valid open descriptor; advice only.
                    unsafe {
                        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
                    }
                }
            }
        }
    }
}

/// Makes exceeding a file-size limit (`RLIMIT_FSIZE`) a failed write
/// (`EFBIG`) instead of `SIGXFSZ`, whose default action kills the process.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to "ignore" has no handler
    // to run and is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
