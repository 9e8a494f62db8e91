#!/usr/bin/env bash
# LN-proxy runs on one GPU: a Llama-style and a GPT-2-style model on the Python documentation +
# stdlib corpus; every 10 steps the whole model's GNS and the norm layers' are measured exactly
# on the same micro-batch (GNSCallback(full_model_every=10)). Logs and runs under ${OUT:-/tmp/out}.
set -u
source "$(dirname "$0")/gpu_env.sh"
STEPS=${STEPS:-1000}
for model in llama gpt2; do
  cmd="python3 $SRC/examples/train_lm.py --model_type $model --hidden_size 256 --num_hidden_layers 4 --num_attention_heads 4 --block_size 256 --per_device_train_batch_size 16 --max_steps $STEPS --learning_rate 1e-3 --bf16 --logging_steps 50 --eval_steps 250 --full_model_every 10 --max_train_chars 0 --output_dir /tmp/runs/ln_$model --cache_dir /tmp/cache"
  echo "\$ $cmd" | tee -a "$OUT/ln_proxy.log"
  start=$(date +%s)
  timeout ${RUN_TIMEOUT:-240} $cmd 2>&1 | grep -E "^(model|steps|train loss|eval loss|gns/b_simple|total time):" | tee -a "$OUT/ln_proxy.log"
  echo "wall: $(( $(date +%s) - start ))s" | tee -a "$OUT/ln_proxy.log"
done
python3 $SRC/benchmarks/ln_proxy.py /tmp/runs/ln_llama /tmp/runs/ln_gpt2 --json "$OUT/ln_proxy.json" | tee -a "$OUT/ln_proxy.log"
(cd /tmp/runs && tar czf "$OUT/ln_runs.tgz" --exclude='checkpoint-*' --exclude='*.safetensors' --exclude='*.bin' --exclude='tokenizer*' ln_llama ln_gpt2)
