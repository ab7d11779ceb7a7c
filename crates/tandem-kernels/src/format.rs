//! Weight and activation formats: block geometry exactly as ggml lays it out.
//!
//! Every quantized format stores a row as a sequence of fixed-size blocks
//! (little-endian, packed, no alignment), so a row of `n` weights takes
//! `n / block_len * block_bytes` bytes. The activation format is ggml's
//! `vec_dot_type` for the weight format: what the activation row has to be
//! converted to before the dot product.
//!
//! ## One type table
//!
//! The ggml type table (id, name, block length, block bytes) lives once, in
//! `tandem-gguf` ([`GgmlType`]). [`WeightFormat`] is the subset this crate
//! computes on; the `weight_formats!` list below names, for each format, its
//! [`GgmlType`] and its activation format, and everything else (id, name,
//! geometry, [`WeightFormat::from_ggml`]) is derived from the gguf table. A
//! new type therefore needs: a line here, its block layout and scalar
//! reference in `reference/`, and its tests; SIMD families pick it up
//! through their registries (`registry.rs`) or fall back to the reference.

use std::fmt;

use tandem_gguf::GgmlType;

macro_rules! weight_formats {
    ($( $(#[$doc:meta])* $v:ident => $act:ident; )*) => {
        /// Storage format of a weight matrix: every ggml type a model's weights
        /// can be stored in (what `llama-quantize` produces).
        #[allow(non_camel_case_types)]
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub enum WeightFormat {
            $( $(#[$doc])* $v, )*
        }

        impl WeightFormat {
            /// Every supported format, in declaration order.
            pub const ALL: [WeightFormat; [$(stringify!($v)),*].len()] = [$(WeightFormat::$v),*];

            /// The ggml type (from `tandem-gguf`'s table) this format stores.
            pub const fn ggml(self) -> GgmlType {
                match self { $( WeightFormat::$v => GgmlType::$v, )* }
            }

            /// The activation format ggml pairs with this weight format
            /// (`type_traits_cpu[..].vec_dot_type` in ggml-cpu.c).
            pub const fn activation_format(self) -> ActivationFormat {
                match self { $( WeightFormat::$v => ActivationFormat::$act, )* }
            }
        }
    };
}

weight_formats! {
    /// IEEE f32.
    F32 => F32;
    /// IEEE binary16.
    F16 => F16;
    /// bfloat16 (upper half of an f32).
    BF16 => BF16;
    /// `block_q8_0 { f16 d; i8 qs[32] }` (34 bytes / 32 weights).
    Q8_0 => Q8_0;
    /// `block_q4_0 { f16 d; u8 qs[16] }` (18 bytes / 32 weights).
    Q4_0 => Q8_0;
    /// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }` (144 bytes / 256 weights).
    Q4_K => Q8_K;
    /// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }` (176 bytes / 256 weights).
    Q5_K => Q8_K;
    /// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }` (210 bytes / 256 weights).
    Q6_K => Q8_K;
    /// `block_q4_1 { f16 d; f16 m; u8 qs[16] }` (20 bytes / 32 weights).
    Q4_1 => Q8_1;
    /// `block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }` (22 bytes / 32 weights).
    Q5_0 => Q8_0;
    /// `block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }` (24 bytes / 32 weights).
    Q5_1 => Q8_1;
    /// `block_q2_K { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin }` (84 bytes / 256 weights).
    Q2_K => Q8_K;
    /// `block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }` (110 bytes / 256 weights).
    Q3_K => Q8_K;
    /// `block_iq2_xxs { f16 d; u16 qs[32] }` (66 bytes / 256 weights).
    IQ2_XXS => Q8_K;
    /// `block_iq2_xs { f16 d; u16 qs[32]; u8 scales[8] }` (74 bytes / 256 weights).
    IQ2_XS => Q8_K;
    /// `block_iq2_s { f16 d; u8 qs[64]; u8 qh[8]; u8 scales[8] }` (82 bytes / 256 weights; `qs[32..64]` are signs).
    IQ2_S => Q8_K;
    /// `block_iq3_xxs { f16 d; u8 qs[96] }` (98 bytes / 256 weights; `qs[64..96]` scales and signs).
    IQ3_XXS => Q8_K;
    /// `block_iq3_s { f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4] }` (110 bytes / 256 weights).
    IQ3_S => Q8_K;
    /// `block_iq1_s { f16 d; u8 qs[32]; u16 qh[8] }` (50 bytes / 256 weights).
    IQ1_S => Q8_K;
    /// `block_iq1_m { u8 qs[32]; u8 qh[16]; u8 scales[8] }` (56 bytes / 256 weights; the f16 scale is spread over `scales`).
    IQ1_M => Q8_K;
    /// `block_iq4_nl { f16 d; u8 qs[16] }` (18 bytes / 32 weights).
    IQ4_NL => Q8_0;
    /// `block_iq4_xs { f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128] }` (136 bytes / 256 weights).
    IQ4_XS => Q8_K;
    /// `block_mxfp4 { u8 e (E8M0); u8 qs[16] }` (17 bytes / 32 weights).
    MXFP4 => Q8_0;
    /// `block_tq1_0 { u8 qs[48]; u8 qh[4]; f16 d }` (54 bytes / 256 weights, base-3 packed).
    TQ1_0 => Q8_K;
    /// `block_tq2_0 { u8 qs[64]; f16 d }` (66 bytes / 256 weights).
    TQ2_0 => Q8_K;
    /// `block_q1_0 { f16 d; u8 qs[16] }` (18 bytes / 128 weights; bit j set: `+d`, clear: `-d`).
    Q1_0 => Q8_0;
    /// `block_q2_0 { f16 d; u8 qs[16] }` (18 bytes / 64 weights; 2 bits per weight, `(q - 1)·d`).
    Q2_0 => Q8_0;
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
    /// `block_q8_0` with 32-value blocks (Q8_0, Q4_0, Q5_0, IQ4_NL, MXFP4, Q1_0, Q2_0 weights).
    Q8_0,
    /// `block_q8_1 { f16 d; f16 s = d·Σq; i8 qs[32] }` (Q4_1, Q5_1 weights).
    Q8_1,
    /// `block_q8_K { f32 d; i8 qs[256]; i16 bsums[16] }` (the K-, IQ- and TQ-quants).
    Q8_K,
}

impl WeightFormat {
    /// Number of weights per block.
    pub const fn block_len(self) -> usize {
        self.ggml().block_len() as usize
    }

    /// Number of bytes per block.
    pub const fn block_bytes(self) -> usize {
        self.ggml().block_bytes() as usize
    }

    /// Bytes taken by a row of `n_cols` weights; `None` when `n_cols` is not a
    /// multiple of [`block_len`](Self::block_len) or the size overflows.
    pub fn row_bytes(self, n_cols: usize) -> Option<usize> {
        if !n_cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (n_cols / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Name as used in GGUF file-type strings (`"Q4_K"`, `"BF16"`, ...).
    pub const fn name(self) -> &'static str {
        self.ggml().name()
    }

    /// The `ggml_type` id stored in GGUF tensor infos.
    pub const fn ggml_type(self) -> u32 {
        self.ggml().id()
    }

    /// The format storing `t`; `None` for types that are not weight formats
    /// (I8..I64, F64, Q8_1, Q8_K).
    pub const fn from_ggml(t: GgmlType) -> Option<WeightFormat> {
        let mut i = 0;
        while i < Self::ALL.len() {
            let f = Self::ALL[i];
            if f.ggml().id() == t.id() {
                return Some(f);
            }
            i += 1;
        }
        None
    }

    /// Inverse of [`ggml_type`](Self::ggml_type); `None` for ids that are not
    /// weight formats.
    pub const fn from_ggml_type(id: u32) -> Option<WeightFormat> {
        match GgmlType::from_id(id) {
            Some(t) => Self::from_ggml(t),
            None => None,
        }
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
            ActivationFormat::Q8_0 | ActivationFormat::Q8_1 => 32,
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
            ActivationFormat::Q8_1 => "Q8_1",
            ActivationFormat::Q8_K => "Q8_K",
        }
    }
}

impl fmt::Display for ActivationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
