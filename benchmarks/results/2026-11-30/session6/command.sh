#!/bin/bash
# Sixth session, one H200 per call (torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0), from the repository root.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# first_fold/: the compiled norm backward as one graph operator (hf_gns/kernels/graph_op.py), fold kernel as before
python benchmarks/profile_step.py --model gpt2 --mode compiled --micro_batch 2 --iters 20      # profile_mb2.log
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2,8 --variants compiled,compiled_gns --rounds 1
# profile/: CUDA and CPU time per kernel / op of one compiled micro-batch (kprof.py, beside this file);
# that run had a third variant, "gns_opaque", the same backward as an opaque torch.library.custom_op
python benchmarks/results/2026-11-30/session6/profile/kprof.py 2    # kprof2.log
python benchmarks/results/2026-11-30/session6/profile/kprof.py 8    # kprof8.log
# items_tiled/: the fold kernel reading TILE items of one example per load (FOLD_BLOCK 64, TILE 32)
python benchmarks/results/2026-11-30/session6/profile/kprof.py 2
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2,8 --variants compiled,compiled_gns --rounds 1
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 8 --variants eager,eager_gns --rounds 1
# larger_tiles/: tiles of up to 128 items x (4096 / tile) columns (FOLD_LOAD 4096, FOLD_MAX_ITEMS 128; not
# the committed setting, which is items_tiled/'s); cut by the call's limit before mb8 compiled_gns, and its
# unpatched mb2 step (0.1047 s) was slower than the patched one: no ratio is read from it
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2,8 --variants compiled,compiled_gns --rounds 1
