#!/usr/bin/env bash
# GPU: profile, then benchmarks. Writes logs and JSON under ${OUT:-/tmp/out}.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
timeout 120 python3 benchmarks/profile_norm.py 2>&1 | grep -v -i warn > "$OUT/profile.log"; tail -n 5 "$OUT/profile.log"
NORM_ARGS=${NORM_ARGS:-} bash benchmarks/gpu_bench.sh
