// ---- dequantization: one kernel per stored type -----------------------

#define DEQ_KERNEL(name)                                                        \
    extern "C" __global__ void deq_##name(const u8* src, void* dst, int ty, i64 n) { \
        GRID_LOOP(i, n) store(dst, ty, i, deq_##name##_at(src, i));             \
    }

DEQ_KERNEL(f32)
DEQ_KERNEL(f16)
DEQ_KERNEL(bf16)
DEQ_KERNEL(q8_0)
DEQ_KERNEL(q4_0)
DEQ_KERNEL(q4_1)
DEQ_KERNEL(q5_0)
DEQ_KERNEL(q5_1)
DEQ_KERNEL(q2_K)
DEQ_KERNEL(q3_K)
DEQ_KERNEL(q4_K)
DEQ_KERNEL(q5_K)
DEQ_KERNEL(q6_K)
DEQ_KERNEL(iq4_nl)
DEQ_KERNEL(iq4_xs)
DEQ_KERNEL(mxfp4)
DEQ_KERNEL(tq1_0)
DEQ_KERNEL(tq2_0)
DEQ_KERNEL(q1_0)
DEQ_KERNEL(q2_0)
DEQ_KERNEL(iq2_xxs)
DEQ_KERNEL(iq2_xs)
DEQ_KERNEL(iq2_s)
DEQ_KERNEL(iq3_xxs)
DEQ_KERNEL(iq3_s)
DEQ_KERNEL(iq1_s)
DEQ_KERNEL(iq1_m)

// ---- element-wise ------------------------------------------------------

extern "C" __global__ void convert_f32(const float* src, void* dst, int ty, i64 n) {
    GRID_LOOP(i, n) store(dst, ty, i, src[i]);
}

extern "C" __global__ void fill_f32(float* dst, float v, i64 n) {
    GRID_LOOP(i, n) dst[i] = v;
}

extern "C" __global__ void add_f32(float* x, const float* y, i64 n) {
    GRID_LOOP(i, n) x[i] += y[i];
}

extern "C" __global__ void add_bias(float* x, const float* b, i64 n, i64 dim) {
    GRID_LOOP(i, n) x[i] += b[i % dim];
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978846f, a = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(k * x * (1.0f + a * x * x)));
}

// act: 0 SiLU, 1 GELU (tanh), 2 GELU through f16 (ggml's table).
extern "C" __global__ void glu(float* gate, const float* up, int act, i64 n) {
    GRID_LOOP(i, n) {
        float g = gate[i], u = up[i], r;
        if (act == 0) {
            r = g / (1.0f + expf(-g)) * u;
        } else if (act == 1) {
            r = gelu_tanh(g) * u;
        } else if (act == 3) {
            // gpt-oss's clamped SwiGLU (alpha 1.702, limit 7).
            float x = fminf(g, 7.0f), y = fminf(fmaxf(u, -7.0f), 7.0f);
            r = x / (1.0f + expf(-x * 1.702f)) * (y + 1.0f);
        } else {
            if (g <= -10.0f) r = 0.0f;
            else if (g >= 10.0f) r = g * u;
            else r = f16_to_f32(f32_to_f16(gelu_tanh(f16_to_f32(f32_to_f16(g))))) * u;
        }
        gate[i] = r;
    }
}

// One block per row; sum of squares in double, as ggml.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, i64 dim, float eps) {
    __shared__ double part[256];
    const float* xr = x + (i64)blockIdx.x * dim;
    float* orow = out + (i64)blockIdx.x * dim;
    double s = 0.0;
    for (i64 i = threadIdx.x; i < dim; i += blockDim.x) s += (double)xr[i] * (double)xr[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
        __syncthreads();
    }
    float scale = (float)(1.0 / sqrt(part[0] / (double)dim + (double)eps));
    for (i64 i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = xr[i] * scale * w[i];
}

// Thread per (row, head, pair); layout 0 interleaved, 1 halves.
extern "C" __global__ void rope(float* x, const float* table, i64 rows, i64 heads, i64 hd, i64 pairs, int layout) {
    GRID_LOOP(t, rows * heads * pairs) {
        i64 i = t % pairs, rh = t / pairs, r = rh / heads;
        float sn = table[(r * pairs + i) * 2], cs = table[(r * pairs + i) * 2 + 1];
        float* h = x + rh * hd;
        i64 a = layout == 0 ? 2 * i : i, b = layout == 0 ? 2 * i + 1 : i + pairs;
        float x0 = h[a], x1 = h[b];
        h[a] = x0 * cs - x1 * sn;
        h[b] = x0 * sn + x1 * cs;
    }
}

// [a][b][words] -> [b][a][words], 4-byte words.
extern "C" __global__ void transpose32(const u32* src, u32* dst, i64 a, i64 b, i64 words) {
    GRID_LOOP(t, a * b * words) {
        i64 w = t % words, ij = t / words, j = ij % b, i = ij / b;
        dst[(j * a + i) * words + w] = src[t];
    }
}

extern "C" __global__ void copy_cols(const float* src, float* dst, i64 rows, i64 cols, i64 src_stride, i64 dst_stride) {
    GRID_LOOP(t, rows * cols) {
        i64 r = t / cols, c = t % cols;
        dst[r * dst_stride + c] = src[r * src_stride + c];
    }
}

extern "C" __global__ void gather_rows(const float* src, const u32* idx, float* dst, i64 n, i64 dim, i64 rows) {
    GRID_LOOP(t, n * dim) {
        i64 i = t / dim, c = t % dim;
        if ((i64)idx[i] < rows) dst[t] = src[(i64)idx[i] * dim + c];
    }
}

// The indices of one call are distinct: no two threads add to one value.
extern "C" __global__ void scatter_add_rows(const float* src, const u32* idx, const float* w, float* dst, i64 n, i64 dim, i64 rows) {
    GRID_LOOP(t, n * dim) {
        i64 i = t / dim, c = t % dim;
        if ((i64)idx[i] < rows) dst[(i64)idx[i] * dim + c] += w[i] * src[t];
    }
}

// Rows of f32 to the KV store's rows: fmt 0 f32, 1 f16, 2 bf16 (thread
// per value), 3 q8_0 (thread per 32-value block, ggml's
// quantize_row_q8_0_ref).
extern "C" __global__ void encode_kv(const float* src, u8* dst, int fmt, i64 n) {
    if (fmt < 3) {
        GRID_LOOP(i, n) store(dst, fmt, i, src[i]);
        return;
    }
    GRID_LOOP(blk, n / 32) {
        const float* x = src + blk * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        u8* b = dst + blk * 34;
        u16 dh = f32_to_f16(d);
        b[0] = (u8)(dh & 0xff);
        b[1] = (u8)(dh >> 8);
        for (int j = 0; j < 32; j++) b[2 + j] = (u8)(signed char)roundf(x[j] * id);
    }
}

// ---- attention ---------------------------------------------------------

extern "C" __global__ void attn_init(float* states, float* acc, i64 rows, i64 hd) {
    GRID_LOOP(t, rows * hd) {
        acc[t] = 0.0f;
        if (t < rows) {
            states[2 * t] = -__int_as_float(0x7f800000);
            states[2 * t + 1] = 0.0f;
        }
    }
}

// Eight warps per block, one query row each (rows `blockIdx.x * 8 ..` of
// KV head `blockIdx.y`, in `t * group + h` order); the block walks the
// union of its rows' visible keys in tiles of 16 staged in shared memory
// (each K/V row read from global memory once per block, not per query).
// Each lane holds head_dim / 32 (≤ 8) accumulator values; keys are folded
// one at a time with the online-softmax update.
#define ATT_WARPS 8
#define ATT_TILE 16
extern "C" __global__ void attend(const float* q, const float* k, const float* v, float* states, float* acc,
                                  i64 n_q, i64 group, i64 hd, i64 n_k, i64 k_head_stride,
                                  i64 q_pos0, i64 k_pos0, float scale, i64 window, float softcap) {
    __shared__ float ks[ATT_TILE * 256];
    __shared__ float vs[ATT_TILE * 256];
    i64 g = blockIdx.y;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    i64 rows = n_q * group;
    i64 tq = (i64)blockIdx.x * ATT_WARPS + warp;
    bool active = tq < rows;
    i64 t = active ? tq / group : 0;
    i64 row = g * rows + tq;
    const float* kh = k + g * k_head_stride;
    const float* vh = v + g * k_head_stride;
    float qv[8], a[8];
    int per = (int)((hd + 31) / 32);
    for (int j = 0; j < per; j++) {
        i64 c = lane + 32 * j;
        qv[j] = (active && c < hd) ? q[row * hd + c] : 0.0f;
        a[j] = (active && c < hd) ? acc[row * hd + c] : 0.0f;
    }
    float m = active ? states[2 * row] : 0.0f, sum = active ? states[2 * row + 1] : 0.0f;
    // This row's keys [lo, hi), and the block's union.
    i64 qp = q_pos0 + t;
    i64 hi = qp - k_pos0 + 1;
    if (hi > n_k) hi = n_k;
    i64 lo = 0;
    if (window > 0 && qp - window + 1 - k_pos0 > lo) lo = qp - window + 1 - k_pos0;
    if (!active) { lo = 0; hi = 0; }
    i64 t_first = ((i64)blockIdx.x * ATT_WARPS) / group;
    i64 t_last = ((i64)blockIdx.x * ATT_WARPS + ATT_WARPS - 1) / group;
    if (t_last >= n_q) t_last = n_q - 1;
    i64 b_lo = 0, b_hi = q_pos0 + t_last - k_pos0 + 1;
    if (b_hi > n_k) b_hi = n_k;
    if (window > 0 && q_pos0 + t_first - window + 1 - k_pos0 > b_lo) b_lo = q_pos0 + t_first - window + 1 - k_pos0;
    for (i64 j0 = b_lo; j0 < b_hi; j0 += ATT_TILE) {
        i64 nt = b_hi - j0 < ATT_TILE ? b_hi - j0 : ATT_TILE;
        __syncthreads();
        for (i64 e = threadIdx.x; e < nt * hd; e += blockDim.x) {
            ks[e] = kh[j0 * hd + e];
            vs[e] = vh[j0 * hd + e];
        }
        __syncthreads();
        for (i64 jj = 0; jj < nt; jj++) {
            i64 j = j0 + jj;
            if (j < lo || j >= hi) continue;  // uniform within the warp
            float p = 0.0f;
            for (int e = 0; e < per; e++) {
                i64 c = lane + 32 * e;
                if (c < hd) p += qv[e] * ks[jj * hd + c];
            }
            for (int off = 16; off > 0; off >>= 1) p += __shfl_xor_sync(0xffffffff, p, off);
            float s = softcap > 0.0f ? softcap * tanhf(p * scale / softcap) : p * scale;
            float mn = fmaxf(m, s);
            float c0 = sum > 0.0f ? expf(m - mn) : 0.0f;
            float e1 = expf(s - mn);
            sum = sum * c0 + e1;
            m = mn;
            for (int e = 0; e < per; e++) {
                i64 c = lane + 32 * e;
                if (c < hd) a[e] = a[e] * c0 + e1 * vs[jj * hd + c];
            }
        }
    }
    if (!active) return;
    for (int j = 0; j < per; j++) {
        i64 c = lane + 32 * j;
        if (c < hd) acc[row * hd + c] = a[j];
    }
    if (lane == 0) {
        states[2 * row] = m;
        states[2 * row + 1] = sum;
    }
}

// Thread per (row, value): sink folded in, then acc / sum.
extern "C" __global__ void attn_finish(const float* states, const float* acc, const float* sinks, float* out,
                                       i64 n_q, i64 group, i64 hd, i64 rows) {
    GRID_LOOP(t, rows * hd) {
        i64 row = t / hd;
        float m = states[2 * row], sum = states[2 * row + 1], sc = 1.0f;
        if (sinks) {
            i64 h = row % group, g = row / (n_q * group);
            float sk = sinks[g * group + h];
            float m2 = fmaxf(m, sk);
            float c = sum > 0.0f ? expf(m - m2) : 0.0f;
            sc = c;
            sum = sum * c + expf(sk - m2);
        }
        out[t] = sum > 0.0f ? acc[t] * sc / sum : 0.0f;
    }
}
