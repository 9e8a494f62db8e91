"""Does the compiled (aot_eager) MoE family fail without hf_gns too? torch/transformers of this machine."""
import sys, traceback
sys.path.insert(0, "tests")
import torch, transformers
from helpers import make_model, make_batch, per_example_losses, clone, example_grads_bruteforce, norm_param_names, oracle_stats, assert_stats_match
import hf_gns
print("torch", torch.__version__, "transformers", transformers.__version__, flush=True)
for name in sys.argv[1:]:
    for patched in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = make_model(name)
        ref = clone(model)
        if patched:
            hf_gns.patch_model(model, kernel="torch")
        batch = make_batch(name, model, 2, 4)
        n = batch["targets"].numel()
        try:
            (per_example_losses(torch.compile(model, backend="aot_eager"), batch).sum() / n).backward()
            if patched:
                oracle = oracle_stats(example_grads_bruteforce(ref, batch, norm_param_names(ref), n))
                assert_stats_match(hf_gns.gather_stats(model), oracle, rtol=1e-4, what=name)
            print(name, "patched" if patched else "unpatched", "OK", flush=True)
        except Exception as error:
            print(name, "patched" if patched else "unpatched", "FAILED", type(error).__name__, str(error)[:1500], flush=True)
            traceback.print_exc(limit=-6)
