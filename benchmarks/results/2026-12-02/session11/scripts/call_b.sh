#!/bin/bash
# session 11 call B: seed 1's linear and GNS-driven arms at once (and any fixed arm call A left
# unfinished, when the machine is still the one call A ran on), then the interleaved compiled step of
# GPT-2 at micro-batch 2 in the time left.
CALL=b; . benchmarks/results/2026-12-02/session11/scripts/common.sh
arms="linear gns"
if [ -d /tmp/ttl_corpus ]; then echo "warm: $(ls /tmp/runs)" >> $W/time_b.txt
  for a in fixed32 fixed128 fixed512; do finished $a || arms="$arms $a"; done
else echo "cold machine" >> $W/time_b.txt; fi
echo "arms: $arms" >> $W/time_b.txt
( OUT=$W/ttl SEED=1 ARMS="$arms" CONCURRENT=1 RUN_TIMEOUT=$((B - 150)) timeout $((B - 60)) \
  bash benchmarks/gpu.sh time_to_loss_large --print_every 1 > $W/ttl_b.log 2>&1 ); stamp ttl; pack
if [ $(left) -gt 150 ]; then
  ( OUT=$W/il timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh interleaved --model gpt2 --micro_batch 2 --pairs 100 > $W/il_b.log 2>&1 ); stamp il_gpt2
fi
pack
