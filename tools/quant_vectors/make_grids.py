#!/usr/bin/env python3
"""Copy ggml's IQ grids and lookup tables into crates/tandem-kernels/src/grids.rs.

The tables are facts of the formats: they are parsed out of llama.cpp's
ggml/src/ggml-common.h (the `GGML_TABLE_BEGIN(type, name, size) ... GGML_TABLE_END()`
blocks), never typed by hand, and written with their sizes checked.

Usage (from the repository root):

    python3 tools/quant_vectors/make_grids.py [--src /work/main/.cache/llama.cpp/src]
"""

from __future__ import annotations

import argparse
import hashlib
import re

TABLES = [
    # (ggml name, rust name, rust type, size)
    ("kmask_iq2xs", "KMASK_IQ2XS", "u8", 8),
    ("ksigns_iq2xs", "KSIGNS_IQ2XS", "u8", 128),
    ("iq2xxs_grid", "IQ2XXS_GRID", "u64", 256),
    ("iq2xs_grid", "IQ2XS_GRID", "u64", 512),
    ("iq2s_grid", "IQ2S_GRID", "u64", 1024),
    ("iq3xxs_grid", "IQ3XXS_GRID", "u32", 256),
    ("iq3s_grid", "IQ3S_GRID", "u32", 512),
    ("kvalues_iq4nl", "KVALUES_IQ4NL", "i8", 16),
    ("kvalues_fp4", "KVALUES_MXFP4", "i8", 16),
    ("iq1s_grid", "IQ1S_GRID", "u64", 2048),
]


def parse(text: str, name: str) -> list[int]:
    m = re.search(r"GGML_TABLE_BEGIN\(\s*\w+\s*,\s*" + name + r"\s*,[^)]*\)(.*?)GGML_TABLE_END\(\)", text, re.S)
    if not m:
        raise SystemExit(f"table {name} not found")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    return [int(v, 0) for v in re.findall(r"-?(?:0x[0-9a-fA-F]+|\d+)", body)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="/work/main/.cache/llama.cpp/src")
    ap.add_argument("--out", default="crates/tandem-kernels/src/grids.rs")
    args = ap.parse_args()
    path = f"{args.src}/ggml/src/ggml-common.h"
    text = open(path).read()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    out = [
        "//! ggml's IQ grids and lookup tables, copied from llama.cpp's",
        "//! `ggml/src/ggml-common.h` by `tools/quant_vectors/make_grids.py`",
        f"//! (source sha256 prefix {digest}). Generated: do not edit by hand.",
        "//!",
        "//! Grid entries pack 8 (u64) or 4 (u32) byte values little-endian: byte j",
        "//! of entry i is the j-th weight of grid point i (`(const uint8_t *)(grid + i)`",
        "//! in ggml; `iq1s_grid` bytes are read as `i8`).",
        "",
        "/// `IQ1S_DELTA` / `IQ1M_DELTA` (ggml-common.h).",
        "pub(crate) const IQ1S_DELTA: f32 = 0.125;",
        "",
    ]
    for cname, rname, rtype, size in TABLES:
        vals = parse(text, cname)
        if len(vals) != size:
            raise SystemExit(f"{cname}: {len(vals)} values, expected {size}")
        per = 4 if rtype == "u64" else 8 if rtype == "u32" else 16
        fmt = {"u64": "0x{:016x}", "u32": "0x{:08x}"}.get(rtype, "{}")
        out.append(f"/// ggml `{cname}`.")
        out.append("#[rustfmt::skip]")
        out.append(f"pub(crate) static {rname}: [{rtype}; {size}] = [")
        for i in range(0, size, per):
            out.append("    " + " ".join(fmt.format(v & ((1 << 64) - 1) if rtype.startswith("u") else v) + "," for v in vals[i:i + per]))
        out.append("];")
        out.append("")
    open(args.out, "w").write("\n".join(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
