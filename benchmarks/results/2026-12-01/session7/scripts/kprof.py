"""Per-variant CPU-op and CUDA-kernel time of one compiled GPT-2 micro-batch (plain vs gns)."""
import copy, sys, time, statistics, collections, re
import torch
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, "benchmarks")
import hf_gns
from bench_trainer import build_model
mb = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.manual_seed(0)
base = build_model("gpt2", False).cuda()
ids = torch.randint(0, base.config.vocab_size, (mb, 1024), device="cuda")
def step(fn):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fn(input_ids=ids, labels=ids).loss
    loss.backward()
import os
for name in ("plain", "gns"):
    os.environ["HF_GNS_OPAQUE_OP"] = "1" if name == "gns_opaque" else "0"
    torch._dynamo.reset()
    model = copy.deepcopy(base)
    if name != "plain":
        hf_gns.patch_model(model)
    fn = torch.compile(model)
    for _ in range(4):
        step(fn)
    torch.cuda.synchronize()
    ws = []
    for _ in range(10):
        torch.cuda.synchronize(); a = time.perf_counter(); step(fn); torch.cuda.synchronize(); ws.append(time.perf_counter() - a)
    print(f"== {name}: wall {1e3*statistics.median(ws):.2f} ms", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(fn); torch.cuda.synchronize()
    ka = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in ka)
    cpu_total = sum(e.self_cpu_time_total for e in ka)
    print(f"   self cuda total {cuda_total/1e3:.2f} ms, self cpu total {cpu_total/1e3:.2f} ms")
    print("   top CUDA:")
    for e in sorted(ka, key=lambda e: -e.self_device_time_total)[:14]:
        print(f"     {e.self_device_time_total/1e3:8.3f} ms  n={e.count:4d}  {e.key[:100]}")
    print("   top CPU self:")
    for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:22]:
        print(f"     {e.self_cpu_time_total/1e3:8.3f} ms  n={e.count:4d}  {e.key[:100]}")
    print(torch._dynamo.utils.counters.get("stats"), dict(torch._dynamo.utils.counters.get("recompiles", {})), flush=True)
