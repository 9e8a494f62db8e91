#!/usr/bin/env bash
# GPU session part 1: correctness at large shapes, train-step overhead, end-to-end example.
# Run from the repo root on the GPU machine; writes logs and JSON under ${OUT:-/tmp/out}.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, triton, transformers, accelerate; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/env.txt"
echo "== kernel checks at large shapes" | tee "$OUT/checks.log"
HF_GNS_TEST_DEVICE=cuda timeout 240 python3 -m pytest tests/test_kernels.py -q -x -p no:cacheprovider 2>&1 | tail -n 30 | tee -a "$OUT/checks.log"
echo "== train step" | tee -a "$OUT/checks.log"
timeout 200 python3 benchmarks/bench_train_step.py --json "$OUT/train_step.json" 2>&1 | grep -v Warning | tail -n 20 | tee -a "$OUT/checks.log"
echo "== example" | tee -a "$OUT/checks.log"
timeout 120 python3 examples/train_lm.py --bf16 --max_steps 60 --output_dir /tmp/run_example --cache_dir /tmp/cache 2>&1 | grep -v -i warn | tail -n 12 | tee -a "$OUT/checks.log"
