#!/bin/bash
# Eighth session, one H200 per call (torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0), from the
# repository root; S=benchmarks/results/2026-12-01/session8/scripts. Four calls, each on a fresh machine start.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
S=benchmarks/results/2026-12-01/session8/scripts
# call G (c24d24c, the code of RESULTS 0**) -> trainer/bench_g_gpt2.*
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 8,2 --variants compiled,compiled_gns --rounds 3 --out bench_g_gpt2.json
# call H (c24d24c) -> host/hostdiff_h.log, trainer/bench_h_llama8.*
python $S/hostdiff.py gpt2 2
python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 3 --steps 30 --out bench_h_llama8.json
# call J (first form of the constant views: the PatchedNorm itself as the argument) -> tests/tests_j_summary.log, trainer/bench_j_*
HF_GNS_TEST_DEVICE=cuda python -m pytest -q -p no:cacheprovider --durations=10 tests/test_compile.py -k "graph_fold or inductor or statically or trainer or twice"
python benchmarks/bench_trainer.py --same_process --models gpt2 --micro_batch 2 --variants compiled,compiled_gns --rounds 3 --steps 30 --out bench_j_gpt2.json
python benchmarks/bench_trainer.py --same_process --models llama360m --micro_batch 8 --variants compiled,compiled_gns --rounds 1 --steps 30 --out bench_j_llama8.json
# call K (second form: the norm's key as the argument; the fold plan, rows and count included, still a constant) -> tests/tests_k_summary.log, host/hostdiff_k.log
HF_GNS_TEST_DEVICE=cuda python -m pytest -q -x -p no:cacheprovider tests/test_compile.py -k "graph_fold or trainer"
python $S/hostdiff.py gpt2 2
# CPU (this repository's 2-core machine): guard evaluation time, both commits side by side, two rounds
# (G=benchmarks/results/2026-12-01/session7/scripts/guardlat.py; old tree = a worktree of c24d24c)
for tree in OLD NEW; do for v in plain gns; do (cd $tree && TRITON_INTERPRET=1 PYTHONPATH=$tree python $G $v gpt2; TRITON_INTERPRET=1 PYTHONPATH=$tree python $G $v llama); done; done   # cpu/guardlat.log
