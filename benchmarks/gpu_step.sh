#!/usr/bin/env bash
# GPU pass 2: train-step overhead (GPT-2 124M, Llama 125M), host-side cost breakdown, and the
# example end to end on one GPU. Logs and JSON under ${OUT:-/tmp/out}.
set -u
source "$(dirname "$0")/gpu_env.sh"
echo "\$ python3 benchmarks/bench_train_step.py --rounds 3" | tee "$OUT/train_step.log"
timeout 220 python3 benchmarks/bench_train_step.py --rounds 3 --json "$OUT/train_step.json" 2>&1 | grep -v -i warn | tee -a "$OUT/train_step.log"
echo "\$ python3 benchmarks/host_overhead.py" | tee "$OUT/host.log"
timeout 60 python3 benchmarks/host_overhead.py 2>&1 | grep " us" | tee -a "$OUT/host.log"
(cd benchmarks && timeout 120 python3 profile_train_step.py --model gpt2-124m 2>&1 | grep -v -i warn > "$OUT/profile_step.log"); grep -E "triton|====" "$OUT/profile_step.log"
echo "\$ python3 examples/train_lm.py --bf16 --max_steps 60" | tee "$OUT/example.log"
timeout 150 python3 examples/train_lm.py --bf16 --max_steps 60 --output_dir /tmp/run_example --cache_dir /tmp/cache 2>&1 | grep -v -i -E "warn|it/s\]|s/it\]" | tail -n 14 | tee -a "$OUT/example.log"
