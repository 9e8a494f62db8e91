"""GNSCallback inside real (tiny, CPU) Hugging Face Trainer runs."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch.utils.data import Dataset, SequentialSampler

import hf_gns
from helpers import clone, example_grads_bruteforce, make_model, norm_param_names

from transformers import Trainer, TrainerCallback, TrainingArguments

SEQ = 6
GNS_KEYS = ("gns/b_simple", "gns/b_simple_tokens", "gns/g2", "gns/trace_sigma",
            "gns/step_b_simple", "gns/step_g2", "gns/step_trace_sigma")


class TokenDataset(Dataset):
    def __init__(self, n: int, seq: int = SEQ, vocab: int = 97):
        self.ids = torch.randint(0, vocab, (n, seq))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


class SequentialTrainer(Trainer):
    """Examples in dataset order, so that a step's batch is known to the test."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


class SkipNonFiniteSGD(torch.optim.SGD):
    """Skips a step whose gradients are not finite (keeps the model alive after a NaN batch)."""

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    return None
        return super().step(closure)


def train(tmp_path, dataset, *, callbacks=(), steps=20, batch=4, ga=1, seed=1234, max_grad_norm=1.0,
          model=None, sequential=False, optimizer=None, lr=1e-3):
    model = model if model is not None else make_model("llama")
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga, learning_rate=lr, logging_steps=1, report_to="none",
        use_cpu=True, save_strategy="no", seed=seed, data_seed=seed, max_grad_norm=max_grad_norm,
        disable_tqdm=True, dataloader_num_workers=0, warmup_steps=0,
    )
    cls = SequentialTrainer if sequential else Trainer
    trainer = cls(model=model, args=args, train_dataset=dataset, callbacks=list(callbacks),
                  optimizers=(optimizer, None) if optimizer is not None else (None, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer


def step_logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


def hf_loss_oracle(model, dataset, indices):
    """Step-1 |G|^2 and tr(Sigma) from brute-force per-example gradients with the Trainer's loss
    normalization (sum of token losses / shifted label tokens of the whole optimizer step)."""
    ids = torch.stack([dataset[i]["input_ids"] for i in indices])
    batch = {"input_ids": ids, "targets": ids}
    tokens = ids.shape[0] * (ids.shape[1] - 1)

    def losses(m, b):
        logits = m(input_ids=b["input_ids"]).logits[:, :-1].float()
        tgt = b["targets"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                               reduction="none")
        return ce.view(tgt.shape).sum(-1)

    c = torch.cat(list(example_grads_bruteforce(model, batch, norm_param_names(model), normalizer=tokens,
                                                loss_fn=losses).values()), dim=1)
    B = c.shape[0]
    g = B * c
    g_bar = g.mean(0)
    tr_s = float((g - g_bar).pow(2).sum() / (B - 1))
    return float(g_bar.pow(2).sum()) - tr_s / B, tr_s


# ---------------------------------------------------------------------------------------------
def test_keys_every_step_next_to_trainer_logs_and_oracle(tmp_path):
    dataset = TokenDataset(48)
    model = make_model("llama")
    initial = clone(model)
    gns = hf_gns.GNSCallback(ema=0.9)
    trainer = train(tmp_path, dataset, callbacks=[gns], model=model, sequential=True)
    logs = step_logs(trainer)
    assert [e["step"] for e in logs] == list(range(1, 21))
    g2_ema = hf_gns.EMA(0.9)
    tr_ema = hf_gns.EMA(0.9)
    for e in logs:
        for key in GNS_KEYS + ("loss", "grad_norm", "learning_rate"):
            assert key in e, (key, e)
        assert e["gns/skipped"] == 0.0 and e["gns/examples"] == 4.0
        assert e["gns/tokens"] == 4.0 * SEQ * e["step"]        # tokens so far, logged without a policy too
        assert math.isfinite(e["gns/step_g2"]) and math.isfinite(e["gns/step_trace_sigma"])
        if e["gns/step_g2"] > 0:
            assert e["gns/step_b_simple"] == pytest.approx(e["gns/step_trace_sigma"] / e["gns/step_g2"])
        # the smoothed values are bias-corrected EMAs of the per-step values, ratio taken after
        assert e["gns/g2"] == pytest.approx(g2_ema.update(e["gns/step_g2"]), rel=1e-9)
        assert e["gns/trace_sigma"] == pytest.approx(tr_ema.update(e["gns/step_trace_sigma"]), rel=1e-9)
        if e["gns/g2"] > 0:
            assert e["gns/b_simple"] == pytest.approx(e["gns/trace_sigma"] / e["gns/g2"], rel=1e-9)
            assert e["gns/b_simple_tokens"] == pytest.approx(e["gns/b_simple"] * SEQ, rel=1e-9)
        else:
            assert math.isnan(e["gns/b_simple"])
    # step 1 against brute-force per-example gradients of the initial model on examples 0..3
    g2, tr = hf_loss_oracle(initial, dataset, range(4))
    scale = abs(g2) + tr
    assert abs(logs[0]["gns/step_g2"] - g2) <= 1e-4 * scale, (logs[0]["gns/step_g2"], g2)
    assert abs(logs[0]["gns/step_trace_sigma"] - tr) <= 1e-4 * scale, (logs[0]["gns/step_trace_sigma"], tr)
    # the history is written to output_dir
    assert (tmp_path / "gns_history.jsonl").exists()



@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_from_pretrained_model_records_every_step_across_evaluations(tmp_path, compiled):
    """A model from ``from_pretrained`` (transformers 5.25 kernelizes it when ``kernels`` is installed,
    and again at each switch between eval and train mode: the Trainer's first step, each evaluation),
    patched, trained with evaluations between steps: every step is measured, step 1 exactly."""
    from transformers import AutoModelForCausalLM

    make_model("llama").save_pretrained(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    hf_gns.patch_model(model, kernel="torch")
    dataset = TokenDataset(40)
    gns = hf_gns.GNSCallback(ema=0.9)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, eval_strategy="steps", eval_steps=2, report_to="none", use_cpu=True,
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, torch_compile=compiled,
        torch_compile_backend="aot_eager" if compiled else None)
    trainer = SequentialTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=TokenDataset(8),
                                callbacks=[gns])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert [(h["step"], h["gns/skipped"], h["gns/examples"]) for h in gns.history] == [(s, 0.0, 4.0) for s in range(1, 6)]
    g2, tr = hf_loss_oracle(initial, dataset, range(4))
    scale = abs(g2) + tr
    first = gns.history[0]
    assert abs(first["gns/step_g2"] - g2) <= 1e-4 * scale and abs(first["gns/step_trace_sigma"] - tr) <= 1e-4 * scale

def test_loss_curve_identical_to_unpatched_run(tmp_path):
    dataset = TokenDataset(48)
    model_a = make_model("llama")
    model_b = clone(model_a)
    a = train(tmp_path / "a", dataset, callbacks=[hf_gns.GNSCallback()], model=model_a, seed=11)
    b = train(tmp_path / "b", dataset, model=model_b, seed=11)
    la, lb = step_logs(a), step_logs(b)
    assert len(la) == len(lb) == 20
    assert [e["loss"] for e in la] == [e["loss"] for e in lb]
    assert [e["grad_norm"] for e in la] == [e["grad_norm"] for e in lb]
    for (n, p), (_, q) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("attached", [True, False])
def test_attach_runs_the_callback_before_earlier_callbacks(tmp_path, attached):
    """Callbacks before GNSCallback (the report_to integrations are) see gns/* in the same log only
    when it was added with hf_gns.attach; without it they do not (and log_history still has them)."""
    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    callback = hf_gns.GNSCallback(model_card=False)
    model = make_model("llama")
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(24),
                      callbacks=[Recorder()] + ([] if attached else [callback]))
    if attached:
        hf_gns.attach(trainer, callback)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    step_entries = [s for s in seen if "loss" in s]
    assert len(step_entries) == 4
    for s in step_entries:
        for key in GNS_KEYS:
            assert (key in s) == attached, (key, s)
    assert all(key in e for e in step_logs(trainer) for key in GNS_KEYS)


def test_attach_merges_gns_into_the_log_before_any_callback_sees_it(tmp_path):
    """With hf_gns.attach the gns/* values join ``logs`` inside ``Trainer.log`` (the method the
    Trainer documents for overriding), before it stores the log_history entry and calls any
    callback: a callback placed ahead of GNSCallback afterwards still sees them, with the values
    log_history holds; attaching twice wraps once."""
    seen = []

    class Early(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    callback = hf_gns.GNSCallback(model_card=False)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, logging_steps=1,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=make_model("llama"), args=args, train_dataset=TokenDataset(24))
    hf_gns.attach(trainer, callback)
    wrapped = trainer.log
    hf_gns.attach(trainer, callback)
    assert trainer.log is wrapped
    trainer.callback_handler.callbacks.insert(0, Early())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    early = [s for s in seen if "loss" in s]
    history = step_logs(trainer)
    assert len(early) == len(history) == 3
    for e, h in zip(early, history):
        for key in GNS_KEYS:
            assert key in e and (e[key] == h[key] or (math.isnan(e[key]) and math.isnan(h[key]))), key


def test_batch_of_one_is_skipped_not_crashing(tmp_path):
    dataset = TokenDataset(8)
    trainer = train(tmp_path, dataset, callbacks=[hf_gns.GNSCallback()], steps=3, batch=1)
    logs = step_logs(trainer)
    assert len(logs) == 3
    for e in logs:
        assert e["gns/skipped"] == 1.0
        assert "gns/step_g2" not in e


def test_gradient_clipping_does_not_change_measurement(tmp_path):
    dataset = TokenDataset(24)
    model = make_model("llama")
    runs = {}
    for clip in (0.0, 1e-6):
        trainer = train(tmp_path / str(clip), dataset, callbacks=[hf_gns.GNSCallback()], steps=2,
                        model=clone(model), max_grad_norm=clip, seed=5, lr=1e-2)
        runs[clip] = step_logs(trainer)
    first_plain, first_clipped = runs[0.0][0], runs[1e-6][0]
    for key in GNS_KEYS:
        assert first_plain[key] == pytest.approx(first_clipped[key], rel=1e-12, nan_ok=True), key
    assert runs[0.0][1]["loss"] != runs[1e-6][1]["loss"]  # clipping did change the update


def test_log_layers(tmp_path):
    dataset = TokenDataset(16)
    model = make_model("llama")
    names = norm_param_names(model)
    trainer = train(tmp_path, dataset, callbacks=[hf_gns.GNSCallback(log_layers=True)], steps=2, model=model)
    for e in step_logs(trainer):
        layer_keys = {k[len("gns/layer/"):] for k in e if k.startswith("gns/layer/")}
        assert layer_keys == set(names)


def test_gradient_accumulation_matches_big_batch(tmp_path):
    dataset = TokenDataset(32)
    model = make_model("llama")
    initial = clone(model)
    small = train(tmp_path / "ga", dataset, callbacks=[hf_gns.GNSCallback()], steps=1, batch=2, ga=4,
                  model=clone(model), sequential=True)
    big = train(tmp_path / "big", dataset, callbacks=[hf_gns.GNSCallback()], steps=1, batch=8, ga=1,
                model=clone(model), sequential=True)
    a, b = step_logs(small)[0], step_logs(big)[0]
    assert a["gns/examples"] == b["gns/examples"] == 8.0
    g2, tr = hf_loss_oracle(initial, dataset, range(8))
    scale = abs(g2) + tr  # |G|^2 alone can cancel to near 0: errors are measured against both terms
    for key in ("gns/step_g2", "gns/step_trace_sigma"):
        assert abs(a[key] - b[key]) <= 1e-4 * scale, (key, a[key], b[key])
    assert abs(a["gns/step_g2"] - g2) <= 1e-4 * scale
    assert abs(a["gns/step_trace_sigma"] - tr) <= 1e-4 * scale


def test_nan_step_is_skipped_and_training_goes_on(tmp_path):
    dataset = TokenDataset(40)
    model = make_model("llama")
    calls = {"n": 0}

    def inject(module, args, output):
        if module.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                hidden = output[0] if isinstance(output, tuple) else output
                hidden = hidden.clone()
                hidden[0, 0, 0] = float("nan")
                return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        return None

    model.model.layers[0].register_forward_hook(inject)
    optimizer = SkipNonFiniteSGD(model.parameters(), lr=1e-2)
    trainer = train(tmp_path, dataset, callbacks=[hf_gns.GNSCallback()], steps=6, model=model,
                    optimizer=optimizer)
    logs = step_logs(trainer)
    assert len(logs) == 6
    assert logs[2]["gns/skipped"] == 1.0
    for e in logs[:2] + logs[3:]:
        assert e["gns/skipped"] == 0.0
        assert math.isfinite(e["gns/step_g2"]) and math.isfinite(e["gns/g2"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_packed_sequences_in_trainer_count_sequences(tmp_path):
    """DataCollatorWithFlattening: one row per step, each packed sequence is one example."""
    from transformers import DataCollatorWithFlattening

    class Ragged(Dataset):
        def __init__(self, n):
            self.items = [torch.randint(0, 97, (int(torch.randint(2, 9, ())),)).tolist() for _ in range(n)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return {"input_ids": self.items[i]}

    dataset = Ragged(24)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                             logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=0)
    trainer = SequentialTrainer(model=make_model("llama"), args=args, train_dataset=dataset,
                                data_collator=DataCollatorWithFlattening(), callbacks=[hf_gns.GNSCallback()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    logs = step_logs(trainer)
    assert len(logs) == 4
    for k, e in enumerate(logs):
        assert e["gns/skipped"] == 0.0 and e["gns/examples"] == 4.0, e
        tokens = sum(len(dataset.items[i]) for i in range(4 * k, 4 * k + 4))
        if e["gns/g2"] > 0:
            assert e["gns/b_simple_tokens"] == pytest.approx(e["gns/b_simple"] * tokens / 4, rel=1e-9)


def test_model_card_and_plots_written_at_train_end(tmp_path):
    # a fixed draw: six steps of random tokens do not always give a positive |G|^2 EMA, and without a
    # finite B_simple there is no GNS curve to draw (this test is about the report, not the estimator)
    torch.manual_seed(0)
    dataset = TokenDataset(24)
    gns = hf_gns.GNSCallback()
    trainer = train(tmp_path, dataset, callbacks=[gns], steps=6, model=make_model("llama"))
    assert any(math.isfinite(h.get("gns/b_simple", math.nan)) for h in gns.history)
    out = tmp_path
    card = (out / "README.md").read_text()
    assert gns.card_path == str(out / "README.md")
    assert "## Gradient noise scale" in card and "gns.png" in card
    finite = [h["gns/b_simple"] for h in gns.history if math.isfinite(h.get("gns/b_simple", math.nan))]
    from hf_gns.model_card import fmt_number

    assert f"| Final B_simple (examples) | {fmt_number(finite[-1] if finite else None)} |" in card
    for name in ("gns.png", "loss.png"):
        assert (out / name).stat().st_size > 1000
    assert len(step_logs(trainer)) == 6


def test_model_card_can_be_turned_off(tmp_path):
    train(tmp_path, TokenDataset(16), callbacks=[hf_gns.GNSCallback(model_card=False)], steps=3)
    assert not (tmp_path / "README.md").exists()


def test_nothing_recorded_is_skipped_with_the_reason_once(caplog):
    """A step without statistics (no trainable norm parameter ran) is logged as skipped, warned about once."""
    import logging

    from hf_gns.stats import GradientStats, ParamStats

    gns = hf_gns.GNSCallback()
    empty = GradientStats(per_param={}, total=ParamStats(0, 0.0, 0.0))
    with caplog.at_level(logging.DEBUG, logger="hf_gns"):
        records = [gns.meter.measure(empty, step) for step in (1, 2, 3)]
    assert all(r == {"gns/skipped": 1.0} for r in records)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "no per-example statistics" in warned[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 2


class FakeScaler:
    """Stands for the GradScaler that accelerate gives an fp16 run on CUDA: the loss is multiplied
    by ``scale`` (by `ScaledLossTrainer`), `step` unscales and steps, `update` halves the scale on
    the steps listed in ``overflow_at`` (so accelerate reports them as skipped)."""

    def __init__(self, scale: float, overflow_at=()):
        self.scale, self.overflow_at, self.steps = scale, set(overflow_at), 0

    def is_enabled(self):
        return True

    def get_scale(self):
        return self.scale

    def step(self, optimizer, closure=None):
        self.steps += 1
        if self.steps in self.overflow_at:
            return None
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scale)
        return optimizer.step()

    def update(self):
        if self.steps in self.overflow_at:
            self.scale /= 2


class ScaledLossTrainer(SequentialTrainer):
    loss_scale = 1.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss * self.loss_scale


class InstallScaler(TrainerCallback):
    def __init__(self, scaler):
        self.scaler = scaler

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        from accelerate.optimizer import patch_optimizer_step

        # what AcceleratedOptimizer.__init__ sets up when accelerate hands it a scaler
        optimizer.scaler = self.scaler
        optimizer._accelerate_step_called = False
        optimizer._optimizer_original_step_method = optimizer.optimizer.step
        optimizer._optimizer_patched_step_method = patch_optimizer_step(optimizer, optimizer.optimizer.step)


def test_fp16_loss_scale_divided_out_and_skipped_steps_dropped(tmp_path):
    dataset = TokenDataset(24)
    model = make_model("llama")
    runs = {}
    for name, scale, overflow in (("plain", 1.0, ()), ("scaled", 2.0 ** 14, (2,))):
        gns = hf_gns.GNSCallback(model_card=False)
        callbacks = [gns] + ([InstallScaler(FakeScaler(scale, overflow))] if scale != 1.0 else [])
        args = TrainingArguments(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=4,
                                 learning_rate=1e-3, logging_steps=1, report_to="none", use_cpu=True,
                                 save_strategy="no", seed=0, max_grad_norm=0.0, disable_tqdm=True)
        ScaledLossTrainer.loss_scale = scale
        trainer = ScaledLossTrainer(model=clone(model), args=args, train_dataset=dataset, callbacks=callbacks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        runs[name] = {h["step"]: h for h in gns.history}
    plain, scaled = runs["plain"], runs["scaled"]
    # step 1: same model, same batch; the statistics carry scale^2, divided out before the estimate
    scale = abs(plain[1]["gns/step_g2"]) + plain[1]["gns/step_trace_sigma"]
    for key in ("gns/step_g2", "gns/step_trace_sigma"):
        assert abs(scaled[1][key] - plain[1][key]) <= 1e-4 * scale, key
    # step 2 overflowed (the scaler skipped it): logged as skipped, not folded into the EMAs
    assert scaled[2]["gns/skipped"] == 1.0 and "gns/step_g2" not in scaled[2]
    assert scaled[3]["gns/skipped"] == 0.0


def _scalar_steps(logdir) -> dict[str, list[int]]:
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: dict[str, list[int]] = {}
    for root, _, files in os.walk(logdir):
        if any(f.startswith("events.out.tfevents") for f in files):
            acc = EventAccumulator(root)
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                steps.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return steps


@pytest.mark.parametrize("attached", [True, False])
def test_tensorboard_event_files_hold_gns_at_the_loss_steps(tmp_path, attached, caplog):
    """A real report_to integration: with hf_gns.attach the TensorBoard event files hold gns/* at the
    same steps as loss; given in callbacks=[...] (after the integrations) they hold none, and a
    warning says how to fix it."""
    pytest.importorskip("tensorboard")
    args = TrainingArguments(  # event files go under output_dir (runs/...)
        output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=3, logging_steps=1,
        report_to=["tensorboard"], use_cpu=True, save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0,
    )
    model = make_model("llama")
    hf_gns.patch_model(model)
    callback = hf_gns.GNSCallback(model_card=False)
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(30),
                      callbacks=[] if attached else [callback])
    if attached:
        assert hf_gns.attach(trainer, callback) is callback
        assert trainer.callback_handler.callbacks[0] is callback
        assert sum(c is callback for c in trainer.callback_handler.callbacks) == 1
    with caplog.at_level("WARNING", logger="hf_gns.callback"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    trainer.callback_handler.callbacks = []  # flush and close the writer
    steps = _scalar_steps(tmp_path)
    assert sorted(steps["train/loss"]) == [1, 2, 3, 4, 5]
    gns_tags = [t for t in steps if t.startswith("train/gns/")]
    if attached:
        assert "train/gns/tokens" in gns_tags and "train/gns/g2" in gns_tags
        for tag in gns_tags:
            assert sorted(steps[tag]) == sorted(steps["train/loss"]), tag
        assert "hf_gns.attach" not in caplog.text
    else:
        assert gns_tags == []
        assert "hf_gns.attach(trainer)" in caplog.text and "tensorboard" in caplog.text
        assert all("gns/g2" in e for e in step_logs(trainer))  # still measured and in log_history


def test_attach_validates_its_arguments(tmp_path):
    trainer = Trainer(model=make_model("llama"), args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                      use_cpu=True))
    with pytest.raises(TypeError, match="either a callback or its arguments"):
        hf_gns.attach(trainer, hf_gns.GNSCallback(), ema=0.9)
    with pytest.raises(TypeError, match="must be a GNSCallback, got str"):
        hf_gns.attach(trainer, "gns")
    made = hf_gns.attach(trainer, ema=0.9)
    assert made.ema == 0.9 and trainer.callback_handler.callbacks[0] is made


def test_policy_state_is_logged_and_a_policy_that_cannot_act_says_so(tmp_path, caplog):
    """gns:max=64 over fewer steps than min_steps: warned at start, and every step logs
    gns/policy_state = warming up; with min_steps=0 on a policy whose target exceeds the batch
    the state is 'growing' and the target is logged."""
    from hf_gns.schedule import POLICY_STATES

    with caplog.at_level("WARNING", logger="hf_gns"):
        idle = train(tmp_path / "idle", TokenDataset(40), callbacks=[hf_gns.GNSCallback(batch_size_policy="gns:max=64")],
                     steps=6, batch=2)
    assert "waits for min_steps=50 measured steps, but the run has 6" in caplog.text
    states = [e["gns/policy_state"] for e in step_logs(idle)[1:]]  # (a step logs the state at the end of the one before)
    assert states and all(s == POLICY_STATES["warming_up"] for s in states)
    assert "step 1: batch-size policy warming up (0 of min_steps=50 measured steps)" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_gns"):
        grow = train(tmp_path / "grow", TokenDataset(80), callbacks=[hf_gns.GNSCallback(batch_size_policy="linear:2:8:200")],
                     steps=6, batch=2)
    logs = step_logs(grow)[1:]
    assert any(e["gns/policy_state"] == POLICY_STATES["growing"] for e in logs)
    assert all(e["gns/policy_target"] >= 2 for e in logs)
    assert "batch-size policy growing" in caplog.text


def test_a_users_own_policy_drives_the_trainer_batch(tmp_path):
    """Any object with target(...) is a policy: this one asks for twice the starting batch after 2 steps."""

    class DoubleAfterTwoSteps:
        def __init__(self):
            self.calls = []

        def target(self, tokens, b_simple, start_batch, budget, measured_steps=None):
            self.calls.append(tokens)
            return 2 * start_batch if len(self.calls) >= 2 else None

    policy = DoubleAfterTwoSteps()
    trainer = train(tmp_path, TokenDataset(64), callbacks=[hf_gns.GNSCallback(batch_size_policy=policy)],
                    steps=6, batch=2)
    sizes = [e["gns/batch_size"] for e in step_logs(trainer)]
    assert sizes[0] == 2.0 and sizes[-1] == 4.0 and sorted(sizes) == sizes, sizes
    assert policy.calls == sorted(policy.calls) and len(policy.calls) >= 2


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", "default", None])
def test_cuda_graph_compile_modes_are_warned_about(mode, caplog):
    """A Trainer compiling with a CUDA-graph mode hears, once at train start, that hf_gns is not
    verified there; other modes and eager runs hear nothing."""
    from hf_gns.callback import warn_cuda_graph_mode

    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True, torch_compile=mode is not None,
                             torch_compile_mode=mode)
    with caplog.at_level(logging.WARNING, logger="hf_gns"):
        warn_cuda_graph_mode(args)
    warned = "CUDA graphs" in caplog.text
    assert warned == (mode in ("reduce-overhead", "max-autotune")), caplog.text
    if warned:
        assert repr(mode) in caplog.text and "max-autotune-no-cudagraphs" in caplog.text
