#!/bin/bash
# One queue of GPU work spread over calls of the device made back to back (the warm machine keeps
# /tmp between them): bash benchmarks/gpu_queue.sh NAME, once per call; each call resumes the queue
# where the last one stopped and packs everything under /tmp/NAME into $OUT/NAME.tgz (the device
# returns at most 8 files). BUDGET: seconds this call may use (default 575).
# Before the first call, here: `mkdir -p .old && git archive 93b4219 hf_gns | tar -x -C .old` (hf_gns
# with one tap per norm, ignored by git: `echo /.old/ >> .git/info/exclude`), and carry .old and .whl.
#   1. the interleaved compiled GPT-2 step at micro-batch 2, hf_gns with one tap per norm (.old), then
#      this checkout's (one flat tap per model), back to back on one host: the side-by-side figure
#      the prototype's 1.061 (session 13, another host) is not;
#   2. tests/test_compile.py on CUDA (the compiled Trainer, the moved-after-patching, fullgraph and
#      compiled-first-after-copy tests) and the statistics under every torch.compile mode;
#   3. the interleaved compiled Llama 360M step at micro-batch 8;
#   4. the norm kernels at D = 8192, 16384 against torch / torch.compile / Liger.
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

for src in old new; do
  if ! done_ "il_$src" && [ "$(left)" -gt 150 ]; then
    dir=$PWD; [ "$src" = old ] && dir=$PWD/.old
    ( OUT=$W/il_gpt2_$src SRC=$dir timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh interleaved --model gpt2 \
      --micro_batch 2 --pairs 100 > "$W/il_gpt2_$src.log" 2>&1 )
    touch "/tmp/done_il_$src"; stamp "il_gpt2_$src"; pack
  fi
done
if ! done_ test && [ "$(left)" -gt 200 ]; then
  HF_GNS_TEST_DEVICE=cuda timeout $(( $(left) - 60 )) python -m pytest -q -p no:cacheprovider -o addopts= \
    tests/test_compile.py -k "trainer_torch_compile or moved_after_patching or fullgraph or compiled_first" > "$W/test.log" 2>&1
  ( OUT=$W/modes timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh modes > "$W/modes.log" 2>&1 )
  touch /tmp/done_test; stamp test; pack
fi
if ! done_ il_llama && [ "$(left)" -gt 150 ]; then
  ( OUT=$W/il_llama timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model llama360m --micro_batch 8 \
    --pairs 24 --warmup 3 > "$W/il_llama.log" 2>&1 )
  touch /tmp/done_il_llama; stamp il_llama; pack
fi
if ! done_ kernels && [ "$(left)" -gt 120 ]; then
  ( OUT=$W/kernels timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh kernels --dims 8192,16384 > "$W/kernels.log" 2>&1 )
  touch /tmp/done_kernels; stamp kernels; pack
fi
stamp end; pack
