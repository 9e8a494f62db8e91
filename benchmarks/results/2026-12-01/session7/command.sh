#!/bin/bash
# Seventh session, one H200 per call (torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0), from the
# repository root; S=benchmarks/results/2026-12-01/session7/scripts. Six calls, each on a fresh machine start.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
S=benchmarks/results/2026-12-01/session7/scripts
# call A (commit 51947a7, new fold tiling) -> fold/
python benchmarks/bench_norms.py --fold                                   # fold.log
python benchmarks/results/2026-11-30/session6/profile/kprof.py 2; python benchmarks/results/2026-11-30/session6/profile/kprof.py 8   # kprof2.log, kprof8.log (last session's script, unchanged)
HF_GNS_TEST_DEVICE=cuda python -m pytest -q -x tests/test_kernels.py -k "fold or graph_operator"   # tests_cuda.log
# call B (51947a7) -> host/sync_gpt2_mb2.log: host time of forward / backward, and the step's host syncs
python $S/syncdbg.py 2 gpt2
# call C (51947a7) -> trainer/bench_c_gpt2.*, trainer/bench_e_gpt2.*
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 8,2 --variants compiled,compiled_gns --rounds 1 --out bench_c_gpt2.json
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 8 --variants eager,eager_gns --rounds 2 --out bench_e_gpt2.json
# call D (51947a7 + the static launch through its environment variable) -> host/sync_static{0,1}.log, trainer/bench_static1*
python $S/syncdbg.py 2 gpt2                                                # sync_static0.log
TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1 python $S/syncdbg.py 2 gpt2   # sync_static1.log
TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1 python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2 --variants compiled,compiled_gns --rounds 1 --out bench_static1.json
TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1 python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 1 --out bench_static1_llama.json
# call E (51947a7) -> kernels/: per-kernel GPU time and count, unpatched vs patched, one compiled micro-batch
python $S/kdiff2.py llama360m 8 8      # Llama 360M cut to 8 layers, micro-batch 8
python $S/kdiff2.py gpt2 8 0           # GPT-2, micro-batch 8
# call F (32c09f5: static launch on by default) -> trainer/bench_f_*, fold/tests_cuda_f.log
python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 1 --out bench_f_llama.json
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2 --variants compiled,compiled_gns --rounds 1 --out bench_f_gpt2.json
HF_GNS_TEST_DEVICE=cuda python -m pytest -q -x tests/test_compile.py -k "graph_fold_matches or statically"
# CPU (this repository's 2-core machine): guard time per compiled forward, tiny 12-layer GPT-2
TRITON_INTERPRET=1 python $S/guardlat.py plain gpt2; TRITON_INTERPRET=1 python $S/guardlat.py gns gpt2
