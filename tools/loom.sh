#!/usr/bin/env bash
# Checks the worker pool's hand-off and the flash-decoding merge's
# (`tandem_numa::Arrivals`) with loom: the real code, built with loom's
# primitives (`crates/tandem-numa/src/sync.rs`), under every interleaving
# up to LOOM_MAX_PREEMPTIONS preemptions (default 3, see
# crates/tandem-numa/tests/loom_support). The models and what they cover:
# crates/tandem-numa/tests/loom_pool.rs and loom_arrivals.rs.
#
#   tools/loom.sh
#   LOOM_MAX_PREEMPTIONS=4 tools/loom.sh     # a deeper search (slower)
#
# Stable toolchain; builds to target/loom so the `--cfg loom` build does
# not invalidate target/debug. Release builds: loom runs each model
# thousands of times. Prints each model's count of explored executions.
#
# Time, 2 cores shared with other builds (2026-05): cold ~2.5 min (about
# 2 min of building, 30-50 s of models), about a minute when only the
# models are rebuilt; CI runs it after the main tests (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
RUSTFLAGS="--cfg loom" cargo test --release --target-dir target/loom -p tandem-numa \
    --test loom_pool --test loom_arrivals -- --nocapture --test-threads=1
echo "loom: all models passed in $(($(date +%s) - start)) s"
