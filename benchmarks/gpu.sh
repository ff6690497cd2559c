#!/usr/bin/env bash
# One accelerator run (under 8 minutes on one H200): device, versions, 1,000 datasets x 4 chains x 1,000 draws
# throughput, lane efficiency and float32-vs-float64 agreement, as JSON in benchmarks/results/ (or $OUT).
# Needs jax with its accelerator plugin (pip install "bayescale[cuda]") and numpyro; no package index is used.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
PYTHONPATH=src:benchmarks timeout 480 python benchmarks/gpu.py --k "${K:-1000}" --out "$out"
