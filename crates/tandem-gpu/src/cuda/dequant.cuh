// The stored weight types' element decoders: `deq_<type>(src, i)` is
// element `i` of a run of blocks at `src`, exactly as tandem-kernels'
// scalar references (bit for bit with gguf-py) compute it: the same f32
// operations in the same order, written with the _rn intrinsics so NVRTC
// never fuses a multiply and an add. Portable C on purpose: the host test
// (tests/cuda_dequant_host.rs) compiles this file with a C++ compiler and
// compares every type with tandem-kernels, since CI has no GPU.

__device__ __forceinline__ u32 load_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

__device__ __forceinline__ float deq_f32_at(const u8* src, i64 i) {
    return __int_as_float((int)load_u32(src + 4 * i));
}

__device__ __forceinline__ float deq_f16_at(const u8* src, i64 i) {
    return load_f16(src + 2 * i);
}

__device__ __forceinline__ float deq_bf16_at(const u8* src, i64 i) {
    return bf16_to_f32((u16)(src[2 * i] | (src[2 * i + 1] << 8)));
}

// block_q8_0: f16 d, 32 x int8.
__device__ __forceinline__ float deq_q8_0_at(const u8* src, i64 i) {
    const u8* b = src + (i / 32) * 34;
    signed char q = (signed char)b[2 + (i % 32)];
    return __fmul_rn((float)q, load_f16(b));
}

// The low or high nibble of byte j of a 32-value block: value r < 16
// is the low nibble of byte r, r >= 16 the high nibble of byte r - 16.
__device__ __forceinline__ int nibble(const u8* qs, int r) {
    return r < 16 ? (qs[r] & 0xF) : (qs[r - 16] >> 4);
}

// block_q4_0: f16 d, qs[16].
__device__ __forceinline__ float deq_q4_0_at(const u8* src, i64 i) {
    const u8* b = src + (i / 32) * 18;
    return __fmul_rn((float)(nibble(b + 2, (int)(i % 32)) - 8), load_f16(b));
}

// block_q4_1: f16 d, f16 m, qs[16].
__device__ __forceinline__ float deq_q4_1_at(const u8* src, i64 i) {
    const u8* b = src + (i / 32) * 20;
    float x = (float)nibble(b + 4, (int)(i % 32));
    return __fadd_rn(__fmul_rn(x, load_f16(b)), load_f16(b + 2));
}

// The fifth bit of Q5_0/Q5_1 value r, from the 32-bit qh.
__device__ __forceinline__ int q5_high(u32 qh, int r) {
    return r < 16 ? (int)(((qh >> r) << 4) & 0x10) : (int)((qh >> (r - 16 + 12)) & 0x10);
}

// block_q5_0: f16 d, u8 qh[4], qs[16].
__device__ __forceinline__ float deq_q5_0_at(const u8* src, i64 i) {
    const u8* b = src + (i / 32) * 22;
    int r = (int)(i % 32);
    int x = (nibble(b + 6, r) | q5_high(load_u32(b + 2), r)) - 16;
    return __fmul_rn((float)x, load_f16(b));
}

// block_q5_1: f16 d, f16 m, u8 qh[4], qs[16].
__device__ __forceinline__ float deq_q5_1_at(const u8* src, i64 i) {
    const u8* b = src + (i / 32) * 24;
    int r = (int)(i % 32);
    int x = nibble(b + 8, r) | q5_high(load_u32(b + 4), r);
    return __fadd_rn(__fmul_rn((float)x, load_f16(b)), load_f16(b + 2));
}

// block_q2_K: scales[16], qs[64], f16 d, f16 dmin (dequantize_row_q2_K).
__device__ __forceinline__ float deq_q2_K_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 84;
    int r = (int)(i % 256);
    int n = r / 128, k = (r % 128) / 32, half = (r % 32) / 16, l = r % 16;
    u8 sc = b[8 * n + 2 * k + half];
    float dl = __fmul_rn(load_f16(b + 80), (float)(sc & 0xF));
    float ml = __fmul_rn(load_f16(b + 82), (float)(sc >> 4));
    int q = (b[16 + 32 * n + 16 * half + l] >> (2 * k)) & 3;
    return __fsub_rn(__fmul_rn(dl, (float)q), ml);
}

// Q3_K's 6-bit scale `is` (0..16) of its 12 packed bytes, unsigned.
__device__ __forceinline__ int q3_K_scale(const u8* s, int is) {
    int w = is / 4, k = is % 4;
    int low = (w & 1) ? s[4 + k] : s[k];
    low = (w & 2) ? (low >> 4) : (low & 0xF);
    return low | (((s[8 + k] >> (2 * w)) & 3) << 4);
}

// block_q3_K: hmask[32], qs[64], scales[12], f16 d (dequantize_row_q3_K).
__device__ __forceinline__ float deq_q3_K_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 110;
    int r = (int)(i % 256);
    int n = r / 128, k = (r % 128) / 32, l = r % 32;
    int q = (b[32 + 32 * n + l] >> (2 * k)) & 3;
    q -= (b[l] & (1 << (4 * n + k))) ? 0 : 4;
    float dl = __fmul_rn(load_f16(b + 108), (float)(q3_K_scale(b + 96, r / 16) - 32));
    return __fmul_rn(dl, (float)q);
}

// Q4_K/Q5_K's 6-bit scale and min `j` of their 12 packed bytes.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* d, int* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// block_q4_K: f16 d, f16 dmin, scales[12], qs[128] (dequantize_row_q4_K).
__device__ __forceinline__ float deq_q4_K_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 144;
    int r = (int)(i % 256);
    int chunk = r / 64, hi = (r % 64) / 32, l = r % 32;
    int sc, m;
    scale_min_k4(2 * chunk + hi, b + 4, &sc, &m);
    u8 q = b[16 + chunk * 32 + l];
    int nib = hi ? (q >> 4) : (q & 0xF);
    float d1 = __fmul_rn(load_f16(b), (float)sc), m1 = __fmul_rn(load_f16(b + 2), (float)m);
    return __fsub_rn(__fmul_rn(d1, (float)nib), m1);
}

// block_q5_K: f16 d, f16 dmin, scales[12], qh[32], qs[128].
__device__ __forceinline__ float deq_q5_K_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 176;
    int r = (int)(i % 256);
    int j = r / 64, hi = (r % 64) / 32, l = r % 32;
    int sc, m;
    scale_min_k4(2 * j + hi, b + 4, &sc, &m);
    u8 q = b[48 + 32 * j + l];
    int u = (hi ? 2 : 1) << (2 * j);
    int x = (hi ? (q >> 4) : (q & 0xF)) + ((b[16 + l] & u) ? 16 : 0);
    float d1 = __fmul_rn(load_f16(b), (float)sc), m1 = __fmul_rn(load_f16(b + 2), (float)m);
    return __fsub_rn(__fmul_rn(d1, (float)x), m1);
}

// block_q6_K: ql[128], qh[64], scales[16] (int8), f16 d (dequantize_row_q6_K).
__device__ __forceinline__ float deq_q6_K_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 210;
    int r = (int)(i % 256);
    int half_i = r / 128, rr = r % 128, quarter = rr / 32, l = rr % 32;
    const u8* ql = b + half_i * 64;
    const u8* qh = b + 128 + half_i * 32;
    const signed char* sc = (const signed char*)(b + 192) + half_i * 8;
    int is = l / 16;
    int low = (quarter & 1) ? ql[l + 32] : ql[l];
    low = (quarter & 2) ? (low >> 4) : (low & 0xF);
    int q = (low | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
    return __fmul_rn(__fmul_rn(load_f16(b + 208), (float)sc[is + 2 * quarter]), (float)q);
}

__device__ const signed char KVALUES_IQ4NL[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
__device__ const signed char KVALUES_MXFP4[16] = {
    0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// block_q1_0: f16 d, qs[16] (one sign bit per weight): weight ±d.
__device__ __forceinline__ float deq_q1_0_at(const u8* src, i64 i) {
    const u8* b = src + (i / 128) * 18;
    int r = (int)(i % 128);
    float d = load_f16(b);
    return ((b[2 + r / 8] >> (r % 8)) & 1) ? d : -d;
}

// block_q2_0: f16 d, qs[16] (2 bits per weight): weight (q - 1)·d.
__device__ __forceinline__ float deq_q2_0_at(const u8* src, i64 i) {
    const u8* b = src + (i / 64) * 18;
    int r = (int)(i % 64);
    int q = (b[2 + r / 4] >> (2 * (r % 4))) & 3;
    return __fmul_rn((float)(q - 1), load_f16(b));
}

// block_iq4_nl: f16 d, qs[16] (indices into KVALUES_IQ4NL).
__device__ __forceinline__ float deq_iq4_nl_at(const u8* src, i64 i) {
    const u8* b = src + (i / 32) * 18;
    return __fmul_rn(load_f16(b), (float)KVALUES_IQ4NL[nibble(b + 2, (int)(i % 32))]);
}

// block_iq4_xs: f16 d, u16 scales_h, u8 scales_l[4], qs[128].
__device__ __forceinline__ float deq_iq4_xs_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 136;
    int r = (int)(i % 256), ib = r / 32;
    int scales_h = b[2] | (b[3] << 8);
    int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4);
    float dl = __fmul_rn(load_f16(b), (float)(ls - 32));
    return __fmul_rn(dl, (float)KVALUES_IQ4NL[nibble(b + 8 + 16 * ib, r % 32)]);
}

// block_mxfp4: u8 e (E8M0), qs[16]; values are doubled and the scale
// halved (GGML_E8M0_TO_FP32_HALF).
__device__ __forceinline__ float deq_mxfp4_at(const u8* src, i64 i) {
    const u8* b = src + (i / 32) * 17;
    u32 e = b[0];
    u32 bits = e < 2 ? (0x00200000u << e) : ((e - 1) << 23);
    return __fmul_rn((float)KVALUES_MXFP4[nibble(b + 1, (int)(i % 32))], __int_as_float((int)bits));
}

// block_tq2_0: qs[64], f16 d; weight (q - 1)·d.
__device__ __forceinline__ float deq_tq2_0_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 66;
    int r = (int)(i % 256);
    int j = r / 128, l = (r % 128) / 32, m = r % 32;
    int q = ((b[32 * j + m] >> (2 * l)) & 3) - 1;
    return __fmul_rn((float)q, load_f16(b + 64));
}

// Trit n of a base-3 packed byte: ((q·3^n mod 256)·3) >> 8.
__device__ __forceinline__ int trit(u8 q, int n) {
    u8 p = 1;
    for (int k = 0; k < n; k++) p = (u8)(p * 3);
    return (int)(((u32)(u8)(q * p) * 3) >> 8);
}

// block_tq1_0: qs[48] (5 trits a byte), qh[4] (4 trits a byte), f16 d.
__device__ __forceinline__ float deq_tq1_0_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 54;
    int r = (int)(i % 256), t;
    if (r < 160) t = trit(b[r % 32], r / 32);
    else if (r < 240) t = trit(b[32 + (r - 160) % 16], (r - 160) / 16);
    else t = trit(b[48 + (r - 240) % 4], (r - 240) / 4);
    return __fmul_rn((float)(t - 1), load_f16(b + 52));
}

// ---- the grid types: their tables (IQ2XXS_GRID, ...) come before this
// file, generated from tandem-kernels' (`cuda::kernel_source`).

// Bit j of a sign byte as a factor.
__device__ __forceinline__ float sign_of(int signs, int j) {
    return ((signs >> j) & 1) ? -1.0f : 1.0f;
}

// Byte j of a grid entry, unsigned (IQ2/IQ3) or signed (IQ1).
__device__ __forceinline__ int grid8(unsigned long long e, int j) {
    return (int)((e >> (8 * j)) & 0xff);
}
__device__ __forceinline__ int grid8s(unsigned long long e, int j) {
    return (int)(signed char)((e >> (8 * j)) & 0xff);
}

// IQ2's `d·(0.5 + s)·0.25` scale of a 4-bit s.
__device__ __forceinline__ float iq2_scale(float d, int s) {
    return __fmul_rn(__fmul_rn(d, __fadd_rn(0.5f, (float)s)), 0.25f);
}

// block_iq2_xxs: f16 d, u16 qs[32] (per 32 weights 4 grid indices, then
// 4 x 7 sign bits and a 4-bit scale).
__device__ __forceinline__ float deq_iq2_xxs_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 66;
    int r = (int)(i % 256), ib = r / 32, l = (r % 32) / 8, j = r % 8;
    u32 aux1 = load_u32(b + 2 + 8 * ib + 4);
    float db = iq2_scale(load_f16(b), (int)(aux1 >> 28));
    int g = grid8(IQ2XXS_GRID[b[2 + 8 * ib + l]], j);
    int signs = KSIGNS_IQ2XS[(aux1 >> (7 * l)) & 127];
    return __fmul_rn(__fmul_rn(db, (float)g), sign_of(signs, j));
}

// block_iq2_xs: f16 d, u16 qs[32] (9-bit index, 7 sign bits), scales[8].
__device__ __forceinline__ float deq_iq2_xs_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 74;
    int r = (int)(i % 256), ib = r / 32, l = (r % 32) / 8, j = r % 8;
    int sc = b[66 + ib];
    float db = iq2_scale(load_f16(b), l < 2 ? (sc & 0xf) : (sc >> 4));
    int q = b[2 + 2 * (4 * ib + l)] | (b[3 + 2 * (4 * ib + l)] << 8);
    int g = grid8(IQ2XS_GRID[q & 511], j);
    return __fmul_rn(__fmul_rn(db, (float)g), sign_of(KSIGNS_IQ2XS[q >> 9], j));
}

// block_iq2_s: f16 d, qs[32], signs[32], qh[8], scales[8].
__device__ __forceinline__ float deq_iq2_s_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 82;
    int r = (int)(i % 256), ib = r / 32, l = (r % 32) / 8, j = r % 8;
    int sc = b[74 + ib];
    float db = iq2_scale(load_f16(b), l < 2 ? (sc & 0xf) : (sc >> 4));
    int idx = b[2 + 4 * ib + l] | ((b[66 + ib] << (8 - 2 * l)) & 0x300);
    int g = grid8(IQ2S_GRID[idx], j);
    return __fmul_rn(__fmul_rn(db, (float)g), sign_of(b[34 + 4 * ib + l], j));
}

// block_iq3_xxs: f16 d, qs[64] grid indices, then per 32 weights a u32 of
// 4 x 7 sign bits and a 4-bit scale.
__device__ __forceinline__ float deq_iq3_xxs_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 98;
    int r = (int)(i % 256), ib = r / 32, l = (r % 32) / 8, j = r % 8;
    u32 aux = load_u32(b + 66 + 4 * ib);
    float db = __fmul_rn(__fmul_rn(load_f16(b), __fadd_rn(0.5f, (float)(aux >> 28))), 0.5f);
    const u8* qs = b + 2 + 8 * ib;
    int g = grid8(IQ3XXS_GRID[qs[2 * l + j / 4]], j % 4);
    return __fmul_rn(__fmul_rn(db, (float)g), sign_of(KSIGNS_IQ2XS[(aux >> (7 * l)) & 127], j));
}

// block_iq3_s: f16 d, qs[64], qh[8], signs[32], scales[4].
__device__ __forceinline__ float deq_iq3_s_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 110;
    int r = (int)(i % 256), ib = r / 32, l = (r % 32) / 8, j = r % 8;
    int sc = (b[106 + ib / 2] >> (4 * (ib % 2))) & 0xf;
    float db = __fmul_rn(load_f16(b), (float)(1 + 2 * sc));
    const u8* qs = b + 2 + 8 * ib;
    int qh = b[66 + ib];
    int idx = j < 4 ? (qs[2 * l] | ((qh << (8 - 2 * l)) & 256))
                    : (qs[2 * l + 1] | ((qh << (7 - 2 * l)) & 256));
    int g = grid8(IQ3S_GRID[idx], j % 4);
    return __fmul_rn(__fmul_rn(db, (float)g), sign_of(b[74 + 4 * ib + l], j));
}

#define IQ1S_DELTA 0.125f

// block_iq1_s: f16 d, qs[32], u16 qh[8] (3 high index bits per group,
// a 3-bit scale and the delta's sign).
__device__ __forceinline__ float deq_iq1_s_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 50;
    int r = (int)(i % 256), ib = r / 32, l = (r % 32) / 8, j = r % 8;
    int qh = b[34 + 2 * ib] | (b[35 + 2 * ib] << 8);
    float dl = __fmul_rn(load_f16(b), (float)(2 * ((qh >> 12) & 7) + 1));
    float delta = (qh & 0x8000) ? -IQ1S_DELTA : IQ1S_DELTA;
    int idx = b[2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8);
    return __fmul_rn(dl, __fadd_rn((float)grid8s(IQ1S_GRID[idx], j), delta));
}

// block_iq1_m: qs[32], qh[16], scales[8] (3-bit scales; the f16 scale
// spread over their top nibbles).
__device__ __forceinline__ float deq_iq1_m_at(const u8* src, i64 i) {
    const u8* b = src + (i / 256) * 56;
    int r = (int)(i % 256), ib = r / 32, l = (r % 32) / 8, j = r % 8;
    int s0 = b[48] | (b[49] << 8), s1 = b[50] | (b[51] << 8);
    int s2 = b[52] | (b[53] << 8), s3 = b[54] | (b[55] << 8);
    float d = f16_to_f32((u16)((s0 >> 12) | ((s1 >> 8) & 0x00f0) | ((s2 >> 4) & 0x0f00) | (s3 & 0xf000)));
    int scw = b[48 + 2 * (ib / 2)] | (b[49 + 2 * (ib / 2)] << 8);
    int k = l < 2 ? 0 : 3;
    float dl = __fmul_rn(d, (float)(2 * ((scw >> (6 * (ib % 2) + k)) & 7) + 1));
    int h = b[32 + 2 * ib + l / 2];
    int idx = b[4 * ib + l] | ((h << ((l % 2) ? 4 : 8)) & 0x700);
    float delta = (h & ((l % 2) ? 0x80 : 0x08)) ? -IQ1S_DELTA : IQ1S_DELTA;
    return __fmul_rn(dl, __fadd_rn((float)grid8s(IQ1S_GRID[idx], j), delta));
}
