#!/usr/bin/env bash
# Host cost per patched norm call, this checkout vs an older copy of hf_gns in $OLD (side by side on
# one machine), and the train-step overhead at batch 8 and 32. Logs under ${OUT:-/tmp/out}.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -n "${OLD:-}" ]; then
  echo "== hf_gns in $OLD" | tee -a "$OUT/host.log"
  PYTHONPATH=$OLD timeout 90 python3 benchmarks/profile_host.py --steps 50 2>&1 | grep -E " us" | tee -a "$OUT/host.log"
fi
echo "== hf_gns in this checkout" | tee -a "$OUT/host.log"
PYTHONPATH=$PWD timeout 90 python3 benchmarks/profile_host.py --steps 300 2>&1 | grep -v -i warn > "$OUT/profile_host.log"; grep " us" "$OUT/profile_host.log" | tee -a "$OUT/host.log"
for b in 8 32; do
  echo "\$ python3 benchmarks/bench_train_step.py --batch $b --rounds 3 --variants unpatched,kernels_only,hf_gns" | tee -a "$OUT/host.log"
  PYTHONPATH=$PWD timeout 200 python3 benchmarks/bench_train_step.py --batch $b --rounds 3 --variants unpatched,kernels_only,hf_gns --json "$OUT/train_step_b$b.json" 2>&1 | grep -E "^(gpt2|llama)" | tee -a "$OUT/host.log"
done
