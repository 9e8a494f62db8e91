#!/bin/bash
# One queue of GPU work spread over calls of the device made back to back (the warm machine keeps
# /tmp between them): bash benchmarks/gpu_queue.sh NAME, once per call; each call resumes the queue
# where the last one stopped and packs everything under /tmp/NAME into $OUT/NAME.tgz (the device
# returns at most 8 files). BUDGET: seconds this call may use (default 575).
# Before the first call, here: `mkdir -p .bank && git archive 0596aae hf_gns | tar -x -C .bank` (hf_gns
# with the pass marked by a wrapper around the entry modules' forward, ignored by git: `echo /.bank/ >>
# .git/info/exclude`), and carry .bank and .whl.
#   1. the interleaved compiled GPT-2 step at micro-batch 2 with this checkout's hf_gns (the pass marked
#      by forward hooks), then with .bank's, back to back on one host: what one frame less at each of
#      transformers' graph breaks saves;
#   2. the same for Llama 360M at micro-batch 8 (no graph break there), if time is left.
# Each item runs only when the time left can hold it; finished items are marked in /tmp/done_*.
CALL=${1:?usage: bash benchmarks/gpu_queue.sh NAME}
export PYTHONUNBUFFERED=1
T0=$SECONDS; B=${BUDGET:-575}; left() { echo $(( B - (SECONDS - T0) )); }
W=/tmp/$CALL; mkdir -p "$W"
stamp() { echo "$1 at $((SECONDS-T0)) s ($(date +%H:%M:%S))" | tee -a "$W/time.txt"; }
pack() {
  tar czf "$OUT/$CALL.tgz" -C /tmp "$CALL"; cp "$W/time.txt" "$OUT/time_$CALL.txt" 2>/dev/null; true
}
done_() { [ -f "/tmp/done_$1" ]; }
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 15 > "$W/gpu_util.csv" 2>&1 &
stamp start

for src in hooks bank; do
  if ! done_ "il_$src" && [ "$(left)" -gt 110 ]; then
    dir=$PWD; [ "$src" = bank ] && dir=$PWD/.bank
    ( OUT=$W/il_gpt2_$src SRC=$dir timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model gpt2 \
      --micro_batch 2 --pairs ${PAIRS:-80} > "$W/il_gpt2_$src.log" 2>&1 )
    touch "/tmp/done_il_$src"; stamp "il_gpt2_$src"; pack
  fi
done
for src in hooks bank; do
  if ! done_ "il_llama_$src" && [ "$(left)" -gt 150 ]; then
    dir=$PWD; [ "$src" = bank ] && dir=$PWD/.bank
    ( OUT=$W/il_llama_$src SRC=$dir timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model llama360m \
      --micro_batch 8 --pairs 16 --warmup 3 > "$W/il_llama_$src.log" 2>&1 )
    touch "/tmp/done_il_llama_$src"; stamp "il_llama_$src"; pack
  fi
done
stamp end; pack
