#!/usr/bin/env bash
# Single-GPU pass: kernel checks at large shapes, train-step overhead, host cost per norm call, and
# the norm-kernel benchmark. Logs and JSON under ${OUT:-/tmp/out}.
set -u
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import torch, triton, transformers, accelerate, liger_kernel; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" 2>&1 | grep -v -i warn | tee "$OUT/final.log"
echo "\$ HF_GNS_TEST_DEVICE=cuda python3 -m pytest tests/test_kernels.py -q" | tee -a "$OUT/final.log"
HF_GNS_TEST_DEVICE=cuda timeout 150 python3 -m pytest tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tail -n 2 | tee -a "$OUT/final.log"
echo "\$ python3 benchmarks/bench_train_step.py --rounds 5" | tee -a "$OUT/final.log"
timeout 200 python3 benchmarks/bench_train_step.py --rounds 5 --json "$OUT/train_step.json" 2>&1 | grep -E "^(gpt2|llama)" | tee -a "$OUT/final.log"
echo "\$ python3 benchmarks/host_overhead.py" | tee -a "$OUT/final.log"
timeout 60 python3 benchmarks/host_overhead.py 2>&1 | grep " us" | tee -a "$OUT/final.log"
echo "\$ python3 benchmarks/bench_norms.py" | tee -a "$OUT/final.log"
timeout ${NORM_TIMEOUT:-280} python3 benchmarks/bench_norms.py --json "$OUT/norms.json" ${NORM_ARGS:-} 2>&1 | grep -v -i -E "warn|Backend impl" | tee -a "$OUT/final.log"
