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

// ---- 32-weight blocks added with the full type table ----

/// `block_q4_1`: `f16 d` 0, `f16 m` 2, `qs[16]` 4.
pub(crate) const Q4_1_BYTES: usize = 20;
/// `block_q5_0`: `f16 d` 0, `qh[4]` 2 (bit j = high bit of weight j), `qs[16]` 6.
pub(crate) const Q5_0_BYTES: usize = 22;
/// `block_q5_1`: `f16 d` 0, `f16 m` 2, `qh[4]` 4, `qs[16]` 8.
pub(crate) const Q5_1_BYTES: usize = 24;
/// `block_iq4_nl`: `f16 d` 0, `qs[16]` 2 (indices into `kvalues_iq4nl`).
pub(crate) const IQ4_NL_BYTES: usize = 18;
/// `block_mxfp4`: `u8 e` (E8M0) 0, `qs[16]` 1 (indices into `kvalues_mxfp4`).
pub(crate) const MXFP4_BYTES: usize = 17;

// ---- 1- and 2-bit blocks spanning several Q8_0 activation blocks ----

/// Weights per Q1_0 block (ggml `QK1_0`): four Q8_0 activation blocks.
pub(crate) const QK1_0: usize = 128;
/// `block_q1_0`: `f16 d` 0, `qs[16]` 2 (bit `j % 8` of byte `j / 8` = sign of weight j).
pub(crate) const Q1_0_BYTES: usize = 18;
/// Weights per Q2_0 block (ggml `QK2_0`): two Q8_0 activation blocks.
pub(crate) const QK2_0: usize = 64;
/// `block_q2_0`: `f16 d` 0, `qs[16]` 2 (bits `2·(j % 4)..` of byte `j / 4` = weight j).
pub(crate) const Q2_0_BYTES: usize = 18;

// ---- 256-weight super-blocks added with the full type table ----

/// `block_q2_K`: `scales[16]` 0 (low nibble scale, high nibble min), `qs[64]` 16, `f16 d` 80, `f16 dmin` 82.
pub(crate) const Q2_K_BYTES: usize = 84;
pub(crate) const Q2_K_QS_OFF: usize = 16;
pub(crate) const Q2_K_D_OFF: usize = 80;
/// `block_q3_K`: `hmask[32]` 0, `qs[64]` 32, `scales[12]` 96, `f16 d` 108.
pub(crate) const Q3_K_BYTES: usize = 110;
pub(crate) const Q3_K_QS_OFF: usize = 32;
pub(crate) const Q3_K_SCALES_OFF: usize = 96;
pub(crate) const Q3_K_D_OFF: usize = 108;
/// `block_iq2_xxs`: `f16 d` 0, `u16 qs[32]` 2.
pub(crate) const IQ2_XXS_BYTES: usize = 66;
/// `block_iq2_xs`: `f16 d` 0, `u16 qs[32]` 2, `scales[8]` 66.
pub(crate) const IQ2_XS_BYTES: usize = 74;
/// `block_iq2_s`: `f16 d` 0, `qs[32]` 2, signs`[32]` 34, `qh[8]` 66, `scales[8]` 74.
pub(crate) const IQ2_S_BYTES: usize = 82;
/// `block_iq3_xxs`: `f16 d` 0, grid indices `[64]` 2, scales and signs `u32[8]` 66.
pub(crate) const IQ3_XXS_BYTES: usize = 98;
/// `block_iq3_s`: `f16 d` 0, `qs[64]` 2, `qh[8]` 66, `signs[32]` 74, `scales[4]` 106.
pub(crate) const IQ3_S_BYTES: usize = 110;
/// `block_iq1_s`: `f16 d` 0, `qs[32]` 2, `u16 qh[8]` 34.
pub(crate) const IQ1_S_BYTES: usize = 50;
/// `block_iq1_m`: `qs[32]` 0, `qh[16]` 32, `scales[8]` 48 (also holds the f16 scale).
pub(crate) const IQ1_M_BYTES: usize = 56;
/// `block_iq4_xs`: `f16 d` 0, `u16 scales_h` 2, `scales_l[4]` 4, `qs[128]` 8.
pub(crate) const IQ4_XS_BYTES: usize = 136;
/// `block_tq1_0`: `qs[48]` 0 (5 trits per byte), `qh[4]` 48 (4 trits per byte), `f16 d` 52.
pub(crate) const TQ1_0_BYTES: usize = 54;
/// `block_tq2_0`: `qs[64]` 0 (2 bits per weight), `f16 d` 64.
pub(crate) const TQ2_0_BYTES: usize = 66;

/// Little-endian u16 at byte `o`.
#[inline]
pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

/// Little-endian u32 at byte `o`.
#[inline]
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// ggml's Q3_K scale unpacking: the 12 packed bytes to 16 six-bit scales
/// (0..64; the kernels subtract 32).
#[inline]
pub(crate) fn unpack_q3_k_scales(s: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let mut aux = [u32_at(s, 0), u32_at(s, 4), u32_at(s, 8), 0];
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
    aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
    aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
    aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
    let mut out = [0u8; 16];
    for (o, a) in out.chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&a.to_le_bytes());
    }
    out
}

/// ggml's `GGML_E8M0_TO_FP32_HALF`: `2^(e - 128)` (MXFP4's values are doubled).
#[inline]
pub(crate) fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// IQ1_M's f16 super-block scale, spread over the top nibbles of `scales`.
#[inline]
pub(crate) fn iq1_m_scale_bits(scales: &[u8]) -> u16 {
    let sc = |i: usize| u16_at(scales, 2 * i);
    (sc(0) >> 12) | ((sc(1) >> 8) & 0x00f0) | ((sc(2) >> 4) & 0x0f00) | (sc(3) & 0xf000)
}
