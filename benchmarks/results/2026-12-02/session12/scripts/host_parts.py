"""Host (CPU) time per optimizer step of a compiled 12-layer GPT-2 (hidden 32, micro-batches of 2 x 8 tokens, 4 per step),
unpatched vs hf_gns, split into forward, backward, optimizer and the per-step statistics (GNSMeter); ABBA order,
medians of 100 steps each. Run from the repository root: python benchmarks/results/2026-12-02/session12/scripts/host_parts.py"""
import sys, time, torch, statistics
sys.path.insert(0, "benchmarks")
torch.set_num_threads(1)
import hf_gns
from hf_gns.measure import GNSMeter
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
def mk(): 
    m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=12, n_head=2, vocab_size=128, n_positions=64)); m.config.use_cache=False; return m
b = mk(); g = mk(); g.load_state_dict(b.state_dict()); hf_gns.patch_model(g)
models = {"base": b, "gns": g}
comp = {k: torch.compile(m) for k, m in models.items()}
opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
meter = GNSMeter()
batches = [torch.randint(128, (2, 8)) for _ in range(4)]
T = {k: {"fwd": [], "bwd": [], "opt": [], "meter": []} for k in models}
def step(k, i, rec=True):
    m, f, o = models[k], comp[k], opts[k]
    tf = tb = 0.0
    for ids in batches:
        t0 = time.thread_time(); loss = f(input_ids=ids, labels=ids).loss / 4; t1 = time.thread_time(); loss.backward(); t2 = time.thread_time()
        tf += t1 - t0; tb += t2 - t1
    t0 = time.thread_time()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); o.step(); o.zero_grad(set_to_none=True)
    t1 = time.thread_time()
    if k == "gns":
        meter.start(m, i); meter.resolve(i - 1)
    t2 = time.thread_time()
    if rec:
        for n, v in (("fwd", tf), ("bwd", tb), ("opt", t1 - t0), ("meter", t2 - t1)): T[k][n].append(v * 1e3)
for i in range(4):
    for k in models: step(k, i, False)
for i in range(4, 104):
    for k in (("base", "gns") if i % 2 else ("gns", "base")): step(k, i)
for k in models:
    print(k, {n: round(statistics.median(v), 3) for n, v in T[k].items()})
