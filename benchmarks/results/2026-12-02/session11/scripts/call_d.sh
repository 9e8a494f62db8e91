#!/bin/bash
# session 11 call D: the interleaved compiled step again, with the KV cache off as the Trainer has it
# (calls C's runs had it on: the modelling code broke the graph in every layer): GPT-2 at micro-batch
# 2, then Llama 360M at micro-batch 8 in the time left.
CALL=d; . benchmarks/results/2026-12-02/session11/scripts/common.sh
( OUT=$W/il_gpt2 timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh interleaved --model gpt2 --micro_batch 2 --pairs 100 > $W/il_gpt2.log 2>&1 ); stamp il_gpt2
pack
if [ $(left) -gt 110 ]; then
  ( OUT=$W/il_llama timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model llama360m --micro_batch 8 --pairs 24 --warmup 3 > $W/il_llama.log 2>&1 ); stamp il_llama
fi
pack
