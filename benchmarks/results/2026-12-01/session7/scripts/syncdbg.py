"""Compiled GPT-2 micro-batch: host time of forward / backward, plain vs gns; host syncs of the gns step."""
import copy, sys, time, statistics, os, warnings
import torch
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, "benchmarks")
import hf_gns
from bench_trainer import build_model
mb = int(sys.argv[1]) if len(sys.argv) > 1 else 2
name = sys.argv[2] if len(sys.argv) > 2 else "gpt2"
torch.manual_seed(0)
base = build_model(name, False).cuda()
ids = torch.randint(0, 30000, (mb, 1024), device="cuda")
fns = {}
for variant in ("plain", "gns"):
    model = copy.deepcopy(base)
    if variant == "gns":
        hf_gns.patch_model(model)
    fns[variant] = torch.compile(model)
    for _ in range(4):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fns[variant](input_ids=ids, labels=ids).loss
        loss.backward()
    torch.cuda.synchronize()
for rnd in range(2):
    for variant, fn in fns.items():
        fw, bw, wall = [], [], []
        for _ in range(10):
            torch.cuda.synchronize(); t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(input_ids=ids, labels=ids).loss
            t1 = time.perf_counter(); loss.backward(); t2 = time.perf_counter(); torch.cuda.synchronize(); t3 = time.perf_counter()
            fw.append(t1 - t0); bw.append(t2 - t1); wall.append(t3 - t0)
        m = lambda v: 1e3 * statistics.median(v)
        print(f"round {rnd} {name} mb{mb} {variant}: host fwd {m(fw):.2f} ms, host bwd {m(bw):.2f} ms, wall {m(wall):.2f} ms", flush=True)
fn = fns["gns"]
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fn(input_ids=ids, labels=ids).loss
    loss.backward()
torch.cuda.set_sync_debug_mode(0)
print(f"sync debug: {len(caught)} warnings")
for w in caught[:10]:
    print("  ", str(w.message)[:300], w.filename, w.lineno)
for variant, fn in fns.items():
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=False) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(input_ids=ids, labels=ids).loss
        loss.backward(); torch.cuda.synchronize()
    ka = prof.key_averages()
    print(f"== {variant}: sync / memcpy / python-side events")
    for e in ka:
        if any(s in e.key for s in ("Synchronize", "Memcpy", "memcpy", "item", "_local_scalar", "is_nonzero", "Cache Lookup", "CompiledFxGraph", "Compiled Region", "CompiledFunction")):
            print(f"   {e.self_cpu_time_total/1e3:8.3f} ms cpu self, {e.cpu_time_total/1e3:8.3f} ms cpu total, n={e.count:4d}  {e.key[:110]}")
    prof.export_chrome_trace(os.path.join(os.environ.get("OUT", "/tmp"), f"trace_{name}_mb{mb}_{variant}.json"))
