//! [`QuantizedActivations`]: a reusable buffer holding B activation rows
//! converted to one [`ActivationFormat`].
//!
//! The decode loop calls [`QuantizedActivations::quantize`] once per matmul
//! input; buffers are resized in place, so once the shape has been seen no
//! allocation happens. Quantized rows are stored split into plain arrays
//! (quants, f32 scales, block sums) rather than ggml's interleaved
//! `block_q8_K` structs: the values are identical, but the SIMD kernels get
//! aligned, contiguous quants and need not re-widen f16 scales.
//! [`to_ggml_bytes`](QuantizedActivations::to_ggml_bytes) produces the exact
//! ggml byte layout for comparisons.

use crate::blocks::{QK8_0, QK_K};
use crate::convert::{bf16_to_f32, f16_to_f32, f32_to_f16};
use crate::isa::KernelFamily;
use crate::{reference, ActivationFormat, Isa, KernelError};

/// Which of ggml's two Q8_0 activation quantizers to reproduce.
///
/// They differ only in rare ±1 quants: ties (`x*id` exactly at `k + 0.5`) and
/// one-ulp differences of the inverse scale.
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Q8_0Variant {
    /// ggml-cpu's x86 `quantize_row_q8_0` (the AVX/AVX2 code llama.cpp runs on
    /// x86-64): `d = amax/127`, `id = 127/amax`, `q = round_half_even(x*id)`.
    /// The default, because it is what llama.cpp computes on the machines we
    /// compare against.
    #[default]
    X86,
    /// `quantize_row_q8_0_ref` (= gguf-py's `quantize(.., Q8_0)`, and what
    /// llama.cpp's generic fallback runs): `id = 1/d`, `q = roundf(x*id)`
    /// (half away from zero).
    Reference,
}

/// B activation rows quantized to one [`ActivationFormat`].
#[derive(Clone, Debug)]
pub struct QuantizedActivations {
    format: ActivationFormat,
    q8_0_variant: Q8_0Variant,
    n_rows: usize,
    n_cols: usize,
    /// F32: the values. F16: the f16 values widened (exact). Q8_0 / Q8_K: one
    /// scale per block (Q8_0: the f16 scale widened).
    f32s: Vec<f32>,
    /// F16 / BF16: the values. Q8_0: the f16 bits of each block scale.
    u16s: Vec<u16>,
    /// Q8_0 / Q8_K quants.
    qs: Vec<i8>,
    /// Q8_K: sums of each group of 16 quants. Q8_0: sum of each block's 32
    /// quants (for kernels that multiply `w + 128` as unsigned bytes).
    bsums: Vec<i16>,
    /// Q8_1: f16 bits of each block's `s = d·Σq` (`d` the unrounded f32 scale).
    s_bits: Vec<u16>,
    /// Q8_1: `s` widened to f32.
    s: Vec<f32>,
}

/// One Q8_0 activation row: `qs.len() == n_cols`, `d.len() == n_cols / 32`,
/// `sums.len() == n_cols / 32` (sum of each block's quants).
#[derive(Copy, Clone, Debug)]
pub(crate) struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i16],
}

/// One Q8_1 activation row: the Q8_0 fields plus `s` (ggml's
/// `GGML_FP16_TO_FP32(y.s)`), one per 32-value block.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Q8_1Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// One Q8_K activation row: `qs.len() == n_cols`, `d.len() == n_cols / 256`,
/// `bsums.len() == n_cols / 16`.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Q8KRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
}

impl QuantizedActivations {
    /// An empty buffer (0 × 0) for `format`.
    pub fn new(format: ActivationFormat) -> Self {
        QuantizedActivations {
            format,
            q8_0_variant: Q8_0Variant::default(),
            n_rows: 0,
            n_cols: 0,
            f32s: Vec::new(),
            u16s: Vec::new(),
            qs: Vec::new(),
            bsums: Vec::new(),
            s_bits: Vec::new(),
            s: Vec::new(),
        }
    }

    /// Choose the Q8_0 quantizer (only matters for [`ActivationFormat::Q8_0`]);
    /// takes effect at the next `quantize`.
    pub fn set_q8_0_variant(&mut self, variant: Q8_0Variant) {
        self.q8_0_variant = variant;
    }

    /// The Q8_0 quantizer in use.
    pub fn q8_0_variant(&self) -> Q8_0Variant {
        self.q8_0_variant
    }

    /// Quantize `n_rows` rows of `n_cols` values (`x` row-major) with the
    /// detected ISA. Reuses the buffers: no allocation when the total size
    /// does not grow.
    pub fn quantize(&mut self, x: &[f32], n_rows: usize, n_cols: usize) -> Result<(), KernelError> {
        self.quantize_with(crate::detected_isa(), x, n_rows, n_cols)
    }

    /// [`quantize`](Self::quantize) with an explicit ISA. Every ISA produces
    /// bit-identical results (for finite inputs).
    pub fn quantize_with(
        &mut self,
        isa: Isa,
        x: &[f32],
        n_rows: usize,
        n_cols: usize,
    ) -> Result<(), KernelError> {
        let total = n_rows.checked_mul(n_cols).ok_or(KernelError::Overflow)?;
        if x.len() != total {
            return Err(KernelError::SizeMismatch {
                what: "activation values (n_rows * n_cols)",
                expected: total,
                actual: x.len(),
            });
        }
        let block_len = self.format.block_len();
        if !n_cols.is_multiple_of(block_len) {
            return Err(KernelError::NotBlockAligned {
                format: self.format.name(),
                n_cols,
                block_len,
            });
        }
        if !isa.is_available() {
            return Err(KernelError::IsaUnavailable(isa));
        }
        let family = isa.kernels();
        self.n_rows = n_rows;
        self.n_cols = n_cols;
        match self.format {
            ActivationFormat::F32 => {
                self.f32s.clear();
                self.f32s.extend_from_slice(x);
            }
            ActivationFormat::F16 => {
                self.u16s.resize(total, 0);
                match family {
                    KernelFamily::Scalar | KernelFamily::Neon => {
                        reference::quantize::f16_row(x, &mut self.u16s)
                    }
                    KernelFamily::Avx2 | KernelFamily::Avx512 => {
                        crate::avx2::quantize_f16(x, &mut self.u16s)?
                    }
                }
                // widened copy (exact) for kernels that multiply in f32
                self.f32s.clear();
                self.f32s.extend(self.u16s.iter().map(|&h| f16_to_f32(h)));
            }
            ActivationFormat::BF16 => {
                self.u16s.resize(total, 0);
                // ggml converts with scalar code unless AVX512-BF16 is present; one
                // scalar path keeps every ISA identical.
                reference::quantize::bf16_row(x, &mut self.u16s);
            }
            ActivationFormat::Q8_0 | ActivationFormat::Q8_1 => {
                let nb = total / QK8_0;
                self.qs.resize(total, 0);
                self.f32s.resize(nb, 0.0);
                self.u16s.resize(nb, 0);
                match (self.q8_0_variant, family) {
                    (Q8_0Variant::Reference, _) => reference::quantize::q8_0_ref(
                        x,
                        &mut self.qs,
                        &mut self.u16s,
                        &mut self.f32s,
                    ),
                    (Q8_0Variant::X86, KernelFamily::Scalar | KernelFamily::Neon) => {
                        reference::quantize::q8_0_x86(
                            x,
                            &mut self.qs,
                            &mut self.u16s,
                            &mut self.f32s,
                        )
                    }
                    (Q8_0Variant::X86, KernelFamily::Avx2 | KernelFamily::Avx512) => {
                        crate::avx2::quantize_q8_0(x, &mut self.qs, &mut self.u16s, &mut self.f32s)?
                    }
                }
                // |sum| <= 32 * 128: fits i16.
                self.bsums.clear();
                self.bsums.extend(
                    self.qs
                        .chunks_exact(QK8_0)
                        .map(|b| b.iter().map(|&q| i16::from(q)).sum::<i16>()),
                );
                if self.format == ActivationFormat::Q8_1 {
                    // Both of ggml's quantize_row_q8_1 (x86 and _ref) store
                    // s = fp16(d * Σq) with the unrounded d = amax / 127.
                    self.s_bits.clear();
                    self.s.clear();
                    for (xb, &sum) in x.chunks_exact(QK8_0).zip(&self.bsums) {
                        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let d = amax / 127.0;
                        let bits = narrow_scale(d * f32::from(sum));
                        self.s_bits.push(bits);
                        self.s.push(widen_scale(bits));
                    }
                }
            }
            ActivationFormat::Q8_K => {
                let nb = total / QK_K;
                self.qs.resize(total, 0);
                self.f32s.resize(nb, 0.0);
                self.bsums.resize(nb * (QK_K / 16), 0);
                match family {
                    KernelFamily::Scalar | KernelFamily::Neon => {
                        reference::quantize::q8_k(x, &mut self.qs, &mut self.f32s, &mut self.bsums)
                    }
                    KernelFamily::Avx2 | KernelFamily::Avx512 => crate::avx2::quantize_q8_k(
                        x,
                        &mut self.qs,
                        &mut self.f32s,
                        &mut self.bsums,
                    )?,
                }
            }
        }
        Ok(())
    }

    /// Number of activation rows (B).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Values per row.
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// The activation format.
    pub fn format(&self) -> ActivationFormat {
        self.format
    }

    /// Dequantize activation row `row` into `out` (`out.len() == n_cols`).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if row >= self.n_rows {
            return Err(KernelError::RowRange {
                start: row,
                end: row + 1,
                n_rows: self.n_rows,
            });
        }
        if out.len() != self.n_cols {
            return Err(KernelError::SizeMismatch {
                what: "dequantized activation row",
                expected: self.n_cols,
                actual: out.len(),
            });
        }
        match self.format {
            ActivationFormat::F32 => out.copy_from_slice(self.f32_row(row)),
            ActivationFormat::F16 => {
                for (o, &h) in out.iter_mut().zip(self.u16_row(row)) {
                    *o = f16_to_f32(h);
                }
            }
            ActivationFormat::BF16 => {
                for (o, &h) in out.iter_mut().zip(self.u16_row(row)) {
                    *o = bf16_to_f32(h);
                }
            }
            ActivationFormat::Q8_0 | ActivationFormat::Q8_1 => {
                let r = self.q8_0_row(row);
                for ((o, q), d) in out
                    .chunks_exact_mut(QK8_0)
                    .zip(r.qs.chunks_exact(QK8_0))
                    .zip(r.d)
                {
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = f32::from(q) * d;
                    }
                }
            }
            ActivationFormat::Q8_K => {
                let r = self.q8_k_row(row);
                for ((o, q), d) in out
                    .chunks_exact_mut(QK_K)
                    .zip(r.qs.chunks_exact(QK_K))
                    .zip(r.d)
                {
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = d * f32::from(q);
                    }
                }
            }
        }
        Ok(())
    }

    /// All rows serialized in ggml's byte layout: F32 / F16 / BF16 values
    /// little-endian; Q8_0 as `block_q8_0` (f16 d, 32 i8); Q8_K as
    /// `block_q8_K` (f32 d, 256 i8, 16 i16). Allocates; meant for tests and
    /// debugging.
    pub fn to_ggml_bytes(&self) -> Vec<u8> {
        let total = self.n_rows * self.n_cols;
        let mut v = Vec::new();
        match self.format {
            ActivationFormat::F32 => self.f32s[..total]
                .iter()
                .for_each(|x| v.extend(x.to_le_bytes())),
            ActivationFormat::F16 | ActivationFormat::BF16 => self.u16s[..total]
                .iter()
                .for_each(|x| v.extend(x.to_le_bytes())),
            ActivationFormat::Q8_0 => {
                let nb = total / QK8_0;
                for i in 0..nb {
                    v.extend(self.u16s[i].to_le_bytes());
                    v.extend(self.qs[i * QK8_0..(i + 1) * QK8_0].iter().map(|&q| q as u8));
                }
            }
            ActivationFormat::Q8_1 => {
                let nb = total / QK8_0;
                for i in 0..nb {
                    v.extend(self.u16s[i].to_le_bytes());
                    v.extend(self.s_bits[i].to_le_bytes());
                    v.extend(self.qs[i * QK8_0..(i + 1) * QK8_0].iter().map(|&q| q as u8));
                }
            }
            ActivationFormat::Q8_K => {
                let nb = total / QK_K;
                for i in 0..nb {
                    v.extend(self.f32s[i].to_le_bytes());
                    v.extend(self.qs[i * QK_K..(i + 1) * QK_K].iter().map(|&q| q as u8));
                    self.bsums[i * 16..(i + 1) * 16]
                        .iter()
                        .for_each(|b| v.extend(b.to_le_bytes()));
                }
            }
        }
        v
    }

    #[inline]
    pub(crate) fn f32_row(&self, row: usize) -> &[f32] {
        &self.f32s[row * self.n_cols..(row + 1) * self.n_cols]
    }

    #[inline]
    pub(crate) fn u16_row(&self, row: usize) -> &[u16] {
        &self.u16s[row * self.n_cols..(row + 1) * self.n_cols]
    }

    #[inline]
    pub(crate) fn q8_0_row(&self, row: usize) -> Q8Row<'_> {
        let nb = self.n_cols / QK8_0;
        Q8Row {
            qs: &self.qs[row * self.n_cols..(row + 1) * self.n_cols],
            d: &self.f32s[row * nb..(row + 1) * nb],
            sums: &self.bsums[row * nb..(row + 1) * nb],
        }
    }

    #[inline]
    pub(crate) fn q8_1_row(&self, row: usize) -> Q8_1Row<'_> {
        let nb = self.n_cols / QK8_0;
        Q8_1Row {
            qs: &self.qs[row * self.n_cols..(row + 1) * self.n_cols],
            d: &self.f32s[row * nb..(row + 1) * nb],
            s: &self.s[row * nb..(row + 1) * nb],
        }
    }

    #[inline]
    pub(crate) fn q8_k_row(&self, row: usize) -> Q8KRow<'_> {
        let nb = self.n_cols / QK_K;
        Q8KRow {
            qs: &self.qs[row * self.n_cols..(row + 1) * self.n_cols],
            d: &self.f32s[row * nb..(row + 1) * nb],
            bsums: &self.bsums[row * nb * 16..(row + 1) * nb * 16],
        }
    }

    /// Test hook: addresses of the internal buffers (to check reuse).
    #[cfg(test)]
    pub(crate) fn buffer_ptrs(&self) -> [usize; 4] {
        [
            self.f32s.as_ptr() as usize,
            self.u16s.as_ptr() as usize,
            self.qs.as_ptr() as usize,
            self.bsums.as_ptr() as usize,
        ]
    }

    /// Test hook: the raw f16 scale bits of a Q8_0 buffer.
    #[cfg(test)]
    pub(crate) fn q8_0_scale_bits(&self) -> &[u16] {
        &self.u16s[..self.n_rows * self.n_cols / QK8_0]
    }
}

/// Widen an f16 scale the same way the kernels do (used to fill `f32s`).
#[inline]
pub(crate) fn widen_scale(bits: u16) -> f32 {
    f16_to_f32(bits)
}

/// Round an f32 scale to f16 bits (ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub(crate) fn narrow_scale(d: f32) -> u16 {
    f32_to_f16(d)
}
