#!/usr/bin/env bash
# Checks that llama.cpp loads and runs every `tandem bench --synthetic --quant` type: writes the
# small test shapes in each quant and runs llama-bench (-p 16 -n 4) and tandem bench on them.
#
#   bench/synthetic-loads.sh [SHAPE ...]        # default: tiny tiny-qwen3moe
#
# Uses .cache/llama.cpp/build/bin/llama-bench (LLAMA_BENCH=... to use another build) and the
# release tandem binary. Not part of CI; prints one line per (shape, quant).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_BENCH="${LLAMA_BENCH:-$ROOT/.cache/llama.cpp/build/bin/llama-bench}"
(cd "$ROOT" && cargo build --release -q -p tandem-cli)
TANDEM="${CARGO_TARGET_DIR:-$ROOT/target}/release/tandem"
SHAPES=("$@")
[ ${#SHAPES[@]} -eq 0 ] && SHAPES=(tiny tiny-qwen3moe)
QUANTS=(F16 BF16 Q8_0 Q4_0 Q4_K_M Q5_K_M Q6_K Q4_1 Q5_0 Q5_1 Q2_K Q3_K IQ4_NL IQ4_XS IQ3_XXS IQ3_S
        IQ2_XXS IQ2_XS IQ2_S IQ1_S IQ1_M TQ1_0 TQ2_0 Q1_0 Q2_0 MXFP4 UD-Q2_K_XL UD-IQ2_XXS UD-IQ1_S)
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
fail=0
for s in "${SHAPES[@]}"; do
    for q in "${QUANTS[@]}"; do
        f="$DIR/$s-$q.gguf"
        "$TANDEM" bench --synthetic "$s" --quant "$q" --out "$f" 2>/dev/null
        if out=$("$LLAMA_BENCH" -m "$f" -p 16 -n 4 -r 1 -t 2 -o csv 2>&1); then
            tg=$(echo "$out" | tail -1 | awk -F, '{print $(NF-1)}' | tr -d '"')
            echo "$s $q: llama.cpp ok (tg4 $tg t/s)"
        else
            echo "$s $q: llama.cpp FAILED"; echo "$out" | tail -5; fail=1
        fi
        "$TANDEM" bench "$f" -p 16 -n 4 -r 1 -t 2 --batch 1 --probe-mib 16 >/dev/null 2>&1 \
            || { echo "$s $q: tandem FAILED"; fail=1; }
        rm -f "$f"
    done
done
exit $fail
