"""Compiled micro-batch (fwd+bwd) host cost, unpatched vs patched: wall per micro-batch over long
unsynchronized runs (alternating), and the profiler's CPU self time per event, diffed."""
import copy, sys, time, statistics, os
import torch
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, "benchmarks")
import hf_gns
from bench_trainer import build_model
name = sys.argv[1] if len(sys.argv) > 1 else "gpt2"
mb = int(sys.argv[2]) if len(sys.argv) > 2 else 2
layers = int(sys.argv[3]) if len(sys.argv) > 3 else 0
torch.manual_seed(0)
base = build_model(name, False)
if layers:
    base.model.layers = base.model.layers[:layers]
base = base.cuda()
ids = torch.randint(0, 30000, (mb, 1024), device="cuda")
fns = {}
def micro(fn):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fn(input_ids=ids, labels=ids).loss
    loss.backward()
for variant in ("plain", "gns"):
    model = copy.deepcopy(base)
    if variant == "gns":
        hf_gns.patch_model(model)
    fns[variant] = (model, torch.compile(model))
    for _ in range(4):
        micro(fns[variant][1])
    torch.cuda.synchronize()
N = 40
walls = {v: [] for v in fns}
for rnd in range(6):
    for variant in (("plain", "gns") if rnd % 2 == 0 else ("gns", "plain")):
        model, fn = fns[variant]
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(N):
            micro(fn)
        torch.cuda.synchronize(); walls[variant].append(1e3 * (time.perf_counter() - t0) / N)
        model.zero_grad(set_to_none=False)
        if variant == "gns":
            hf_gns.reset_stats(model)
for v, w in walls.items():
    print(f"{name} mb{mb} layers={layers or 'all'} {v}: ms/micro-batch " + " ".join(f"{x:.2f}" for x in w) + f"  median {statistics.median(w):.2f}")
ratios = [g / p for p, g in zip(walls["plain"], walls["gns"])]
print("ratio per round: " + " ".join(f"{r:.3f}" for r in ratios) + f"  median {statistics.median(ratios):.3f}")
# host time per event, per micro-batch
M = 10
tables = {}
for variant, (model, fn) in fns.items():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(M):
            micro(fn)
        torch.cuda.synchronize()
    tables[variant] = {e.key: (e.self_cpu_time_total / M, e.count / M) for e in prof.key_averages()}
keys = set(tables["plain"]) | set(tables["gns"])
rows = []
for k in keys:
    p, pc = tables["plain"].get(k, (0.0, 0.0)); g, gc = tables["gns"].get(k, (0.0, 0.0))
    rows.append((g - p, k, p, g, pc, gc))
rows.sort(reverse=True)
tot_p = sum(v[0] for v in tables["plain"].values()); tot_g = sum(v[0] for v in tables["gns"].values())
print(f"\nprofiled CPU self time per micro-batch: plain {tot_p/1e3:.2f} ms, gns {tot_g/1e3:.2f} ms")
print(f"{'diff us':>9} {'plain us':>9} {'gns us':>9} {'n plain':>8} {'n gns':>8}  event")
for d, k, p, g, pc, gc in rows[:40]:
    print(f"{d:9.1f} {p:9.1f} {g:9.1f} {pc:8.1f} {gc:8.1f}  {k[:100]}")
print("...")
for d, k, p, g, pc, gc in rows[-8:]:
    print(f"{d:9.1f} {p:9.1f} {g:9.1f} {pc:8.1f} {gc:8.1f}  {k[:100]}")
