#!/usr/bin/env bash
# Issue 12's figures, side by side in one run: MoE (qwen3-30b-a3b, 8-layer
# slice) and MLA (deepseek-v3, 4-layer slice: 3 dense layers + 1 MoE layer
# with 256 experts) in tandem and in llama.cpp, then MLA decode at depth
# 0 / 4096 / 16384 (tandem; llama-bench would prefill 16k tokens first).
#
#   bench/moe-mla.sh [OUTDIR]     # default /tmp/syn; files are ~3.3 + 9.1 GiB
#
# Needs target/release/tandem (cargo build --release -p tandem-cli) and
# llama-bench from tools/fixtures/setup.sh (.cache/llama.cpp/build/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/syn}
T=${TANDEM_BIN:-target/release/tandem}
L=${LLAMA_BENCH:-.cache/llama.cpp/build/bin/llama-bench}
mkdir -p "$OUT"
Q=$OUT/qwen3-30b-a3b-L8-Q4_K_M.gguf
D=$OUT/deepseek-v3-L4-Q4_K_M.gguf
[ -f "$Q" ] || "$T" bench --synthetic qwen3-30b-a3b --quant Q4_K_M --layers 8 --out "$Q"
[ -f "$D" ] || "$T" bench --synthetic deepseek-v3 --quant Q4_K_M --layers 4 --out "$D"
echo "load: $(cat /proc/loadavg)"; grep -m1 "model name" /proc/cpuinfo || true
for F in "$Q" "$D"; do
    "$L" -m "$F" -p 512 -n 32 -t 2 -r 2 | grep -E '^\|'
    "$T" bench "$F" -t 2 -p 512 -n 32 -r 2 -b 1 --probe-mib 512 -v | grep -E '^\||bytes per|per token|isa'
done
"$T" bench "$D" -t 2 -p 0 -n 16 -r 2 -b 1 -d 0,4096,16384 --probe-mib 512 | grep -E '^\|'
echo "load: $(cat /proc/loadavg)"
