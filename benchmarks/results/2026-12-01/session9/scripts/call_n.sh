#!/bin/bash
# session 9 call N: why the MoE family sweep fails on this machine (with and without hf_gns), eager Llama 360M
# mb8 (2 rounds), then Llama 360M mb8 compiled rounds until the budget ends
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS; B=${BUDGET:-520}; left() { echo $(( B - (SECONDS - T0) )); }
stamp() { echo "$1 done at $((SECONDS-T0)) s" >> $OUT/time_n.txt; }
timeout 130 python benchmarks/results/2026-12-01/session9/scripts/moe_check.py deepseek_v3 mixtral > $OUT/moe_n.log 2>&1; stamp moe
timeout 100 python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants eager,eager_gns --rounds 2 --out $OUT/bench_n_llama8_eager.json > $OUT/bench_n_llama8_eager.log 2>&1; stamp eager
timeout $(left) python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 2 --steps 30 --out $OUT/bench_n_llama8.json > $OUT/bench_n_llama8.log 2>&1; stamp llama8
