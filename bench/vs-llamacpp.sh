#!/usr/bin/env bash
# tandem bench vs llama.cpp's llama-bench on the same GGUF files, same threads.
#
#   bench/vs-llamacpp.sh [-t THREADS] [-p N_PROMPT] [-n N_GEN] [-r REPS] [FILE.gguf ...]
#
# Without files it benchmarks synthetic llama3.2-3b Q4_K_M and Q8_0 models,
# writing them to .cache/bench/ first if missing (tandem bench --synthetic).
# llama-bench is built from the llama-cpp-python sdist (the recipe of
# tools/fixtures/setup.sh, without its Python venv) into .cache/llama.cpp and
# reused afterwards. Not part of CI. Figures are only as quiet as the machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
BIN="$CACHE/llama.cpp/build/bin"
THREADS="$(nproc)"; NP=512; NG=128; REPS=3
while getopts "t:p:n:r:h" o; do
    case "$o" in
        t) THREADS="$OPTARG" ;; p) NP="$OPTARG" ;; n) NG="$OPTARG" ;; r) REPS="$OPTARG" ;;
        *) sed -n '2,11p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
log() { echo "[vs-llamacpp] $*" >&2; }

# ------------------------------------------------------------ llama-bench ----
build_llama_bench() {
    local ver="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}" commit="${LLAMA_CPP_COMMIT:-0c1e57098}"
    local sdist="llama_cpp_python-$ver.tar.gz" src="$CACHE/llama_cpp_python-$ver"
    mkdir -p "$CACHE"
    if [ ! -d "$src/vendor/llama.cpp" ]; then
        if [ ! -f "$CACHE/$sdist" ]; then
            log "downloading $sdist from PyPI"
            python3 -m pip download --no-deps --no-binary llama-cpp-python -d "$CACHE" "llama-cpp-python==$ver"
        fi
        tar -xzf "$CACHE/$sdist" -C "$CACHE"
    fi
    command -v cmake >/dev/null || { echo "cmake is needed to build llama-bench" >&2; exit 1; }
    log "building llama-bench (once; cached in $BIN)"
    cmake -S "$src/vendor/llama.cpp" -B "$CACHE/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_NUMBER=0 \
        -DLLAMA_BUILD_COMMIT="$commit" >/dev/null
    nice cmake --build "$CACHE/llama.cpp/build" -j"${JOBS:-2}" --target llama-bench llama-tokenize
}
[ -x "$BIN/llama-bench" ] || build_llama_bench

# ----------------------------------------------------------------- tandem ----
log "building tandem (release)"
(cd "$ROOT" && cargo build --release -q -p tandem-cli)
TANDEM="${CARGO_TARGET_DIR:-$ROOT/target}/release/tandem"

FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
    mkdir -p "$CACHE/bench"
    for q in Q4_K_M Q8_0; do
        f="$CACHE/bench/llama3.2-3b-$q.gguf"
        [ -f "$f" ] || "$TANDEM" bench --synthetic llama3.2-3b --quant "$q" --out "$f"
        FILES+=("$f")
    done
fi

# -------------------------------------------------------------------- run ----
OUT="$(mktemp -d)"; trap 'rm -rf "$OUT"' EXIT
i=0
for f in "${FILES[@]}"; do
    log "$(basename "$f"): llama-bench -t $THREADS -p $NP -n $NG -r $REPS"
    "$BIN/llama-bench" -m "$f" -t "$THREADS" -p "$NP" -n "$NG" -r "$REPS" -o json > "$OUT/llama-$i.json"
    log "$(basename "$f"): tandem bench --threads $THREADS -p $NP -n $NG --reps $REPS"
    "$TANDEM" bench "$f" --threads "$THREADS" -p "$NP" -n "$NG" --reps "$REPS" --batch 1 --json > "$OUT/tandem-$i.json"
    i=$((i + 1))
done

python3 - "$OUT" "${#FILES[@]}" "${FILES[@]}" <<'PY'
import json, os, sys
out, n, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = []
for i in range(n):
    llama = json.load(open(os.path.join(out, f"llama-{i}.json")))
    tandem = json.load(open(os.path.join(out, f"tandem-{i}.json")))
    probe = (tandem.get("probe") or {}).get("gbps")
    for t in tandem["tests"]:
        if t["batch"] != 1:
            continue
        l = next((r for r in llama if r["n_prompt"] == t["n_prompt"] and r["n_gen"] == t["n_gen"]), None)
        lt = l["avg_ts"] if l else None
        rows.append([
            os.path.basename(files[i]), str(tandem["threads"]), t["name"],
            f'{lt:.2f} ± {l["stddev_ts"]:.2f}' if l else "-",
            f'{t["avg_ts"]:.2f} ± {t["stddev_ts"]:.2f}',
            f'{t["avg_ts"] / lt:.2f}x' if lt else "-",
            f'{t["gbps"]:.2f}' if t.get("gbps") else "-",
            f'{probe:.2f}' if probe else "-",
            f'{t["pct_of_probe"]:.0f}%' if t.get("pct_of_probe") else "-",
        ])
head = ["model", "threads", "test", "llama.cpp t/s", "tandem t/s", "tandem/llama", "tandem GB/s", "probe GB/s", "% of probe"]
w = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]
fmt = lambda r: "| " + " | ".join(x.ljust(w[c]) if c in (0, 2) else x.rjust(w[c]) for c, x in enumerate(r)) + " |"
print(fmt(head))
print("| " + " | ".join("-" * x for x in w) + " |")
for r in rows:
    print(fmt(r))
PY
