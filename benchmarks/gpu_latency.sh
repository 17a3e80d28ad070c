#!/usr/bin/env bash
# Latency of one action chunk for the released-size model (xr0-4b: Qwen3-VL-4B + the 16 x 1024 DiT), random
# weights, on one CUDA GPU: bf16, K/V computed once per chunk, the 5-step DiT loop replayed as one CUDA graph.
# The same configuration without the graph (nograph) and with the VLM re-run at every step (naive) run interleaved
# in the same process, so the ratios share the GPU's state. Prints the per-stage table on stderr and one JSON object
# as the last line of stdout. Target (issue #7): p50 <= 40 ms on an H100.
#
#   benchmarks/gpu_latency.sh                      # RUNS=50 by default
#   RUNS=100 benchmarks/gpu_latency.sh --prefix 4  # extra arguments go to `xr0 bench latency`
#   benchmarks/gpu_latency.sh --compile-vlm        # also torch.compile the VLM text tower (compiles for minutes)
#
# Needs a CUDA build of torch with the package installed (pip install -e .); ~10 GB of GPU memory per model copy
# (this script holds one copy: the compared setups share the weights).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" -m xr0.cli bench latency --preset xr0-4b --device cuda --dtype bf16 --cuda-graph \
    --runs "${RUNS:-50}" --warmup "${WARMUP:-5}" --compare nograph,naive "$@" --json
