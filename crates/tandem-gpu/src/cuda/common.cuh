// tandem's CUDA kernels, compiled at run time by NVRTC from three files
// in this order: common.cuh (types, half/bfloat16 conversions), dequant.cuh
// (the stored types' element decoders, also compiled on the host by
// tests/cuda_dequant_host.rs), kernels.cu (the kernels).
//
// No headers: NVRTC before CUDA 13.3 lacks cuda_fp16.h, so half and
// bfloat16 conversions are written out below (round to nearest even, as
// the `half` crate and ggml do). Each kernel is the CUDA form of the plain
// loop in `src/cpu/ops.rs` (same formulas; f32 sums in another order).
// Element types: 0 = f32, 1 = f16, 2 = bf16.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

__device__ __forceinline__ float f16_to_f32(u16 h) {
    u32 sign = (u32)(h & 0x8000) << 16;
    u32 exp = (h >> 10) & 0x1f;
    u32 man = h & 0x3ff;
    u32 bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            // Subnormal: normalise.
            int e = -1;
            do { e++; man <<= 1; } while ((man & 0x400) == 0);
            bits = sign | ((u32)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    return __int_as_float((int)bits);
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u32 x = (u32)__float_as_int(f);
    u32 sign = (x >> 16) & 0x8000;
    u32 ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) {  // inf or NaN
        return (u16)(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
    }
    if (ax >= 0x477ff000) {  // rounds to >= 65520: inf
        return (u16)(sign | 0x7c00);
    }
    if (ax < 0x38800000) {  // below the smallest normal f16: subnormal or 0
        if (ax < 0x33000000) return (u16)sign;  // < 2^-25 rounds to 0
        u32 e = ax >> 23;
        u32 m = (ax & 0x7fffff) | 0x800000;
        u32 shift = 126 - e;  // value = m * 2^(e - 150) = h * 2^-24
        u32 half_v = m >> shift;
        u32 rem = m & ((1u << shift) - 1);
        u32 mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half_v & 1))) half_v++;
        return (u16)(sign | half_v);
    }
    u32 e = (ax >> 23) - 127 + 15;
    u32 m = ax & 0x7fffff;
    u32 h = (e << 10) | (m >> 13);
    u32 rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (u16)(sign | h);
}

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __int_as_float((int)((u32)h << 16));
}

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 x = (u32)__float_as_int(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (u16)((x >> 16) | 0x40);  // quiet NaN
    x += 0x7fff + ((x >> 16) & 1);
    return (u16)(x >> 16);
}

__device__ __forceinline__ void store(void* dst, int ty, i64 i, float v) {
    if (ty == 0) ((float*)dst)[i] = v;
    else if (ty == 1) ((u16*)dst)[i] = f32_to_f16(v);
    else ((u16*)dst)[i] = f32_to_bf16(v);
}

__device__ __forceinline__ float load_f16(const u8* p) {
    return f16_to_f32((u16)(p[0] | (p[1] << 8)));
}

#define GRID_LOOP(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

