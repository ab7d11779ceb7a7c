"""llama.cpp's logits for synthetic models that `tandem bench --synthetic`
writes (random weights in a real architecture's layout), as an oracle for
architectures whose trained fixtures are not made yet or to pin a layout.

    .venv/bin/python tools/synthetic_refs/make_refs.py [CASE ...]

For each case: writes the GGUF with the tandem binary (deterministic: the
seed is fixed), runs it in llama.cpp (float32 KV, no flash attention, as
tools/fixtures/make_refs.py does) on fixed token ids, and stores the logits
as fixtures/synthetic/<case>.logits.bin (little-endian f32, [ids][vocab])
plus <case>.json (shape, quant, seed, ids, llama.cpp version). The GGUF
itself is not committed; the Rust test regenerates it with the same seed.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools/fixtures"))
import make_refs as R  # noqa: E402

CASES = [
    # (shape, quant, seed)
    ("tiny-qwen3moe", "F16", 7),
    ("tiny-qwen3moe", "Q8_0", 7),
    ("tiny-deepseek3", "F16", 7),
    ("tiny-deepseek3", "Q8_0", 7),
    # sinks, alternating windows, biased experts, YaRN; MXFP4 experts
    ("tiny-gpt-oss", "F16", 7),
    ("tiny-gpt-oss", "MXFP4", 7),
]
IDS = [1, 50, 100, 200, 300, 400, 450, 17, 33, 65, 129, 257, 3, 511, 256, 128]


def main():
    out_dir = ROOT / "fixtures/synthetic"
    out_dir.mkdir(parents=True, exist_ok=True)
    tandem = ROOT / "target/release/tandem"
    only = sys.argv[1:]
    for shape, quant, seed in CASES:
        name = f"{shape}-{quant}"
        if only and name not in only:
            continue
        gguf = Path("/tmp") / f"{name}-seed{seed}.gguf"
        subprocess.run([str(tandem), "bench", "--synthetic", shape, "--quant", quant,
                        "--seed", str(seed), "--out", str(gguf)], check=True)
        m = R.LlamaCpp(gguf, n_ctx=128)
        lg = m.logits(IDS).astype(np.float32)
        m.close()
        lg.tofile(out_dir / f"{name}.logits.bin")
        meta = {"shape": shape, "quant": quant, "seed": seed, "ids": IDS,
                "n_vocab": int(lg.shape[1]),
                "llama_cpp_version": (ROOT / ".cache/llama.cpp/VERSION").read_text().strip()}
        (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(name, lg.shape, "logit std", float(lg.std()))


if __name__ == "__main__":
    main()
