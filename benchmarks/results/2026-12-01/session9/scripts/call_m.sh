#!/bin/bash
# session 9 call M: the two CUDA family-sweep failures of call L (MoE: deepseek_v3, mixtral) with their errors,
# the graph-operator CUDA tests, then Llama 360M mb8 compiled medians over 3 rounds
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS; B=${BUDGET:-560}; left() { echo $(( B - (SECONDS - T0) )); }
stamp() { echo "$1 done at $((SECONDS-T0)) s" >> $OUT/time_m.txt; }
HF_GNS_TEST_DEVICE=cuda timeout 70 python -m pytest -q -rf --tb=short -p no:cacheprovider tests/test_compile.py -k "deepseek_v3 or mixtral" > $OUT/tests_m_moe.log 2>&1; stamp moe
HF_GNS_TEST_DEVICE=cuda timeout 170 python -m pytest -v -rf --tb=short -p no:cacheprovider tests/test_compile.py -k "graph_fold or trainer_torch_compile or statically" > $OUT/tests_m_fold.log 2>&1; stamp fold
timeout $(left) python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 3 --steps 30 --out $OUT/bench_m_llama8.json > $OUT/bench_m_llama8.log 2>&1; stamp llama8
