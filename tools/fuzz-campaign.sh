#!/usr/bin/env bash
# A fuzzing campaign that adds up over many sittings: every target in
# turn for SLICE seconds (resuming from its corpus under fuzz/corpus/),
# with issue 13's limits (AddressSanitizer, 2 GiB RSS, 1 s per input).
# Each slice appends one line to the log:
#
#   date  target  executions  exit-status  crash-artifacts  sanitizer
#
# and `tools/fuzz-campaign.sh --sum` prints the total executions and
# findings per target. A finding stops nothing: its input is left in
# fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/ with
# the fix, fuzz/README.md).
#
#   tools/fuzz-campaign.sh [SLICE_SECONDS] [TARGET...]   # default 600, all
#   FUZZ_LOG=path tools/fuzz-campaign.sh --sum
#
# FUZZ_SANITIZER=none builds the targets without AddressSanitizer: several times
# the executions per second on the targets whose code under test is safe
# Rust (the tokenizer, template and vocabulary parsers), at the price of
# not seeing memory errors inside unsafe code. The log says which ran.
#
# Needs cargo-fuzz and the nightly toolchain; seeds the corpora from the
# fixtures first if they are missing. Runs under `nice -n 19` (set
# FUZZ_NICE=0 to keep the fuzzer's core while other work runs beside it
# niced: a starved fuzzer reports inputs that took a second of waiting
# as timeouts); stop it with Ctrl-C or kill (the slice in progress is
# lost, the corpus is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${FUZZ_LOG:-fuzz/campaign.tsv}
ALL=(request_body hf_config kv_page chat_template tokenizer_json gguf_vocab gguf_header gguf_model)

if [ "${1:-}" = "--sum" ]; then
    [ -f "$LOG" ] || { echo "no log at $LOG"; exit 1; }
    awk -F'\t' '{ e[$2] += $3; s[$2] += 1; if ($4 != 0) bad[$2] += 1; c[$2] += $5 }
        END { printf "%-16s %14s %7s %9s %9s\n", "target", "executions", "slices", "failures", "artifacts";
              for (t in e) printf "%-16s %14d %7d %9d %9d\n", t, e[t], s[t], bad[t], c[t] }' "$LOG" | sort
    exit 0
fi

SLICE=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

if [ ! -d fuzz/corpus ]; then
    cargo test -p tandem-fuzz --test replay -- --ignored write_corpus
fi
SAN=${FUZZ_SANITIZER:-address}
(cd fuzz && cargo +nightly fuzz build -O -s "$SAN")

# Inputs longer than this are cut (libFuzzer's -max_len). The GGUF
# header and tokenizer.json fixtures are 0.2-1.8 MB, and libFuzzer copies
# and mutates each input whole: these targets ran at 1,500-2,500
# executions per second. The corpus also holds each fixture without its
# bulk (`small-*`: every key, tensor and pipeline stage, a few KiB;
# crates/tandem-fuzz/src/small_seeds.rs), so a 32 KiB cut keeps the
# coverage (and grows it) at 4-5x the rate.
max_len_of() {
    case "$1" in
        gguf_header | tokenizer_json) echo "-max_len=32768" ;;
    esac
}

dict_of() {
    case "$1" in
        gguf_header | gguf_model) echo "-dict=dict/gguf.dict" ;;
        chat_template) echo "-dict=dict/jinja.dict" ;;
    esac
}

for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    out=$(mktemp)
    set +e
    # shellcheck disable=SC2046 # the dictionary and length flags are one word or none
    (cd fuzz && nice -n "${FUZZ_NICE:-19}" cargo +nightly fuzz run -O -s "$SAN" "$t" "corpus/$t" -- \
        -rss_limit_mb=2048 -timeout=1 -max_total_time="$SLICE" -print_final_stats=1 \
        $(dict_of "$t") $(max_len_of "$t")) >"$out" 2>&1
    rc=$?
    set -e
    runs=$(grep -E '^stat::number_of_executed_units:' "$out" | tail -1 | awk '{print $2}')
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "${runs:-0}" "$rc" "$((after - before))" "$SAN" >>"$LOG"
    if [ "$rc" -ne 0 ]; then
        echo "$t: exit $rc; see fuzz/artifacts/$t/ and the output:"
        tail -40 "$out"
    fi
    rm -f "$out"
done
