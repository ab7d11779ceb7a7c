//! Weight and activation formats: block geometry exactly as ggml lays it out.
//!
//! Every quantized format stores a row as a sequence of fixed-size blocks
//! (little-endian, packed, no alignment), so a row of `n` weights takes
//! `n / block_len * block_bytes` bytes. The activation format is ggml's
//! `vec_dot_type` for the weight format: what the activation row has to be
//! converted to before the dot product.

use std::fmt;

/// Storage format of a weight matrix (a subset of ggml's `ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// IEEE f32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (upper half of an f32).
    BF16,
    /// `block_q8_0 { f16 d; i8 qs[32] }` (34 bytes / 32 weights).
    Q8_0,
    /// `block_q4_0 { f16 d; u8 qs[16] }` (18 bytes / 32 weights).
    Q4_0,
    /// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }` (144 bytes / 256 weights).
    Q4_K,
    /// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }` (176 bytes / 256 weights).
    Q5_K,
    /// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }` (210 bytes / 256 weights).
    Q6_K,
}

/// Format the activation rows are converted to before a dot product with a
/// weight row (ggml's `vec_dot_type`).
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ActivationFormat {
    /// Plain f32 (for F32 weights).
    F32,
    /// f32 rounded to f16, round-to-nearest-even (for F16 weights).
    F16,
    /// f32 rounded to bf16 like `ggml_compute_fp32_to_bf16` (for BF16 weights).
    BF16,
    /// `block_q8_0` with 32-value blocks (for Q8_0 and Q4_0 weights).
    Q8_0,
    /// `block_q8_K { f32 d; i8 qs[256]; i16 bsums[16] }` (for the K-quants).
    Q8_K,
}

impl WeightFormat {
    /// Every supported format, in declaration order.
    pub const ALL: [WeightFormat; 8] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_K,
        WeightFormat::Q5_K,
        WeightFormat::Q6_K,
    ];

    /// Number of weights per block.
    pub const fn block_len(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => 1,
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => 32,
            WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K => 256,
        }
    }

    /// Number of bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_K => 144,
            WeightFormat::Q5_K => 176,
            WeightFormat::Q6_K => 210,
        }
    }

    /// Bytes taken by a row of `n_cols` weights; `None` when `n_cols` is not a
    /// multiple of [`block_len`](Self::block_len) or the size overflows.
    pub fn row_bytes(self, n_cols: usize) -> Option<usize> {
        if !n_cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (n_cols / self.block_len()).checked_mul(self.block_bytes())
    }

    /// The activation format ggml pairs with this weight format.
    pub fn activation_format(self) -> ActivationFormat {
        match self {
            WeightFormat::F32 => ActivationFormat::F32,
            WeightFormat::F16 => ActivationFormat::F16,
            WeightFormat::BF16 => ActivationFormat::BF16,
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => ActivationFormat::Q8_0,
            WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K => ActivationFormat::Q8_K,
        }
    }

    /// Name as used in GGUF file-type strings (`"Q4_K"`, `"BF16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "F32",
            WeightFormat::F16 => "F16",
            WeightFormat::BF16 => "BF16",
            WeightFormat::Q8_0 => "Q8_0",
            WeightFormat::Q4_0 => "Q4_0",
            WeightFormat::Q4_K => "Q4_K",
            WeightFormat::Q5_K => "Q5_K",
            WeightFormat::Q6_K => "Q6_K",
        }
    }

    /// The `ggml_type` id stored in GGUF tensor infos.
    pub const fn ggml_type(self) -> u32 {
        match self {
            WeightFormat::F32 => 0,
            WeightFormat::F16 => 1,
            WeightFormat::Q4_0 => 2,
            WeightFormat::Q8_0 => 8,
            WeightFormat::Q4_K => 12,
            WeightFormat::Q5_K => 13,
            WeightFormat::Q6_K => 14,
            WeightFormat::BF16 => 30,
        }
    }

    /// Inverse of [`ggml_type`](Self::ggml_type); `None` for types this crate does not support.
    pub const fn from_ggml_type(id: u32) -> Option<WeightFormat> {
        Some(match id {
            0 => WeightFormat::F32,
            1 => WeightFormat::F16,
            2 => WeightFormat::Q4_0,
            8 => WeightFormat::Q8_0,
            12 => WeightFormat::Q4_K,
            13 => WeightFormat::Q5_K,
            14 => WeightFormat::Q6_K,
            30 => WeightFormat::BF16,
            _ => return None,
        })
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ActivationFormat {
    /// Number of values per block (1 for the float formats).
    pub const fn block_len(self) -> usize {
        match self {
            ActivationFormat::F32 | ActivationFormat::F16 | ActivationFormat::BF16 => 1,
            ActivationFormat::Q8_0 => 32,
            ActivationFormat::Q8_K => 256,
        }
    }

    /// Name (`"Q8_K"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ActivationFormat::F32 => "F32",
            ActivationFormat::F16 => "F16",
            ActivationFormat::BF16 => "BF16",
            ActivationFormat::Q8_0 => "Q8_0",
            ActivationFormat::Q8_K => "Q8_K",
        }
    }
}

impl fmt::Display for ActivationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
