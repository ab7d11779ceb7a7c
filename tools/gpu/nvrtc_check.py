#!/usr/bin/env python3
"""Compiles tandem's CUDA kernels with NVRTC, as `tandem-gpu` does when a
device opens, on a machine without a GPU: NVRTC needs no driver. Catches
kernel source that would only fail at run time on a GPU machine.

    pip install nvidia-cuda-nvrtc-cu12      # once (or -cu13)
    python3 tools/gpu/nvrtc_check.py [compute_80 compute_90 ...]

The source is what `tandem_gpu::kernel_source::kernel_source()` returns
(printed by the crate's `kernel_source` example: common.cuh, the i-quant
tables, dequant.cuh, kernels.cu), compiled with NVRTC's default options
and the architecture, as `tandem-gpu/src/cuda/mod.rs` does."""

import ctypes
import glob
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def find_nvrtc():
    import site
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        for pat in ("nvidia/cuda_nvrtc/lib/libnvrtc.so.*", "nvidia/cu*/lib/libnvrtc.so.*"):
            for lib in sorted(glob.glob(os.path.join(base, pat))):
                if "alt" not in os.path.basename(lib) and "builtins" not in lib:
                    return lib
    return "libnvrtc.so"


def main():
    archs = sys.argv[1:] or ["compute_70", "compute_80", "compute_89", "compute_90"]
    lib = find_nvrtc()
    nv = ctypes.CDLL(lib)
    src = subprocess.run(
        ["cargo", "run", "-q", "-p", "tandem-gpu", "--example", "kernel_source"],
        cwd=ROOT, check=True, capture_output=True).stdout
    ok = True
    for arch in archs:
        prog = ctypes.c_void_p()
        rc = nv.nvrtcCreateProgram(ctypes.byref(prog), src, b"tandem_kernels.cu", 0, None, None)
        assert rc == 0, f"nvrtcCreateProgram: {rc}"
        opts = (ctypes.c_char_p * 1)(f"--gpu-architecture={arch}".encode())
        rc = nv.nvrtcCompileProgram(prog, 1, opts)
        size = ctypes.c_size_t()
        nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace").strip()
        print(f"{os.path.basename(lib)} {arch}: {'ok' if rc == 0 else f'FAILED ({rc})'}")
        if text:
            print(text)
        ok &= rc == 0
        nv.nvrtcDestroyProgram(ctypes.byref(prog))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
