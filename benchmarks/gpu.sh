#!/usr/bin/env bash
# GPU jobs, run from the repository root: bash benchmarks/gpu.sh JOB [extra args for the job]
#   env      GPU, driver and library versions (the header of benchmarks/RESULTS.md)
#   trainer  benchmarks/bench_trainer.py: hf_gns cost per optimizer step in the HF Trainer
#            (32 runs by default, half of them compiling; under a 10-minute limit split it,
#            e.g. `trainer --models gpt2` and `trainer --models llama360m`)
#   interleaved  benchmarks/interleaved_step.py: hf_gns's step cost with the host's speed taken out (both
#            models compiled in one process, optimizer steps alternating; e.g. `interleaved --model gpt2
#            --micro_batch 2 --pairs 100`)
#   profile  benchmarks/profile_step.py: one micro-batch, unpatched vs hf_gns (host time, kernel launches)
#   host     benchmarks/profile_host.py: host time per patched norm call (cProfile); OLD=<older
#            hf_gns checkout> runs the same script against it first, side by side
#   kernels  benchmarks/bench_norms.py: norm layer forward+backward vs torch / compile / Liger
#            (`kernels --warps 8,16,32 --dims 8192,16384`: per launch configuration;
#            `kernels --resources`: registers and spills)
#   tests    tests/test_kernels.py on CUDA
#   modes    benchmarks/compile_modes.py: statistics under each torch.compile mode vs eager
#   distributed  benchmarks/distributed_trainer.py on 2 GPUs: DDP / FSDP2, eager / compiled, compared
#   ln_proxy     benchmarks/ln_proxy.py: norm-layer GNS vs the whole model's, two examples/train_lm.py
#                runs with --full_model_every (STEPS=1000, RUN_TIMEOUT=240 s per run; SCALE=large: the
#                GPT-2 124M shape and a 126M Llama, side by side on two GPUs)
#   time_to_loss benchmarks/time_to_loss.py: fixed / linear / GNS-driven batch, same token budget
#                (SEEDS="1", TOKENS=16000000, ARMS="fixed linear gns small", RUN_TIMEOUT=150 s per run)
#   time_to_loss_large  the same at a Chinchilla-optimal 10.5M-parameter scale: fixed batches, linear
#                and GNS-driven arms spread over the GPUs, tokens and steps to a common target against
#                the fixed-batch frontier (SEED=1, TOKENS=210000000, ARMS="fixed32 fixed128 fixed512 linear gns",
#                CONCURRENT=1 runs each GPU's arms at once; FULL_EVERY=25: the CB arm's whole-model steps; arms resume from their checkpoints, so calls
#                made back to back on the warm machine finish them; CB_ARM=fixed128 keeps that arm's checkpoints;
#                an arm fixedN_nogns trains fixedN without hf_gns: the cost of hf_gns, from whole runs)
#   critical_batch  benchmarks/critical_batch.py: branches at several batches from checkpoints of a
#                time_to_loss_large arm (its own run, or RUN=<dir> of one made with CB_ARM), the critical
#                batch measured directly vs B_simple
#   multi    both examples under `accelerate launch --num_processes 2` (2 GPUs, NCCL, bf16)
# Logs and JSON go to ${OUT:-/tmp/out}. SRC=<checkout> runs the hf_gns (and examples/) of another
# checkout (default: this repository). Wheels carried in .whl/ (datasets, dill, multiprocess,
# liger-kernel) are installed into /tmp/site first and put on the import path.
set -euo pipefail
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}
export OUT
mkdir -p "$OUT"
SRC=${SRC:-$PWD}
if ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$SRC${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}
fi
jobs="env, trainer, interleaved, profile, host, kernels, tests, modes, distributed, ln_proxy, time_to_loss, time_to_loss_large, critical_batch, multi"
job=${1:?usage: bash benchmarks/gpu.sh JOB [args...], JOB one of: $jobs}
shift
# a run's summary lines (the examples print them at the end)
summary="^(model|steps|train loss|eval loss|gns/b_simple|total time):"
# pack run directories without checkpoints, weights and tokenizers: tgz NAME DIR...
tgz() { local name=$1; shift; (cd /tmp/runs && tar czf "$OUT/$name" --exclude='checkpoint-*' --exclude='*.safetensors' --exclude='*.bin' --exclude='tokenizer*' "$@"); }
# one training run: the command, its summary lines and its wall time, appended to a log, and its
# progress lines ("step N: ...") with the seconds since the start to LOG's .progress: run_logged LOG SECONDS CMD
run_logged() {
  local log=$1 limit=$2 cmd=$3 start
  echo "\$ $cmd" | tee -a "$log"
  start=$(date +%s)
  timeout "$limit" $cmd 2>&1 \
    | tee >(tr '\r' '\n' | grep -a --line-buffered '^step ' \
            | while IFS= read -r line; do echo "$(( $(date +%s) - start ))s $line"; done >> "${log%.log}.progress") \
    | grep -a -E "$summary" | tee -a "$log" || true
  echo "wall: $(( $(date +%s) - start ))s" | tee -a "$log"
}

# the Chinchilla-sized time-to-loss setting (jobs time_to_loss_large and critical_batch): corpus,
# common train_lm arguments and each arm's arguments (arm_args ARM)
ttl_large_setup() {
  tokens=${TOKENS:-210000000} mb=${MB:-32} top=${MAX_BATCH:-512} seed=${SEED:-1} block=${BLOCK:-512}
  python benchmarks/time_to_loss.py prepare /tmp/ttl_corpus --max_chars "${CHARS:-400000000}" 2>&1 | tail -n 1 | tee -a "$OUT/ttl.log"
  common="--dataset_name /tmp/ttl_corpus --tokenizer_name /tmp/ttl_corpus/tokenizer --hidden_size ${HIDDEN:-256} --num_hidden_layers ${LAYERS:-8} --num_attention_heads ${HEADS:-4} --block_size $block --per_device_train_batch_size $mb --learning_rate ${LR:-2e-3} --warmup_steps 0.05 --bf16 --torch_compile --logging_steps 50 --no_report --max_eval_samples ${EVAL_BLOCKS:-512} --preprocessing_num_workers ${WORKERS:-16} --seed $seed"
  arm_args() {
    local arm=$1 steps
    case "$arm" in
      fixed*_nogns) local b=${arm#fixed}; b=${b%_nogns}; steps=$((tokens / (b * block)))
              echo "--gradient_accumulation_steps $((b / mb)) --max_steps $steps --eval_steps $((steps / 40 + 1)) --no_gns" ;;
      fixed*) local b=${arm#fixed}; steps=$((tokens / (b * block)))
              echo "--gradient_accumulation_steps $((b / mb)) --max_steps $steps --eval_steps $((steps / 40 + 1)) --batch_size_policy steps:0:$b" ;;
      linear) steps=$((tokens / (mb * block)))
              echo "--max_steps $steps --eval_steps $((steps / 60 + 1)) --batch_size_policy linear:$mb:$top" ;;
      gns)    steps=$((tokens / (mb * block)))
              echo "--max_steps $steps --eval_steps $((steps / 60 + 1)) --batch_size_policy gns:min=$mb,max=$top" ;;
    esac
  }
}

case "$job" in
  env)
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
      python -c "import torch, triton, transformers, accelerate; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
      python -c "import datasets, liger_kernel; print('datasets', datasets.__version__, 'liger-kernel importable')"
    } 2>&1 | grep -v -i warn | tee "$OUT/env.txt"
    ;;
  trainer)
    python benchmarks/bench_trainer.py --out "$OUT/bench_trainer.json" "$@" 2>&1 | tee "$OUT/trainer.log"
    ;;
  interleaved)
    python benchmarks/interleaved_step.py --out "$OUT/interleaved_step.json" "$@" 2>&1 | grep -v -i warn | tee "$OUT/interleaved.log"
    ;;
  profile)
    python benchmarks/profile_step.py "$@" 2>&1 | tee "$OUT/profile.log"
    ;;
  host)
    if [ -n "${OLD:-}" ]; then
      echo "== hf_gns in $OLD" | tee "$OUT/host_old.log"
      PYTHONPATH=$OLD${PYTHONPATH:+:$PYTHONPATH} python benchmarks/profile_host.py "$@" 2>&1 | grep -v -i warn | tee -a "$OUT/host_old.log"
    fi
    echo "== hf_gns in $SRC" | tee "$OUT/host.log"
    python benchmarks/profile_host.py "$@" 2>&1 | grep -v -i warn | tee -a "$OUT/host.log"
    ;;
  kernels)
    python benchmarks/bench_norms.py --json "$OUT/bench_norms.json" "$@" 2>&1 | grep -v -i -E "warn|Backend impl" | tee "$OUT/kernels.log"
    ;;
  tests)
    HF_GNS_TEST_DEVICE=cuda python -m pytest -q -p no:cacheprovider -o addopts= tests/test_kernels.py "$@" 2>&1 | tee "$OUT/tests.log"
    ;;
  modes)
    python benchmarks/compile_modes.py "$@" 2>&1 | grep -v -i "autotune\|triton_mm\|warn" | tee "$OUT/modes.log"
    ;;
  distributed)
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
  ln_proxy)
    # SCALE=small: hidden 256, 4 layers, context 256, the default corpus (RESULTS 5).
    # SCALE=large: hidden 768, 12 layers, 12 heads, context 1024, compiled, 8 sequences per step, on
    # the site-packages corpus (CHARS characters), whole model measured every FULL_EVERY steps; with
    # two GPUs visible the two models train side by side, one per GPU.
    : > "$OUT/ln_proxy.log"
    if [ "${SCALE:-small}" = large ]; then
      python benchmarks/time_to_loss.py prepare /tmp/ttl_corpus --max_chars "${CHARS:-200000000}" 2>&1 | tail -n 1 | tee -a "$OUT/ln_proxy.log"
      shape="--hidden_size ${HIDDEN:-768} --num_hidden_layers ${LAYERS:-12} --num_attention_heads ${HEADS:-12} --block_size ${BLOCK:-1024} --per_device_train_batch_size ${BATCH:-8} --torch_compile --learning_rate ${LR:-6e-4} --warmup_steps 0.05 --dataset_name /tmp/ttl_corpus --tokenizer_name /tmp/ttl_corpus/tokenizer --preprocessing_num_workers ${WORKERS:-8} --full_model_every ${FULL_EVERY:-25} --save_steps ${SAVE_STEPS:-1000} --eval_steps ${EVAL_STEPS:-1000}"
    else
      shape="--hidden_size 256 --num_hidden_layers 4 --num_attention_heads 4 --block_size 256 --per_device_train_batch_size 16 --learning_rate 1e-3 --max_train_chars 0 --full_model_every 10 --eval_steps 250"
    fi
    gpus=$(python -c "import torch; print(torch.cuda.device_count())")
    i=0
    for model in llama gpt2; do
      cmd="python $SRC/examples/train_lm.py --model_type $model $shape --max_steps ${STEPS:-1000} --bf16 --logging_steps 50 --no_report --output_dir /tmp/runs/ln_$model --cache_dir /tmp/cache_$model $*"
      if [ "$gpus" -ge 2 ]; then
        (export CUDA_VISIBLE_DEVICES=$i; run_logged "$OUT/ln_proxy_$model.log" "${RUN_TIMEOUT:-240}" "$cmd") &
      else
        run_logged "$OUT/ln_proxy_$model.log" "${RUN_TIMEOUT:-240}" "$cmd"
      fi
      i=$((i + 1))
    done
    wait
    cat "$OUT"/ln_proxy_llama.log "$OUT"/ln_proxy_gpt2.log >> "$OUT/ln_proxy.log"
    python benchmarks/ln_proxy.py /tmp/runs/ln_llama /tmp/runs/ln_gpt2 --json "$OUT/ln_proxy.json" --plot "$OUT/ln_proxy.png" | tee -a "$OUT/ln_proxy.log"
    tgz ln_runs.tgz ln_llama ln_gpt2
    ;;
  time_to_loss_large)
    # Chinchilla-sized: a 10.5M-parameter Llama (hidden 256, 8 layers, context 512) on TOKENS tokens
    # (default 210M, 20 per parameter) of the site-packages corpus (CHARS characters); arms (ARMS,
    # batches in sequences of 512 tokens): fixed batches, the linear schedule and the GNS-driven policy,
    # spread over the visible GPUs (each GPU runs its arms one after another, or all at once with
    # CONCURRENT=1, after one short run has tokenized the corpus into a cache they share); one seed
    # per call (SEED). Tokens and steps to the target do not depend on how arms share a GPU; their
    # wall time does (question 4 needs arms timed alone). Every arm saves a checkpoint every 1/20 of
    # its steps and resumes from its newest one, and an arm that finished is skipped: a call cut by
    # RUN_TIMEOUT is continued by the next call on the same (warm) machine, which keeps /tmp.
    ttl_large_setup
    gpus=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
    arms=(${ARMS:-fixed32 fixed128 fixed512 linear gns})
    if [ "${CONCURRENT:-0}" = 1 ] && [ ! -f /tmp/runs/ttl_tokenize/trainer_state.json ]; then
      cmd="python $SRC/examples/train_lm.py $common $(arm_args fixed32_nogns) --max_steps 1 --output_dir /tmp/runs/ttl_tokenize --cache_dir /tmp/cache_ttl"
      run_logged "$OUT/ttl.log" 300 "$cmd"
    fi
    for ((g = 0; g < gpus; g++)); do
      (
        export CUDA_VISIBLE_DEVICES=$g
        for ((a = g; a < ${#arms[@]}; a += gpus)); do
          arm=${arms[$a]}
          if [ -f "/tmp/runs/ttl_${arm}_$seed/trainer_state.json" ]; then
            echo "$arm: finished in an earlier call" | tee -a "$OUT/ttl_${arm}.log"; continue
          fi
          steps=$(arm_args "$arm" | sed -E 's/.*--max_steps ([0-9]+).*/\1/')
          extra="--resume --save_steps $((steps / 20 + 1)) --save_total_limit 1"
          # CB_ARM: the arm that keeps all its checkpoints and measures the whole model (critical_batch RUN=)
          [ "$arm" = "${CB_ARM:-}" ] && extra="--resume --save_steps ${SAVE_STEPS:-400} --full_model_every ${FULL_EVERY:-25}"
          if [ "${CONCURRENT:-0}" = 1 ]; then
            cmd="python $SRC/examples/train_lm.py $common $(arm_args "$arm") $extra --output_dir /tmp/runs/ttl_${arm}_$seed --cache_dir /tmp/cache_ttl $*"
            run_logged "$OUT/ttl_${arm}.log" "${RUN_TIMEOUT:-300}" "$cmd" &
          else
            cmd="python $SRC/examples/train_lm.py $common $(arm_args "$arm") $extra --output_dir /tmp/runs/ttl_${arm}_$seed --cache_dir /tmp/cache_gpu$g $*"
            run_logged "$OUT/ttl_gpu$g.log" "${RUN_TIMEOUT:-300}" "$cmd"
          fi
        done
        wait
      ) &
    done
    wait
    cat "$OUT"/ttl_fixed*.log "$OUT"/ttl_linear.log "$OUT"/ttl_gns.log >> "$OUT/ttl.log" 2>/dev/null || true
    cat "$OUT"/ttl_gpu*.log >> "$OUT/ttl.log" 2>/dev/null || true
    unfinished=$(for arm in "${arms[@]}"; do [ -f "/tmp/runs/ttl_${arm}_$seed/trainer_state.json" ] || echo "$arm"; done)
    if [ -z "$unfinished" ]; then
      python benchmarks/time_to_loss.py frontier $(for arm in "${arms[@]}"; do echo "$arm=/tmp/runs/ttl_${arm}_$seed"; done) \
        --json "$OUT/ttl_frontier_$seed.json" --plot "$OUT/ttl_frontier_$seed.png" | tee -a "$OUT/ttl.log"
    else
      echo "not finished (the next call resumes them): $unfinished" | tee -a "$OUT/ttl.log"
    fi
    tgz ttl_runs_$seed.tgz $(cd /tmp/runs && ls -d ttl_*_$seed)
    ;;
  critical_batch)
    # one time_to_loss_large arm (ARM, default fixed128; SEED) trained again with checkpoints every
    # SAVE_STEPS steps and the whole model measured every 25 steps, then branches from the checkpoints
    # at CKPTS (steps) at each batch of BATCHES with BRANCH_TOKENS tokens each, at the run's LR there
    # (LR_SCALING=sqrt: times sqrt(batch / the run's batch)).
    # The run may be cut by RUN_TIMEOUT once the last of CKPTS is saved (each save writes its history).
    # RUN=<dir> branches from a run made before (time_to_loss_large with CB_ARM=<arm>) instead.
    ttl_large_setup
    arm=${ARM:-fixed128}
    run=${RUN:-/tmp/runs/cb_${arm}_$seed}
    if [ -z "${RUN:-}" ]; then
      cmd="python $SRC/examples/train_lm.py $common $(arm_args "$arm") --save_steps ${SAVE_STEPS:-200} --full_model_every ${FULL_EVERY:-25} --output_dir $run --cache_dir /tmp/cache_ttl $*"
      run_logged "$OUT/cb.log" "${RUN_TIMEOUT:-300}" "$cmd"
    fi
    ckpts=()
    for ckpt in ${CKPTS:-200 600 1000}; do ckpts+=("$run/checkpoint-$ckpt"); done
    python benchmarks/critical_batch.py branch "${ckpts[@]}" --dataset_name /tmp/ttl_corpus \
      --tokenizer_name /tmp/ttl_corpus/tokenizer --cache_dir /tmp/cache_ttl --block_size "$block" --micro_batch "$mb" \
      --batches "${BATCHES:-32,64,128,256,512}" --tokens "${BRANCH_TOKENS:-10000000}" --lr_scaling "${LR_SCALING:-constant}" --bf16 --compile --preprocessing_num_workers "${WORKERS:-16}" \
      --out "$OUT/cb_branches" 2>&1 | grep -E '^\{|Error|error' | tee -a "$OUT/cb.log"
    python benchmarks/critical_batch.py report "$run" "$OUT"/cb_branches/branch_*.json --json "$OUT/cb_report.json" --plot "$OUT/cb.png" | tee -a "$OUT/cb.log"
    tgz cb_runs.tgz "$(basename "$run")"
    ;;
  time_to_loss)
    tokens=${TOKENS:-16000000}
    python benchmarks/time_to_loss.py prepare /tmp/ttl_corpus --max_chars 40000000 2>&1 | tail -n 1 | tee -a "$OUT/ttl.log"
    common="--dataset_name /tmp/ttl_corpus --tokenizer_name /tmp/ttl_corpus/tokenizer --hidden_size 96 --num_hidden_layers 2 --num_attention_heads 4 --block_size 128 --per_device_train_batch_size 64 --learning_rate 3e-3 --warmup_steps 0.05 --bf16 --logging_steps 20 --no_report --cache_dir /tmp/cache"
    # the same token budget in every arm: 32768 tokens per step at batch 256, 8192 at batch 64
    fixed="--gradient_accumulation_steps 4 --max_steps $((tokens / 32768)) --eval_steps $((tokens / 32768 / 20)) --batch_size_policy steps:0:256"
    linear="--gradient_accumulation_steps 1 --max_steps $((tokens / 8192)) --eval_steps $((tokens / 8192 / 40)) --batch_size_policy linear:64:256"
    gns="--gradient_accumulation_steps 1 --max_steps $((tokens / 8192)) --eval_steps $((tokens / 8192 / 40)) --batch_size_policy gns:min=64,max=256"
    small="--gradient_accumulation_steps 1 --max_steps $((tokens / 8192)) --eval_steps $((tokens / 8192 / 40)) --batch_size_policy steps:0:64"
    for seed in ${SEEDS:-1}; do
      for arm in ${ARMS:-fixed linear gns small}; do
        cmd="python $SRC/examples/train_lm.py $common ${!arm} --seed $seed --output_dir /tmp/runs/ttl_${arm}_$seed $*"
        run_logged "$OUT/ttl.log" "${RUN_TIMEOUT:-150}" "$cmd"
      done
      python benchmarks/time_to_loss.py report /tmp/runs/ttl_fixed_$seed /tmp/runs/ttl_linear_$seed /tmp/runs/ttl_gns_$seed \
        /tmp/runs/ttl_small_$seed --json "$OUT/ttl_$seed.json" | tee -a "$OUT/ttl.log"
    done
    tgz ttl_runs.tgz $(cd /tmp/runs && ls -d ttl_*)
    ;;
  multi)
    nvidia-smi -L | tee "$OUT/multi.log"
    launch="accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16"
    cmd="$launch $SRC/examples/train_lm.py --bf16 --batch_size_policy linear:16:64 --max_steps 300 --eval_steps 100 --output_dir /tmp/runs/multi_trainer --cache_dir /tmp/cache"
    echo "\$ $cmd" | tee -a "$OUT/multi.log"
    timeout 300 $cmd 2>&1 | grep -v -i -E "warn|it/s\]|s/it\]|examples/s\]" | tail -n 22 | tee -a "$OUT/multi.log" || true
    cmd="$launch $SRC/examples/accelerate_loop.py --mixed_precision bf16 --batch_size_policy gns:k=8,min_steps=20,max=128 --max_tokens 600000 --output_dir /tmp/runs/multi_loop --cache_dir /tmp/cache"
    echo "\$ $cmd" | tee -a "$OUT/multi.log"
    timeout 200 $cmd 2>&1 | grep -v -i -E "warn|examples/s\]" | tail -n 12 | tee -a "$OUT/multi.log" || true
    python - <<'PY' | tee -a "$OUT/multi.log"
import json
hist = [json.loads(l) for l in open("/tmp/runs/multi_trainer/gns_history.jsonl")]
print("trainer run, every 25th step (step, global batch, B_simple EMA, tokens):")
print([(h["step"], h.get("gns/batch_size"), round(h.get("gns/b_simple", float("nan")), 2), h.get("gns/tokens")) for h in hist if h["step"] % 25 == 0])
PY
    tgz multi_runs.tgz multi_trainer multi_loop
    ;;
  *)
    echo "unknown job '$job' ($jobs)" >&2
    exit 2
    ;;
esac
