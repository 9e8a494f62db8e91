#!/bin/bash
# session 11 call C: the critical batch measured by branching from call A's fixed128 checkpoints (when
# the machine still holds them), then the interleaved compiled step of Llama 360M at micro-batch 8 and
# GPT-2 at micro-batch 2, in the time left.
CALL=c; . benchmarks/results/2026-12-02/session11/scripts/common.sh
if [ -d /tmp/runs/ttl_fixed128_1/checkpoint-2400 ]; then
  ( OUT=$W/cb SEED=1 ARM=fixed128 RUN=/tmp/runs/ttl_fixed128_1 CKPTS="400 1200 2400" BATCHES=32,64,128,256,512 \
    BRANCH_TOKENS=8000000 timeout $(( $(left) - 200 )) bash benchmarks/gpu.sh critical_batch > $W/cb_c.log 2>&1 ); stamp cb
else echo "no checkpoints of fixed128: $(ls /tmp/runs 2>&1)" >> $W/time_c.txt; fi
pack
( OUT=$W/il timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh interleaved --model llama360m --micro_batch 8 --pairs 40 > $W/il_c_llama.log 2>&1 ); stamp il_llama
pack
if [ $(left) -gt 120 ] && [ ! -f /tmp/b/il/interleaved_step.json ]; then
  ( OUT=$W/il2 timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh interleaved --model gpt2 --micro_batch 2 --pairs 100 > $W/il_c_gpt2.log 2>&1 ); stamp il_gpt2
fi
pack
