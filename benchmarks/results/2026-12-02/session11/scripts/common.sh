# shared by the session 11 call scripts: BUDGET seconds from the start, left(), stamp NAME, pack
# (everything under /tmp/$CALL goes back as one archive: the device returns at most 8 files)
export PYTHONUNBUFFERED=1
T0=$SECONDS; B=${BUDGET:-570}; left() { echo $(( B - (SECONDS - T0) )); }
W=/tmp/$CALL; mkdir -p $W
stamp() { echo "$1 done at $((SECONDS-T0)) s" | tee -a $W/time_$CALL.txt; }
pack() {
  # run folders that a killed job did not pack itself (no checkpoints or weights)
  [ -d /tmp/runs ] && (cd /tmp/runs && tar czf $W/runs_$CALL.tgz --exclude='checkpoint-*' --exclude='*.safetensors' --exclude='*.bin' --exclude='tokenizer*' $(ls /tmp/runs | grep -v ttl_tokenize) 2>/dev/null)
  tar czf $OUT/$CALL.tgz -C /tmp $CALL; cp $W/time_$CALL.txt $OUT/ 2>/dev/null; true
}
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 15 > $W/gpu_util.csv 2>&1 &
# which seed-1 arms finished on this machine before (a warm machine keeps /tmp)
finished() { [ -f /tmp/runs/ttl_$1_1/trainer_state.json ]; }
