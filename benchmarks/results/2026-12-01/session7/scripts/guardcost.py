"""CPU: dynamo cache-lookup (guard) time per forward of a compiled tiny 12-layer GPT-2 / Llama, plain vs patched."""
import sys, copy, torch, statistics
import hf_gns
from torch.profiler import profile, ProfilerActivity
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
torch.manual_seed(0); torch.set_num_threads(1)
kind = sys.argv[1] if len(sys.argv) > 1 else "gpt2"
if kind == "gpt2":
    base = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=12, n_head=2, vocab_size=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=0))
else:
    base = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=12, num_attention_heads=2, num_key_value_heads=1, vocab_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0))
ids = torch.randint(0, 64, (2, 4))
for variant in ("plain", "gns"):
    m = copy.deepcopy(base)
    if variant == "gns":
        hf_gns.patch_model(m, kernel="triton")
    f = torch.compile(m, backend="aot_eager")
    for _ in range(2):
        f(input_ids=ids, labels=ids).loss.backward()
    looks = []
    for _ in range(3):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                f(input_ids=ids, labels=ids).loss.backward()
        looks.append(sum(e.self_cpu_time_total for e in prof.key_averages() if "Cache Lookup" in e.key) / 10)
    print(f"{kind} {variant}: guard time per forward {min(looks)/1e3:.3f} ms")
