#!/usr/bin/env python3
"""llama.cpp's own x86 dot products as fixtures, for the kernels that mirror
ggml's x86 order (tandem-kernels' AVX2 / AVX-512 Q5_0, Q4_1, Q5_1, IQ4_NL, MXFP4, IQ4_XS),
and for Q1_0 / Q2_0, which tandem runs with its scalar reference on every family.

Loads the vendored build's libggml-cpu.so (built for this x86 machine),
quantizes the rows of `fixtures/quant/act_q8_0.in.f32` with the weight
type's `vec_dot_type` `from_float` (ggml's x86 quantize_row_q8_0 / _q8_1),
and calls the type's `vec_dot` on every (weight row, activation row) of
`fixtures/quant/<FMT>.bin` cut into rows of 256 weights. Writes
`fixtures/quant/ggml_dot_<FMT>.f32`: f32 results, weight-row-major.

For Q1_0 and Q2_0 it also writes `ggml_generic_dot_<FMT>.f32`: the same dots
through ggml's generic C code as compiled into that library
(`ggml_vec_dot_q1_0_q8_0_generic`; for Q2_0 the generic code is what x86
runs, so the file equals `ggml_dot_Q2_0.f32`). tandem's scalar references
mirror that code and must equal it bit for bit.

    /work/main/.venv/bin/python tools/quant_vectors/ggml_dots.py
"""

from __future__ import annotations

import ctypes as C
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

LIB = "/work/main/.cache/llama.cpp/build/bin/libggml-cpu.so"
COLS = 256
TYPES = ["Q5_0", "Q4_1", "Q5_1", "IQ4_NL", "MXFP4", "IQ4_XS", "Q1_0", "Q2_0"]
# ggml's generic C dots, exported by libggml-cpu.so under these names on x86 (arch-fallback.h
# renames the generic Q2_0 code to the plain name: x86 has no kernel of its own for it)
GENERIC = {"Q1_0": "ggml_vec_dot_q1_0_q8_0_generic", "Q2_0": "ggml_vec_dot_q2_0_q8_0"}


class Traits(C.Structure):
    _fields_ = [("from_float", C.c_void_p), ("vec_dot", C.c_void_p),
                ("vec_dot_type", C.c_int), ("nrows", C.c_int64)]


VEC_DOT = C.CFUNCTYPE(None, C.c_int, C.POINTER(C.c_float), C.c_size_t, C.c_void_p, C.c_size_t,
                      C.c_void_p, C.c_size_t, C.c_int)
FROM_FLOAT = C.CFUNCTYPE(None, C.POINTER(C.c_float), C.c_void_p, C.c_int64)


def main() -> None:
    out = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "quant"))
    lib = C.CDLL(LIB)
    lib.ggml_cpu_init()
    lib.ggml_get_type_traits_cpu.restype = C.POINTER(Traits)
    x = np.fromfile(os.path.join(out, "act_q8_0.in.f32"), dtype="<f4").reshape(-1, COLS)
    for name in TYPES:
        tr = lib.ggml_get_type_traits_cpu(int(T[name])).contents
        vt = T(tr.vec_dot_type)
        act_tr = lib.ggml_get_type_traits_cpu(int(vt)).contents
        qk_a, size_a = quants.GGML_QUANT_SIZES[vt]
        acts = []
        for row in x:
            a = np.zeros(COLS // qk_a * size_a, dtype=np.uint8)
            r = np.ascontiguousarray(row, dtype=np.float32)
            FROM_FLOAT(act_tr.from_float)(r.ctypes.data_as(C.POINTER(C.c_float)), a.ctypes.data, COLS)
            acts.append(a)
        qk, size = quants.GGML_QUANT_SIZES[T[name]]
        w = np.fromfile(os.path.join(out, f"{name}.bin"), dtype=np.uint8)
        rb = COLS // qk * size
        res = np.zeros((w.size // rb, len(acts)), dtype=np.float32)
        dot = VEC_DOT(tr.vec_dot)
        o = (C.c_float * 1)()
        for i in range(w.size // rb):
            wr = np.ascontiguousarray(w[i * rb:(i + 1) * rb])
            for b, a in enumerate(acts):
                dot(COLS, o, 0, wr.ctypes.data, 0, a.ctypes.data, 0, 1)
                res[i, b] = o[0]
        res.astype("<f4").tofile(os.path.join(out, f"ggml_dot_{name}.f32"))
        print(f"ggml_dot_{name}.f32: {res.shape[0]} x {res.shape[1]}")
        if name in GENERIC:
            gen = VEC_DOT(C.cast(getattr(lib, GENERIC[name]), C.c_void_p).value)
            for i in range(w.size // rb):
                wr = np.ascontiguousarray(w[i * rb:(i + 1) * rb])
                for b, a in enumerate(acts):
                    gen(COLS, o, 0, wr.ctypes.data, 0, a.ctypes.data, 0, 1)
                    res[i, b] = o[0]
            res.astype("<f4").tofile(os.path.join(out, f"ggml_generic_dot_{name}.f32"))
            print(f"ggml_generic_dot_{name}.f32: {res.shape[0]} x {res.shape[1]}")


if __name__ == "__main__":
    main()
