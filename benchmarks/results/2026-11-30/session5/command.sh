#!/bin/bash
# The fifth session's GPU calls (one H200 each; torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0),
# from the repository root. before/: hf_gns at 639b0cb with only the entry change; after/ and the rest:
# hf_gns as committed in 5d8b049 (benchmarks/bench_trainer.py's --same_process as in the commit after it,
# except that its compiled variants then reused their model across rounds: see RESULTS 0+).
export PYTHONPATH=$PWD
# before/ and after/
python benchmarks/count_compiled_kernels.py --device cuda --layers 2 > kc.txt
python benchmarks/profile_step.py --model gpt2 --mode compiled --micro_batch 2 --iters 20 > profile_gpt2_mb2.txt
# after/ (one process per run)
python benchmarks/bench_trainer.py --models gpt2 --micro_batch 2,8 --variants compiled,compiled_gns --rounds 1 --out bench.json
# same_process/
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2,8 --variants compiled,compiled_gns --rounds 3 --out bench_compiled.json
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 8 --variants eager,eager_gns --rounds 3 --out bench_eager.json
# modes/ (compile_modes.py as it was before the CUDA-graph step marks were added to its loops)
python benchmarks/compile_modes.py --modes reduce-overhead > modes.log
HF_GNS_TEST_DEVICE=cuda timeout 150 python -m pytest -q -p no:cacheprovider tests/test_compile.py -k inductor > tests_cuda.log
