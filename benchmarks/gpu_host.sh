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
# whole runs with and without hf_gns (the LN-proxy Llama without the whole-model diagnostic), alternating
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
for round in 1 2; do
  for gns in "" "--no_gns"; do
    cmd="python3 examples/train_lm.py --model_type llama --hidden_size 256 --num_hidden_layers 4 --num_attention_heads 4 --block_size 256 --per_device_train_batch_size 16 --max_steps 300 --bf16 --logging_steps 50 --max_train_chars 0 --no_report --output_dir /tmp/runs/tp --cache_dir /tmp/cache $gns"
    echo "\$ $cmd" | tee -a "$OUT/host.log"
    PYTHONPATH=/tmp/site:$PWD timeout 150 $cmd 2>&1 | grep -E "^(train time|gns/b_simple):" | tee -a "$OUT/host.log"
  done
done
