import sys, copy, torch, logging
import torch._dynamo.guards as G
real = G.profile_guard_manager
lat = []
def prof(root, scope, n):
    real(root, scope, 50)
    v = min(real(root, scope, 200) for _ in range(5))
    lat.append(v); return v
G.profile_guard_manager = prof
import hf_gns
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
kind = sys.argv[2] if len(sys.argv) > 2 else "gpt2"
if kind == "gpt2":
    base = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=12, n_head=2, vocab_size=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=0))
else:
    base = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=12, num_attention_heads=2, num_key_value_heads=1, vocab_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0))
ids = torch.randint(0, 64, (2, 4))
variant = sys.argv[1]
m = copy.deepcopy(base)
if variant == "gns": hf_gns.patch_model(m, kernel="triton")
f = torch.compile(m, backend="aot_eager")
for _ in range(2):
    f(input_ids=ids, labels=ids).loss.backward()
print(kind, variant, "guard latency per frame (us):", [round(x, 1) for x in lat], "sum", round(sum(lat), 1))
