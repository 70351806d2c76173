#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 20) with cargo-fuzz.
# libFuzzer needs unstable compiler flags (sanitizers); RUSTC_BOOTSTRAP lets the
# stable toolchain accept them, so no nightly toolchain has to be downloaded.
# A crash fails the run and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-20}
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for target in $(cargo fuzz list); do
  echo "fuzz $target for ${SECONDS_EACH}s"
  # The run's own status decides, not the filter's: a target that does not build fails here.
  rc=0
  cargo fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 > "$LOG" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|ERROR|panicked|Done " "$LOG" || true
  if [ "$rc" != 0 ]; then
    tail -n 40 "$LOG"
    echo "fuzz $target failed (exit $rc)" >&2
    exit "$rc"
  fi
done
