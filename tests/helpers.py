"""Shared helpers for the hf_gns test-suite (fixtures are in conftest.py).

* ``ARCHS``: name -> factory of a fresh tiny float32 model built from its config (no Hub),
  in train mode with every dropout off and random norm weights (Gemma-style weights start at
  0, LayerNorm biases at 0: both would make per-example gradients degenerate).
* ``make_batch`` / ``per_example_losses``: model inputs plus random targets, and the summed
  loss of each example (sum over its label tokens of the cross-entropy).
* ``example_grads_bruteforce``: the oracle. One forward + backward per example, alone, with
  the loss normalized by the number of label tokens of the *whole* batch, so that the
  per-example gradients c_i sum to the batch gradient. Everything returned in float64.

Random draws use the torch RNG, which conftest.py seeds afresh for every test.
"""

from __future__ import annotations

import os

# The Triton kernels run under the interpreter on CPU; triton reads this when first imported,
# so it must be set before anything imports triton (transformers may).
if os.environ.get("HF_GNS_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import copy
import os
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import transformers
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

HIDDEN = 72  # not a power of two
VOCAB = 97


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------
def rand_int(low: int, high: int) -> int:
    """Uniform in [low, high] from the (per-test seeded) torch RNG."""
    return int(torch.randint(low, high + 1, ()).item())


def rand_length(low: int, high: int, *batches: int) -> int:
    """A sequence length in [low, high] other than any batch size > 1: with T == B the example dim
    of a [B, T, D] input is ambiguous by shape, which hf_gns refuses to guess (tested on its own)."""
    choices = [t for t in range(low, high + 1) if t == 1 or t not in batches]
    return choices[int(torch.randint(len(choices), ()))]


# --------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------
def _zero_dropout(config) -> None:
    for key in list(config.to_dict().keys()):
        low = key.lower()
        if ("dropout" in low or "pdrop" in low or low.endswith("_prob") or low == "layerdrop") and \
                isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)


def is_norm_like(module: nn.Module) -> bool:
    """Independent of hf_gns: leaf modules whose class is a LayerNorm / RMSNorm-like layer."""
    if any(True for _ in module.children()):
        return False
    return isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__


def randomize_norm_params(model: nn.Module, scale: float = 0.5) -> None:
    """Random affine parameters of every norm layer (Gemma weights start at 0, biases at 0)."""
    with torch.no_grad():
        for module in model.modules():
            if is_norm_like(module):
                for p in module.parameters(recurse=False):
                    p.add_(torch.randn_like(p) * scale)


def finish(model: nn.Module) -> nn.Module:
    model = model.float()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    randomize_norm_params(model)
    model.train()
    return model


def _build(model_cls, config_cls, **kw):
    def factory(hidden: int = HIDDEN, attn: str | None = None, **over):
        args = dict(kw)
        args.update(over)
        args = {k: (v(hidden) if callable(v) else v) for k, v in args.items()}
        config = config_cls(**args)
        _zero_dropout(config)
        if attn is not None:
            config._attn_implementation = attn
        model = model_cls(config)
        return finish(model)

    factory.model_cls = model_cls
    factory.config_cls = config_cls
    return factory


T = transformers
_common = dict(vocab_size=VOCAB, hidden_size=lambda h: h, intermediate_size=40, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
_kv = dict(num_key_value_heads=2)

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "gpt2": _build(T.GPT2LMHeadModel, T.GPT2Config, vocab_size=VOCAB, n_embd=lambda h: h, n_layer=2,
                   n_head=4, n_positions=64, n_inner=40),
    "gpt_neox": _build(T.GPTNeoXForCausalLM, T.GPTNeoXConfig, **_common),
    "llama": _build(T.LlamaForCausalLM, T.LlamaConfig, **_common, **_kv),
    "mistral": _build(T.MistralForCausalLM, T.MistralConfig, **_common, **_kv),
    "mixtral": _build(T.MixtralForCausalLM, T.MixtralConfig, **_common, **_kv, num_local_experts=4,
                      num_experts_per_tok=2),
    "qwen2": _build(T.Qwen2ForCausalLM, T.Qwen2Config, **_common, **_kv),
    "qwen3": _build(T.Qwen3ForCausalLM, T.Qwen3Config, **_common, **_kv, head_dim=18),
    "gemma": _build(T.GemmaForCausalLM, T.GemmaConfig, **_common, **_kv, head_dim=18),
    "gemma2": _build(T.Gemma2ForCausalLM, T.Gemma2Config, **_common, **_kv, head_dim=18,
                     query_pre_attn_scalar=18, sliding_window=4),
    "gemma3": _build(T.Gemma3ForCausalLM, T.Gemma3TextConfig, **_common, **_kv, head_dim=18,
                     query_pre_attn_scalar=18, sliding_window=4),
    # qk_layernorm: nn.LayerNorm on (B, H, T, hd)
    "phi": _build(T.PhiForCausalLM, T.PhiConfig, **{**_common, "num_attention_heads": 3}, qk_layernorm=True),
    "phi3": _build(T.Phi3ForCausalLM, T.Phi3Config, **_common, **_kv, pad_token_id=0),
    "falcon": _build(T.FalconForCausalLM, T.FalconConfig, vocab_size=VOCAB, hidden_size=lambda h: h,
                     num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                     new_decoder_architecture=True, ffn_hidden_size=40),
    "bloom": _build(T.BloomForCausalLM, T.BloomConfig, vocab_size=VOCAB, hidden_size=lambda h: h, n_layer=2,
                    n_head=4),
    "opt": _build(T.OPTForCausalLM, T.OPTConfig, vocab_size=VOCAB, hidden_size=lambda h: h,
                  num_hidden_layers=2, ffn_dim=40, num_attention_heads=4, max_position_embeddings=64,
                  word_embed_proj_dim=lambda h: h),
    "bert": _build(T.BertForMaskedLM, T.BertConfig, **_common),
    "roberta": _build(T.RobertaForMaskedLM, T.RobertaConfig, **{**_common, "max_position_embeddings": 70}),
    # one shared layer applied 3 times
    "albert": _build(T.AlbertForMaskedLM, T.AlbertConfig, vocab_size=VOCAB, embedding_size=24,
                     hidden_size=lambda h: h, num_hidden_layers=3, num_hidden_groups=1, inner_group_num=1,
                     num_attention_heads=4, intermediate_size=40, max_position_embeddings=64),
    "t5": _build(T.T5ForConditionalGeneration, T.T5Config, vocab_size=VOCAB, d_model=lambda h: h, d_kv=18,
                 d_ff=40, num_layers=2, num_decoder_layers=1, num_heads=4),
    "olmo": _build(T.OlmoForCausalLM, T.OlmoConfig, **_common, **_kv),
    "olmo2": _build(T.Olmo2ForCausalLM, T.Olmo2Config, **_common, **_kv),
    "cohere": _build(T.CohereForCausalLM, T.CohereConfig, **_common, **_kv, use_qk_norm=True),
    "modernbert": _build(T.ModernBertForMaskedLM, T.ModernBertConfig, **{**_common, "num_hidden_layers": 3},
                         global_attn_every_n_layers=2, local_attention=4, norm_bias=False, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
    "deepseek_v3": _build(T.DeepseekV3ForCausalLM, T.DeepseekV3Config, **_common, num_key_value_heads=4,
                          q_lora_rank=24,
                          kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=10, v_head_dim=12,
                          n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                          first_k_dense_replace=1, moe_intermediate_size=16, n_shared_experts=1),
    "vit": _build(T.ViTForImageClassification, T.ViTConfig, hidden_size=lambda h: h, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=40, image_size=12, patch_size=4, num_channels=3,
                  num_labels=5),
}

ARCH_KIND = {name: "causal" for name in ARCHS}
ARCH_KIND.update({"bert": "masked", "roberta": "masked", "albert": "masked", "modernbert": "masked",
                  "t5": "seq2seq", "vit": "image"})


def make_model(name: str, **kw) -> nn.Module:
    return ARCHS[name](**kw)


# --------------------------------------------------------------------------------------------
# batches and losses
# --------------------------------------------------------------------------------------------
def make_batch(name: str, model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Model inputs plus ``targets`` (random labels, one per label token, no shift so T=1 works)."""
    kind = ARCH_KIND[name]
    vocab = model.config.vocab_size if kind != "image" else None
    B, Tn = batch_size, seq_len
    if kind == "image":
        cfg = model.config
        return {"pixel_values": torch.randn(B, cfg.num_channels, cfg.image_size, cfg.image_size),
                "targets": torch.randint(0, cfg.num_labels, (B,))}
    low = 3 if name in ("roberta",) else 0  # keep clear of roberta's padding index
    batch = {"input_ids": torch.randint(low, vocab, (B, Tn))}
    if kind == "seq2seq":
        batch["decoder_input_ids"] = torch.randint(0, vocab, (B, Tn + 1))
        batch["targets"] = torch.randint(0, vocab, (B, Tn + 1))
    else:
        batch["targets"] = torch.randint(0, vocab, (B, Tn))
    return batch


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "targets"}


def forward_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**model_inputs(batch)).logits


def per_example_losses(model: nn.Module, batch: dict) -> torch.Tensor:
    """[B]: each example's summed cross-entropy over its label tokens (float32)."""
    logits = forward_logits(model, batch).float()
    targets = batch["targets"]
    if logits.dim() == 2:
        return F.cross_entropy(logits, targets, reduction="none")
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return ce.view(targets.shape).sum(-1)


def num_label_tokens(batch: dict) -> int:
    return batch["targets"].numel()


def batch_loss(model: nn.Module, batch: dict, normalizer: float | None = None) -> torch.Tensor:
    """Sum of every example's token losses / total number of label tokens (HF's token mean)."""
    n = num_label_tokens(batch) if normalizer is None else normalizer
    return per_example_losses(model, batch).sum() / n


def slice_batch(batch: dict, i: int, j: int | None = None) -> dict:
    j = i + 1 if j is None else j
    return {k: v[i:j] for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# the oracle
# --------------------------------------------------------------------------------------------
def example_grads_bruteforce(
    model: nn.Module,
    batch: dict,
    param_names: list[str],
    normalizer: float | None = None,
    loss_fn: Callable | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """``{name: [B, numel]}`` float64: example i's contribution c_i to each parameter's gradient.

    One forward and one backward per example, run alone; example i's loss is the sum of its
    token losses divided by the number of label tokens of the whole batch (``normalizer``), so
    sum_i c_i is the gradient of the batch loss. ``model`` should be unpatched (grads are taken
    with torch.autograd.grad; ``.grad`` is left untouched).
    """
    if not param_names:
        return {}
    loss_fn = loss_fn or per_example_losses
    n = num_label_tokens(batch) if normalizer is None else normalizer
    params = dict(model.named_parameters())
    wanted = [params[name] for name in param_names]
    size = next(iter(batch.values())).shape[0]
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in param_names}
    for i in range(size):
        one = slice_batch(batch, i)
        ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            loss = loss_fn(model, one).sum() / n
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
        for name, p, g in zip(param_names, wanted, grads):
            g = torch.zeros_like(p) if g is None else g
            rows[name].append(g.detach().reshape(-1).to(torch.float64))
    return {name: torch.stack(r) for name, r in rows.items()}


def example_grads_inbatch(model: nn.Module, batch: dict, param_names: list[str], normalizer=None,
                          loss_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """Like `example_grads_bruteforce`, but one forward over the whole batch and one backward per
    example's loss term (for models whose forward couples examples)."""
    loss_fn = loss_fn or per_example_losses
    n = num_label_tokens(batch) if normalizer is None else normalizer
    params = dict(model.named_parameters())
    wanted = [params[name] for name in param_names]
    losses = loss_fn(model, batch) / n
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in param_names}
    for i in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[i], wanted, retain_graph=True, allow_unused=True)
        for name, p, g in zip(param_names, wanted, grads):
            g = torch.zeros_like(p) if g is None else g
            rows[name].append(g.detach().reshape(-1).to(torch.float64))
    return {name: torch.stack(r) for name, r in rows.items()}


def oracle_stats(per_example: dict[str, torch.Tensor]) -> dict[str, tuple[float, float, int]]:
    """name -> (sum_i ||c_i||^2, ||sum_i c_i||^2, B) in float64."""
    out = {}
    for name, c in per_example.items():
        out[name] = (float(c.pow(2).sum()), float(c.sum(0).pow(2).sum()), c.shape[0])
    return out


def packed_batch(lengths: list[int], vocab: int = VOCAB, flash_kwargs: bool = False):
    """Sequences of ``lengths`` packed in one row as ``DataCollatorWithFlattening`` does (position_ids
    restarting at 0), and a random target per token: (sequences, model inputs, targets)."""
    from transformers import DataCollatorWithFlattening

    # distinct tokens: a sequence of repeated tokens has exactly zero q/k gradients (all values equal)
    seqs = list(torch.randperm(vocab)[: sum(lengths)].split(lengths))
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)
    batch = collator([{"input_ids": s.tolist()} for s in seqs])
    batch.pop("labels")
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) or k.startswith("max_length")}
    targets = torch.randint(0, vocab, (sum(lengths),))
    return seqs, batch, targets


def packed_oracle(ref: nn.Module, seqs: list[torch.Tensor], targets: torch.Tensor) -> dict:
    """`oracle_stats` of a packed batch: each sequence run alone, its token losses over all tokens."""
    n = targets.numel()
    names = norm_param_names(ref)
    params = dict(ref.named_parameters())
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    start = 0
    for s in seqs:
        logits = ref(input_ids=s[None], use_cache=False).logits[0]
        loss = F.cross_entropy(logits, targets[start:start + len(s)], reduction="sum") / n
        start += len(s)
        for k, g in zip(names, torch.autograd.grad(loss, [params[k] for k in names])):
            rows[k].append(g.reshape(-1).double())
    return oracle_stats({k: torch.stack(v) for k, v in rows.items()})


def norm_param_names(model: nn.Module) -> list[str]:
    """Qualified names (as model.named_parameters()) of every trainable affine parameter of a
    norm-like module: what hf_gns should record, found without hf_gns."""
    names = []
    ids = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for module in model.modules():
        if is_norm_like(module):
            for p in module.parameters(recurse=False):
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    names.append(ids[id(p)])
    return sorted(names)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def assert_stats_match(stats, oracle: dict[str, tuple[float, float, int]], rtol: float | dict[str, float],
                       what: str = "", floor: float | None = None):
    """Compare hf_gns GradientStats with an oracle, per parameter and in total.

    ``rtol`` is one tolerance or one per parameter (the totals use the largest). Parameters whose
    gradient is exactly zero in exact arithmetic (e.g. Qwen3's k_norm with T=1: softmax over a
    single key) carry float32 round-off only, so an absolute ``floor`` (default 1e-9 of the total
    sum_i ||c_i||^2) is added to the relative tolerance."""
    assert set(stats.per_param) == set(oracle), (
        f"{what}: recorded {sorted(stats.per_param)} vs expected {sorted(oracle)}")
    tol = rtol if isinstance(rtol, dict) else dict.fromkeys(oracle, rtol)
    if floor is None:
        floor = 1e-9 * sum(v[0] for v in oracle.values())
    for name, (sq, bsq, count) in oracle.items():
        got, r = stats.per_param[name], tol[name]
        assert got.num_examples == count, f"{what} {name}: {got.num_examples} examples, expected {count}"
        assert abs(got.example_sq_norm_sum - sq) <= r * abs(sq) + floor, (
            f"{what} {name}: sum_i ||c_i||^2 = {got.example_sq_norm_sum!r}, oracle {sq!r}, "
            f"rel {rel_err(got.example_sq_norm_sum, sq):.3g}, tolerance {r:.2g}")
        assert abs(got.batch_sq_norm - bsq) <= r * abs(bsq) + floor, (
            f"{what} {name}: ||sum c_i||^2 = {got.batch_sq_norm!r}, oracle {bsq!r}, "
            f"rel {rel_err(got.batch_sq_norm, bsq):.3g}, tolerance {r:.2g}")
    if oracle:
        worst = max(tol.values())
        tot_sq = sum(v[0] for v in oracle.values())
        tot_b = sum(v[1] for v in oracle.values())
        assert stats.total.num_examples == next(iter(oracle.values()))[2]
        assert abs(stats.total.example_sq_norm_sum - tot_sq) <= worst * abs(tot_sq) + floor, what
        assert abs(stats.total.batch_sq_norm - tot_b) <= worst * abs(tot_b) + floor, what
    assert not stats.problems, f"{what}: {stats.problems}"


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def quiet_patch(model, **kw):
    """patch_model, failing on any warning (every HF norm must be patched cleanly)."""
    import hf_gns

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return hf_gns.patch_model(model, **kw)
