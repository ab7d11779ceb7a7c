//! # tandem-gguf: a hardened GGUF reader and writer
//!
//! [GGUF](https://github.com/ggml-org/llama.cpp/blob/master/ggml/docs/gguf.md) is the
//! single-file model format of llama.cpp / ggml. This crate memory-maps GGUF files
//! (versions 2 and 3), validates them completely up front, and hands out metadata,
//! tensor descriptions and raw tensor bytes. It also writes GGUF v3 (and v2) files.
//!
//! ```
//! use tandem_gguf::{GgmlType, GgufFile, GgufWriter, Value};
//!
//! let mut w = GgufWriter::new();
//! w.add_metadata("general.architecture", Value::from("llama"));
//! w.add_tensor("t", vec![4], GgmlType::F32, vec![0u8; 16]).unwrap();
//! let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
//! assert_eq!(f.metadata().get_str("general.architecture").unwrap(), Some("llama"));
//! let t = f.tensor("t").unwrap();
//! assert_eq!(f.tensor_data(t).len(), 16);
//! ```
//!
//! ## The format
//!
//! All integers are little-endian.
//!
//! ```text
//! "GGUF"            4-byte magic
//! u32 version       2 or 3 (v1 had u32 counts; it is rejected)
//! u64 tensor_count
//! u64 kv_count
//! kv_count x  { string key; u32 value_type; value }
//! tensor_count x { string name; u32 n_dims; u64 dims[n_dims]; u32 ggml_type; u64 offset }
//! zero padding up to a multiple of `general.alignment` (u32, default 32)
//! tensor data       (each tensor at data_start + offset)
//! ```
//!
//! A string is a `u64` byte length followed by UTF-8 bytes (no NUL). Value types are
//! `0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array,
//! 10 u64, 11 i64, 12 f64`; an array is `u32 element_type, u64 count, elements`,
//! where an element of type array is itself `u32 element_type, u64 count, elements`.
//! `dims` are in ggml order: `dims[0]` is the contiguous row length. See
//! [`GgmlType`] for the tensor storage types and their block geometry.
//!
//! Models too large for one file are split by llama.cpp's `gguf-split` into
//! `<prefix>-00001-of-0000N.gguf` ... shards. Shard 1 holds the metadata; every shard
//! holds some tensors and the keys `split.no` (0-based), `split.count` and
//! `split.tensors.count`. [`GgufFile::open`] opens all shards when given shard 1.
//!
//! ## Validation invariants
//!
//! GGUF files are untrusted input (llama.cpp's parser has had many CVEs), so
//! nothing in the file is trusted and parsing never panics, never allocates more
//! than a small multiple of the file size, and never recurses without bound. Once a
//! [`GgufFile`] exists, the following hold:
//!
//! * magic is `GGUF`; version is 2 or 3 (v1 and byte-swapped, i.e. big-endian, files
//!   get dedicated errors);
//! * every count and length (tensor_count, kv_count, string lengths, array counts) was
//!   checked against the bytes remaining *before* allocating, using the smallest
//!   possible encoding of each item; arithmetic is checked everywhere;
//! * arrays nest at most [`MAX_ARRAY_DEPTH`] levels; value type ids are known; bools
//!   are 0 or 1; all strings are valid UTF-8;
//! * metadata keys are non-empty and unique; `general.alignment`, if present, is a
//!   `u32` nonzero power of two;
//! * tensor names are unique (across all shards) and at most [`MAX_TENSOR_NAME_LEN`]
//!   bytes (llama.cpp's `GGML_MAX_NAME - 1`);
//! * every tensor has 1 to 4 dims, each `>= 1`; its element count fits in `i64`; its
//!   byte size fits in `u64`; `dims[0]` is a multiple of its type's block length;
//! * every tensor offset is a multiple of the alignment; the data section starts at
//!   the header end rounded up to the alignment; every tensor's
//!   `[offset, offset + n_bytes)` lies inside its file; no two tensors overlap.
//!
//! Tensors need not be stored in order or back to back (llama.cpp additionally
//! requires that; the spec does not), and bytes after the last tensor are ignored.
//!
//! ## What this crate does not know
//!
//! It is purely a container format library. It knows nothing about model
//! architectures or which keys and tensors a given architecture needs (beyond
//! `general.alignment` and the `split.*` keys), nothing about tokenizers, and
//! nothing about quantization math: it knows each [`GgmlType`]'s block length and
//! block size in bytes, so it can check sizes, but it never decodes tensor data.
//!
//! ## Safety
//!
//! The crate denies `unsafe` code except for the one call that memory-maps a file
//! (see the SAFETY comment there): a mapped file that another process modifies
//! while it is mapped can change under the reader, as with every mmap-based loader.

#![deny(unsafe_code)]

mod error;
mod file;
mod parse;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use file::{GgufFile, TensorInfo, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY};
pub use types::GgmlType;
pub use value::{Array, Metadata, Value};
pub use writer::{GgufStream, GgufWriter};

/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key holding the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Maximum nesting depth of arrays (a top-level array value is depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Maximum tensor name length in bytes: llama.cpp rejects names whose length is
/// `>= GGML_MAX_NAME` (64), since they must fit a NUL-terminated `char[64]`.
pub const MAX_TENSOR_NAME_LEN: usize = 63;
