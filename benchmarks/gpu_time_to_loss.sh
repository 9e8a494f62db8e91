#!/usr/bin/env bash
# Time to loss on one GPU: a ~1M-parameter Llama, ~16 tokens per parameter, token-counted cosine LR,
# the same token budget in every arm: fixed batch 256 (the reference), the paper's linear 64 -> 256,
# GNS-driven (64..256), and fixed batch 64 for context. Logs and runs under ${OUT:-/tmp/out}.
set -u
source "$(dirname "$0")/gpu_env.sh"
SEEDS=${SEEDS:-"1"}
python3 $SRC/benchmarks/time_to_loss.py prepare /tmp/ttl_corpus --max_chars 40000000 2>&1 | tail -n 1 | tee -a "$OUT/ttl.log"
TOKENS=${TOKENS:-16000000}
common="--dataset_name /tmp/ttl_corpus --tokenizer_name /tmp/ttl_corpus/tokenizer --hidden_size 96 --num_hidden_layers 2 --num_attention_heads 4 --block_size 128 --per_device_train_batch_size 64 --learning_rate 3e-3 --warmup_steps 0.05 --bf16 --logging_steps 20 --no_report --cache_dir /tmp/cache"
for seed in $SEEDS; do
  fixed="--gradient_accumulation_steps 4 --max_steps $((TOKENS / 32768)) --eval_steps $((TOKENS / 32768 / 20)) --batch_size_policy steps:0:256"
  linear="--gradient_accumulation_steps 1 --max_steps $((TOKENS / 8192)) --eval_steps $((TOKENS / 8192 / 40)) --batch_size_policy linear:64:256"
  gns="--gradient_accumulation_steps 1 --max_steps $((TOKENS / 8192)) --eval_steps $((TOKENS / 8192 / 40)) --batch_size_policy gns:min=64,max=256"
  small="--gradient_accumulation_steps 1 --max_steps $((TOKENS / 8192)) --eval_steps $((TOKENS / 8192 / 40)) --batch_size_policy steps:0:64"
  for arm in ${ARMS:-fixed linear gns small}; do
    eval "extra=\$$arm"
    cmd="python3 $SRC/examples/train_lm.py $common $extra --seed $seed --output_dir /tmp/runs/ttl_${arm}_$seed"
    echo "\$ $cmd" | tee -a "$OUT/ttl.log"
    start=$(date +%s)
    timeout ${RUN_TIMEOUT:-150} $cmd 2>&1 | grep -E "^(model|steps|train loss|eval loss|gns/b_simple|total time):" | tee -a "$OUT/ttl.log"
    echo "wall: $(( $(date +%s) - start ))s" | tee -a "$OUT/ttl.log"
  done
  python3 $SRC/benchmarks/time_to_loss.py report /tmp/runs/ttl_fixed_$seed /tmp/runs/ttl_linear_$seed /tmp/runs/ttl_gns_$seed /tmp/runs/ttl_small_$seed --json "$OUT/ttl_$seed.json" | tee -a "$OUT/ttl.log"
done
(cd /tmp/runs && tar czf "$OUT/ttl_runs.tgz" --exclude='checkpoint-*' --exclude='*.safetensors' --exclude='*.bin' --exclude='tokenizer*' ttl_*)
