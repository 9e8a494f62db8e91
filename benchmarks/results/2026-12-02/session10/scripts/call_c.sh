#!/bin/bash
# session 10 call C: compiled Llama 360M mb8 and compiled GPT-2 mb2, one round each, with the profiler
# over the last two steps (GPU kernel time per step beside wall and CPU time). Packed into c.tgz.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS; B=${BUDGET:-520}; left() { echo $(( B - (SECONDS - T0) )); }
W=/tmp/c; mkdir -p $W
stamp() { echo "$1 done at $((SECONDS-T0)) s" >> $W/time_c.txt; }
pack() { tar czf $OUT/c.tgz -C /tmp c; cp $W/time_c.txt $OUT/ 2>/dev/null; }
timeout 300 python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 1 --steps 16 --profile --out $W/bench_c_llama8.json > $W/bench_c_llama8.log 2>&1; stamp llama8; pack
timeout $(( $(left) - 5 )) python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2 --variants compiled,compiled_gns --rounds 1 --profile --out $W/bench_c_gpt2_2.json > $W/bench_c_gpt2_2.log 2>&1; stamp gpt2_mb2; pack
