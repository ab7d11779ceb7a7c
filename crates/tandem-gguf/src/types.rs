//! ggml tensor element types as stored in GGUF tensor infos.
//!
//! This is tandem's one ggml type table: id, name and block geometry of
//! every type a GGUF file can hold, written once in the `ggml_types!` list
//! below. `tandem-kernels`' `WeightFormat` maps each format it computes on to
//! a [`GgmlType`] and takes its name, id and block geometry from here, and
//! `tandem-model` converts tensor types with `WeightFormat::from_ggml`, so
//! the geometry cannot disagree between the parser, the kernels and the
//! model. This crate still knows sizes only (no quantization math), and it
//! sits below `tandem-kernels` (kernels → gguf, never the reverse).

use std::fmt;

macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block_len:literal, $block_bytes:literal; )*) => {
        /// A ggml tensor storage type (the `ggml_type` enum of ggml), with its on-disk
        /// block geometry.
        ///
        /// Only the ids that can legally appear in a GGUF file are representable; the
        /// removed/unused ids (4, 5, 31, 32, 33, 36, 37, 38), NVFP4 (40: not listed
        /// yet, `llama-quantize` does not produce it) and anything unknown are
        /// rejected by [`GgmlType::from_id`].
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// Every supported type, in ggml id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant),*];

            /// Maps a ggml type id (as stored in a GGUF tensor info) to a type.
            pub const fn from_id(id: u32) -> Option<Self> {
                match id {
                    $( $id => Some(GgmlType::$variant), )*
                    _ => None,
                }
            }

            /// The ggml type id written to GGUF files.
            pub const fn id(self) -> u32 {
                match self { $( GgmlType::$variant => $id, )* }
            }

            /// The type's name as in ggml's `GGML_TYPE_*` enum and gguf-py
            /// (`"F32"`, `"Q4_K"`, `"IQ2_XXS"`, ...).
            pub const fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => $name, )* }
            }

            /// Number of elements in one block.
            pub const fn block_len(self) -> u64 {
                match self { $( GgmlType::$variant => $block_len, )* }
            }

            /// Number of bytes one block occupies on disk.
            pub const fn block_bytes(self) -> u64 {
                match self { $( GgmlType::$variant => $block_bytes, )* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 36;
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    Q1_0 = 41, "Q1_0", 128, 18;
    Q2_0 = 42, "Q2_0", 64, 18;
}

impl GgmlType {
    /// Bytes occupied by a tensor of `n_elements` elements whose row length
    /// (`dims[0]`) is `row_len`.
    ///
    /// Returns `None` when `row_len` (or `n_elements`) is not a multiple of the block
    /// length, or when the size overflows `u64`.
    pub fn bytes_for(self, row_len: u64, n_elements: u64) -> Option<u64> {
        let bl = self.block_len();
        if !row_len.is_multiple_of(bl) || !n_elements.is_multiple_of(bl) {
            return None;
        }
        (n_elements / bl).checked_mul(self.block_bytes())
    }

    /// Whether the type is block-quantized (block length > 1).
    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
