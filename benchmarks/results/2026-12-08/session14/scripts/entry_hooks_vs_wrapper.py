"""Run at commit 6eedaff (hf_gns with PassEntry hooks), from the repository root: python THIS [noalways].
One process: unpatched, hf_gns with hook entries (this checkout), hf_gns with the old forward-wrapper entries; ABBA-rotated, medians of host time per compiled step (4 micro-batches)."""
import sys, time, torch, statistics, functools
torch.set_num_threads(1)
import hf_gns
from hf_gns import patch as P
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
ALWAYS = "noalways" not in sys.argv
# the forward wrapper of hf_gns/patch.py as at b63990f (6eedaff had replaced it by hooks), rebuilt here to time both
class EntryForward:
    def __init__(self, module, counter):
        self.module, self.counter = module, counter
        self._inner = None
    @property
    def inner(self):
        if self._inner is not None:
            return self._inner
        return functools.partial(type(self.module).forward, self.module)
    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            self.counter.enter(self.module, args, kwargs)
            output = self.inner(*args, **kwargs)
            self.counter.exit()
            return output
        self.counter.enter(self.module, args, kwargs)
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.counter.exit()
def to_wrapper(model):
    for module in model.modules():
        entry = module.__dict__.get(P._ENTRY)
        if entry is None: continue
        entry.remove(module)
        if not ALWAYS: pass
        module.__dict__["forward"] = EntryForward(module, entry.counter)
def mk():
    m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=12, n_head=2, vocab_size=128, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)); m.config.use_cache=False; return m
b = mk(); g = mk(); w = mk(); g.load_state_dict(b.state_dict()); w.load_state_dict(b.state_dict())
hf_gns.patch_model(g, kernel="torch"); hf_gns.patch_model(w, kernel="torch"); to_wrapper(w)
if not ALWAYS:  # the hooks without always_call
    for module in g.modules():
        entry = module.__dict__.get(P._ENTRY)
        if entry is None: continue
        entry.remove(module)
        pre = module.register_forward_pre_hook(entry.enter, prepend=True, with_kwargs=True)
        post = module.register_forward_hook(entry.exit)
        entry.hook_ids = (pre.id, post.id)
models = {"base": b, "hooks": g, "wrapper": w}
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
        assert s.total.num_examples == 8, (k, s.total)
for k in models:
    for _ in range(3): step(k, False)
keys = list(models)
for i in range(90):
    order = keys[i % 3:] + keys[:i % 3]
    for k in (order if i % 2 else order[::-1]): step(k)
mb = statistics.median(T["base"])
print({k: round(statistics.median(v) - mb, 3) for k, v in T.items()}, "ms over unpatched", round(mb, 3))
