//! The error type of this crate.

use std::path::PathBuf;

use crate::GgmlType;

/// Everything that can go wrong while reading, validating or writing a GGUF file.
///
/// Every message is a single line that names the key, tensor or file involved and,
/// where the problem comes from file bytes, the byte offset at which it was found.
/// Errors returned by [`crate::GgufFile::open`] are wrapped in
/// [`GgufError::InFile`] so that they name the file; use [`GgufError::root`] to look
/// at the underlying problem.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum GgufError {
    /// An I/O error while opening, stat-ing or mapping a file.
    #[error("{}: {source}", p(path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A validation error inside a specific file (used by [`crate::GgufFile::open`]).
    #[error("{}: {source}", p(path))]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<GgufError>,
    },
    /// The file does not start with the bytes `GGUF`.
    #[error("not a GGUF file: bad magic {found:02x?} at offset 0 (expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    /// The version field is byte-swapped, i.e. the file was written big-endian.
    #[error("big-endian GGUF is not supported (version field at offset 4 reads {raw:#010x}, byte-swapped {swapped})")]
    BigEndian { raw: u32, swapped: u32 },
    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {0} at offset 4 (only v2 and v3 are supported; v1 used 32-bit counts and is obsolete)")]
    UnsupportedVersion(u32),
    /// The file ends before a field it declares.
    #[error(
        "truncated file: {} at offset {offset} needs {needed} bytes but only {available} remain",
        one_line(what)
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    /// The header declares more tensor infos than the file could possibly hold.
    #[error("tensor_count {count} at offset {offset} is impossible: each tensor info needs at least {min_each} bytes and only {available} remain")]
    TooManyTensors {
        count: u64,
        offset: u64,
        min_each: u64,
        available: u64,
    },
    /// The header declares more key/value pairs than the file could possibly hold.
    #[error("kv_count {count} at offset {offset} is impossible: each key/value pair needs at least {min_each} bytes and only {available} remain")]
    TooManyKvs {
        count: u64,
        offset: u64,
        min_each: u64,
        available: u64,
    },
    /// A string length prefix exceeds the bytes left in the file.
    #[error(
        "{}: string length {len} at offset {offset} exceeds the {available} bytes remaining",
        one_line(what)
    )]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        available: u64,
    },
    /// An array element count that cannot fit in the bytes left in the file.
    #[error("key {}: array of {count} {elem_type} elements at offset {offset} needs at least {needed} bytes but only {available} remain", q(key))]
    ArrayTooLong {
        key: String,
        offset: u64,
        count: u64,
        elem_type: &'static str,
        /// Minimum bytes required (saturated at `u64::MAX`).
        needed: u64,
        available: u64,
    },
    /// Arrays nested deeper than [`crate::MAX_ARRAY_DEPTH`].
    #[error(
        "key {}: arrays nested deeper than {max} levels at offset {offset}",
        q(key)
    )]
    NestingTooDeep {
        key: String,
        offset: u64,
        max: usize,
    },
    /// An unknown GGUF value type id.
    #[error("key {}: invalid value type id {id} at offset {offset}", q(key))]
    InvalidValueType { key: String, id: u32, offset: u64 },
    /// A bool byte other than 0 or 1.
    #[error(
        "key {}: invalid bool byte {value} at offset {offset} (must be 0 or 1)",
        q(key)
    )]
    InvalidBool { key: String, value: u8, offset: u64 },
    /// A string that is not valid UTF-8.
    #[error("{}: invalid UTF-8 in string at offset {offset}", one_line(what))]
    InvalidUtf8 { what: String, offset: u64 },
    /// A zero-length metadata key.
    #[error("metadata key #{index} at offset {offset} is empty")]
    EmptyKey { index: u64, offset: u64 },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {} at offset {offset}", q(key))]
    DuplicateKey { key: String, offset: u64 },
    /// The same tensor name appears twice (in one file or across shards).
    #[error("duplicate tensor name {} at offset {offset}{}", q(tensor), file.as_ref().map(|f| format!(" of {}", p(f))).unwrap_or_default())]
    DuplicateTensor {
        tensor: String,
        offset: u64,
        file: Option<PathBuf>,
    },
    /// A tensor name longer than ggml's limit (`GGML_MAX_NAME - 1` = 63 bytes).
    #[error(
        "tensor name {} at offset {offset} is {len} bytes long; at most {max} are allowed",
        q(tensor)
    )]
    TensorNameTooLong {
        tensor: String,
        len: u64,
        max: u64,
        offset: u64,
    },
    /// A ggml type id that is unknown or removed.
    #[error(
        "tensor {}: unknown or removed ggml type id {id} at offset {offset}",
        q(tensor)
    )]
    UnknownTensorType {
        tensor: String,
        id: u32,
        offset: u64,
    },
    /// `n_dims` outside `1..=4` (the name is historical: zero is rejected too).
    #[error("tensor {}: n_dims {n} at offset {offset} is outside 1..=4", q(tensor))]
    TooManyDims { tensor: String, n: u32, offset: u64 },
    /// A zero dimension, or dimensions whose element count or byte size overflows.
    #[error("tensor {}: dims {dims:?} at offset {offset} {reason}", q(tensor))]
    ZeroOrOverflowDims {
        tensor: String,
        dims: Vec<u64>,
        offset: u64,
        reason: &'static str,
    },
    /// `dims[0]` is not a multiple of the type's block length.
    #[error("tensor {}: row length {row_len} is not a multiple of the {ggml_type} block length {block_len}", q(tensor))]
    RowNotBlockAligned {
        tensor: String,
        ggml_type: GgmlType,
        row_len: u64,
        block_len: u64,
    },
    /// A tensor whose bytes are not entirely inside its file.
    #[error("tensor {}: data [{start}, {start} + {size}) lies outside the file of {file_len} bytes (data section starts at {data_start})", q(tensor))]
    TensorOutOfBounds {
        tensor: String,
        /// Absolute byte offset in the file (saturated on overflow).
        start: u64,
        size: u64,
        data_start: u64,
        file_len: u64,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor {}: data offset {offset} (info at offset {info_offset}) is not a multiple of the alignment {alignment}", q(tensor))]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
        info_offset: u64,
    },
    /// Two tensors whose byte ranges intersect.
    #[error(
        "tensors {} and {} overlap: {} starts at {b_start} before {} ends at {a_end}",
        q(a),
        q(b),
        q(b),
        q(a)
    )]
    OverlappingTensors {
        a: String,
        b: String,
        a_end: u64,
        b_start: u64,
    },
    /// `general.alignment` is zero, not a power of two, or too large.
    #[error("general.alignment {0} is not a nonzero power of two that fits in u32")]
    BadAlignment(u64),
    /// A metadata value of an unexpected type (or out of the requested range).
    #[error("metadata key {}: expected {expected}, found {found}", q(key))]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A problem with a multi-file (gguf-split) model.
    #[error("split GGUF: {}", one_line(.0))]
    Split(String),
    /// The writer was given data whose length does not match the tensor's shape and type.
    #[error("tensor {}: {actual} bytes of data given but dims {dims:?} of type {ggml_type} need {expected}", q(tensor))]
    DataSizeMismatch {
        tensor: String,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        expected: u64,
        actual: u64,
    },
    /// A value or parameter given to the writer that it cannot serialise.
    #[error("invalid writer input: {}", one_line(.0))]
    InvalidInput(String),
}

impl GgufError {
    /// The underlying error, looking through any [`GgufError::InFile`] wrappers.
    pub fn root(&self) -> &GgufError {
        let mut e = self;
        while let GgufError::InFile { source, .. } = e {
            e = source;
        }
        e
    }
}

/// A name from the file, quoted, with control characters (newlines included) escaped
/// so that messages stay on one line.
fn q(s: &str) -> String {
    format!("'{}'", s.escape_debug())
}

/// Free text that may embed names from the file, kept to one line.
fn one_line(s: &str) -> String {
    s.replace(|c: char| c.is_control(), "?")
}

fn p(path: &std::path::Path) -> String {
    one_line(&path.display().to_string())
}
