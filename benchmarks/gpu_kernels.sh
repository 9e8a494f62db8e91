#!/usr/bin/env bash
# GPU pass 1: environment, kernel checks at large shapes (tests/test_kernels.py on CUDA), norm
# kernel benchmark. Logs and JSON under ${OUT:-/tmp/out}.
set -u
source "$(dirname "$0")/gpu_env.sh"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers, accelerate, pyarrow; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__)"
  python3 -c "import datasets, liger_kernel; print('datasets', datasets.__version__, 'liger ok')"
} 2>&1 | tee "$OUT/env.txt"
echo "\$ HF_GNS_TEST_DEVICE=cuda python3 -m pytest tests/test_kernels.py -q" | tee "$OUT/checks.log"
HF_GNS_TEST_DEVICE=cuda timeout ${CHECK_TIMEOUT:-200} python3 -m pytest tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tail -n 25 | tee -a "$OUT/checks.log"
echo "\$ python3 benchmarks/bench_norms.py ${NORM_ARGS:-}" | tee "$OUT/norms.log"
timeout ${NORM_TIMEOUT:-360} python3 benchmarks/bench_norms.py --json "$OUT/norms.json" ${NORM_ARGS:-} 2>&1 | grep -v -i warn | tee -a "$OUT/norms.log"
