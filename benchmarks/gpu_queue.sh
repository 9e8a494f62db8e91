#!/bin/bash
# One queue of GPU work spread over calls of the device made back to back (the warm machine keeps
# /tmp between them): bash benchmarks/gpu_queue.sh NAME, once per call; each call resumes the queue
# where the last one stopped and packs everything under /tmp/NAME into $OUT/NAME.tgz (the device
# returns at most 8 files). BUDGET: seconds this call may use (default 575).
#   1. time-to-loss seed SEED (default 2) of ARMS (default: the five arms and fixed512_nogns, whose
#      time against fixed512's, an arm without the whole-model diagnostic, is the cost of hf_gns over
#      whole runs), all at once; fixed128 keeps checkpoints every 400 steps and measures the whole
#      model every FULL_EVERY (100) steps;
#   2. tests/test_compile.py on CUDA (the compiled Trainer and the moved-after-patching tests);
#   3. the critical batch from fixed128's checkpoints at CKPTS (400 1200 2400), batches CB_BATCHES
#      (64,...,2048), CB_TOKENS (24M: 23 steps at 2048) tokens per branch, the LR scaled by the square-root
#      rule (LR_SCALING=sqrt; session 12 held it constant up to 512) (about 480 s: a call of its own);
#   4. the interleaved step: Llama 360M at micro-batch 8 compiled, then eager.
# Each item runs only when the time left can hold it; finished items are marked in /tmp/done_*.
CALL=${1:?usage: bash benchmarks/gpu_queue.sh NAME}
export PYTHONUNBUFFERED=1
SEED=${SEED:-2}
T0=$SECONDS; B=${BUDGET:-575}; left() { echo $(( B - (SECONDS - T0) )); }
W=/tmp/$CALL; mkdir -p "$W"
stamp() { echo "$1 at $((SECONDS-T0)) s ($(date +%H:%M:%S))" | tee -a "$W/time.txt"; }
pack() {
  tar czf "$OUT/$CALL.tgz" -C /tmp "$CALL"; cp "$W/time.txt" "$OUT/time_$CALL.txt" 2>/dev/null; true
}
done_() { [ -f "/tmp/done_$1" ]; }
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 15 > "$W/gpu_util.csv" 2>&1 &
stamp start; [ -d /tmp/ttl_corpus ] && echo "warm machine: $(ls /tmp/runs 2>&1 | tr '\n' ' ')" >> "$W/time.txt"

if ! done_ ttl; then
  ( OUT=$W/ttl SEED=$SEED ARMS="${ARMS:-fixed32 fixed128 fixed512 linear gns fixed512_nogns}" CONCURRENT=1 \
    CB_ARM=fixed128 SAVE_STEPS=400 FULL_EVERY=${FULL_EVERY:-100} RUN_TIMEOUT=$(( $(left) - 45 )) \
    timeout $(( $(left) - 15 )) bash benchmarks/gpu.sh time_to_loss_large --print_every 1 > "$W/ttl.log" 2>&1 )
  [ -f "$W/ttl/ttl_frontier_$SEED.json" ] && touch /tmp/done_ttl; stamp ttl; pack
fi
if done_ ttl && ! done_ test && [ "$(left)" -gt 150 ]; then
  HF_GNS_TEST_DEVICE=cuda timeout $(( $(left) - 10 )) python -m pytest -q -p no:cacheprovider -o addopts= \
    tests/test_compile.py -k "trainer_torch_compile or moved_after_patching" > "$W/test.log" 2>&1
  touch /tmp/done_test; stamp test; pack
fi
if done_ ttl && ! done_ cb && [ "$(left)" -gt 500 ]; then
  ( OUT=$W/cb SEED=$SEED ARM=fixed128 RUN=/tmp/runs/ttl_fixed128_$SEED CKPTS="${CKPTS:-400 1200 2400}" \
    BATCHES=${CB_BATCHES:-64,128,256,512,1024,2048} BRANCH_TOKENS=${CB_TOKENS:-24000000} LR_SCALING=${LR_SCALING:-sqrt} \
    timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh critical_batch > "$W/cb.log" 2>&1 )
  [ -f "$W/cb/cb_report.json" ] && touch /tmp/done_cb; stamp cb; pack
fi
for mode in compiled eager; do
  if done_ ttl && ! done_ "il_$mode" && [ "$(left)" -gt 150 ]; then
    flag=""; [ "$mode" = eager ] && flag="--eager"
    ( OUT=$W/il_$mode timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model llama360m --micro_batch 8 \
      --pairs 24 --warmup 3 $flag > "$W/il_$mode.log" 2>&1 )
    touch "/tmp/done_il_$mode"; stamp "il_$mode"; pack
  fi
done
stamp end; pack
