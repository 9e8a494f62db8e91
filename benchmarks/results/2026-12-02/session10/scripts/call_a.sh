#!/bin/bash
# session 10 call A: the MoE families compiled on the GPU machine (the string view key, 2288510), the
# compiled Trainer tests on CUDA, eager Llama 360M mb8 with the profiler, then the Chinchilla-sized
# time-to-loss pipeline at a small token budget (corpus preparation time, tokens per second with the
# arms sharing the GPU)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS; B=${BUDGET:-560}; left() { echo $(( B - (SECONDS - T0) )); }
stamp() { echo "$1 done at $((SECONDS-T0)) s" >> $OUT/time_a.txt; }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/env_a.txt 2>&1
python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> $OUT/env_a.txt 2>&1
HF_GNS_TEST_DEVICE=cuda timeout 200 python -m pytest -v -rf --tb=short -p no:cacheprovider --durations=5 tests/test_compile.py -k "deepseek_v3 or mixtral" > $OUT/tests_a_moe.log 2>&1; stamp moe
HF_GNS_TEST_DEVICE=cuda timeout 110 python -m pytest -v -rf --tb=short -p no:cacheprovider --durations=5 tests/test_compile.py -k "trainer_torch_compile or every_layer" > $OUT/tests_a_trainer.log 2>&1; stamp trainer_tests
timeout 110 python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants eager,eager_gns --rounds 1 --profile --out $OUT/bench_a_llama8_eager.json > $OUT/bench_a_llama8_eager.log 2>&1; stamp eager_profile
OUT=$OUT/ttl TOKENS=${TTL_TOKENS:-20000000} CONCURRENT=1 RUN_TIMEOUT=$(( $(left) - 40 )) timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh time_to_loss_large > $OUT/ttl_a.log 2>&1; stamp ttl
