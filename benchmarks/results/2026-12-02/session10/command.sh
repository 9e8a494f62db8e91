#!/bin/bash
# Tenth session, one H200 per call (torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0), code of cf37c04,
# from the repository root; three calls, each on a fresh machine start (BUDGET=560 bash scripts/call_a.sh, ...).
# The device returns at most 8 files: calls B and C pack their output into one archive.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# call A -> tests/tests_a_moe.log, tests/tests_a_trainer.log, trainer/bench_a_llama8_eager.*, trainer/profile_llama360m_mb8_eager*
HF_GNS_TEST_DEVICE=cuda python -m pytest -v -rf --tb=short -p no:cacheprovider tests/test_compile.py -k "deepseek_v3 or mixtral"
HF_GNS_TEST_DEVICE=cuda python -m pytest -v -rf --tb=short -p no:cacheprovider tests/test_compile.py -k "trainer_torch_compile or every_layer"
python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants eager,eager_gns --rounds 1 --profile
#   (call A's time-to-loss pass came back without its logs: more than 8 files)
# call B -> ttl/ (the time-to-loss pipeline at 20M tokens), trainer/bench_b_llama2.*
OUT=$OUT/ttl TOKENS=20000000 CONCURRENT=1 RUN_TIMEOUT=230 bash benchmarks/gpu.sh time_to_loss_large
python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 2 --variants compiled,compiled_gns --rounds 1 --steps 14
# call C -> trainer/bench_c_llama8.*, trainer/bench_c_gpt2_2.*, trainer/profile_*_compiled*
python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 1 --steps 16 --profile
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2 --variants compiled,compiled_gns --rounds 1 --profile
