"""From the repository root: python THIS [ignore] (ignore: dynamo ignores transformers' logger.warning_once, so GPT-2's loss has no graph break).
One process: unpatched, hf_gns (entries on the model and the holder), hf_gns with the model's own entry removed (the pass starts at the holder); rotated, medians of host time per compiled step (4 micro-batches)."""
import time, torch, statistics
torch.set_num_threads(1)
import hf_gns, sys
import transformers.modeling_utils as MU
if "ignore" in sys.argv:
    torch._dynamo.config.ignore_logging_functions.add(MU.logger.warning_once)
from hf_gns import patch as P
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
def mk():
    m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=12, n_head=2, vocab_size=128, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)); m.config.use_cache=False; return m
b = mk(); g = mk(); h = mk(); g.load_state_dict(b.state_dict()); h.load_state_dict(b.state_dict())
hf_gns.patch_model(g, kernel="torch"); hf_gns.patch_model(h, kernel="torch"); P._remove_entry(h)
print("entries:", [n for n, m in h.named_modules() if P._ENTRY in m.__dict__])
models = {"base": b, "gns": g, "holder_only": h}
comp = {k: torch.compile(m) for k, m in models.items()}
ids = torch.randint(128, (2, 8))
T = {k: [] for k in models}
def step(k, rec=True):
    t0 = time.thread_time()
    for _ in range(4):
        comp[k](input_ids=ids, labels=ids).loss.backward()
    if rec: T[k].append((time.thread_time() - t0) * 1e3)
    models[k].zero_grad(set_to_none=True)
    if k != "base":
        s = hf_gns.gather_stats(models[k])
        assert s.total.num_examples == 8 and s.tokens == 64, (k, s.total, s.tokens)
for k in models:
    for _ in range(3): step(k, False)
keys = list(models)
for i in range(90):
    order = keys[i % 3:] + keys[:i % 3]
    for k in (order if i % 2 else order[::-1]): step(k)
mb = statistics.median(T["base"])
print({k: round(statistics.median(v) - mb, 3) for k, v in T.items()}, "ms over unpatched", round(mb, 3))
