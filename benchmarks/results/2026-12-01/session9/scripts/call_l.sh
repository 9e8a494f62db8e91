#!/bin/bash
# session 9 call L: the final form's CUDA compile tests (torch 2.11), then GPT-2 mb2 compiled medians over 5 rounds
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS; B=${BUDGET:-560}; left() { echo $(( B - (SECONDS - T0) )); }
stamp() { echo "$1 done at $((SECONDS-T0)) s" >> $OUT/time_l.txt; }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt; git log --oneline -1 >> $OUT/gpu.txt; git status --short >> $OUT/gpu.txt
HF_GNS_TEST_DEVICE=cuda timeout 190 python -m pytest -q -p no:cacheprovider --durations=8 tests/test_compile.py > $OUT/tests_l.log 2>&1; stamp tests
timeout $(left) python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2 --variants compiled,compiled_gns --rounds 5 --out $OUT/bench_l_gpt2_mb2.json > $OUT/bench_l_gpt2_mb2.log 2>&1; stamp gpt2mb2
