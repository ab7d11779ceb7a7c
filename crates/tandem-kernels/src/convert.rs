//! Scalar f16 / bf16 <-> f32 conversions with ggml's exact semantics.
//!
//! * f16 -> f32 is exact (any implementation agrees).
//! * f32 -> f16 rounds to nearest even, like F16C's `vcvtps2ph` with rounding
//!   mode 0 (what ggml uses on x86); NaNs stay NaN (quiet).
//! * f32 -> bf16 is `ggml_compute_fp32_to_bf16`: round to nearest even on the
//!   raw bits, NaNs forced quiet by OR-ing bit 6 of the result.

/// f16 bits to f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// f32 to f16 bits, round to nearest even.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// bf16 bits to f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 to bf16 bits exactly like ggml's `ggml_compute_fp32_to_bf16`.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        // NaN: keep the sign and the top of the payload, force quiet.
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Read a little-endian f16 at `off` and widen it.
#[inline]
pub(crate) fn read_f16(bytes: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[off], bytes[off + 1]]))
}
