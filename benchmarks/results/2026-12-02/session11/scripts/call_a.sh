#!/bin/bash
# session 11 call A: seed 1 of the Chinchilla-sized time-to-loss run (10.49M-parameter Llama, 210M
# tokens), the three fixed arms at once on one H200; fixed128 also keeps checkpoints every 400 steps
# and measures the whole model every 25 steps (critical_batch branches from them in call C).
CALL=a; . benchmarks/results/2026-12-02/session11/scripts/common.sh
( OUT=$W/ttl SEED=1 ARMS="fixed32 fixed128 fixed512" CB_ARM=fixed128 SAVE_STEPS=400 CONCURRENT=1 \
  RUN_TIMEOUT=$((B - 140)) timeout $((B - 20)) bash benchmarks/gpu.sh time_to_loss_large --print_every 1 > $W/ttl_a.log 2>&1 ); stamp ttl
pack
