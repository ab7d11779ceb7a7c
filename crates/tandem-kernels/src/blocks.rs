//! Byte layout of ggml's quantized blocks and the small decoding helpers that
//! both the reference and the SIMD kernels share (so the two cannot disagree
//! on the layout).

/// Weights per K-quant super-block (ggml `QK_K`).
pub(crate) const QK_K: usize = 256;
/// Weights per Q8_0 / Q4_0 block.
pub(crate) const QK8_0: usize = 32;

/// `block_q8_0`: `f16 d` at 0, `i8 qs[32]` at 2.
pub(crate) const Q8_0_BYTES: usize = 34;
/// `block_q4_0`: `f16 d` at 0, `u8 qs[16]` at 2 (low nibbles = weights 0..16, high = 16..32).
pub(crate) const Q4_0_BYTES: usize = 18;

/// `block_q4_K`: `f16 d` 0, `f16 dmin` 2, `scales[12]` 4, `qs[128]` 16.
pub(crate) const Q4_K_BYTES: usize = 144;
/// `block_q5_K`: `f16 d` 0, `f16 dmin` 2, `scales[12]` 4, `qh[32]` 16, `qs[128]` 48.
pub(crate) const Q5_K_BYTES: usize = 176;
/// `block_q6_K`: `ql[128]` 0, `qh[64]` 128, `i8 scales[16]` 192, `f16 d` 208.
pub(crate) const Q6_K_BYTES: usize = 210;

pub(crate) const K_SCALES_OFF: usize = 4;
pub(crate) const Q4_K_QS_OFF: usize = 16;
pub(crate) const Q5_K_QH_OFF: usize = 16;
pub(crate) const Q5_K_QS_OFF: usize = 48;
pub(crate) const Q6_K_QH_OFF: usize = 128;
pub(crate) const Q6_K_SCALES_OFF: usize = 192;
pub(crate) const Q6_K_D_OFF: usize = 208;

const KMASK1: u32 = 0x3f3f_3f3f;
const KMASK2: u32 = 0x0f0f_0f0f;
const KMASK3: u32 = 0x0303_0303;

/// Unpack the 12 packed 6-bit scale/min bytes of a Q4_K / Q5_K block into
/// ggml's `utmp[4]`: bytes 0..8 are the 8 sub-block scales, bytes 8..16 the 8
/// mins (the `kmask` trick of `ggml_vec_dot_q4_K_q8_K`).
#[inline]
pub(crate) fn unpack_scales_mins_k4(s: &[u8]) -> [u32; 4] {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let mut utmp = [word(0), word(1), word(2), 0];
    utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
    let uaux = utmp[1] & KMASK1;
    utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
    utmp[2] = uaux;
    utmp[0] &= KMASK1;
    utmp
}

/// `utmp` as `(scales[8], mins[8])`.
#[inline]
pub(crate) fn scales_mins_bytes(utmp: [u32; 4]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    sc[..4].copy_from_slice(&utmp[0].to_le_bytes());
    sc[4..].copy_from_slice(&utmp[1].to_le_bytes());
    m[..4].copy_from_slice(&utmp[2].to_le_bytes());
    m[4..].copy_from_slice(&utmp[3].to_le_bytes());
    (sc, m)
}

/// ggml's `get_scale_min_k4`: scale and min of sub-block `j` (0..8).
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
