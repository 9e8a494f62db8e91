#!/bin/bash
# One queue of GPU work spread over calls of the device made back to back (the warm machine keeps
# /tmp between them): bash benchmarks/gpu_queue.sh NAME, once per call; each call resumes the queue
# where the last one stopped and packs everything under /tmp/NAME into $OUT/NAME.tgz (the device
# returns at most 8 files). BUDGET: seconds this call may use (default 575). Carry .whl.
#   1. the statistics under every torch.compile mode vs eager (benchmarks/compile_modes.py; it did not
#      finish in the 200 s it had on 2026-12-08, so it runs first, with the call's whole time);
#   2. tests/test_compile.py on CUDA: the compiled Trainer, moved-after-patching, fullgraph and
#      compiled-first tests (the last one's root check fixed after the H100 run of 2026-12-08).
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

if ! done_ modes && [ "$(left)" -gt 200 ]; then
  ( OUT=$W/modes timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh modes > "$W/modes.log" 2>&1 )
  touch /tmp/done_modes; stamp modes; pack
fi
if ! done_ test && [ "$(left)" -gt 180 ]; then
  HF_GNS_TEST_DEVICE=cuda timeout $(( $(left) - 10 )) python -m pytest -q -p no:cacheprovider -o addopts= \
    tests/test_compile.py -k "trainer_torch_compile or moved_after_patching or fullgraph or compiled_first" > "$W/test.log" 2>&1
  touch /tmp/done_test; stamp test; pack
fi
stamp end; pack
