#!/usr/bin/env bash
# GPU session part 2: norm kernel and train-step benchmarks. Writes JSON and logs under ${OUT:-/tmp/out}.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
timeout 200 python3 benchmarks/bench_train_step.py --json "$OUT/train_step.json" 2>&1 | grep -v -i warn | tee "$OUT/train_step.log"
timeout 380 python3 benchmarks/bench_norms.py --json "$OUT/norms.json" ${NORM_ARGS:-} 2>&1 | grep -v -i warn | tee "$OUT/norms.log"
