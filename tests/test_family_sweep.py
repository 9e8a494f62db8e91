"""Every model family of the installed transformers, built small and run on text: its norms are
patched and match a brute-force oracle, or refused with a warning; never silently wrong.

For every model type of ``CONFIG_MAPPING`` a tiny config is made from the defaults (widths,
depths, head counts, vocabulary, positions and expert counts shrunk, nested sub-configs too,
dropout and router noise off) and a text model class is built from it: the causal-LM class,
else masked-LM, else seq2seq-LM, else the base model, the first one that runs on ``input_ids``
(plus ``decoder_input_ids`` for encoder-decoders). B=3 examples of T=5 random tokens.

The model is patched (``kernel="torch"``) in training mode with every dropout off; the loss is a
sum of per-example scalars. Checked on the patched model:

* its outputs and the norm parameters' ``.grad`` are the unpatched copy's;
* every norm module (hf_gns's `is_norm_candidate` or an independent "Norm"-named leaf) that ran
  in the forward, whose output reaches the loss and whose trainable parameters are not all
  recorded is named in a warning (``warnings.warn``, the ``hf_gns`` logger or the statistics'
  problems) -- whether or not the model mixes its examples: batch-norm must be refused out loud;
* every parameter hf_gns records saw 3 examples and its sum_i ||c_i||^2 and ||sum_i c_i||^2
  match the oracle (float32: rtol 1e-4, plus four times the model's own float32 noise, measured as
  the gap between the unpatched batch gradient and the sum of the per-example ones: about 1e-7 for
  most families, up to 1e-4 for a few, e.g. Gemma 4).

The oracle does not use hf_gns: the unpatched copy runs each example alone and its loss term's
gradient is c_i. It is an oracle only if the model treats examples independently, so first the
per-example losses and the sum of the c_i are compared with the batch's (a family that fails
this is skipped with the reason).

A family that is wrong in today's library is marked ``xfail(strict=True)`` in `XFAIL` with what
is wrong (a library bug to fix, never a weaker check).

Families that cannot be built or run on ``input_ids`` alone (vision, audio, multimodal models
that need pixel values, a missing optional package, a config that will not shrink) are skipped
with the reason; ``pytest -s`` prints the whole table, and `test_sweep_summary` bounds the
number of skipped families so that a regression that makes many of them unbuildable fails.
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib.util
import inspect
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

import hf_gns
from hf_gns.probe import is_norm_candidate

from helpers import assert_stats_match, finish, is_norm_like

pytestmark = pytest.mark.usefixtures("one_thread")

B, T, T_DEC = 3, 5, 6
VOCAB = 128
RTOL = 1e-4
#: a family whose model has more parameters than this after shrinking is "did not shrink"
MAX_PARAMS = 3_000_000
#: measured with transformers 5.24.0: 478 of 822 model types skipped (vision / audio / multimodal models
#: without a text-only forward, sub-configs without a model class, configs that will not shrink)
MAX_SKIPPED = 490

# -------------------------------------------------------------------------------------------
# tiny configs
# -------------------------------------------------------------------------------------------
H, HEADS, HEAD_DIM, FF = 32, 2, 16, 64
WIDTH = ("hidden_size", "d_model", "n_embd", "n_embed", "dim", "embed_dim", "model_dim", "d_embed",
         "embedding_size", "word_embed_proj_dim", "projection_dim", "embedding_dim",
         "text_hidden_size", "out_hidden_size", "codebook_dim", "condition_dim")
LAYERS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "layers", "encoder_layers", "decoder_layers",
          "num_decoder_layers", "num_encoder_layers", "depth")
HEAD_COUNTS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
               "decoder_attention_heads", "attention_heads", "index_n_heads", "linear_num_key_heads",
               "linear_num_value_heads", "linear_num_heads", "swa_num_attention_heads")
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num",
            "swa_num_key_value_heads")
HEAD_DIMS = ("head_dim", "d_kv", "attention_head_dim", "kv_channels", "d_head", "dim_head", "qk_head_dim",
             "v_head_dim", "index_head_dim", "linear_key_head_dim", "linear_value_head_dim", "linear_head_dim",
             "swa_head_dim")
FIXED = {
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "kv_lora_rank": 16, "q_lora_rank": 16, "rotary_dim": 8,
    "intermediate_size": FF, "ffn_dim": FF, "d_ff": FF, "n_inner": FF, "encoder_ffn_dim": FF,
    "decoder_ffn_dim": FF, "ffn_hidden_size": FF, "dim_feedforward": FF, "intermediate_dim": FF,
    "mlp_dim": FF, "hidden_dim": FF, "decoder_intermediate_size": FF,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "shared_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "num_experts_per_token": 2, "moe_topk": 2, "moe_k": 2, "n_group": 1,
    "topk_group": 1, "n_shared_experts": 1,
    "vocab_size": VOCAB, "vocab_size_per_layer_input": VOCAB, "src_vocab_size": VOCAB, "tgt_vocab_size": VOCAB,
    "entity_vocab_size": 16, "entity_emb_size": 16, "pronunciation_vocab_size": 16, "shape_vocab_size": 16,
    "pronunciation_embed_dim": 16, "shape_embed_dim": 16, "emb_dim": H,
    "max_position_embeddings": 128, "n_positions": 128, "n_ctx": 128, "max_seq_len": 128,
    "max_sequence_length": 128, "max_target_positions": 128, "max_source_positions": 128,
    "state_size": 16, "d_state": 16, "ssm_state_size": 16, "mamba_d_state": 16,
    "hidden_size_per_layer_input": 8, "mamba_dt_rank": 8, "time_step_rank": 8,
    "n_groups": 1, "mamba_n_groups": 1, "mamba_ngroups": 1,
}
#: Mamba-2 style mixers: heads * head_dim must be expand * hidden_size
MAMBA = (("expand", "num_heads", "head_dim"), ("mamba_expand", "mamba_n_heads", "mamba_d_head"),
         ("expand", "mamba_num_heads", "mamba_head_dim"), ("mamba_expand", "n_mamba_heads", "mamba_headdim"))
#: keys whose default of None leaves the model unbuildable (filled in)
REQUIRED = {"head_dim": HEAD_DIM, "num_key_value_heads": HEADS, "num_experts_per_tok": 2, "n_routed_experts": 4,
            "n_shared_experts": 1, "vocab_size": VOCAB, "pad_token_id": 0, "mask_token_id": 3}
#: special tokens moved into [0, 4) (input ids are drawn from the rest of the vocabulary)
SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0,
           "sep_token_id": 2, "cls_token_id": 1, "unk_token_id": 3, "mask_token_id": 3}
RANDOM = re.compile(r"dropout|pdrop|layerdrop|drop_path|jitter|_prob$")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(key: str, value: int, heads: int | None) -> int | None:
    """The tiny value of one integer attribute (None: left as it is)."""
    if key in WIDTH:
        return min(value, H)
    if key in LAYERS:
        return min(value, 2)
    if key in HEAD_COUNTS:
        return min(value, HEADS)
    if key in KV_HEADS:
        return 1 if heads and value < heads else min(value, HEADS)
    if key in HEAD_DIMS:
        return min(value, HEAD_DIM)
    if key in FIXED:
        return min(value, FIXED[key])
    return None


def _scaled_sections(sections: list, total: int) -> list[int]:
    """``sections`` (e.g. multimodal RoPE's) rescaled to sum to ``total``, none below 1."""
    out = [max(1, round(v * total / sum(sections))) for v in sections]
    out[-1] += total - sum(out)
    return out


def shrink(config: transformers.PreTrainedConfig) -> dict:
    """Constructor arguments of a small version of ``config`` (nested sub-configs as configs)."""
    values = config.to_dict()
    heads = values.get("num_attention_heads", values.get("n_head"))
    layer_counts = {values[k] for k in LAYERS if _is_int(values.get(k))}
    out = {}
    for key, value in values.items():
        if key in SPECIAL and value is not None:
            if _is_int(value) and value >= 4:
                out[key] = SPECIAL[key]
            elif isinstance(value, list) and any(_is_int(v) and v >= 4 for v in value):
                out[key] = [SPECIAL[key]]
        elif value is None and key in REQUIRED:
            out[key] = REQUIRED[key]
        elif isinstance(value, float) and RANDOM.search(key.lower()):
            out[key] = 0.0
        elif _is_int(value):
            tiny = _size(key, value, heads)
            if tiny is not None:
                out[key] = tiny
        elif isinstance(value, list) and len(value) in layer_counts and len(value) > 2:
            out[key] = value[:2]  # one entry per layer (layer_types, ...)
    # tied sizes: MLA's head_dim is its rope part, Mamba-2's heads span expand * hidden
    if _is_int(values.get("qk_rope_head_dim")) and values.get("head_dim") == values["qk_rope_head_dim"]:
        out["head_dim"] = out["qk_rope_head_dim"]
    for expand, n_heads, head_dim in MAMBA:
        if all(_is_int(values.get(k)) for k in (expand, n_heads, head_dim)):
            inner = out.get("hidden_size", values.get("hidden_size", H)) * values[expand]
            out[head_dim] = min(values[head_dim], HEAD_DIM)
            out[n_heads] = inner // out[head_dim]
            for key in ("mamba_d_ssm",):
                if _is_int(values.get(key)):
                    out[key] = inner
            for key in ("chunk_size", "mamba_chunk_size"):
                if _is_int(values.get(key)):
                    out[key] = 8
    if values.get("attention_types") and isinstance(values["attention_types"], list):  # GPT-Neo
        out["attention_types"] = [[values["attention_types"][0][0], 1]]
    rope = values.get("rope_parameters") or values.get("rope_scaling")
    if isinstance(rope, dict):  # multimodal RoPE sections span head_dim / 2 (a default in the code: 3 sections)
        sections = rope.get("mrope_section") or ([16, 24, 24] if _uses_mrope(config) else None)
        if sections:
            key = "rope_parameters" if values.get("rope_parameters") else "rope_scaling"
            head_dim = out.get("head_dim") or values.get("head_dim") or HEAD_DIM
            out[key] = {**rope, "mrope_section": _scaled_sections(sections, head_dim // 2)}
    for key, sub in _subconfigs(config):
        out[key] = rebuild(sub)
    return out


def _subconfigs(config) -> list[tuple[str, transformers.PreTrainedConfig]]:
    return [(k, v) for k, v in vars(config).items() if isinstance(v, transformers.PreTrainedConfig)]


def _uses_mrope(config) -> bool:
    """Whether the family's modeling code reads ``mrope_section`` (with a default of its own)."""
    return _source_mentions(type(config).__module__.replace(".configuration_", ".modeling_"), "mrope_section")


@functools.cache
def _source_mentions(module: str, text: str) -> bool:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return bool(spec and spec.origin) and text in Path(spec.origin).read_text()


def rebuild(config: transformers.PreTrainedConfig) -> transformers.PreTrainedConfig:
    """A small config of the same class; attributes that only the original had (set by a parent
    config) are carried over."""
    small = type(config)(**shrink(config))
    for key, value in vars(config).items():
        if key not in vars(small):
            setattr(small, key, value)
    return small


def tiny_config(model_type: str) -> transformers.PreTrainedConfig:
    return rebuild(CONFIG_MAPPING[model_type]())


# -------------------------------------------------------------------------------------------
# text model classes
# -------------------------------------------------------------------------------------------
MAPPINGS = (("causal-lm", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
            ("masked-lm", modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
            ("seq2seq-lm", modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
            ("base", modeling_auto.MODEL_MAPPING_NAMES))


SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration", "Model")


def model_classes(model_type: str) -> list[str]:
    """Qualified names of the family's text model classes, in order of preference: the auto mappings,
    else (sub-configs such as ``clip_text_model``) the modeling module's classes of its config."""
    names = []
    for _, mapping in MAPPINGS:
        found = mapping.get(model_type)
        for name in (found if isinstance(found, (list, tuple)) else [found]):
            if name and f"transformers.{name}" not in names:
                names.append(f"transformers.{name}")
    if names:
        return names
    config_cls = CONFIG_MAPPING[model_type]
    package = config_cls.__module__.rsplit(".", 1)[0]
    ranked = []
    for path in sorted(Path(importlib.import_module(package).__file__).parent.glob("modeling_*.py")):
        module = importlib.import_module(f"{package}.{path.stem}")
        for n, c in vars(module).items():
            if (inspect.isclass(c) and issubclass(c, transformers.PreTrainedModel) and c.__module__ == module.__name__
                    and getattr(c, "config_class", None) is config_cls and "PreTrainedModel" not in n):
                ranked += [(i, f"{module.__name__}.{n}") for i, suffix in enumerate(SUFFIXES) if n.endswith(suffix)]
    return [n for _, n in sorted(ranked)]


def resolve(qualname: str) -> type:
    module, name = qualname.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


#: inputs other than text that a forward may need (named in the skip reason when it fails)
OTHER_INPUTS = ("pixel_values", "input_features", "input_values", "pixel_values_videos", "visual_feats", "bbox",
                "image_embeds", "action_embeds")


class Skip(Exception):
    """The family cannot be run on text here; the reason is recorded."""


def one_line(error: BaseException, limit: int = 110) -> str:
    text = " ".join(str(error).split())  # the whole message on one line
    return f"{type(error).__name__}: {text}"[:limit]


@dataclass
class Run:
    """A family built and run once on a batch, unpatched."""

    cls_name: str
    model: nn.Module
    inputs: dict
    weights: torch.Tensor  # fixed random projection of the output (the loss)


def forward_kwargs(cls: type, inputs: dict) -> dict:
    params = inspect.signature(cls.forward).parameters
    out = dict(inputs)
    if "use_cache" in params:
        out["use_cache"] = False
    return out


def output_tensor(output) -> torch.Tensor:
    for key in ("logits", "last_hidden_state", "prediction_logits"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, torch.Tensor):
        return output
    for value in (output.values() if hasattr(output, "values") else output):
        if isinstance(value, torch.Tensor):
            return value
    raise Skip("no tensor output")


def example_losses(model: nn.Module, inputs: dict, weights: torch.Tensor) -> torch.Tensor:
    """[b]: each example's scalar loss (a fixed random projection of its output plus its mean square)."""
    y = output_tensor(model(**inputs)).float()
    if y.shape != weights.shape:
        raise Skip(f"output shape {tuple(y.shape)} depends on the batch")
    dims = tuple(range(1, y.dim()))
    return (y * weights).mean(dims) + y.pow(2).mean(dims)


def _tree(config) -> list:
    """``config`` and its nested sub-configs."""
    return [config] + [c for _, sub in _subconfigs(config) for c in _tree(sub)]


def token_ids(config, size: tuple[int, ...]) -> torch.Tensor:
    """Random ids in [4, vocab) that are no token id named in the config (image tokens, ...)."""
    special, vocab = set(), VOCAB
    for cfg in _tree(config):
        for key, value in cfg.to_dict().items():
            if "token" in key and _is_int(value):
                special.add(value)
            if key == "vocab_size" and _is_int(value) and value > 8:
                vocab = min(vocab, value)
    allowed = torch.tensor([i for i in range(4, vocab) if i not in special])
    return allowed[torch.randint(len(allowed), size)]


def build(model_type: str) -> Run:
    """The first text model class of the family that runs on the tiny config, unpatched."""
    if model_type not in CONFIG_MAPPING:
        raise Skip("not in CONFIG_MAPPING")
    try:
        names = model_classes(model_type)
    except Exception as error:  # noqa: BLE001 - e.g. a missing optional package
        raise Skip(f"modeling module: {one_line(error)}") from None
    if not names:
        raise Skip("no text model class (causal/masked/seq2seq LM, base model)")
    try:
        config = tiny_config(model_type)
    except Exception as error:  # noqa: BLE001 - the reason is the outcome
        raise Skip(f"config: {one_line(error)}") from None
    reasons = []
    for qualname in names:
        name = qualname.rsplit(".", 1)[1]
        try:
            cls = resolve(qualname)
        except Exception as error:  # noqa: BLE001
            reasons.append(f"{name}: import: {one_line(error, 70)}")
            continue
        try:
            params = inspect.signature(cls.forward).parameters
        except ImportError as error:  # a placeholder for a class whose optional package is missing
            reasons.append(f"{name}: {one_line(error, 90)}")
            continue
        if "input_ids" not in params:
            reasons.append(f"{name}: no input_ids")
            continue
        other = [p for p in OTHER_INPUTS if p in params]
        try:
            with torch.device("meta"):
                meta = cls._from_config(config)
            count = sum(p.numel() for p in meta.parameters())
            del meta
            if count > MAX_PARAMS:
                reasons.append(f"{name}: did not shrink ({count / 1e6:.1f}M parameters)")
                continue
            model = finish(cls._from_config(config))
            inputs = {"input_ids": token_ids(config, (B, T))}
            if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False):
                inputs["decoder_input_ids"] = token_ids(config, (B, T_DEC))
            inputs = forward_kwargs(cls, inputs)
            with torch.no_grad():
                y = output_tensor(model(**inputs))
        except Skip as error:
            reasons.append(f"{name}: {error}")
            continue
        except Exception as error:  # noqa: BLE001
            needs = f"needs {other[0]}? " if other else ""
            reasons.append(f"{name}: {needs}{one_line(error, 90)}")
            continue
        if y.shape[0] != B or not y.is_floating_point():
            reasons.append(f"{name}: output {tuple(y.shape)} {y.dtype} has no example dim")
            continue
        return Run(name, model, inputs, torch.randn(y.shape))
    raise Skip("; ".join(reasons))


# -------------------------------------------------------------------------------------------
# the check
# -------------------------------------------------------------------------------------------
def norm_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Norm leaves with trainable parameters: hf_gns's candidates and an independent name test."""
    return {n: m for n, m in model.named_modules()
            if (is_norm_candidate(m) or is_norm_like(m)) and any(p.requires_grad for p in m.parameters(False))}


def slice_inputs(inputs: dict, i: int) -> dict:
    return {k: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


@dataclass
class Outcome:
    kind: str  # "matched", "partial" (some norms refused), "refused", "no-norm-ran", "skipped", "xfail", "failed"
    detail: str = ""
    recorded: int = 0
    refused: list[str] = field(default_factory=list)


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record):
        self.texts.append(record.getMessage())


def names_in(texts: list[str], name: str) -> bool:
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}(?![\w.])")
    return any(pattern.search(t) for t in texts)


def check_family(model_type: str) -> Outcome:
    run = build(model_type)
    ref = run.model
    model = copy.deepcopy(ref)
    norms = norm_modules(ref)

    # which norms run on this input (hooks on the unpatched copy)
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: ran.add(n)) for n, m in norms.items()]
    try:
        losses = example_losses(ref, run.inputs, run.weights)
    finally:
        for h in hooks:
            h.remove()
    params = dict(ref.named_parameters())
    wanted = sorted({f"{n}.{pn}" if n else pn for n, m in norms.items()
                     for pn, p in m.named_parameters(recurse=False) if p.requires_grad} & set(params))

    # hf_gns, capturing what it says
    captured = Captured()
    hf_logger = logging.getLogger("hf_gns")
    hf_logger.addHandler(captured)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hf_gns.patch_model(model, kernel="torch")
            patched_losses = example_losses(model, run.inputs, run.weights)
            patched_losses.sum().backward()
            stats = hf_gns.gather_stats(model)
    finally:
        hf_logger.removeHandler(captured)
    texts = [str(w.message) for w in caught] + captured.texts + list(stats.problems)
    torch.testing.assert_close(patched_losses, losses.detach(), rtol=1e-5, atol=1e-6,
                               msg="the patched forward changed the outputs")

    recorded = set(stats.per_param)
    unknown = recorded - set(params)
    assert not unknown, f"recorded parameters that the model does not have: {sorted(unknown)}"
    wanted = sorted(set(wanted) | recorded)
    if not wanted:
        return Outcome("no-norm-ran", f"{run.cls_name}: no norm layer with trainable parameters")
    zeros = {n: torch.zeros(params[n].numel(), dtype=torch.float64) for n in wanted}
    batch_grads = torch.autograd.grad(losses.sum(), [params[n] for n in wanted], allow_unused=True)
    batch_grads = {n: zeros[n] if g is None else g.reshape(-1).double() for n, g in zip(wanted, batch_grads)}
    patched = dict(model.named_parameters())
    for n in wanted:  # the patched backward leaves the model's own gradients as they were
        got = patched[n].grad
        torch.testing.assert_close(zeros[n] if got is None else got.reshape(-1).double(), batch_grads[n],
                                   rtol=1e-5, atol=1e-7, msg=f"{model_type} {n}: .grad differs when patched")

    # norms that ran but are not (fully) recorded: named in a warning (whether or not the model treats
    # its examples independently: a norm that mixes them, like batch-norm, must be refused out loud)
    refused = []
    for name in sorted(ran):
        own = [f"{name}.{pn}" if name else pn for pn, p in norms[name].named_parameters(recurse=False)
               if p.requires_grad]
        missing = [p for p in own if p not in recorded]
        if not missing:
            continue
        if not any(p in recorded for p in own) and all(not batch_grads[p].any() for p in own):
            continue  # ran, but its output does not reach the loss: nothing to record
        assert names_in(texts, name), (
            f"{model_type}: norm {name} ({type(norms[name]).__name__}) ran and is not recorded {missing}, "
            f"but no warning names it; warnings: {texts}")
        refused.append(name)

    # the oracle: each example alone; an oracle only if the batch treats its examples independently
    rows = {n: [] for n in wanted}
    for i in range(B):
        loss_i = example_losses(ref, slice_inputs(run.inputs, i), run.weights[i : i + 1])
        if not torch.allclose(loss_i, losses[i : i + 1].detach(), rtol=1e-4, atol=1e-6):
            raise Skip(f"examples not independent: example {i}'s loss alone {loss_i.item():.6g} vs "
                       f"{losses[i].item():.6g} in the batch")
        grads = torch.autograd.grad(loss_i.sum(), [params[n] for n in wanted], allow_unused=True)
        for n, g in zip(wanted, grads):
            rows[n].append(zeros[n] if g is None else g.detach().reshape(-1).double())
    c = {n: torch.stack(r) for n, r in rows.items()}
    total_sq = sum(float(v.pow(2).sum()) for v in c.values())
    floor = 1e-9 * total_sq + 1e-30
    gaps = {n: float((c[n].sum(0) - batch_grads[n]).norm()) for n in wanted}
    for n in wanted:
        g = batch_grads[n]
        if gaps[n] > 1e-4 * float(g.norm()) + floor ** 0.5:
            raise Skip(f"examples not independent: sum of per-example gradients of {n} != batch gradient "
                       f"(rel {gaps[n] / max(float(g.norm()), 1e-30):.2g})")
    # the model's own float32 noise: how far its batched gradient is from the sum of the per-example ones
    # (about 1e-7 of it for most families, up to 1e-4 for some); hf_gns computes in the batch, the oracle
    # example by example, so each may be off by about that much
    overall = (sum(v * v for v in gaps.values()) / max(sum(float(batch_grads[n].pow(2).sum()) for n in wanted),
                                                       1e-300)) ** 0.5
    noise = {n: max(overall, gaps[n] / max(float(batch_grads[n].norm()), 1e-300)) for n in wanted}

    # recorded parameters: every example counted, both sums exact (up to RTOL plus 4x that noise)
    oracle = {n: (float(c[n].pow(2).sum()), float(c[n].sum(0).pow(2).sum()), B) for n in sorted(recorded)}
    assert_stats_match(stats, oracle, {n: RTOL + 4 * noise[n] for n in oracle}, what=model_type, floor=floor)
    kind = "matched" if not refused else ("refused" if not recorded else "partial")
    if not refused and not recorded:
        kind = "no-norm-ran"
    return Outcome(kind, run.cls_name, recorded=len(recorded), refused=refused)


# -------------------------------------------------------------------------------------------
# tests
# -------------------------------------------------------------------------------------------
FAMILIES = sorted(CONFIG_MAPPING.keys())
# one pytest-xdist worker runs the whole sweep, so that its summary sees every family
pytestmark = pytest.mark.xdist_group("family_sweep")
RESULTS: dict[str, Outcome] = {}
XFAIL: dict[str, tuple[str, type[BaseException]]] = {}


def _params():
    for name in FAMILIES:
        marks = []
        if name in XFAIL:
            reason, raises = XFAIL[name]
            marks = [pytest.mark.xfail(strict=True, reason=reason, raises=raises)]
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("model_type", _params())
def test_family(model_type):
    try:
        outcome = check_family(model_type)
    except Skip as error:
        RESULTS[model_type] = Outcome("skipped", str(error))
        pytest.skip(str(error))
    except BaseException as error:
        RESULTS[model_type] = Outcome("xfail" if model_type in XFAIL else "failed", one_line(error, 150))
        raise
    RESULTS[model_type] = outcome


def test_sweep_summary():
    """The table (``pytest -s``) and a bound on the number of skipped families."""
    if set(RESULTS) != set(FAMILIES):
        pytest.skip("run the whole sweep for the summary")
    kinds = collections.Counter(o.kind for o in RESULTS.values())
    print(f"\nfamily sweep: {len(FAMILIES)} model types: {dict(kinds)}")
    for name in FAMILIES:
        o = RESULTS[name]
        extra = o.detail if o.kind in ("skipped", "xfail", "failed", "no-norm-ran") else \
            f"{o.detail}: {o.recorded} norm parameters recorded and matched"
        if o.refused:
            extra += f"; refused with a warning: {', '.join(o.refused[:4])}" + (" ..." if len(o.refused) > 4 else "")
        print(f"  {name:40s} {o.kind:12s} {extra}")
    assert kinds["skipped"] <= MAX_SKIPPED, f"{kinds['skipped']} families skipped (bound {MAX_SKIPPED})"
