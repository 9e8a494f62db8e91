#!/usr/bin/env bash
# Both examples under `accelerate launch --num_processes 2` on a 2-GPU machine (NCCL, bf16).
set -u
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L | tee "$OUT/multi.log"
cmd1="accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 $SRC/examples/train_lm.py --bf16 --batch_size_policy linear:16:64 --max_steps 300 --eval_steps 100 --output_dir /tmp/runs/multi_trainer --cache_dir /tmp/cache"
echo "\$ $cmd1" | tee -a "$OUT/multi.log"
timeout 300 $cmd1 2>&1 | grep -v -i -E "warn|it/s\]|s/it\]|examples/s\]" | tail -n 22 | tee -a "$OUT/multi.log"
cmd2="accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 $SRC/examples/accelerate_loop.py --mixed_precision bf16 --batch_size_policy gns:k=8,min_steps=20,max=128 --max_tokens 600000 --output_dir /tmp/runs/multi_loop --cache_dir /tmp/cache"
echo "\$ $cmd2" | tee -a "$OUT/multi.log"
timeout 200 $cmd2 2>&1 | grep -v -i -E "warn|examples/s\]" | tail -n 12 | tee -a "$OUT/multi.log"
python3 - <<'PY' | tee -a "$OUT/multi.log"
import json
hist = [json.loads(l) for l in open("/tmp/runs/multi_trainer/gns_history.jsonl")]
print("trainer run, every 25th step (step, global batch, B_simple EMA, tokens):")
print([(h["step"], h.get("gns/batch_size"), round(h.get("gns/b_simple", float("nan")), 2), h.get("gns/tokens")) for h in hist if h["step"] % 25 == 0])
PY
(cd /tmp/runs && tar czf "$OUT/multi_runs.tgz" --exclude='checkpoint-*' --exclude='*.safetensors' --exclude='*.bin' --exclude='tokenizer*' multi_trainer multi_loop)
