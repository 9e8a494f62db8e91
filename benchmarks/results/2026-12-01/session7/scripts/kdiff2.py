"""Compiled fwd+bwd of one micro-batch, plain vs gns: per-name CUDA time and count differences."""
import copy, sys, time, statistics
import torch
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, "benchmarks")
import hf_gns
from bench_trainer import build_model
name, mb, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
base = build_model(name, False).cuda()
if layers and name.startswith("llama"):
    base.model.layers = base.model.layers[:layers]
    base.config.num_hidden_layers = layers
ids = torch.randint(0, 30000, (mb, 1024), device="cuda")
def step(fn):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fn(input_ids=ids, labels=ids).loss
    loss.backward()
stats = {}
for variant in ("plain", "gns"):
    torch._dynamo.reset()
    model = copy.deepcopy(base)
    if variant == "gns":
        hf_gns.patch_model(model)
    fn = torch.compile(model)
    for _ in range(4):
        step(fn)
    torch.cuda.synchronize()
    ws = []
    for _ in range(10):
        torch.cuda.synchronize(); a = time.perf_counter(); step(fn); torch.cuda.synchronize(); ws.append(time.perf_counter() - a)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(fn); torch.cuda.synchronize()
    per = {}
    for e in prof.key_averages():
        if e.self_device_time_total > 0:
            per[e.key] = (e.count, e.self_device_time_total)
    stats[variant] = per
    total = sum(t for _, t in per.values())
    print(f"== {name} ({layers or 'all'} layers) mb{mb} {variant}: wall {1e3*statistics.median(ws):.2f} ms, "
          f"CUDA kernels {sum(c for c, _ in per.values())}, GPU time {total/1e3:.2f} ms", flush=True)
keys = set(stats["plain"]) | set(stats["gns"])
rows = []
for k in keys:
    (cp, tp), (cg, tg) = stats["plain"].get(k, (0, 0.0)), stats["gns"].get(k, (0, 0.0))
    rows.append((tg - tp, cg - cp, cp, cg, tp, tg, k))
rows.sort(key=lambda r: -abs(r[0]))
print("d_time_us  d_count  (plain n/us -> gns n/us)  kernel")
for d, dc, cp, cg, tp, tg, k in rows[:30]:
    print(f"{d:9.0f} {dc:+6d}  ({cp}/{tp:.0f} -> {cg}/{tg:.0f})  {k[:110]}")
