#!/usr/bin/env bash
# Both examples under `accelerate launch --num_processes 2` on a 2-GPU machine.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L | tee "$OUT/multi.log"
cmd1="accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 examples/train_lm.py --bf16 --batch_size_policy gns:max=128 --max_steps 200 --output_dir /tmp/run_trainer --cache_dir /tmp/cache --no_report"
echo "\$ $cmd1" | tee -a "$OUT/multi.log"
timeout 280 $cmd1 2>&1 | grep -v -i -E "warn|it/s\]|s/it\]" | tail -n 25 | tee -a "$OUT/multi.log"
cmd2="accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 examples/accelerate_loop.py --mixed_precision bf16 --max_tokens 400000 --output_dir /tmp/run_loop --cache_dir /tmp/cache"
echo "\$ $cmd2" | tee -a "$OUT/multi.log"
timeout 200 $cmd2 2>&1 | grep -v -i -E "warn|examples/s\]" | tail -n 12 | tee -a "$OUT/multi.log"
python3 - <<'PY' | tee -a "$OUT/multi.log"
import json
hist = [json.loads(l) for l in open("/tmp/run_trainer/gns_history.jsonl")]
changes = [(h["step"], h.get("gns/batch_size"), round(h.get("gns/b_simple", float("nan")), 2)) for h in hist if h["step"] % 20 == 0]
print("trainer run (step, batch, B_simple EMA):", changes)
PY
cp /tmp/run_trainer/gns_history.jsonl "$OUT/trainer_gns_history.jsonl" 2>/dev/null
cp /tmp/run_loop/gns_log.jsonl "$OUT/loop_gns_log.jsonl" 2>/dev/null
