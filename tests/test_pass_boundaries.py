"""Where a forward pass starts, and what is named what: never a silent merge of micro-batches.

A pass starts at the outermost call of the patched model or of any module on the path down to
the lowest module holding all patched norms, so a custom head (``model.model(...)`` then
``lm_head``) or ``model.forward(...)`` count their micro-batches apart. Oracles: one
``torch.autograd.grad`` per example on an unpatched copy.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import hf_gns
from helpers import (assert_stats_match, clone, example_grads_bruteforce, make_batch, make_model,
                      norm_param_names, oracle_stats, rand_int, rand_length)


def _head_losses(model, batch):
    """Per-example summed token loss through the decoder and the LM head, bypassing the root call."""
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    logits = model.lm_head(hidden).float()
    ce = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
    return ce.view(batch["targets"].shape).sum(-1)


def _forward_losses(model, batch):
    logits = model.forward(input_ids=batch["input_ids"]).logits.float()
    ce = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
    return ce.view(batch["targets"].shape).sum(-1)


@pytest.mark.parametrize("loss_fn", [_head_losses, _forward_losses], ids=["model.model+lm_head", "model.forward"])
def test_micro_batches_through_a_bypassed_root_stay_apart(loss_fn):
    model = make_model("llama")
    ref = clone(model)
    hf_gns.patch_model(model, kernel="torch")
    T = rand_length(2, 5, 3)
    batches = [make_batch("llama", model, 3, T) for _ in range(2)]
    n = sum(b["targets"].numel() for b in batches)
    for batch in batches:
        (loss_fn(model, batch).sum() / n).backward()
    stats = hf_gns.gather_stats(model)
    merged = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    oracle = oracle_stats(example_grads_bruteforce(ref, merged, norm_param_names(ref), n, loss_fn=loss_fn))
    assert stats.total.num_examples == 6
    assert stats.tokens == 6 * T
    assert_stats_match(stats, oracle, rtol=1e-5, what=loss_fn.__name__)


def test_patching_a_part_then_the_whole_counts_once():
    model = make_model("llama")
    ref = clone(model)
    hf_gns.patch_model(model.model, kernel="torch")
    hf_gns.patch_model(model, kernel="torch")
    assert len(hf_gns.patch.pass_counters(model)) == 1
    B = rand_int(2, 4)
    batch = make_batch("llama", model, B, rand_length(2, 5, B))
    n = batch["targets"].numel()
    (_forward_losses(model, batch).sum() / n).backward()
    stats = hf_gns.gather_stats(model)
    assert stats.tokens == batch["input_ids"].numel()
    assert set(stats.per_param) == set(norm_param_names(ref))  # full names, as model.named_parameters()
    assert_stats_match(stats, oracle_stats(example_grads_bruteforce(ref, batch, norm_param_names(ref), n)),
                       rtol=1e-5)


def test_a_norm_called_outside_the_model_is_left_out_with_a_warning():
    model = make_model("llama")
    hf_gns.patch_model(model, kernel="torch")
    x = torch.randn(3, 4, model.config.hidden_size, requires_grad=True)
    with pytest.warns(UserWarning, match="outside any call of the patched model"):
        model.model.norm(x).sum().backward()
    assert hf_gns.gather_stats(model).per_param == {}


def test_gradient_checkpointing_recompute_is_not_outside_the_model():
    model = make_model("llama")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    hf_gns.patch_model(model, kernel="torch")
    batch = make_batch("llama", model, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (_forward_losses(model, batch).sum()).backward()
    assert hf_gns.gather_stats(model).total.num_examples == 3


def test_statistics_keys_follow_a_peft_wrapper():
    peft = pytest.importorskip("peft")
    model = make_model("llama")
    hf_gns.patch_model(model, kernel="torch")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for name, p in wrapped.named_parameters():
        if "norm" in name:
            p.requires_grad_(True)
    ids = torch.randint(0, 50, (3, 4))
    wrapped(input_ids=ids, labels=ids).loss.backward()
    stats = hf_gns.gather_stats(wrapped)
    names = {n for n, _ in wrapped.named_parameters()}
    assert stats.per_param and set(stats.per_param) <= names
    assert stats.total.num_examples == 3


@pytest.mark.parametrize("patched", ["inner", "wrapper"])
def test_statistics_keys_drop_the_prefix_of_a_compile_wrapper(patched):
    """A wrapper only prefixes names (``_orig_mod.``): the keys are the unwrapped model's, whether the
    model or the wrapper itself was patched, and equal to an unwrapped model's keys."""
    model = make_model("llama")
    wrapper = torch.compile(model, backend="eager")
    hf_gns.patch_model(model if patched == "inner" else wrapper, kernel="torch")
    ids = torch.randint(0, 50, (3, 4))
    model(input_ids=ids, labels=ids).loss.backward()  # eager: what is checked here is the naming
    stats = hf_gns.gather_stats(wrapper)
    names = {n for n, p in model.named_parameters() if "norm" in n}
    assert set(stats.per_param) == names
    assert stats.total.num_examples == 3


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_saved_patched_model_loads_patched_and_records(how, tmp_path):
    """torch.save / pickle of a whole patched model: the loaded model is patched and records."""
    import pickle

    model = make_model("llama")
    ref = clone(model)
    hf_gns.patch_model(model, kernel="torch")
    if how == "torch.save":
        torch.save(model, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    else:
        loaded = pickle.loads(pickle.dumps(model))
    assert sorted(hf_gns.patched_module_names(loaded)) == sorted(hf_gns.patched_module_names(model))
    batch = make_batch("llama", loaded, 3, rand_length(2, 5, 3))
    n = batch["targets"].numel()
    (_forward_losses(loaded, batch).sum() / n).backward()
    stats = hf_gns.gather_stats(loaded)
    assert_stats_match(stats, oracle_stats(example_grads_bruteforce(ref, batch, norm_param_names(ref), n)),
                       rtol=1e-5, what=how)
    hf_gns.unpatch_model(loaded)
    assert hf_gns.patched_module_names(loaded) == []
    torch.testing.assert_close(loaded(input_ids=batch["input_ids"]).logits, ref(input_ids=batch["input_ids"]).logits)


def test_data_parallel_is_refused_with_what_to_do_instead(tmp_path):
    """nn.DataParallel (the Trainer's choice with several GPUs and no launcher) is refused at
    train start and at patch time, saying what to use instead."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args._n_gpu = 2  # what the Trainer sees on a machine with two GPUs and no torchrun
    model = make_model("llama")
    hf_gns.patch_model(model, kernel="torch")
    with pytest.raises(RuntimeError, match="DataParallel.*torchrun"):
        hf_gns.GNSCallback().on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    with pytest.raises(TypeError, match="DataParallel"):
        hf_gns.patch_model(torch.nn.DataParallel(make_model("llama")))


def test_bad_model_and_kernel_arguments_say_what_is_wrong(monkeypatch):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        hf_gns.patch_model("not a model")
    with pytest.raises(ValueError, match="kernel must be one of"):
        hf_gns.patch_model(make_model("llama"), kernel="cuda")
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="kernel='triton'.*CUDA tensors.*kernel='auto'"):
        hf_gns.patch_model(make_model("llama"), kernel="triton")


def test_patching_a_model_without_norms_warns():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with pytest.warns(UserWarning, match="no normalization layer"):
        assert hf_gns.patch_model(model) == []


def test_print_model_marks_patched_norms_and_unpatch_removes_the_mark():
    import pickle

    model = make_model("llama")
    hf_gns.patch_model(model)
    text = repr(model)
    norms = [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert norms and all(repr(n).endswith("hf_gns=llama_rms)") for n in norms) and "hf_gns=llama_rms" in text
    assert f"eps={norms[0].variance_epsilon}" in repr(norms[0])  # the module's own description kept
    hf_gns.set_recording(model, False)
    assert "hf_gns=llama_rms (recording off)" in repr(norms[0])
    hf_gns.set_recording(model, True)
    assert "hf_gns=llama_rms" in repr(pickle.loads(pickle.dumps(model)))
    hf_gns.unpatch_model(model)
    assert "hf_gns" not in repr(model)


def test_tap_bank_regions_views_growth_relink_and_copies():
    """`TapBank`: each tap's gradient is a view of its region of one flat leaf per device; growing a
    root keeps what it held; a region reserved for all parameters holds a narrower layout in place;
    a replaced gradient is linked back; copies keep the regions with roots of their own."""
    import copy

    from hf_gns.slots import TapBank

    generator = torch.Generator().manual_seed(torch.seed())
    widths = [int(w) for w in torch.randint(1, 40, (4,), generator=generator)]
    bank = TapBank()
    taps = {}
    for i, width in enumerate(widths):
        taps[f"n{i}"] = torch.zeros(width, requires_grad=True)
        bank.attach(f"n{i}", taps[f"n{i}"], reserve=width + i)
    (root,) = bank.roots
    assert root.numel() == sum(w + i for i, w in enumerate(widths))
    values = {name: torch.randn(tap.numel(), generator=generator) for name, tap in taps.items()}
    for name, tap in taps.items():
        (tap * values[name]).sum().backward()  # eager accumulation lands in the root's gradient
    for name, (index, offset, _) in bank.regions.items():
        assert torch.equal(root.grad[offset: offset + taps[name].numel()], values[name])
    # a compiled graph reads the root: its gradient adds to the same numbers
    index, offset, _ = bank.regions["n2"]
    (bank.roots[0].narrow(0, offset, widths[2]) * 2).sum().backward()
    assert torch.equal(taps["n2"].grad, values["n2"] + 2)
    # a new norm grows the root; the others keep their numbers and stay views of it
    late = torch.zeros(7, requires_grad=True)
    bank.attach("late", late)
    assert bank.roots[0] is not root and torch.equal(taps["n1"].grad, values["n1"])
    assert taps["n1"].grad.data_ptr() == bank.roots[0].grad.data_ptr() + bank.regions["n1"][1] * 4
    # a narrower tap of the same norm keeps its region
    narrower = torch.zeros(max(widths[3] - 1, 1) + 3, requires_grad=True)
    before = bank.regions["n3"]
    bank.attach("n3", narrower)
    assert bank.regions["n3"] == before and narrower.grad.data_ptr() == bank.roots[0].grad.data_ptr() + before[1] * 4
    # something replaced a gradient: relinked to the region
    taps["n0"].grad = torch.ones(widths[0])
    bank.relink()
    assert taps["n0"].grad.data_ptr() == bank.roots[0].grad.data_ptr() + bank.regions["n0"][1] * 4
    copied = copy.deepcopy(bank)
    assert copied.regions == bank.regions and copied.roots[0] is not bank.roots[0]
    assert copied.roots[0].numel() == bank.roots[0].numel() and not copied.roots[0].grad.any() and not copied.taps
    bank.detach("late")
    assert "late" not in bank.regions and "late" not in bank.taps
