#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 20) with cargo-fuzz.
# libFuzzer needs unstable compiler flags (sanitizers); RUSTC_BOOTSTRAP lets the
# stable toolchain accept them, so no nightly toolchain has to be downloaded.
# A crash fails the run and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-20}
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  echo "fuzz $target for ${SECONDS_EACH}s"
  cargo fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|ERROR|panicked|Done " || true
  test "${PIPESTATUS[0]}" = 0
done
