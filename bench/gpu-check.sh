#!/usr/bin/env bash
# The GPU prefill's device check: one run on a machine with an NVIDIA GPU
# and no Rust toolchain, ending well inside 8 minutes.
#
#   bench/gpu-check.sh   (runs $TANDEM_BIN, else target/gpu/tandem, else target/release/tandem)
#
# Build the binary here first and carry it to the device machine (stripped:
# the release binary keeps line tables and is ~80 MB, stripped ~14 MB):
#   cargo build --release --features cuda --bin tandem
#   mkdir -p target/gpu && strip -o target/gpu/tandem target/release/tandem
#   (on the device machine) TANDEM_BIN=target/gpu/tandem bench/gpu-check.sh
#
# 1. Correctness: on the fixture models, the GPU prefill's logits, the K/V
#    it writes into the host pages and the CPU decode that continues from
#    them, against the CPU path (`tandem bench --prefill gpu --check`).
# 2. Throughput: synthetic llama3-8b (Q4_K_M) and a deepseek-v3 slice at
#    N = 512, 2k, 8k, 32k: measured H2D GB/s, achieved TFLOP/s and % of the
#    roofline max(weight bytes / H2D bandwidth, FLOPs / cuBLAS rate); the
#    CPU prefill rate on the same file for the speed-up.
# Every step has its own time limit, so a slow step is reported and the
# rest still runs. Exit 0: all passed; 1: a step failed; 77: no GPU.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TANDEM_BIN:-$ROOT/target/gpu/tandem}"
[ -x "$BIN" ] || BIN="$ROOT/target/release/tandem"
FIX="$ROOT/fixtures/models"
WORK="${GPU_CHECK_DIR:-/tmp/tandem-gpu-check}"
THREADS="${THREADS:-$(nproc)}"
SIZES="${SIZES:-512,2048,8192,32768}"
FAIL=0
log() { echo "[gpu-check] $*"; }
START=$SECONDS
BUDGET="${BUDGET:-450}"  # seconds for the whole check
step() { # step SECONDS NAME CMD... (cut to what is left of the budget)
    local t="$1" name="$2"; shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ $left -le 5 ]; then log "$name: skipped (time budget spent)"; FAIL=1; return 0; fi
    [ "$t" -gt "$left" ] && t=$left
    log "$name"
    timeout "$t" "$@"
    local rc=$?
    if [ $rc -eq 124 ]; then log "$name: TIMED OUT after ${t}s"; FAIL=1;
    elif [ $rc -ne 0 ]; then log "$name: FAILED (exit $rc)"; FAIL=1; fi
    return 0
}

if [ ! -x "$BIN" ]; then
    echo "no tandem binary at $BIN: build it with cargo build --release --features cuda --bin tandem" >&2
    exit 2
fi
# No GPU, driver or CUDA library: say which, and stop (exit 77: skipped).
probe="$("$BIN" bench "$FIX/tiny-llama3/gguf/tiny-llama3-F32.gguf" --prefill gpu --prefill-sizes 1 -r 1 --numa off 2>&1)"
if echo "$probe" | grep -q "GPU prefill unavailable"; then
    log "SKIPPED: $(echo "$probe" | grep -m1 "unavailable")"
    exit 77
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader
mkdir -p "$WORK"

# 1. Correctness on the fixtures (f16 KV, 40 tokens, 3 decode steps).
for f in tiny-llama3/gguf/tiny-llama3-F32.gguf tiny-llama3/gguf/tiny-llama3-BF16.gguf \
         tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf tandem-tiny/gguf/tandem-tiny-Q6_K.gguf \
         tandem-tiny/gguf/tandem-tiny-Q8_0.gguf tiny-qwen3moe/gguf/tiny-qwen3moe-Q8_0.gguf \
         tiny-gemma3/gguf/tiny-gemma3-F32.gguf tiny-qwen2/gguf/tiny-qwen2-Q8_0.gguf; do
    step 30 "check $f" "$BIN" bench "$FIX/$f" --prefill gpu --check 40 --prefill-sizes 64 -r 1 -t "$THREADS" --numa off
done

# 2. Throughput.
L8B="$WORK/llama3-8b-Q4_K_M.gguf"
[ -f "$L8B" ] || step 90 "write synthetic llama3-8b" "$BIN" bench --synthetic llama3-8b --quant Q4_K_M -o "$L8B"
if [ -f "$L8B" ]; then
    step 180 "llama3-8b GPU prefill" "$BIN" bench "$L8B" --prefill gpu --prefill-sizes "$SIZES" -r 1 -t "$THREADS"
    step 60 "llama3-8b CPU prefill (for the speed-up)" "$BIN" bench "$L8B" -p 512 -n 0 -b 1 -r 1 --probe-mib 0 -t "$THREADS"
fi
DS="$WORK/deepseek-v3-slice.gguf"
if [ ! -f "$DS" ]; then
    if ! timeout 60 "$BIN" bench --synthetic deepseek-v3 --layers 4 --quant Q4_K_M -o "$DS"; then
        log "deepseek-v3 slice: skipped (no synthetic deepseek-v3 shape, or its MLA attention, in this build)"
    fi
fi
[ -f "$DS" ] && step 60 "deepseek-v3 slice GPU prefill" "$BIN" bench "$DS" --prefill gpu --prefill-sizes "$SIZES" -r 1 -t "$THREADS"

if [ $FAIL -eq 0 ]; then log "all steps passed"; else log "some steps FAILED"; fi
exit $FAIL
