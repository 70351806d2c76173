#!/usr/bin/env bash
# Plots the scaling curve (target/bench-scaling.json from scripts/bench-scaling.sh) to a PNG with
# matplotlib from the repository's .venv (installed there from PyPI on first use).
#   bash scripts/plot-scaling.sh [IN.json] [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
IN=${1:-target/bench-scaling.json}
OUT=${2:-docs/scaling.png}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q "matplotlib==3.10.*"
.venv/bin/python scripts/plot-scaling.py "$IN" "$OUT"
