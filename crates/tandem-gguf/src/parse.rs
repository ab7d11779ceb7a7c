//! The GGUF parser: turns untrusted bytes into validated metadata and tensor infos.
//!
//! Every read goes through [`Cursor`], which bounds-checks against the bytes that
//! remain, and every length or count is checked against those remaining bytes
//! *before* anything is allocated for it.

use std::collections::HashMap;

use crate::value::{type_id, type_id_name};
use crate::{
    Array, GgmlType, GgufError, Metadata, TensorInfo, Value, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH,
    MAX_TENSOR_NAME_LEN,
};

type Result<T> = std::result::Result<T, GgufError>;

/// Smallest possible encoding of one key/value pair: key length (8) + a non-empty key
/// (1) + value type (4) + the smallest value (1).
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible encoding of one tensor info: name length (8) + n_dims (4) + one
/// dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// The result of parsing one GGUF file.
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Metadata,
    /// Tensor infos in file order, with absolute offsets.
    pub tensors: Vec<TensorInfo>,
    /// Tensor name -> index into `tensors`.
    pub index: HashMap<String, usize>,
    /// Absolute offset of the (aligned) data section.
    pub data_start: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// usize -> u64 without a lossy cast (usize is at most 64 bits on supported targets).
fn u64_of(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        u64_of(self.pos)
    }

    fn remaining(&self) -> u64 {
        u64_of(self.buf.len().saturating_sub(self.pos))
    }

    fn truncated(&self, what: String, needed: u64) -> GgufError {
        GgufError::Truncated {
            what,
            offset: self.offset(),
            needed,
            available: self.remaining(),
        }
    }

    /// Takes `n` bytes, or fails with `Truncated` describing `what`.
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.buf.get(self.pos..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(self.truncated(what(), n)),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        match self.buf.get(self.pos..).and_then(|s| s.first_chunk::<N>()) {
            Some(a) => {
                self.pos += N;
                Ok(*a)
            }
            None => Err(self.truncated(what(), u64_of(N))),
        }
    }

    fn u8(&mut self, what: impl FnOnce() -> String) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a GGUF string (u64 length + UTF-8 bytes).
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("{}: string length", what()))?;
        if len > self.remaining() {
            return Err(GgufError::StringTooLong {
                what: what(),
                offset: self.offset().saturating_sub(8),
                len,
                available: self.remaining(),
            });
        }
        let start = self.offset();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(GgufError::InvalidUtf8 {
                what: what(),
                offset: start.saturating_add(u64_of(e.valid_up_to())),
            }),
        }
    }
}

/// Minimum encoded size of one element of an array with element type `id`.
fn elem_min_bytes(id: u32) -> Option<u64> {
    Some(match id {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 => 8,
        // u64 length prefix
        type_id::STRING => 8,
        // u32 element type + u64 count
        type_id::ARRAY => 12,
        _ => return None,
    })
}

/// Decodes `N`-byte little-endian elements.
fn decode<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .filter_map(|c| c.first_chunk::<N>())
        .map(|c| f(*c))
        .collect()
}

struct Parser<'a> {
    cur: Cursor<'a>,
}

impl Parser<'_> {
    fn value(&mut self, key: &str, ty: u32, ty_offset: u64) -> Result<Value> {
        let c = &mut self.cur;
        let what = || format!("value of key '{key}'");
        Ok(match ty {
            type_id::U8 => Value::U8(c.u8(what)?),
            type_id::I8 => Value::I8(i8::from_le_bytes(c.array(what)?)),
            type_id::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
            type_id::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
            type_id::U32 => Value::U32(c.u32(what)?),
            type_id::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
            type_id::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
            type_id::U64 => Value::U64(c.u64(what)?),
            type_id::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
            type_id::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
            type_id::BOOL => {
                let off = c.offset();
                Value::Bool(bool_of(c.u8(what)?, key, off)?)
            }
            type_id::STRING => Value::String(c.string(&what)?),
            type_id::ARRAY => Value::Array(self.array(key, 1)?),
            id => {
                return Err(GgufError::InvalidValueType {
                    key: key.to_string(),
                    id,
                    offset: ty_offset,
                })
            }
        })
    }

    /// Reads an array body (element type, count, elements). `depth` is 1 for a
    /// top-level array value.
    fn array(&mut self, key: &str, depth: usize) -> Result<Array> {
        let c = &mut self.cur;
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.to_string(),
                offset: c.offset(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let ty_offset = c.offset();
        let ty = c.u32(|| format!("array element type of key '{key}'"))?;
        let count = c.u64(|| format!("array length of key '{key}'"))?;
        let Some(min) = elem_min_bytes(ty) else {
            return Err(GgufError::InvalidValueType {
                key: key.to_string(),
                id: ty,
                offset: ty_offset,
            });
        };
        let needed = count.saturating_mul(min);
        if needed > c.remaining() {
            return Err(GgufError::ArrayTooLong {
                key: key.to_string(),
                offset: ty_offset,
                count,
                elem_type: type_id_name(ty),
                needed,
                available: c.remaining(),
            });
        }
        // `count <= remaining bytes`, so it fits in usize and allocating it is bounded
        // by a small multiple of the file size.
        let n = usize::try_from(count).unwrap_or(0);
        let what = || format!("array elements of key '{key}'");
        Ok(match ty {
            type_id::U8 => Array::U8(c.take(needed, what)?.to_vec()),
            type_id::I8 => Array::I8(decode(c.take(needed, what)?, i8::from_le_bytes)),
            type_id::U16 => Array::U16(decode(c.take(needed, what)?, u16::from_le_bytes)),
            type_id::I16 => Array::I16(decode(c.take(needed, what)?, i16::from_le_bytes)),
            type_id::U32 => Array::U32(decode(c.take(needed, what)?, u32::from_le_bytes)),
            type_id::I32 => Array::I32(decode(c.take(needed, what)?, i32::from_le_bytes)),
            type_id::F32 => Array::F32(decode(c.take(needed, what)?, f32::from_le_bytes)),
            type_id::U64 => Array::U64(decode(c.take(needed, what)?, u64::from_le_bytes)),
            type_id::I64 => Array::I64(decode(c.take(needed, what)?, i64::from_le_bytes)),
            type_id::F64 => Array::F64(decode(c.take(needed, what)?, f64::from_le_bytes)),
            type_id::BOOL => {
                let start = c.offset();
                let bytes = c.take(needed, what)?;
                let mut out = Vec::with_capacity(n);
                for (i, &b) in bytes.iter().enumerate() {
                    out.push(bool_of(b, key, start.saturating_add(u64_of(i)))?);
                }
                Array::Bool(out)
            }
            type_id::STRING => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(c.string(&|| format!("key '{key}': array element {i}"))?);
                }
                Array::String(out)
            }
            _ => {
                // type_id::ARRAY (every other id was rejected by elem_min_bytes)
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.array(key, depth + 1)?);
                }
                Array::Array(out)
            }
        })
    }
}

fn bool_of(b: u8, key: &str, offset: u64) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.to_string(),
            value,
            offset,
        }),
    }
}

/// Parses and validates a whole GGUF file held in `buf`. Tensor infos get
/// `file_index` and absolute offsets into `buf`.
pub(crate) fn parse(buf: &[u8], file_index: usize) -> Result<Parsed> {
    let mut p = Parser {
        cur: Cursor { buf, pos: 0 },
    };

    // --- header -------------------------------------------------------------------
    let magic: [u8; 4] = p.cur.array(|| "magic".to_string())?;
    if &magic == b"FUGG" {
        // The magic read as a big-endian u32.
        let raw = p.cur.u32(|| "version".to_string())?;
        return Err(GgufError::BigEndian {
            raw,
            swapped: raw.swap_bytes(),
        });
    }
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = p.cur.u32(|| "version".to_string())?;
    match version {
        2 | 3 => {}
        v if v != 0 && v & 0xFFFF == 0 => {
            return Err(GgufError::BigEndian {
                raw: v,
                swapped: v.swap_bytes(),
            })
        }
        v => return Err(GgufError::UnsupportedVersion(v)),
    }
    let tensor_count_offset = p.cur.offset();
    let tensor_count = p.cur.u64(|| "tensor_count".to_string())?;
    let kv_count_offset = p.cur.offset();
    let kv_count = p.cur.u64(|| "kv_count".to_string())?;
    let available = p.cur.remaining();
    if kv_count.saturating_mul(MIN_KV_BYTES) > available {
        return Err(GgufError::TooManyKvs {
            count: kv_count,
            offset: kv_count_offset,
            min_each: MIN_KV_BYTES,
            available,
        });
    }
    if tensor_count.saturating_mul(MIN_TENSOR_INFO_BYTES) > available {
        return Err(GgufError::TooManyTensors {
            count: tensor_count,
            offset: tensor_count_offset,
            min_each: MIN_TENSOR_INFO_BYTES,
            available,
        });
    }

    // --- key/value pairs ----------------------------------------------------------
    let mut metadata = Metadata::new();
    for i in 0..kv_count {
        let key_offset = p.cur.offset();
        let key = p.cur.string(&|| format!("metadata key #{i}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey {
                index: i,
                offset: key_offset,
            });
        }
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
        let ty_offset = p.cur.offset();
        let ty = p.cur.u32(|| format!("value type of key '{key}'"))?;
        let value = p.value(&key, ty, ty_offset)?;
        metadata.insert_new(key, value);
    }

    let alignment = match metadata.get(crate::ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) => {
            if *a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment((*a).into()));
            }
            u64::from(*a)
        }
        Some(other) => {
            return Err(GgufError::WrongType {
                key: crate::ALIGNMENT_KEY.to_string(),
                expected: "u32",
                found: other.describe(),
            })
        }
    };

    // --- tensor infos ---------------------------------------------------------------
    // tensor_count <= remaining / 32, so this allocation is bounded by the file size.
    let mut tensors = Vec::with_capacity(usize::try_from(tensor_count).unwrap_or(0));
    let mut index: HashMap<String, usize> = HashMap::new();
    for i in 0..tensor_count {
        let info_offset = p.cur.offset();
        let name = p.cur.string(&|| format!("name of tensor #{i}"))?;
        // llama.cpp rejects names with `length >= GGML_MAX_NAME` (64) because they
        // must fit in a NUL-terminated char[64]; we apply the same rule, so names of
        // up to 63 bytes are accepted.
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                len: u64_of(name.len()),
                tensor: name,
                max: u64_of(MAX_TENSOR_NAME_LEN),
                offset: info_offset,
            });
        }
        if index.contains_key(&name) {
            return Err(GgufError::DuplicateTensor {
                tensor: name,
                offset: info_offset,
                file: None,
            });
        }
        let n_dims_offset = p.cur.offset();
        let n_dims = p.cur.u32(|| format!("n_dims of tensor '{name}'"))?;
        if !(1..=4).contains(&n_dims) {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n: n_dims,
                offset: n_dims_offset,
            });
        }
        let dims_offset = p.cur.offset();
        let mut dims = Vec::with_capacity(4);
        for d in 0..n_dims {
            dims.push(p.cur.u64(|| format!("dim {d} of tensor '{name}'"))?);
        }
        let bad_dims = |name: String, dims: Vec<u64>, reason| GgufError::ZeroOrOverflowDims {
            tensor: name,
            dims,
            offset: dims_offset,
            reason,
        };
        if dims.contains(&0) {
            return Err(bad_dims(name, dims, "contain a zero dimension"));
        }
        let n_elements = match dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) {
            // ggml stores element counts as int64_t.
            Some(n) if i64::try_from(n).is_ok() => n,
            _ => {
                return Err(bad_dims(
                    name,
                    dims,
                    "have an element count that overflows i64",
                ))
            }
        };
        let type_offset = p.cur.offset();
        let type_id = p.cur.u32(|| format!("ggml type of tensor '{name}'"))?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType {
                tensor: name,
                id: type_id,
                offset: type_offset,
            });
        };
        let row_len = dims.first().copied().unwrap_or(1);
        if row_len % ggml_type.block_len() != 0 {
            return Err(GgufError::RowNotBlockAligned {
                tensor: name,
                ggml_type,
                row_len,
                block_len: ggml_type.block_len(),
            });
        }
        let Some(n_bytes) = ggml_type.bytes_for(row_len, n_elements) else {
            return Err(bad_dims(name, dims, "have a byte size that overflows u64"));
        };
        let data_offset_offset = p.cur.offset();
        let offset = p.cur.u64(|| format!("data offset of tensor '{name}'"))?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                tensor: name,
                offset,
                alignment,
                info_offset: data_offset_offset,
            });
        }
        index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            // relative for now; made absolute below
            offset,
            n_elements,
            n_bytes,
            file_index,
        });
    }

    // --- data section -------------------------------------------------------------------
    let header_end = p.cur.offset();
    let file_len = u64_of(buf.len());
    let pad = (alignment - header_end % alignment) % alignment;
    let data_start = header_end.saturating_add(pad);
    if !tensors.is_empty() && data_start > file_len {
        return Err(p
            .cur
            .truncated("padding before the tensor data section".to_string(), pad));
    }
    for t in &mut tensors {
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    start: data_start.saturating_add(t.offset),
                    size: t.n_bytes,
                    data_start,
                    file_len,
                })
            }
        }
    }
    check_overlaps(&tensors)?;

    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
        index,
        data_start,
    })
}

/// Fails if any two tensors' byte ranges intersect (all sizes are nonzero).
fn check_overlaps(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if let [a, b] = pair {
            // offsets + sizes were checked against the file length above
            let a_end = a.offset.saturating_add(a.n_bytes);
            if a_end > b.offset {
                return Err(GgufError::OverlappingTensors {
                    a: a.name.clone(),
                    b: b.name.clone(),
                    a_end,
                    b_start: b.offset,
                });
            }
        }
    }
    Ok(())
}
