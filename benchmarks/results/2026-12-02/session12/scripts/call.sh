#!/bin/bash
# session 12, every call: bash call.sh NAME. Works down one queue on the warm machine (which keeps
# /tmp between calls made back to back), skipping what an earlier call finished:
#   1. seed 1 of the Chinchilla-sized time-to-loss run, all five arms at once (resumes cut arms;
#      fixed128 keeps its checkpoints every 400 steps and measures the whole model every 100 steps);
#   2. the critical batch, branched from fixed128's checkpoints at steps 400, 1200 and 2400;
#   3. the GPU check of the .to() fix (tests/test_compile.py on CUDA);
#   4. the interleaved compiled step, GPT-2 at micro-batch 2, then Llama 360M at micro-batch 8;
#   5. the interleaved eager step of Llama 360M at micro-batch 8.
# Everything under /tmp/NAME goes back as one archive (the device returns at most 8 files).
CALL=${1:?name}
export PYTHONUNBUFFERED=1
T0=$SECONDS; B=${BUDGET:-575}; left() { echo $(( B - (SECONDS - T0) )); }
W=/tmp/$CALL; mkdir -p $W
stamp() { echo "$1 at $((SECONDS-T0)) s ($(date +%H:%M:%S))" | tee -a $W/time.txt; }
pack() {
  [ -d /tmp/runs ] && (cd /tmp/runs && tar czf $W/runs.tgz --exclude='checkpoint-*' --exclude='*.safetensors' \
    --exclude='*.bin' --exclude='tokenizer*' $(ls /tmp/runs | grep -v ttl_tokenize) 2>/dev/null)
  tar czf $OUT/$CALL.tgz -C /tmp $CALL; cp $W/time.txt $OUT/time_$CALL.txt 2>/dev/null; true
}
done_() { [ -f /tmp/done_$1 ]; }
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 15 > $W/gpu_util.csv 2>&1 &
stamp start; [ -d /tmp/ttl_corpus ] && echo "warm machine: $(ls /tmp/runs 2>&1 | tr '\n' ' ')" >> $W/time.txt

if ! done_ ttl; then
  ( OUT=$W/ttl SEED=1 CONCURRENT=1 CB_ARM=fixed128 SAVE_STEPS=400 FULL_EVERY=100 RUN_TIMEOUT=$(( $(left) - 45 )) \
    timeout $(( $(left) - 15 )) bash benchmarks/gpu.sh time_to_loss_large --print_every 1 > $W/ttl.log 2>&1 )
  [ -f $W/ttl/ttl_frontier_1.json ] && touch /tmp/done_ttl; stamp ttl; pack
fi
if done_ ttl && ! done_ cb && [ $(left) -gt 300 ]; then
  ( OUT=$W/cb SEED=1 ARM=fixed128 RUN=/tmp/runs/ttl_fixed128_1 CKPTS="400 1200 2400" BATCHES=32,64,128,256,512 \
    BRANCH_TOKENS=8000000 timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh critical_batch > $W/cb.log 2>&1 )
  [ -f $W/cb/cb_report.json ] && touch /tmp/done_cb; stamp cb; pack
fi
if done_ ttl && ! done_ test && [ $(left) -gt 100 ]; then
  ( pip list 2>/dev/null | grep -i -E "^pytest" > $W/test.log
    HF_GNS_TEST_DEVICE=cuda timeout $(( $(left) - 10 )) python -m pytest -q -p no:cacheprovider -o addopts= -x \
      tests/test_compile.py -k "trainer_torch_compile or moved_after_patching or fullgraph" >> $W/test.log 2>&1 )
  touch /tmp/done_test; stamp test; pack
fi
if done_ ttl && ! done_ il_gpt2 && [ $(left) -gt 150 ]; then
  ( OUT=$W/il_gpt2 timeout $(( $(left) - 10 )) bash benchmarks/gpu.sh interleaved --model gpt2 --micro_batch 2 --pairs 100 > $W/il_gpt2.log 2>&1 )
  touch /tmp/done_il_gpt2; stamp il_gpt2; pack
fi
if done_ ttl && ! done_ il_llama && [ $(left) -gt 120 ]; then
  ( OUT=$W/il_llama timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model llama360m --micro_batch 8 --pairs 24 --warmup 3 > $W/il_llama.log 2>&1 )
  touch /tmp/done_il_llama; stamp il_llama; pack
fi
if done_ ttl && ! done_ il_llama_eager && [ $(left) -gt 100 ]; then
  ( OUT=$W/il_llama_eager timeout $(( $(left) - 8 )) bash benchmarks/gpu.sh interleaved --model llama360m --micro_batch 8 --pairs 20 --warmup 2 --eager > $W/il_llama_eager.log 2>&1 )
  touch /tmp/done_il_llama_eager; stamp il_llama_eager; pack
fi
stamp end; pack
