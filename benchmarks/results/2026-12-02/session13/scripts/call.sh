#!/bin/bash
# session 13, every call: bash call.sh NAME (BUDGET seconds, default 575). Works down one queue on the
# warm machine (which keeps /tmp between calls made back to back), skipping what an earlier call finished:
#   0. (first call, beside the run's corpus building, which leaves the GPU idle) tests/test_compile.py on CUDA;
#   1. seed 2 of the Chinchilla-sized time-to-loss run, six arms at once (the five of seed 1 and
#      fixed512_nogns: the cost of hf_gns over whole runs); fixed128 keeps checkpoints every 400 steps
#      and measures the whole model every 200 steps (seed 1: 100; each measurement costs ~9 s);
#   2. the critical batch from fixed128's checkpoints 400/1200/2400, batches 128..2048, 16M tokens per
#      branch, LR by the square-root rule;
#   3. the interleaved compiled GPT-2 step at micro-batch 2 with the one-tap-per-model prototype
#      (SRC=.tapbank: main's hf_gns with session12/tap_bank_prototype.patch applied), against 1.107 on main;
#   4. the interleaved Llama 360M at micro-batch 8, eager.
CALL=${1:?name}
export PYTHONUNBUFFERED=1
T0=$SECONDS; B=${BUDGET:-575}; left() { echo $(( B - (SECONDS - T0) )); }
W=/tmp/$CALL; mkdir -p $W
stamp() { echo "$1 at $((SECONDS-T0)) s ($(date +%H:%M:%S))" | tee -a $W/time.txt; }
pack() { tar czf $OUT/$CALL.tgz -C /tmp $CALL; cp $W/time.txt $OUT/time_$CALL.txt 2>/dev/null; true; }
done_() { [ -f /tmp/done_$1 ]; }
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 15 > $W/gpu_util.csv 2>&1 &
stamp start; [ -d /tmp/ttl_corpus ] && echo "warm machine: $(ls /tmp/runs 2>&1 | tr '\n' ' ')" >> $W/time.txt

if ! done_ test; then
  ( sleep 20; HF_GNS_TEST_DEVICE=cuda timeout 240 python -m pytest -q -p no:cacheprovider -o addopts= \
      tests/test_compile.py -k "trainer_torch_compile or moved_after_patching or fullgraph" > $W/test.log 2>&1
    touch /tmp/done_test; stamp test ) &
  TESTS=$!
fi
if ! done_ ttl; then
  ( OUT=$W/ttl SEED=2 ARMS="fixed32 fixed128 fixed512 linear gns fixed512_nogns" CONCURRENT=1 CB_ARM=fixed128 \
    SAVE_STEPS=400 FULL_EVERY=200 RUN_TIMEOUT=$(( $(left) - 45 )) \
    timeout $(( $(left) - 15 )) bash benchmarks/gpu.sh time_to_loss_large --print_every 1 > $W/ttl.log 2>&1 )
  [ -f $W/ttl/ttl_frontier_2.json ] && touch /tmp/done_ttl; stamp ttl; pack
fi
[ -n "${TESTS:-}" ] && wait $TESTS
if done_ ttl && ! done_ cb && [ $(left) -gt 360 ]; then
  ( OUT=$W/cb SEED=2 ARM=fixed128 RUN=/tmp/runs/ttl_fixed128_2 CKPTS="400 1200 2400" BATCHES=128,256,512,1024,2048 \
    BRANCH_TOKENS=16000000 LR_SCALING=sqrt timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh critical_batch > $W/cb.log 2>&1 )
  [ -f $W/cb/cb_report.json ] && touch /tmp/done_cb; stamp cb; pack
fi
if done_ ttl && ! done_ il_tap && [ $(left) -gt 140 ]; then
  ( OUT=$W/il_tap SRC=$PWD/.tapbank timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh interleaved --model gpt2 --micro_batch 2 --pairs 100 > $W/il_tap.log 2>&1 )
  touch /tmp/done_il_tap; stamp il_tap; pack
fi
if done_ ttl && ! done_ il_eager && [ $(left) -gt 120 ]; then
  ( OUT=$W/il_eager timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model llama360m --micro_batch 8 --pairs 20 --warmup 2 --eager > $W/il_eager.log 2>&1 )
  touch /tmp/done_il_eager; stamp il_eager; pack
fi
stamp end; pack
