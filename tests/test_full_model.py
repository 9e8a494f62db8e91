"""The whole-model diagnostic against the patched norm layers' statistics (two independent
computations of the same per-example gradients) and inside a Trainer run."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import hf_gns
from helpers import rand_length
from hf_gns.full_model import per_example_gradient_stats, subset


def _model(hidden: int = 40) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=60, hidden_size=hidden, intermediate_size=56, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def _close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def test_norm_subset_equals_patched_statistics():
    model = _model()
    hf_gns.patch_model(model, kernel="torch")
    B = random.randint(2, 5)
    T = rand_length(2, 7, B)
    ids = torch.randint(0, 60, (B, T))
    batch = {"input_ids": ids, "labels": ids}
    model(**batch).loss.backward()
    measured = hf_gns.gather_stats(model)
    brute = per_example_gradient_stats(model, batch)
    norms = subset(brute, measured.per_param)
    assert set(norms.per_param) == set(measured.per_param)
    for name, want in measured.per_param.items():
        got = norms.per_param[name]
        assert got.num_examples == want.num_examples == B
        assert _close(got.example_sq_norm_sum, want.example_sq_norm_sum)
        assert _close(got.batch_sq_norm, want.batch_sq_norm)
    # every trainable parameter is in the whole-model statistics, and nothing was recorded by them
    assert set(brute.per_param) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert hf_gns.gather_stats(model).total.num_examples == 0


class _Data(Dataset):
    def __init__(self, n: int = 48, T: int = 12):
        self.x = torch.randint(0, 60, (n, T))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_trainer_full_model_every(tmp_path, compiled):
    """The whole-model diagnostic reads the step's last micro-batch (kept by a forward pre-hook,
    also when the Trainer compiles the model) and agrees with the kernel-measured norm layers."""
    model = _model()
    hf_gns.patch_model(model)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, logging_steps=1,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, max_grad_norm=0.0,
                             torch_compile=compiled)
    callback = hf_gns.GNSCallback(full_model_every=2)
    Trainer(model=model, args=args, train_dataset=_Data(), callbacks=[callback]).train()
    measured = [h for h in callback.history if "gns/full_model_ln_step_b_simple" in h]
    assert [h["step"] for h in measured] == [2, 4, 6]
    assert all("gns/full_model_step_b_simple" in h for h in measured)
    for h in measured:  # GA = 1: the step's only micro-batch, measured two ways
        want, got = h["gns/step_b_simple"], h["gns/full_model_ln_step_b_simple"]
        assert (got != got and want != want) or _close(got, want, 1e-3), h
        # the step's |G|^2 and tr(Sigma) estimates are logged too (windows are averaged from them)
        for part in ("g2", "trace_sigma"):
            assert _close(h[f"gns/full_model_ln_step_{part}"], h[f"gns/step_{part}"], 1e-3), (part, h)
            assert h[f"gns/full_model_step_{part}"] == h[f"gns/full_model_step_{part}"]
        assert _close(h["gns/full_model_step_trace_sigma"] / h["gns/full_model_step_g2"],
                      h["gns/full_model_step_b_simple"], 1e-9) or h["gns/full_model_step_g2"] <= 0
    # the diagnostic's extra passes count neither examples nor tokens: 12 tokens per example
    for h in callback.history:
        assert h["gns/examples"] == 4
        if h["gns/b_simple"] == h["gns/b_simple"]:
            assert _close(h["gns/b_simple_tokens"] / h["gns/b_simple"], 12.0, 1e-9)
