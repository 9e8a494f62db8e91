#!/usr/bin/env bash
# GPU jobs, run from the repository root: bash benchmarks/gpu.sh JOB [extra args for the job]
#   trainer  benchmarks/bench_trainer.py: hf_gns cost per optimizer step in the HF Trainer
#            (32 runs by default, half of them compiling; under a 10-minute limit split it,
#            e.g. `trainer --models gpt2` and `trainer --models llama360m`)
#   kernels  benchmarks/bench_norms.py: norm layer forward+backward vs torch / compile / Liger
#   tests    tests/test_kernels.py on CUDA
#   profile  benchmarks/profile_step.py: one micro-batch, unpatched vs hf_gns (host time, kernel launches)
#   modes    benchmarks/compile_modes.py: statistics under each torch.compile mode vs eager
# Logs and JSON go to ${OUT:-/tmp/out}.
set -euo pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}
export OUT
mkdir -p "$OUT"
job=${1:?usage: bash benchmarks/gpu.sh trainer|kernels|tests|profile|modes [args...]}
shift

case "$job" in
  trainer)
    python benchmarks/bench_trainer.py --out "$OUT/bench_trainer.json" "$@" 2>&1 | tee "$OUT/trainer.log"
    ;;
  kernels)
    python benchmarks/bench_norms.py --json "$OUT/bench_norms.json" "$@" 2>&1 | tee "$OUT/kernels.log"
    ;;
  tests)
    HF_GNS_TEST_DEVICE=cuda python -m pytest -q -p no:cacheprovider tests/test_kernels.py "$@" 2>&1 | tee "$OUT/tests.log"
    ;;
  profile)
    python benchmarks/profile_step.py "$@" 2>&1 | tee "$OUT/profile.log"
    ;;
  modes)
    python benchmarks/compile_modes.py "$@" 2>&1 | grep -v -i "autotune\|triton_mm\|warn" | tee "$OUT/modes.log"
    ;;
  *)
    echo "unknown job '$job' (trainer, kernels, tests, profile, modes)" >&2
    exit 2
    ;;
esac
