#!/usr/bin/env bash
# issue 9: GPT-2 124M Trainer step, 3 interleaved rounds, eager and compiled, micro-batch 8 then 2
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/env.txt
python -c "import torch, triton, transformers, accelerate; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a $OUT/env.txt
s=$(date +%s)
timeout 330 python benchmarks/bench_trainer.py --models gpt2 --micro_batch 8 --rounds 3 --variants eager,eager_gns,compiled,compiled_gns --timeout 200 --out $OUT/trainer_gpt2_mb8.json 2>&1 | grep -v -i warn | tail -n 30 | tee $OUT/trainer_gpt2_mb8.log
echo "segment 1: $(( $(date +%s) - s )) s"
timeout $(( 560 - ($(date +%s) - s) )) python benchmarks/bench_trainer.py --models gpt2 --micro_batch 2 --rounds 3 --variants compiled,compiled_gns,eager,eager_gns --timeout 150 --out $OUT/trainer_gpt2_mb2.json 2>&1 | grep -v -i warn | tail -n 30 | tee $OUT/trainer_gpt2_mb2.log
echo "total: $(( $(date +%s) - s )) s"
