//! [`GgufWriter`]: builds GGUF v3 (or v2) files.

use std::collections::HashSet;
use std::io::{self, Write};

use crate::{
    Array, GgmlType, GgufError, Metadata, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT,
    MAX_TENSOR_NAME_LEN,
};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    n_bytes: u64,
    /// `None` for a tensor whose bytes come later, through [`GgufStream`].
    data: Option<Vec<u8>>,
}

/// A builder for GGUF files.
///
/// Tensors are validated when added (name length and uniqueness, 1 to 4 nonzero
/// dims, row length a multiple of the block length, data length matching the shape),
/// so the written file passes the reader's checks. Metadata is written as given:
/// keys are unique (adding an existing key replaces its value in place), but values
/// are not checked, which lets tests produce files the reader rejects (for example a
/// bogus `general.alignment` or arrays nested deeper than
/// [`crate::MAX_ARRAY_DEPTH`]).
///
/// Layout: header, metadata, tensor infos, zero padding to the alignment, then each
/// tensor's data followed by zero padding to the alignment (as llama.cpp and gguf-py
/// write it, including after the last tensor). Tensor data offsets are assigned in
/// insertion order.
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn align_up(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment).saturating_mul(alignment)
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl GgufWriter {
    /// An empty GGUF v3 file with the default alignment of 32.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Metadata::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Selects the GGUF version to write: 3 (the default) or 2, which has the same
    /// layout.
    pub fn set_version(&mut self, version: u32) -> Result<(), GgufError> {
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        self.version = version;
        Ok(())
    }

    /// Sets the data alignment and records it as the `general.alignment` (u32) key.
    /// It must be a nonzero power of two that fits in u32.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<(), GgufError> {
        let a = u32::try_from(alignment)
            .ok()
            .filter(|a| a.is_power_of_two())
            .ok_or(GgufError::BadAlignment(alignment))?;
        self.alignment = alignment;
        self.metadata.insert(ALIGNMENT_KEY, Value::U32(a));
        Ok(())
    }

    /// The alignment tensor data will be padded to.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Adds (or replaces) a metadata pair. Setting `general.alignment` to a valid u32
    /// power of two also changes the alignment used for padding.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        if key == ALIGNMENT_KEY {
            if let Value::U32(a) = value {
                if a.is_power_of_two() {
                    self.alignment = a.into();
                }
            }
        }
        self.metadata.insert(key, value);
    }

    /// The metadata added so far.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Adds a tensor. `dims` are in ggml order (`dims[0]` is the row length); `data`
    /// must be exactly the tensor's size in bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        self.push_tensor(name.into(), dims, ggml_type, Some(data))
    }

    /// Declares a tensor whose bytes are supplied later, in order, through
    /// [`GgufWriter::stream`]: the header needs only the shape and type, so a
    /// multi-gigabyte file never has to sit in memory.
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ggml_type: GgmlType,
    ) -> Result<(), GgufError> {
        self.push_tensor(name.into(), dims, ggml_type, None)
    }

    fn push_tensor(
        &mut self,
        name: String,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        data: Option<Vec<u8>>,
    ) -> Result<(), GgufError> {
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                len: len_u64(name.len()),
                tensor: name,
                max: len_u64(MAX_TENSOR_NAME_LEN),
                offset: 0,
            });
        }
        if self.names.contains(&name) {
            return Err(GgufError::DuplicateTensor {
                tensor: name,
                offset: 0,
                file: None,
            });
        }
        let n = u32::try_from(dims.len()).unwrap_or(u32::MAX);
        if !(1..=4).contains(&n) {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n,
                offset: 0,
            });
        }
        if dims.contains(&0) {
            return Err(GgufError::ZeroOrOverflowDims {
                tensor: name,
                dims,
                offset: 0,
                reason: "contain a zero dimension",
            });
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok());
        let Some(n_elements) = n_elements else {
            return Err(GgufError::ZeroOrOverflowDims {
                tensor: name,
                dims,
                offset: 0,
                reason: "have an element count that overflows i64",
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
        let expected = ggml_type.bytes_for(row_len, n_elements);
        let Some(n_bytes) = expected else {
            return Err(GgufError::DataSizeMismatch {
                tensor: name,
                dims,
                ggml_type,
                expected: u64::MAX,
                actual: data.as_ref().map_or(0, |d| len_u64(d.len())),
            });
        };
        if let Some(d) = &data {
            if len_u64(d.len()) != n_bytes {
                return Err(GgufError::DataSizeMismatch {
                    tensor: name,
                    dims,
                    ggml_type,
                    expected: n_bytes,
                    actual: len_u64(d.len()),
                });
            }
        }
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            dims,
            ggml_type,
            n_bytes,
            data,
        });
        Ok(())
    }

    /// The header, metadata and tensor infos, padded to the alignment.
    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        put_u32(&mut out, self.version);
        put_u64(&mut out, len_u64(self.tensors.len()));
        put_u64(&mut out, len_u64(self.metadata.len()));
        for (key, value) in self.metadata.iter() {
            put_str(&mut out, key);
            put_u32(&mut out, value.type_id());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, u32::try_from(t.dims.len()).unwrap_or(u32::MAX));
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.ggml_type.id());
            put_u64(&mut out, offset);
            offset = offset.saturating_add(align_up(t.n_bytes, self.alignment));
        }
        let padded = align_up(len_u64(out.len()), self.alignment);
        out.resize(usize::try_from(padded).unwrap_or(out.len()), 0);
        out
    }

    /// Writes the file. Fails (`InvalidInput`) when a tensor was declared with
    /// [`add_tensor_info`](Self::add_tensor_info): use [`stream`](Self::stream).
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let s = self.stream(w)?;
        s.finish()?;
        Ok(())
    }

    /// The file as bytes (empty if a tensor's data was never given).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.write(&mut out).is_err() {
            out.clear();
        }
        out
    }

    /// Starts writing the file to `w`: writes the header, then returns a
    /// [`GgufStream`] that takes the data of the tensors declared with
    /// [`add_tensor_info`](Self::add_tensor_info), in insertion order, in
    /// chunks of any size. Tensors added with their data are written
    /// automatically when their turn comes. The bytes are the same as
    /// [`write`](Self::write) would produce.
    pub fn stream<W: Write>(&self, mut w: W) -> io::Result<GgufStream<'_, W>> {
        w.write_all(&self.header())?;
        let mut s = GgufStream {
            writer: self,
            out: w,
            index: 0,
            written: 0,
        };
        s.flush_ready()?;
        Ok(s)
    }
}

/// A GGUF file being written tensor by tensor (see [`GgufWriter::stream`]).
pub struct GgufStream<'a, W: Write> {
    writer: &'a GgufWriter,
    out: W,
    /// The tensor whose data comes next.
    index: usize,
    /// Bytes of that tensor written so far.
    written: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write> GgufStream<'_, W> {
    /// The next tensor expecting data: its name and the bytes it still needs.
    /// `None` when every tensor is complete.
    pub fn pending(&self) -> Option<(&str, u64)> {
        self.writer
            .tensors
            .get(self.index)
            .map(|t| (t.name.as_str(), t.n_bytes - self.written))
    }

    /// Appends `bytes` to the current tensor's data. A chunk may not cross into
    /// the next tensor: write each tensor's bytes separately.
    pub fn write_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(t) = self.writer.tensors.get(self.index) else {
            return Err(invalid(format!(
                "{} bytes of tensor data after the last tensor",
                bytes.len()
            )));
        };
        let left = t.n_bytes - self.written;
        if len_u64(bytes.len()) > left {
            return Err(invalid(format!(
                "{} bytes for tensor {} which needs only {left} more",
                bytes.len(),
                t.name
            )));
        }
        self.out.write_all(bytes)?;
        self.written += len_u64(bytes.len());
        if self.written == t.n_bytes {
            self.end_tensor()?;
            self.flush_ready()?;
        }
        Ok(())
    }

    /// Pads the completed current tensor and moves to the next one.
    fn end_tensor(&mut self) -> io::Result<()> {
        let align = self.writer.alignment;
        let pad = align_up(self.written, align) - self.written;
        let zeros = [0u8; 256];
        let mut left = pad;
        while left > 0 {
            let n = left.min(256);
            self.out
                .write_all(zeros.get(..usize::try_from(n).unwrap_or(0)).unwrap_or(&[]))?;
            left -= n;
        }
        self.index += 1;
        self.written = 0;
        Ok(())
    }

    /// Writes the tensors that came with their data, up to the next one that
    /// needs streamed bytes.
    fn flush_ready(&mut self) -> io::Result<()> {
        while let Some(t) = self.writer.tensors.get(self.index) {
            match (&t.data, self.written) {
                (Some(d), 0) => {
                    self.out.write_all(d)?;
                    self.written = t.n_bytes;
                    self.end_tensor()?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Checks that every tensor is complete, flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some((name, left)) = self.pending() {
            return Err(invalid(format!(
                "tensor {name} is missing {left} bytes of data"
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, len_u64(s.len()));
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

/// Element type, count, elements.
fn put_array(out: &mut Vec<u8>, a: &Array) {
    put_u32(out, a.elem_type_id());
    put_u64(out, len_u64(a.len()));
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for s in v {
                put_str(out, s);
            }
        }
        Array::Array(v) => {
            for inner in v {
                put_array(out, inner);
            }
        }
    }
}
