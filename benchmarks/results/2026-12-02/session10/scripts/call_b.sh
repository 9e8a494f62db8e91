#!/bin/bash
# session 10 call B: the Chinchilla-sized time-to-loss pipeline at a 20M-token budget (corpus size and
# preparation time, tokens per second of each arm with the five arms sharing the GPU), then compiled
# Llama 360M at micro-batch 2 (14 steps per run, 8 timed).
# Everything is packed into b.tgz (the device returns at most 8 files).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS; B=${BUDGET:-540}; left() { echo $(( B - (SECONDS - T0) )); }
W=/tmp/b; mkdir -p $W
stamp() { echo "$1 done at $((SECONDS-T0)) s" >> $W/time_b.txt; }
pack() { tar czf $OUT/b.tgz -C /tmp b; cp $W/time_b.txt $OUT/ 2>/dev/null; }
( OUT=$W/ttl TOKENS=${TTL_TOKENS:-20000000} CONCURRENT=1 RUN_TIMEOUT=230 timeout 265 bash benchmarks/gpu.sh time_to_loss_large > $W/ttl_b.log 2>&1 ); stamp ttl; pack
timeout $(( $(left) - 5 )) python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 2 --variants compiled,compiled_gns --rounds 1 --steps 14 --out $W/bench_b_llama2.json > $W/bench_b_llama2.log 2>&1; stamp llama2; pack
