#!/usr/bin/env bash
# LN-proxy runs (issue: evidence) on one GPU: a Llama-style and a GPT-2-style model on the
# Python documentation + stdlib corpus, whole-model GNS measured exactly every 10 steps.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
for model in llama gpt2; do
  cmd="python3 examples/train_lm.py --model_type $model --hidden_size 256 --num_hidden_layers 4 --num_attention_heads 4 --block_size 256 --per_device_train_batch_size 16 --max_steps 1000 --learning_rate 1e-3 --bf16 --logging_steps 50 --full_model_every 10 --max_train_chars 0 --output_dir /tmp/ln_$model --cache_dir /tmp/cache"
  echo "\$ $cmd" | tee -a "$OUT/ln_proxy.log"
  timeout 240 $cmd 2>&1 | grep -E "summary|steps:|loss|b_simple|time" | grep -v "it/s" | tail -n 8 | tee -a "$OUT/ln_proxy.log"
  cp /tmp/ln_$model/gns_history.jsonl "$OUT/ln_${model}_gns_history.jsonl"
  cp /tmp/ln_$model/gns.png "$OUT/ln_${model}_gns.png" 2>/dev/null
done
python3 benchmarks/ln_proxy.py /tmp/ln_llama /tmp/ln_gpt2 --json "$OUT/ln_proxy.json" | tee -a "$OUT/ln_proxy.log"
