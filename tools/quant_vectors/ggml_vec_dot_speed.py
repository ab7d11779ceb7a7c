#!/usr/bin/env python3
"""Single-thread speed of llama.cpp's own dot kernels, per weight type, for
comparison with `crates/tandem-kernels/examples/gemv_bench.rs` (B = 1 column).

Loads the vendored build's libggml-cpu.so, takes each type's `vec_dot` and
`vec_dot_type` from `ggml_get_type_traits_cpu`, quantizes one activation row
with the vec_dot type's `from_float`, and times `vec_dot` over a weight
buffer of `rows x cols` weights (random bytes with sane f16 scales, the same
recipe as gemv_bench) as `rows` calls of one row each, like ggml's GEMV.
Reports GB/s of weight bytes (wall clock, best of --reps).

    /work/main/.venv/bin/python tools/quant_vectors/ggml_vec_dot_speed.py \
        [--lib /work/main/.cache/llama.cpp/build/bin/libggml-cpu.so] [--rows 4096 --cols 4096]
"""

from __future__ import annotations

import argparse
import ctypes as C
import time

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

FIELDS = {"Q6_K": [208], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q4_1": [0, 2], "Q5_1": [0, 2],
          "Q2_K": [80, 82], "Q3_K": [108], "TQ1_0": [52], "TQ2_0": [64], "MXFP4": [], "IQ1_M": []}
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS",
         "MXFP4", "TQ1_0", "TQ2_0"]


class Traits(C.Structure):
    _fields_ = [("from_float", C.c_void_p), ("vec_dot", C.c_void_p),
                ("vec_dot_type", C.c_int), ("nrows", C.c_int64)]


VEC_DOT = C.CFUNCTYPE(None, C.c_int, C.POINTER(C.c_float), C.c_size_t, C.c_void_p, C.c_size_t,
                      C.c_void_p, C.c_size_t, C.c_int)
FROM_FLOAT = C.CFUNCTYPE(None, C.POINTER(C.c_float), C.c_void_p, C.c_int64)


def weights(name: str, rows: int, cols: int) -> np.ndarray:
    qk, size = quants.GGML_QUANT_SIZES[T[name]]
    rng = np.random.default_rng(7)
    w = rng.integers(0, 256, size=(rows * cols // qk, size), dtype=np.uint8)
    half = np.array([0.01], dtype=np.float16).view(np.uint8)
    for o in FIELDS.get(name, [0]):
        w[:, o:o + 2] = half
    if name == "MXFP4":
        w[:, 0] = 121
    if name == "IQ1_M":
        bits = int(np.array([0.01], dtype=np.float16).view(np.uint16)[0])
        for i in range(4):
            o = 48 + 2 * i + 1
            w[:, o] = (w[:, o] & 0x0F) | (((bits >> (4 * i)) & 0xF) << 4)
    return np.ascontiguousarray(w.reshape(-1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="/work/main/.cache/llama.cpp/build/bin/libggml-cpu.so")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--types", default=",".join(TYPES))
    a = ap.parse_args()
    lib = C.CDLL(a.lib)
    lib.ggml_cpu_init()
    lib.ggml_get_type_traits_cpu.restype = C.POINTER(Traits)
    print(f"llama.cpp vec_dot, 1 thread, {a.rows} x {a.cols}, GB/s of weight bytes (B = 1)")
    for name in a.types.split(","):
        tr = lib.ggml_get_type_traits_cpu(int(T[name])).contents
        vt = T(tr.vec_dot_type)
        act_tr = lib.ggml_get_type_traits_cpu(int(vt)).contents
        x = np.random.default_rng(1).standard_normal(a.cols).astype(np.float32)
        qk_a, size_a = quants.GGML_QUANT_SIZES[vt]
        act = np.zeros(a.cols // qk_a * size_a, dtype=np.uint8)
        FROM_FLOAT(act_tr.from_float)(x.ctypes.data_as(C.POINTER(C.c_float)), act.ctypes.data, a.cols)
        w = weights(name, a.rows, a.cols)
        rb = w.size // a.rows
        dot = VEC_DOT(tr.vec_dot)
        out = (C.c_float * 1)()
        # one C call per row is too slow from Python: time one call over the
        # whole matrix as a single long row (same bytes, same kernel loop),
        # against an activation row tiled to match.
        big = np.tile(act, a.rows)
        best = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            dot(a.rows * a.cols, out, 0, w.ctypes.data, 0, big.ctypes.data, 0, 1)
            best = min(best, time.perf_counter() - t)
        print(f"{name:<8} {w.size / 1e6:7.1f} MB  {w.size / best / 1e9:7.2f} GB/s  (vec_dot_type {vt.name}, row {rb} B)")


if __name__ == "__main__":
    main()
