//! Weight tensors as they lie in the model files: memory-mapped bytes in a
//! [`WeightFormat`], never copied at load time.
//!
//! A [`Tensor`] is a view: the bytes stay in the GGUF or safetensors mapping
//! it came from, which the tensor keeps alive. Shapes are outermost first
//! (`[rows, cols]` for a matrix, rows being output features), the layout both
//! formats share once GGUF's innermost-first dims are reversed.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;
use tandem_gguf::GgufFile;
use tandem_kernels::WeightFormat;

use crate::ModelError;

#[derive(Clone)]
enum Blob {
    /// Tensor `index` of a GGUF file (bounds validated by the reader).
    Gguf { file: Arc<GgufFile>, index: usize },
    /// A byte range of a mapped safetensors file, validated at load.
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    /// Bytes made at load time (a tensor derived from the file's, e.g.
    /// MLA's `k_b` transposed out of an older file's `kv_b`).
    Owned(Arc<[u8]>),
}

#[derive(Clone)]
pub struct Tensor {
    name: String,
    /// The on-disk type name (`Q4_K`, `BF16`, ...), also for unsupported types.
    type_name: &'static str,
    format: Option<WeightFormat>,
    dims: Vec<usize>,
    n_bytes: usize,
    blob: Blob,
    /// Where this view starts in the blob's bytes (an expert of a stacked
    /// tensor; 0 for a whole tensor).
    offset: usize,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({} {} {:?})",
            self.name, self.type_name, self.dims
        )
    }
}

impl Tensor {
    pub(crate) fn from_gguf(file: &Arc<GgufFile>, index: usize) -> Result<Tensor, ModelError> {
        let info = file
            .tensors()
            .get(index)
            .ok_or_else(|| ModelError::bad_tensor("?", "tensor index out of range"))?;
        let dims = info
            .dims
            .iter()
            .rev()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| ModelError::bad_tensor(&info.name, "dimension too large"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // one type table: tandem-gguf's, mapped by the kernels crate
        let format = WeightFormat::from_ggml(info.ggml_type);
        Ok(Tensor {
            name: info.name.clone(),
            type_name: info.ggml_type.name(),
            format,
            dims,
            n_bytes: usize::try_from(info.n_bytes)
                .map_err(|_| ModelError::bad_tensor(&info.name, "too large"))?,
            blob: Blob::Gguf {
                file: Arc::clone(file),
                index,
            },
            offset: 0,
        })
    }

    pub(crate) fn from_safetensors(
        name: &str,
        dtype: safetensors::Dtype,
        shape: &[usize],
        map: &Arc<Mmap>,
        range: Range<usize>,
    ) -> Result<Tensor, ModelError> {
        use safetensors::Dtype as D;
        let (format, type_name) = match dtype {
            D::F32 => (Some(WeightFormat::F32), "F32"),
            D::F16 => (Some(WeightFormat::F16), "F16"),
            D::BF16 => (Some(WeightFormat::BF16), "BF16"),
            D::F64 => (None, "F64"),
            D::I8 => (None, "I8"),
            D::U8 => (None, "U8"),
            D::I32 => (None, "I32"),
            D::I64 => (None, "I64"),
            D::BOOL => (None, "BOOL"),
            _ => (None, "other"),
        };
        if range.end > map.len() || range.start > range.end {
            return Err(ModelError::bad_tensor(name, "data outside the file"));
        }
        Ok(Tensor {
            name: name.to_string(),
            type_name,
            format,
            dims: shape.to_vec(),
            n_bytes: range.len(),
            blob: Blob::Mapped {
                map: Arc::clone(map),
                range,
            },
            offset: 0,
        })
    }

    /// A tensor of `format` over bytes made at load time; checks that
    /// they are exactly `dims` in that format.
    pub(crate) fn owned(
        name: String,
        format: WeightFormat,
        type_name: &'static str,
        dims: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Result<Tensor, ModelError> {
        let cols = dims.last().copied().unwrap_or(1);
        let rows: usize = dims.iter().rev().skip(1).product();
        if format.row_bytes(cols).and_then(|r| r.checked_mul(rows)) != Some(bytes.len()) {
            return Err(ModelError::bad_tensor(
                &name,
                "derived bytes do not match shape",
            ));
        }
        Ok(Tensor {
            name,
            type_name,
            format: Some(format),
            dims,
            n_bytes: bytes.len(),
            blob: Blob::Owned(bytes.into()),
            offset: 0,
        })
    }

    /// The same bytes as a `[rows, cols]` matrix (a stacked 3-D tensor
    /// seen as one matrix whose rows are its blocks' rows in order), when
    /// the element counts agree and `cols` is the innermost dimension.
    pub fn as_matrix(&self, rows: usize, cols: usize) -> Result<Tensor, ModelError> {
        if self.cols() != cols || rows.checked_mul(cols) != Some(self.n_elements()) {
            return Err(ModelError::bad_tensor(
                &self.name,
                format!("shape {:?}, expected {rows} rows of {cols}", self.dims),
            ));
        }
        Ok(Tensor {
            dims: vec![rows, cols],
            ..self.clone()
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
    /// The format, if tandem can compute with it.
    pub fn format(&self) -> Option<WeightFormat> {
        self.format
    }
    /// Dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }
    /// Length of the innermost dimension (the reduction axis of a matrix).
    pub fn cols(&self) -> usize {
        self.dims.last().copied().unwrap_or(1)
    }
    /// Product of all outer dimensions.
    pub fn rows(&self) -> usize {
        self.dims.iter().rev().skip(1).product()
    }

    /// The raw bytes. Bounds were validated when the tensor was made.
    pub fn bytes(&self) -> &[u8] {
        let all = match &self.blob {
            Blob::Gguf { file, index } => file
                .tensors()
                .get(*index)
                .map(|t| file.tensor_data(t))
                .unwrap_or(&[]),
            Blob::Mapped { map, range } => map.get(range.clone()).unwrap_or(&[]),
            Blob::Owned(bytes) => bytes,
        };
        all.get(self.offset..self.offset + self.n_bytes)
            .unwrap_or(&[])
    }

    /// Expert `e` of a stacked `[n, rows, cols]` expert tensor, as a
    /// `[rows, cols]` view of its bytes (no copy). Checks the shape, and
    /// that the bytes are exactly `n` experts' worth.
    pub fn expert(
        &self,
        e: usize,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, ModelError> {
        let fmt = self.require_format()?;
        if self.dims != [n, rows, cols] {
            return Err(ModelError::bad_tensor(
                &self.name,
                format!(
                    "shape {:?}, expected [{n}, {rows}, {cols}] ({n} experts)",
                    self.dims
                ),
            ));
        }
        let per = fmt
            .row_bytes(cols)
            .and_then(|r| r.checked_mul(rows))
            .ok_or_else(|| {
                ModelError::bad_tensor(
                    &self.name,
                    format!("{cols} columns do not fill whole {} blocks", fmt.name()),
                )
            })?;
        if per.checked_mul(n) != Some(self.n_bytes) || e >= n {
            return Err(ModelError::bad_tensor(
                &self.name,
                "byte size does not match shape and type",
            ));
        }
        Ok(Tensor {
            name: format!("{}[{e}]", self.name),
            type_name: self.type_name,
            format: self.format,
            dims: vec![rows, cols],
            n_bytes: per,
            blob: self.blob.clone(),
            offset: self.offset + e * per,
        })
    }

    /// Drops this tensor's pages from the process's resident set when they
    /// come from a mapped file (they stay in the page cache and fault back
    /// in on access). Used after the tensor was copied into node memory, so
    /// the model is resident once. Does nothing for in-memory images.
    pub(crate) fn release_file_pages(&self) {
        let mapped = match &self.blob {
            Blob::Gguf { file, .. } => file.is_file_mapped(),
            Blob::Mapped { .. } => true,
            Blob::Owned(_) => false,
        };
        if mapped {
            // SAFETY: the bytes belong to a read-only file mapping, whose
            // contents are re-read from the file after MADV_DONTNEED.
            unsafe { tandem_numa::release_file_pages(self.bytes()) };
        }
    }

    /// The supported format, or an error naming the tensor and its type.
    pub fn require_format(&self) -> Result<WeightFormat, ModelError> {
        self.format
            .ok_or_else(|| ModelError::UnsupportedWeightType {
                name: self.name.clone(),
                ty: self.type_name.to_string(),
            })
    }

    /// Checks this is a `[rows, cols]` matrix whose byte size matches its format.
    pub fn expect_matrix(&self, rows: usize, cols: usize) -> Result<WeightFormat, ModelError> {
        let fmt = self.require_format()?;
        if self.dims != [rows, cols] {
            return Err(ModelError::bad_tensor(
                &self.name,
                format!("shape {:?}, expected [{rows}, {cols}]", self.dims),
            ));
        }
        let row_bytes = fmt.row_bytes(cols).ok_or_else(|| {
            ModelError::bad_tensor(
                &self.name,
                format!("{cols} columns do not fill whole {} blocks", fmt.name()),
            )
        })?;
        if row_bytes.checked_mul(rows) != Some(self.bytes().len()) {
            return Err(ModelError::bad_tensor(
                &self.name,
                "byte size does not match shape and type",
            ));
        }
        Ok(fmt)
    }

    /// Row `r` of a matrix, dequantized into `out` (`cols` values).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let fmt = self.require_format()?;
        let cols = self.cols();
        let rb = fmt
            .row_bytes(cols)
            .ok_or_else(|| ModelError::bad_tensor(&self.name, "row not block aligned"))?;
        let bytes = self
            .bytes()
            .get(r * rb..(r + 1) * rb)
            .ok_or_else(|| ModelError::bad_tensor(&self.name, format!("row {r} out of range")))?;
        tandem_kernels::dequantize_row(fmt, bytes, out)
            .map_err(|e| ModelError::Kernel(e.to_string()))
    }

    /// The whole tensor as f32 (for small vectors: norms, biases, rope factors).
    pub fn to_f32_vec(&self, expected_len: usize) -> Result<Vec<f32>, ModelError> {
        let fmt = self.require_format()?;
        if self.n_elements() != expected_len {
            return Err(ModelError::bad_tensor(
                &self.name,
                format!("{} elements, expected {expected_len}", self.n_elements()),
            ));
        }
        if fmt.row_bytes(expected_len) != Some(self.bytes().len()) {
            return Err(ModelError::bad_tensor(
                &self.name,
                "byte size does not match",
            ));
        }
        let mut out = vec![0.0; expected_len];
        tandem_kernels::dequantize_row(fmt, self.bytes(), &mut out)
            .map_err(|e| ModelError::Kernel(e.to_string()))?;
        Ok(out)
    }
}
