//! [`GgufFile`]: a validated, memory-mapped (or in-memory) GGUF model, possibly split
//! over several shards.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::parse::{parse, Parsed};
use crate::{GgmlType, GgufError, Metadata};

/// One tensor's description. All fields have been validated against the file it
/// came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorInfo {
    /// Tensor name (at most 63 bytes, unique across all shards).
    pub name: String,
    /// Shape in ggml order: `dims[0]` is the contiguous row length. 1 to 4 entries,
    /// each `>= 1`.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: u64,
    /// Product of `dims` (fits in `i64`).
    pub n_elements: u64,
    /// Size of the tensor's data in bytes.
    pub n_bytes: u64,
    /// Index of the shard holding the data (0 for single-file models).
    pub file_index: usize,
}

impl TensorInfo {
    /// Bytes per row (`dims[0]` elements).
    pub fn row_bytes(&self) -> u64 {
        let row_len = self.dims.first().copied().unwrap_or(1);
        self.ggml_type.bytes_for(row_len, row_len).unwrap_or(0)
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Static(s) => s,
            Backing::Owned(v) => v,
        }
    }
}

struct Shard {
    path: Option<PathBuf>,
    backing: Backing,
    data_start: u64,
}

/// A parsed and fully validated GGUF model.
///
/// Construction validates everything (see the crate docs), so afterwards every
/// [`TensorInfo`] it hands out describes bytes that are inside its file and
/// [`GgufFile::tensor_data`] cannot fail.
pub struct GgufFile {
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    shards: Vec<Shard>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_files", &self.shards.len())
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("total_bytes", &self.total_bytes())
            .finish()
    }
}

/// Split-file key names, as written by llama.cpp's `gguf-split`.
pub const SPLIT_NO_KEY: &str = "split.no";
/// Number of shards.
pub const SPLIT_COUNT_KEY: &str = "split.count";
/// Total number of tensors over all shards.
pub const SPLIT_TENSORS_COUNT_KEY: &str = "split.tensors.count";

/// `<prefix>-NNNNN-of-MMMMM.gguf` -> (prefix, NNNNN, MMMMM).
fn split_name(file_name: &str) -> Option<(&str, u32, u32)> {
    let stem = file_name.strip_suffix(".gguf")?;
    // "-00001-of-00003" is 15 ASCII bytes
    let cut = stem.len().checked_sub(15)?;
    if !stem.is_char_boundary(cut) {
        return None;
    }
    let (prefix, tail) = stem.split_at(cut);
    let tail = tail.as_bytes();
    let digits = |s: &[u8]| -> Option<u32> {
        if s.len() == 5 && s.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(s).ok()?.parse().ok()
        } else {
            None
        }
    };
    if tail.first() != Some(&b'-') || tail.get(6..10) != Some(b"-of-".as_slice()) {
        return None;
    }
    Some((prefix, digits(tail.get(1..6)?)?, digits(tail.get(10..15)?)?))
}

fn shard_path(dir: &Path, prefix: &str, no: u32, count: u32) -> PathBuf {
    dir.join(format!("{prefix}-{no:05}-of-{count:05}.gguf"))
}

fn map_file(path: &Path) -> Result<Backing, GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(Backing::Owned(Vec::new()));
    }
    map_readonly(&file).map(Backing::Mmap).map_err(io)
}

/// The crate's only `unsafe` code.
#[allow(unsafe_code)]
fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: `Mmap::map` is unsafe because the mapping aliases the file: if another
    // process truncates or rewrites the file while it is mapped, reads through the
    // returned slice may observe changing bytes (breaking `&[u8]` immutability) or
    // fault with SIGBUS. We map read-only and never write through the mapping, and
    // model files are treated as immutable inputs for the life of the process; this
    // is the same contract llama.cpp, safetensors and candle rely on. All structural
    // validation happens right after mapping, so a file that is modified afterwards
    // can at worst yield wrong tensor bytes or a SIGBUS, never an out-of-bounds
    // access, since every slice is bounds-checked against the mapping's length.
    unsafe { memmap2::Mmap::map(file) }
}

impl GgufFile {
    /// Opens a GGUF file with a read-only memory map.
    ///
    /// If the file name follows `gguf-split`'s `<prefix>-00001-of-0000N.gguf` pattern,
    /// all `N` shards (in the same directory) are opened: metadata comes from shard 1,
    /// tensors from all shards, and `split.no` / `split.count` / `split.tensors.count`
    /// are checked when present. Opening a shard other than the first is an error that
    /// names the first shard's path. Errors name the offending file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file_name = path.file_name().and_then(|n| n.to_str());
        let split = file_name.and_then(split_name);
        let Some((prefix, no, count)) = split else {
            return Self::open_single(path);
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        if count == 0 || no == 0 || no > count {
            return Err(GgufError::Split(format!(
                "{}: invalid shard numbering {no:05}-of-{count:05}",
                path.display()
            )));
        }
        if no != 1 {
            return Err(GgufError::Split(format!(
                "{} is shard {no} of {count}; open the first shard {} instead",
                path.display(),
                shard_path(dir, prefix, 1, count).display()
            )));
        }
        if count == 1 {
            return Self::open_single(path);
        }

        let mut file = Self::load(path)?;
        let first_path = path.to_path_buf();
        check_split_keys(&file.metadata, &first_path, 0, count, true)?;
        for i in 1..count {
            let p = shard_path(dir, prefix, i + 1, count);
            let backing = match map_file(&p) {
                Ok(b) => b,
                Err(GgufError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(GgufError::Split(format!(
                        "missing shard {} of {count}: {} (first shard {})",
                        i + 1,
                        p.display(),
                        first_path.display()
                    )))
                }
                Err(e) => return Err(e),
            };
            let file_index = file.shards.len();
            let parsed = parse(backing.bytes(), file_index).map_err(|e| in_file(&p, e))?;
            check_split_keys(&parsed.metadata, &p, i, count, false)?;
            for t in parsed.tensors {
                if file.index.contains_key(&t.name) {
                    return Err(GgufError::DuplicateTensor {
                        tensor: t.name,
                        offset: 0,
                        file: Some(p),
                    });
                }
                file.index.insert(t.name.clone(), file.tensors.len());
                file.tensors.push(t);
            }
            file.shards.push(Shard {
                path: Some(p),
                backing,
                data_start: parsed.data_start,
            });
        }
        if let Some(n) = file
            .metadata
            .get_u64(SPLIT_TENSORS_COUNT_KEY)
            .map_err(|e| in_file(&first_path, e))?
        {
            if n != u64::try_from(file.tensors.len()).unwrap_or(u64::MAX) {
                return Err(GgufError::Split(format!(
                    "{}: {SPLIT_TENSORS_COUNT_KEY} is {n} but the {count} shards hold {} tensors",
                    first_path.display(),
                    file.tensors.len()
                )));
            }
        }
        Ok(file)
    }

    fn load(path: &Path) -> Result<GgufFile, GgufError> {
        let backing = map_file(path)?;
        Self::from_backing(backing, Some(path.to_path_buf())).map_err(|e| in_file(path, e))
    }

    fn open_single(path: &Path) -> Result<GgufFile, GgufError> {
        let file = Self::load(path)?;
        // A lone file that claims to belong to a larger split cannot be complete.
        let count = file
            .metadata
            .get_u64(SPLIT_COUNT_KEY)
            .map_err(|e| in_file(path, e))?;
        if let Some(n) = count.filter(|&n| n > 1) {
            return Err(GgufError::Split(format!(
                "{}: {SPLIT_COUNT_KEY} is {n} but the file name does not follow \
                 <prefix>-00001-of-{n:05}.gguf, so the other shards cannot be located",
                path.display()
            )));
        }
        let no = file
            .metadata
            .get_u64(SPLIT_NO_KEY)
            .map_err(|e| in_file(path, e))?;
        if let Some(no) = no.filter(|&no| no != 0) {
            return Err(GgufError::Split(format!(
                "{}: {SPLIT_NO_KEY} is {no}, so this is not the first shard of a split model",
                path.display()
            )));
        }
        Ok(file)
    }

    fn from_backing(backing: Backing, path: Option<PathBuf>) -> Result<GgufFile, GgufError> {
        let Parsed {
            version,
            alignment,
            metadata,
            tensors,
            index,
            data_start,
        } = parse(backing.bytes(), 0)?;
        Ok(GgufFile {
            version,
            alignment,
            metadata,
            tensors,
            index,
            shards: vec![Shard {
                path,
                backing,
                data_start,
            }],
        })
    }

    /// Parses a GGUF image embedded in the binary (e.g. with `include_bytes!`).
    /// The bytes are not copied.
    pub fn from_static(bytes: &'static [u8]) -> Result<GgufFile, GgufError> {
        Self::from_backing(Backing::Static(bytes), None)
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_backing(Backing::Owned(bytes), None)
    }

    /// Whether every shard is a memory-mapped file (so its pages can be
    /// dropped from the process and faulted back in from the page cache).
    pub fn is_file_mapped(&self) -> bool {
        self.shards
            .iter()
            .all(|s| matches!(s.backing, Backing::Mmap(_)))
    }

    /// GGUF version of the (first) file: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment of the (first) file (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Metadata of the (first) file.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// All tensors, in file order (shard 1 first).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The raw bytes of tensor `t`.
    ///
    /// For a `TensorInfo` obtained from this `GgufFile` the slice is exactly
    /// `t.n_bytes` long (validated at open time). A `TensorInfo` from elsewhere that
    /// does not fit yields an empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset).ok().and_then(|start| {
            usize::try_from(t.n_bytes)
                .ok()
                .and_then(|n| start.checked_add(n))
                .map(|end| start..end)
        });
        self.shards
            .get(t.file_index)
            .zip(range)
            .and_then(|(s, r)| s.backing.bytes().get(r))
            .unwrap_or(&[])
    }

    /// Number of files (shards) the model was read from.
    pub fn n_files(&self) -> usize {
        self.shards.len()
    }

    /// Path of shard `file_index`, if it was opened from a file.
    pub fn path(&self, file_index: usize) -> Option<&Path> {
        self.shards.get(file_index).and_then(|s| s.path.as_deref())
    }

    /// Absolute offset of the data section of shard `file_index`.
    pub fn data_offset(&self, file_index: usize) -> Option<u64> {
        self.shards.get(file_index).map(|s| s.data_start)
    }

    /// The whole contents of shard `file_index`.
    pub fn file_bytes(&self, file_index: usize) -> Option<&[u8]> {
        self.shards.get(file_index).map(|s| s.backing.bytes())
    }

    /// Total size in bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::try_from(s.backing.bytes().len()).unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add)
    }
}

fn in_file(path: &Path, e: GgufError) -> GgufError {
    match e {
        e @ (GgufError::Io { .. } | GgufError::InFile { .. } | GgufError::Split(_)) => e,
        e => GgufError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        },
    }
}

/// Checks the `split.*` keys of shard `index` (0-based) of `count`. With `required`,
/// `split.count` must be present.
fn check_split_keys(
    md: &Metadata,
    path: &Path,
    index: u32,
    count: u32,
    required: bool,
) -> Result<(), GgufError> {
    let split_err = |msg: String| GgufError::Split(format!("{}: {msg}", path.display()));
    match md.get_u64(SPLIT_COUNT_KEY).map_err(|e| in_file(path, e))? {
        Some(n) if n != u64::from(count) => {
            return Err(split_err(format!(
                "{SPLIT_COUNT_KEY} is {n} but the file name says {count} shards"
            )))
        }
        None if required => {
            return Err(split_err(format!(
                "{SPLIT_COUNT_KEY} is missing from a file named as shard 1 of {count}"
            )))
        }
        _ => {}
    }
    // llama.cpp's split.no is 0-based while file names are 1-based.
    if let Some(no) = md.get_u64(SPLIT_NO_KEY).map_err(|e| in_file(path, e))? {
        if no != u64::from(index) {
            return Err(split_err(format!(
                "{SPLIT_NO_KEY} is {no} but this is shard {} (expected {SPLIT_NO_KEY} = {index})",
                index + 1
            )));
        }
    }
    Ok(())
}
