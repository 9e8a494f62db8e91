#!/usr/bin/env bash
# GPU jobs, run from the repository root: bash benchmarks/gpu.sh JOB [extra args for the job]
#   trainer  benchmarks/bench_trainer.py: hf_gns cost per optimizer step in the HF Trainer
#            (32 runs by default, half of them compiling; under a 10-minute limit split it,
#            e.g. `trainer --models gpt2` and `trainer --models llama360m`)
#   kernels  benchmarks/bench_norms.py: norm layer forward+backward vs torch / compile / Liger
#   tests    tests/test_kernels.py on CUDA
#   profile  benchmarks/profile_step.py: one micro-batch, unpatched vs hf_gns (host time, kernel launches)
#   modes    benchmarks/compile_modes.py: statistics under each torch.compile mode vs eager
#   distributed  benchmarks/distributed_trainer.py on 2 GPUs: DDP / FSDP2, eager / compiled, compared
# Logs and JSON go to ${OUT:-/tmp/out}.
set -euo pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}
export OUT
mkdir -p "$OUT"
job=${1:?usage: bash benchmarks/gpu.sh trainer|kernels|tests|profile|modes|distributed [args...]}
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
  distributed)
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    runs=()
    for mode in ddp fsdp2; do
      for compile in "" "--compile"; do
        name=$OUT/dist_$mode${compile:+_compiled}.json
        torchrun --nproc_per_node 2 benchmarks/distributed_trainer.py --mode $mode $compile --out "$name" "$@" \
          > "${name%.json}.log" 2>&1 || echo "$mode $compile failed: see ${name%.json}.log"
        runs+=("$name")
      done
    done
    python benchmarks/distributed_trainer.py --compare "${runs[@]}" | tee "$OUT/distributed.log"
    ;;
  *)
    echo "unknown job '$job' (trainer, kernels, tests, profile, modes, distributed)" >&2
    exit 2
    ;;
esac
