"""Batch-size policies (`hf_gns.schedule`) and their application inside an unmodified HF Trainer
(`hf_gns.batch_control` through `GNSCallback(batch_size_policy=...)`).

The Trainer tests use a tiny Llama, examples in dataset order (a SequentialSampler) and
thresholds computed from the dataset itself, so that which optimizer step sees which
micro-batches, where each accumulation change must land and what the LR must be are known
to the test before the run. The oracles are written from the documented contract (group
boundaries, token clock, token budget), not from the library's code:

* the parameters after a run with changing accumulation equal those of a hand-written SGD
  loop that groups the same micro-batches and normalizes by the step's label tokens;
* the LR of every optimizer step is the closed form of the linear schedule in tokens;
* a run resumed from a checkpoint continues the uninterrupted run step for step;
* under DDP (2 gloo processes under torchrun, `ddp_trainer_worker.py`) both ranks log the same
  decisions and GNS and end with bit-identical parameters.

"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import SequentialSampler

import hf_gns
from helpers import clone
from ddp_worker import free_port
from token_batches import (MICRO, VOCAB, SeqDataset, collate, cumulative, hand_sgd, label_tokens,
                           micro_batches, positions, tiny_llama)
from hf_gns.schedule import GNSPolicy, LinearSchedule, StepSchedule, accumulation_for, make_policy

from transformers import Trainer, TrainerCallback, TrainingArguments

pytestmark = pytest.mark.usefixtures("one_thread")



# ---------------------------------------------------------------------------------------------
# 1. schedule.py
# ---------------------------------------------------------------------------------------------
def test_make_policy_parses_every_documented_form():
    assert make_policy("gns") == GNSPolicy()
    assert make_policy("gns") == GNSPolicy(k=1.0, min_batch=None, max_batch=None, warmup_tokens=0.0)
    p = make_policy("gns:k=2,min=16,max=512,warmup=1e6")
    assert p == GNSPolicy(k=2.0, min_batch=16, max_batch=512, warmup_tokens=1e6)
    assert isinstance(p.min_batch, int) and isinstance(p.max_batch, int)
    assert isinstance(p.k, float) and isinstance(p.warmup_tokens, float)
    assert make_policy("gns:max=64") == GNSPolicy(max_batch=64)
    assert make_policy("gns:min_steps=3,k=0.5") == GNSPolicy(k=0.5, min_steps=3)
    assert make_policy("linear:16:120") == LinearSchedule(16, 120, None)
    assert make_policy("linear:16:120:5e8") == LinearSchedule(16, 120, 5e8)
    s = make_policy("steps:0:16,1e8:32,2e8:64")
    assert s == StepSchedule(((0.0, 16), (1e8, 32), (2e8, 64)))
    # objects pass through untouched
    for obj in (p, s, LinearSchedule(1, 2)):
        assert make_policy(obj) is obj


@pytest.mark.parametrize("spec", [
    "", "adaptive", "gns:q=3", "gns:k", "gns:min_steps=x", "gns:k=abc", "gns:min=", "linear", "linear:16", "linear:a:b",
    "steps", "steps:", "steps:0", "steps:0:16,1e8", "steps:0:x", "steps:0:16:3",
])
def test_make_policy_rejects_bad_strings(spec):
    with pytest.raises(ValueError):
        make_policy(spec)


@pytest.mark.parametrize("spec", [None, 16, 3.5, ["gns"]])
def test_make_policy_rejects_non_strings(spec):
    with pytest.raises(TypeError):
        make_policy(spec)


def test_linear_schedule_targets_by_hand():
    s = LinearSchedule(16, 120, 1000.0)
    # 16 + 104 * t / 1000, rounded
    assert s.target(0, math.nan, 16, None) == 16
    assert s.target(100, math.nan, 16, None) == 26      # 26.4
    assert s.target(250, math.nan, 16, None) == 42      # 42.0
    assert s.target(500, math.nan, 16, None) == 68      # 68.0
    assert s.target(999, math.nan, 16, None) == 120     # 119.896
    assert s.target(1000, math.nan, 16, None) == 120
    assert s.target(5000, math.nan, 16, None) == 120    # held at the end
    assert s.target(-10, math.nan, 16, None) == 16      # never before the start
    # the span defaults to the budget
    b = LinearSchedule(4, 8)
    assert b.target(0, 1.0, 4, 400.0) == 4
    assert b.target(100, 1.0, 4, 400.0) == 5            # 4 + 4 * 0.25
    assert b.target(300, 1.0, 4, 400.0) == 7
    assert b.target(400, 1.0, 4, 400.0) == 8
    # an explicit span wins over the budget
    assert LinearSchedule(4, 8, 100.0).target(50, 1.0, 4, 400.0) == 6
    with pytest.raises(ValueError):
        LinearSchedule(4, 8).target(10, 1.0, 4, None)


def test_step_schedule_targets():
    s = make_policy("steps:0:16,1e8:32,2e8:64")
    assert s.target(0, math.nan, 16, None) == 16
    assert s.target(1e8 - 1, math.nan, 16, None) == 16
    assert s.target(1e8, math.nan, 16, None) == 32
    assert s.target(1.5e8, math.nan, 16, None) == 32
    assert s.target(2e8, math.nan, 16, None) == 64
    assert s.target(1e12, math.nan, 16, None) == 64
    # points in any order; before the first point there is no target
    u = StepSchedule(((200.0, 8), (100.0, 4)))
    assert u.target(50, 1.0, 2, None) is None
    assert u.target(100, 1.0, 2, None) == 4
    assert u.target(250, 1.0, 2, None) == 8
    # GNS does not matter
    assert s.target(1.5e8, 1e9, 16, None) == 32


def test_gns_policy_clamp_warmup_nan():
    p = GNSPolicy(k=2.0, min_batch=16, max_batch=512, warmup_tokens=1000)
    assert p.target(999, 100.0, 8, None) is None            # warmup
    assert p.target(1000, 100.0, 8, None) == 200            # 2 * 100
    assert p.target(1000, 3.0, 8, None) == 16               # clamped to min
    assert p.target(1000, 1e6, 8, None) == 512              # clamped to max
    assert p.target(1000, 40.2, 8, None) == 80              # round(80.4)
    for bad in (math.nan, math.inf, -math.inf, -5.0, 0.0):
        assert p.target(5000, bad, 8, None) is None, bad
    # no decision before min_steps measured steps (when the caller says how many)
    m = GNSPolicy(min_steps=5)
    assert m.target(0, 100.0, 8, None, 4) is None
    assert m.target(0, 100.0, 8, None, 5) == 100
    assert m.target(0, 100.0, 8, None) == 100
    # min defaults to the starting batch, no max by default
    q = GNSPolicy()
    assert q.target(0, 3.0, 8, None) == 8
    assert q.target(0, 12.4, 8, None) == 12
    assert q.target(0, 1e5, 8, None) == 100000


def test_accumulation_for_multiples_of_current_never_below():
    # hand-computed cases: (target batch, micro batch, current) -> accumulation
    cases = {(16, 2, 1): 8, (4, 2, 1): 2, (8, 2, 2): 4, (12, 2, 2): 6, (14, 2, 4): 8,
             (16, 2, 4): 8, (2, 2, 4): 4, (1, 8, 1): 1, (100, 8, 3): 12, (64, 4, 3): 15}
    for (target, micro, current), want in cases.items():
        assert accumulation_for(target, micro, current) == want, (target, micro, current)
    for target in range(1, 300, 7):
        for micro in (1, 2, 3, 8):
            for current in (1, 2, 3, 4, 6):
                got = accumulation_for(target, micro, current)
                assert got % current == 0 and got >= current, (target, micro, current, got)
                # within rounding of the multiple of `current` nearest to target / micro
                if target / micro <= current:
                    assert got == current, (target, micro, current, got)
                else:
                    assert abs(got - target / micro) <= current / 2 + 0.5, (target, micro, current, got)


# ---------------------------------------------------------------------------------------------
# Trainer helpers
# ---------------------------------------------------------------------------------------------
class RecordingTrainer(Trainer):
    """Examples in dataset order; records every training micro-batch and its num_items_in_batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro = []

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.micro.append({"step": self.state.global_step,
                               "num_items": None if num_items_in_batch is None else int(num_items_in_batch),
                               "input_ids": inputs["input_ids"].detach().cpu().clone(),
                               "labels": inputs["labels"].detach().cpu().clone()})
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


class Recorder(TrainerCallback):
    """Per optimizer step: micro-batches, GA after the step, state.max_steps, micro-batches this epoch."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.steps = []
        self.ga_at_begin = None
        self._micro = 0
        self._epoch_micro = 0
        self.epoch_starts = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ga_at_begin = args.gradient_accumulation_steps

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_micro = 0
        self.epoch_starts.append(state.global_step)

    def on_substep_end(self, args, state, control, **kwargs):
        self._micro += 1
        self._epoch_micro += 1

    def on_step_end(self, args, state, control, **kwargs):
        self._micro += 1
        self._epoch_micro += 1
        self.steps.append({"step": state.global_step, "micro": self._micro, "epoch_micro": self._epoch_micro,
                           "ga": args.gradient_accumulation_steps, "max_steps": state.max_steps})
        self._micro = 0
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = True


def make_args(out, **over):
    kw = dict(output_dir=str(out), per_device_train_batch_size=MICRO, gradient_accumulation_steps=1,
              learning_rate=1e-3, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
              seed=0, data_seed=0, max_grad_norm=0.0, disable_tqdm=True, dataloader_num_workers=0,
              warmup_steps=0, lr_scheduler_type="linear", max_steps=10)
    kw.update(over)
    return TrainingArguments(**kw)


def run_trainer(args, model, dataset, callbacks, optimizers=(None, None), resume=None):
    trainer = RecordingTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                               callbacks=list(callbacks), optimizers=optimizers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume)
    return trainer


def step_logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


# ---------------------------------------------------------------------------------------------
# 2. accumulation changes land on group boundaries; the optimizer steps are the right ones
# ---------------------------------------------------------------------------------------------
# Thresholds are met exactly at the end of micro-batch 5, 13 and (epoch 2) 10; 49 micro-batches an epoch.
# Starting at GA 1 (batch 2): target 4 (GA 2) seen after micro 5, on a boundary after micro 6; GA 2
# ends groups at 8..14, target 8 (GA 4) seen at 14, applied after 16; GA 4 to the end of epoch 1
# (49 = 16 + 8*4 + 1: a partial group of 1). Epoch 2: GA 4 ends groups at 4, 8, 12; target 16 (GA 8)
# seen at 12, applied after 16; then 4 groups of 8 to micro 48 and a group of 1.
# Starting at GA 2 (batch 4): target 8 (GA 4) seen at 6, applied after 8; GA 4 ends groups at 12,
# 16, target 16 (GA 8) seen at 16 and applied at once; 4 groups of 8 and a group of 1. Epoch 2:
# GA 8 ends groups at 8, 16, target 32 (GA 16) seen at 16 and applied at once; 2 groups of 16 and 1.
BOUNDARY_CASES = {
    "ga1": dict(ga0=1, batches=(2, 4, 8, 16),
                sizes=[1] * 6 + [2] * 5 + [4] * 8 + [1] + [4] * 4 + [8] * 4 + [1],
                ga_after=[1] * 5 + [2] * 5 + [4] * 10 + [4] * 3 + [8] * 6,
                changes=[(6, 2, 4), (11, 4, 8), (24, 8, 16)]),
    "ga2": dict(ga0=2, batches=(4, 8, 16, 32),
                sizes=[2] * 4 + [4] * 2 + [8] * 4 + [1] + [8] * 2 + [16] * 2 + [1],
                ga_after=[2] * 3 + [4] * 2 + [8] * 6 + [8] + [16] * 4,
                changes=[(4, 4, 8), (6, 8, 16), (13, 16, 32)]),
}


@pytest.mark.parametrize("case", list(BOUNDARY_CASES))
def test_changes_on_group_boundaries_match_hand_written_loop(tmp_path, case):
    c = BOUNDARY_CASES[case]
    dataset = SeqDataset(98)                       # 49 micro-batches of 2: a partial last group
    epoch = micro_batches(dataset)
    stream = epoch + epoch                         # two epochs, same order
    cum = cumulative(positions(b) for b in stream)
    n_epoch = len(epoch)
    X, Y, Z = cum[5 - 1], cum[13 - 1], cum[n_epoch + 10 - 1]
    b0, b1, b2, b3 = c["batches"]
    policy = f"steps:0:{b0},{X}:{b1},{Y}:{b2},{Z}:{b3}"
    sizes, expected_ga_after = c["sizes"], c["ga_after"]
    assert sum(sizes) == 2 * n_epoch and len(expected_ga_after) == len(sizes)

    model = tiny_llama()
    initial = clone(model)
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = LambdaLR(opt, lambda s: 1.0)
    gns = hf_gns.GNSCallback(batch_size_policy=policy, max_tokens=100 * cum[-1])
    rec = Recorder()
    args = make_args(tmp_path, max_steps=-1, num_train_epochs=2, gradient_accumulation_steps=c["ga0"])
    trainer = run_trainer(args, model, dataset, [gns, rec], optimizers=(opt, sched))

    # the Trainer saw the micro-batches in dataset order
    assert len(trainer.micro) == len(stream)
    for got, want in zip(trainer.micro, stream):
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["labels"], want["labels"])
    # micro-batches per optimizer step, as the callbacks see them and as compute_loss saw them
    assert [s["micro"] for s in rec.steps] == sizes
    by_step = [sum(1 for m in trainer.micro if m["step"] == k) for k in range(len(sizes))]
    assert by_step == sizes
    assert [s["ga"] for s in rec.steps] == expected_ga_after
    # generic invariants: changes on boundaries, full groups of the count in force
    ga = rec.ga_at_begin
    assert ga == c["ga0"]
    for s in rec.steps:
        if s["ga"] != ga:
            assert s["ga"] > ga and s["ga"] % ga == 0
            assert s["epoch_micro"] % s["ga"] == 0, s
        ga_in_force = ga
        at_epoch_end = s["epoch_micro"] == n_epoch
        assert s["micro"] == ga_in_force or (at_epoch_end and s["micro"] < ga_in_force), s
        ga = s["ga"]
    # the library's own record of its changes
    assert [(ch["step"], ch["accumulation_steps"], ch["batch_size"]) for ch in gns.control.changes] == c["changes"]
    # num_items_in_batch = label tokens after the causal shift over all micro-batches of the step
    start = 0
    for k, size in enumerate(sizes):
        group = stream[start:start + size]
        want = sum(label_tokens(b) for b in group)
        got = {m["num_items"] for m in trainer.micro if m["step"] == k}
        assert got == {want}, (k, got, want)
        # the shift matters: it is not the unshifted count
        assert want == sum(int((b["labels"] != -100).sum()) - b["labels"].shape[0] for b in group)
        start += size
    # logged per step
    logs = step_logs(trainer)
    assert [e["step"] for e in logs] == list(range(1, len(sizes) + 1))
    # the logged count is the one the step ran with
    in_force = [c["ga0"]] + expected_ga_after[:-1]
    assert [e["gns/accumulation_steps"] for e in logs] == [float(g) for g in in_force]
    assert [e["gns/batch_size"] for e in logs] == [float(MICRO * g) for g in in_force]
    assert [e["gns/tokens"] for e in logs] == [float(c) for c in cumulative(
        sum(positions(b) for b in stream[a:a + n]) for a, n in zip(cumulative([0] + sizes[:-1]), sizes))]

    # parameters == the hand-written loop with the same grouping
    groups, start = [], 0
    for size in sizes:
        groups.append(stream[start:start + size])
        start += size
    oracle = hand_sgd(clone(initial), groups, lr)
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), oracle.named_parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7, msg=name)
    # the comparison is not vacuous: the run moved the parameters, and another grouping of the
    # same micro-batches (every step at GA 1, no change) ends elsewhere
    other = hand_sgd(clone(initial), [[b] for b in stream], lr)
    with torch.no_grad():
        moved = max(float((p - q).abs().max()) for p, q in zip(oracle.parameters(), initial.parameters()))
        apart = max(float((p - q).abs().max()) for p, q in zip(oracle.parameters(), other.parameters()))
    assert moved > 1e-3 and apart > 1e-4, (moved, apart)


# ---------------------------------------------------------------------------------------------
# 3. the LR follows tokens, whatever the batch schedule
# ---------------------------------------------------------------------------------------------
def tokens_per_step(trainer):
    """Input positions of each optimizer step, from what compute_loss saw (step k at index k-1)."""
    steps = trainer.state.global_step
    return [sum(positions(m) for m in trainer.micro if m["step"] == k) for k in range(steps)]


def growing_policy(dataset, at=(3, 9), batches=(4, 8)):
    cum = cumulative(positions(b) for b in micro_batches(dataset))
    return "steps:0:2," + ",".join(f"{cum[m - 1]}:{b}" for m, b in zip(at, batches))


def test_lr_is_the_same_curve_in_tokens_for_fixed_and_growing_batch(tmp_path):
    dataset = SeqDataset(96)
    N, lr = 20, 1e-3
    init = tiny_llama()
    runs = {}
    for name, policy in (("fixed", "steps:0:2"), ("growing", growing_policy(dataset, at=(2, 5)))):
        gns = hf_gns.GNSCallback(batch_size_policy=policy)
        rec = Recorder()
        trainer = run_trainer(make_args(tmp_path / name, max_steps=N, learning_rate=lr), clone(init), dataset,
                              [gns, rec])
        runs[name] = (trainer, rec)

    for name, (trainer, rec) in runs.items():
        logs = step_logs(trainer)
        per_step = tokens_per_step(trainer)
        assert len(logs) == len(per_step) == trainer.state.global_step
        after = cumulative(per_step)
        before = [0] + after[:-1]
        budget = N * per_step[0]
        # the token clock is what the Trainer fed
        assert [e["gns/tokens"] for e in logs] == [float(t) for t in after], name
        for e, t in zip(logs, before):
            want = lr * max(0.0, 1.0 - t / budget)
            assert abs(e["learning_rate"] - want) <= 1e-9 * want + 1e-18, (name, e["step"], e["learning_rate"], want)
            assert e["gns/lr_step_equivalent"] == pytest.approx((t + per_step[e["step"] - 1]) / per_step[0],
                                                               rel=1e-12)
        # the run ends at the first step that reaches the budget
        assert after[-1] >= budget and (len(after) == 1 or after[-2] < budget), name
        assert trainer.state.global_step == trainer.state.max_steps

    # the growing run really grew, took fewer steps, and its LR is not the step-count schedule
    g_trainer, g_rec = runs["growing"]
    assert {1, 2, 4} <= {g_rec.ga_at_begin} | {s["ga"] for s in g_rec.steps[:-1]}
    assert g_trainer.state.global_step < runs["fixed"][0].state.global_step
    step_lr = [lr * (1 - (e["step"] - 1) / N) for e in step_logs(g_trainer)]
    assert max(abs(a - e["learning_rate"]) for a, e in zip(step_lr, step_logs(g_trainer))) > 1e-5


def sqrt_scaled_run(tmp_path):
    dataset = SeqDataset(96)
    gns = hf_gns.GNSCallback(batch_size_policy=growing_policy(dataset, at=(2, 5), batches=(4, 8)), lr_scaling="sqrt")
    rec = Recorder()
    trainer = run_trainer(make_args(tmp_path, max_steps=10, learning_rate=1e-3, lr_scheduler_type="constant"),
                          tiny_llama(), dataset, [gns, rec])
    in_force = [rec.ga_at_begin] + [s["ga"] for s in rec.steps][:-1]
    assert sorted(set(in_force)) == [1, 2, 4]
    got = [e["learning_rate"] for e in step_logs(trainer)]
    want = [1e-3 * math.sqrt(g / in_force[0]) for g in in_force]       # batch / starting batch = GA ratio
    first_at_new_batch = [i for i in range(1, len(in_force)) if in_force[i] != in_force[i - 1]]
    return got, want, first_at_new_batch


def test_lr_scaling_sqrt_multiplies_lr_by_sqrt_of_batch_ratio(tmp_path):
    got, want, first = sqrt_scaled_run(tmp_path)
    assert first, "the batch never changed"
    # every step, the first one at each new batch included
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=1e-9), (i, got, want)


def test_lr_scaling_sqrt_applies_from_the_first_step_at_the_new_batch(tmp_path):
    got, want, first = sqrt_scaled_run(tmp_path)
    assert [got[i] for i in first] == pytest.approx([want[i] for i in first], rel=1e-9), (got, want)


# ---------------------------------------------------------------------------------------------
# 4. token budget
# ---------------------------------------------------------------------------------------------
SEQ = 12  # fixed length in the budget tests: every micro-batch is MICRO * SEQ positions
PER_MICRO = MICRO * SEQ


@pytest.mark.parametrize("max_steps", [3, 100])
def test_budget_stops_at_first_step_reaching_max_tokens(tmp_path, max_steps):
    dataset = SeqDataset(96, SEQ, SEQ)
    M = PER_MICRO * 7 + 5                   # reached by step 8 (192), not by step 7 (168)
    gns = hf_gns.GNSCallback(batch_size_policy="steps:0:2", max_tokens=M)
    rec = Recorder()
    trainer = run_trainer(make_args(tmp_path, max_steps=max_steps), tiny_llama(), dataset, [gns, rec])
    logs = step_logs(trainer)
    assert trainer.state.global_step == 8 == trainer.state.max_steps
    tokens = [e["gns/tokens"] for e in logs]
    assert tokens == [float(PER_MICRO * k) for k in range(1, 9)]
    assert tokens[-1] >= M > tokens[-2]
    # max_steps is the budget's step count from the first step on
    assert [s["max_steps"] for s in rec.steps] == [8] * 8


def test_max_steps_tracks_remaining_budget_with_growing_batch(tmp_path):
    dataset = SeqDataset(96, SEQ, SEQ)
    # batch 4 from 3 micro-batches on, 8 from 9 on; budget: 40 micro-batches and a bit
    policy = f"steps:0:2,{3 * PER_MICRO}:4,{9 * PER_MICRO}:8"
    M = PER_MICRO * 40 + 7
    gns = hf_gns.GNSCallback(batch_size_policy=policy, max_tokens=M)
    rec = Recorder()
    trainer = run_trainer(make_args(tmp_path, max_steps=5), tiny_llama(), dataset, [gns, rec])
    logs = step_logs(trainer)
    tokens = [e["gns/tokens"] for e in logs]
    assert len({s["ga"] for s in rec.steps}) == 3                    # 1, 2 and 4 all used
    for s, t in zip(rec.steps, tokens):
        assert t == PER_MICRO * sum(r["micro"] for r in rec.steps if r["step"] <= s["step"])
        # the steps the rest of the budget needs at the batch the next step will use
        remaining = max(0.0, M - t)
        assert s["max_steps"] == s["step"] + math.ceil(remaining / (PER_MICRO * s["ga"])), (s, t)
    assert tokens[-1] >= M > tokens[-2]
    assert trainer.state.global_step == trainer.state.max_steps == rec.steps[-1]["step"]


def test_lr_schedule_spans_the_max_tokens_budget(tmp_path):
    dataset = SeqDataset(96, SEQ, SEQ)
    M, lr = PER_MICRO * 7 + 5, 1e-3
    gns = hf_gns.GNSCallback(batch_size_policy="steps:0:2", max_tokens=M)
    trainer = run_trainer(make_args(tmp_path, max_steps=3, learning_rate=lr), tiny_llama(), dataset, [gns])
    logs = step_logs(trainer)
    assert len(logs) == 8
    for e in logs:
        before = PER_MICRO * (e["step"] - 1)
        assert e["learning_rate"] == pytest.approx(lr * (1 - before / M), rel=1e-9), e["step"]


def test_budget_beyond_planned_epochs_is_reached_or_reported(tmp_path, caplog):
    dataset = SeqDataset(16, SEQ, SEQ)             # 8 micro-batches per epoch
    M = PER_MICRO * 12                             # needs 12 steps; max_steps=4 plans one epoch
    gns = hf_gns.GNSCallback(batch_size_policy="steps:0:2", max_tokens=M)
    with caplog.at_level(logging.WARNING, logger="hf_gns"):
        trainer = run_trainer(make_args(tmp_path, max_steps=4), tiny_llama(), dataset, [gns])
    tokens = step_logs(trainer)[-1]["gns/tokens"]
    # the data ends first: one epoch (8 micro-batches) is all the Trainer planned, and that is said
    assert tokens == PER_MICRO * 8 < M
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("hf_gns") and r.levelno >= logging.WARNING]
    assert any(f"the token budget ({M} tokens) is more than the 1 epoch(s) the Trainer planned hold (about "
               f"{PER_MICRO * 8} tokens)" in m for m in warned), warned


# ---------------------------------------------------------------------------------------------
# 5. resuming from a checkpoint
# ---------------------------------------------------------------------------------------------
RESUME_STEPS = 14


def resume_policy(dataset):
    # target batch 4 once 5 micro-batches are done (GA 1 -> 2: on the boundary after micro-batch 6, step 6),
    # target 8 once 9 are done (seen at micro-batch 10, GA 2 -> 4 after micro-batch 12, step 9)
    return growing_policy(dataset, at=(5, 9), batches=(4, 8))


def resume_args(out, **over):
    return make_args(out, max_steps=RESUME_STEPS, learning_rate=3e-3, **over)


def run_interrupted(tmp_path, dataset, init, stop_at, save_steps, **over):
    """Run to ``stop_at`` (saving there), then resume a fresh Trainer on a fresh copy of the model."""
    out = tmp_path / "b"
    first = Recorder(stop_at=stop_at)
    run_trainer(resume_args(out, save_strategy="steps", save_steps=save_steps, **over), clone(init), dataset,
                [hf_gns.GNSCallback(batch_size_policy=resume_policy(dataset)), first])
    assert first.steps[-1]["step"] == stop_at
    checkpoint = out / f"checkpoint-{stop_at}"
    assert (checkpoint / "hf_gns_state.json").is_file()
    gns = hf_gns.GNSCallback(batch_size_policy=resume_policy(dataset))
    rec = Recorder()
    trainer = run_trainer(resume_args(out, save_strategy="steps", save_steps=save_steps, **over), clone(init),
                          dataset, [gns, rec], resume=str(checkpoint))
    return trainer, gns, rec


@pytest.mark.parametrize("S,schedule", [
    (4, "constant"),
    (3, "constant"),      # resumed mid-group of the later count: the epoch's micro-batch count is restored
    (4, "linear"),        # the LR lambdas are wrapped again on the resumed scheduler
])
def test_resume_before_a_change_continues_the_uninterrupted_run(tmp_path, S, schedule):
    dataset = SeqDataset(96)
    init = tiny_llama()
    gns_a = hf_gns.GNSCallback(batch_size_policy=resume_policy(dataset))
    rec_a = Recorder()
    a = run_trainer(resume_args(tmp_path / "a", lr_scheduler_type=schedule), clone(init), dataset, [gns_a, rec_a])
    # the first change comes after S
    assert [c["step"] for c in gns_a.control.changes] == [6, 9]

    b, gns_b, rec_b = run_interrupted(tmp_path, dataset, init, stop_at=S, save_steps=S, lr_scheduler_type=schedule)
    la = [e for e in step_logs(a) if e["step"] > S]
    lb = [e for e in step_logs(b) if e["step"] > S]       # log_history holds the checkpoint's steps too
    keys = ("step", "micro", "ga", "max_steps")      # (the recorder's epoch count restarts on resume)
    assert [[s[k] for k in keys] for s in rec_b.steps] == [[s[k] for k in keys] for s in rec_a.steps if s["step"] > S]
    assert [e["step"] for e in lb] == [e["step"] for e in la]
    for ea, eb in zip(la, lb):
        assert eb["learning_rate"] == pytest.approx(ea["learning_rate"], rel=1e-9), ea["step"]
        assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-5), ea["step"]
        for key in ("gns/accumulation_steps", "gns/batch_size", "gns/tokens", "gns/lr_step_equivalent"):
            assert eb[key] == ea[key], (key, ea["step"])
        for key in ("gns/b_simple", "gns/g2", "gns/trace_sigma"):
            assert eb[key] == pytest.approx(ea[key], rel=1e-4, nan_ok=True), (key, ea["step"])
    assert gns_b.control.changes == gns_a.control.changes
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-5, atol=1e-7, msg=name)


def test_resume_after_a_change_warns_and_restores_accumulation(tmp_path, caplog):
    dataset = SeqDataset(96)
    init = tiny_llama()
    with caplog.at_level(logging.WARNING, logger="hf_gns.batch_control"):
        b, gns, rec = run_interrupted(tmp_path, dataset, init, stop_at=8, save_steps=8)
        warned = [r for r in caplog.records if r.name == "hf_gns.batch_control" and r.levelno == logging.WARNING
                  and "resuming after the accumulation count changed" in r.getMessage()]
    assert len(warned) == 1
    saved = json.loads((tmp_path / "b" / "checkpoint-8" / "hf_gns_state.json").read_text())
    assert saved["batch_control"]["accumulation"] == 2
    # the Trainer's args carry the saved count from train start on; the first step runs a full group of 2
    assert rec.ga_at_begin == 2
    assert rec.steps[0]["step"] == 9 and rec.steps[0]["micro"] == 2
    first = next(e for e in step_logs(b) if e["step"] == 9)
    assert first["gns/accumulation_steps"] == 2.0
    # the token clock and the change history continue
    assert first["gns/tokens"] == saved["batch_control"]["clock"]["tokens"] + \
        sum(positions(m) for m in b.micro if m["step"] == 8)
    assert gns.control.changes[0] == saved["batch_control"]["changes"][0]


# ---------------------------------------------------------------------------------------------
# 6. the GNS-driven policy decides on the EMA it had logged
# ---------------------------------------------------------------------------------------------
def test_gns_policy_decisions_follow_logged_ema(tmp_path):
    # 8 of the 64 tokens: a clear common gradient direction, so |G|^2 > 0 and B_simple is finite early
    # (B_simple starts near 1-20 examples and falls as the model learns the unigram distribution)
    dataset = SeqDataset(160, vocab=8)
    k, low, high, warmup, min_steps = 4.0, 2, 16, 100.0, 3
    gns = hf_gns.GNSCallback(ema=0.8, batch_size_policy=f"gns:k={k},min={low},max={high},warmup={warmup:g},"
                                                        f"min_steps={min_steps}")
    rec = Recorder()
    trainer = run_trainer(make_args(tmp_path, max_steps=40), tiny_llama(), dataset, [gns, rec])
    logs = step_logs(trainer)
    per_step = tokens_per_step(trainer)
    after = cumulative(per_step)
    assert [e["gns/tokens"] for e in logs] == [float(t) for t in after]
    # B_simple (EMA) known when step j ends: the history of the steps before j (one-step lag)
    history = {h["step"]: h for h in gns.history}
    assert set(history) == set(range(1, len(logs) + 1))
    known, measured, b_known, n_known = [], [], math.nan, 0
    for j in range(1, len(logs) + 1):
        known.append(b_known)
        measured.append(n_known)
        if "gns/b_simple" in history[j]:                            # a skipped step keeps the EMA
            b_known, n_known = history[j]["gns/b_simple"], n_known + 1
    # replay: target clamp(k * B, min, max) once warm, as a multiple of the count in force; applied at
    # the first step end where the epoch's micro-batches divide it; the largest wanted count wins
    ga, pending, replay = rec.ga_at_begin, None, []
    for s, b, n, t in zip(rec.steps, known, measured, after):
        if t >= warmup and n >= min_steps and math.isfinite(b) and b > 0:
            target = int(round(min(max(k * b, low), high)))
            wanted = accumulation_for(target, MICRO, ga)
            if wanted > ga and (pending is None or wanted > pending):
                pending = wanted
        if pending is not None and s["epoch_micro"] % pending == 0:
            ga, pending = pending, None
        replay.append(ga)
    got = [s["ga"] for s in rec.steps]
    assert got == replay, list(zip(got, replay, known))
    assert all(b >= a for a, b in zip(got, got[1:]))              # never decreases
    assert len(set(got)) >= 2, (got, known)                        # the policy did act
    assert [c["accumulation_steps"] for c in gns.control.changes] == sorted(set(got))[1:]
    # no decision before min_steps measurements: the first change comes after step min_steps
    assert gns.control.changes[0]["step"] > min_steps


# ---------------------------------------------------------------------------------------------
# 7. DDP: 2 gloo processes on CPU under torchrun, an unmodified Trainer in each
# ---------------------------------------------------------------------------------------------
DDP_POSITIONS = 2 * MICRO * SEQ        # global positions per micro-batch: 2 ranks x 2 sequences x 12
DDP_MAX_STEPS = 12


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One torchrun launch, two Trainer runs per rank: fixed-length data with a policy forcing two
    changes, and dynamically padded data (lengths 8-16) with a constant batch."""
    import random

    directory = tmp_path_factory.mktemp("ddp_trainer")
    seed = random.SystemRandom().randrange(2**31)
    print(f"[hf_gns tests] ddp_runs: data seed={seed}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tiny_llama().save_pretrained(directory / "model")
    torch.save([torch.randint(0, VOCAB, (SEQ,), generator=gen) for _ in range(96)], directory / "fixed.pt")
    # batch 8 examples once 3 global micro-batches are done (pending: 3 is odd, applied after 4),
    # 16 once 7 are done (seen after micro-batch 8 at GA 2 = step 6, 8 % 4 == 0: applied at once)
    (directory / "fixed.json").write_text(json.dumps({
        "micro": MICRO, "lr": 1e-3, "schedule": "linear", "max_steps": DDP_MAX_STEPS,
        "policy": f"steps:0:4,{3 * DDP_POSITIONS}:8,{7 * DDP_POSITIONS}:16"}))
    torch.save([torch.randint(0, VOCAB, (int(torch.randint(8, 17, (), generator=gen)),), generator=gen)
                for _ in range(48)], directory / "varlen.pt")
    (directory / "varlen.json").write_text(json.dumps({
        "micro": MICRO, "lr": 1e-3, "schedule": "linear", "max_steps": -1, "epochs": 1, "max_tokens": 1e12,
        "policy": "steps:0:4"}))

    worker = os.path.join(os.path.dirname(__file__), "ddp_trainer_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), worker, str(directory), "fixed", "varlen"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)             # torchrun and the 2 workers it started (their own session)
        output, _ = proc.communicate()
        pytest.fail("torchrun timed out (ranks out of step?):\n" + output[-3000:])
    assert proc.returncode == 0, output[-5000:]
    return {name: [json.loads((directory / f"{name}.rank{r}.json").read_text()) for r in range(2)]
            for name in ("fixed", "varlen")}


def test_ddp_trainer_ranks_take_the_same_decisions_and_stay_in_sync(ddp_runs):
    r0, r1 = ddp_runs["fixed"]
    assert r0["world"] == r1["world"] == 2
    # everything logged per step is the same on both ranks (json text: NaN-safe exact equality)
    assert json.dumps(r0["steps"]) == json.dumps(r1["steps"])
    assert r0["changes"] == r1["changes"]
    assert r0["params"] == r1["params"]                     # replicas bit-identical at the end
    steps = r0["steps"]
    # decisions: GA 1 -> 2 after step 4 (pending at step 3), 2 -> 4 after step 6
    assert [(c["step"], c["accumulation_steps"], c["batch_size"]) for c in r0["changes"]] == [(4, 2, 8), (6, 4, 16)]
    in_force = [1] + [s["ga_after"] for s in steps][:-1]
    assert [s["gns/accumulation_steps"] for s in steps] == [float(g) for g in in_force]
    # global token clock: both ranks' positions; GNS over both ranks' examples
    after = cumulative(DDP_POSITIONS * g for g in in_force)
    assert [s["gns/tokens"] for s in steps] == [float(t) for t in after]
    for s, g in zip(steps, in_force):
        if s["gns/examples"] is not None:                     # (a step GNS could not measure has none)
            assert s["gns/examples"] == 2 * MICRO * g, s
    # every step measured over both ranks (B_simple itself may be NaN early: the |G|^2 EMA can be <= 0)
    assert all(s["gns/g2"] is not None and math.isfinite(s["gns/g2"]) for s in steps)
    # LR in tokens and the default budget (max_steps steps of the first step's tokens)
    budget = DDP_MAX_STEPS * DDP_POSITIONS
    for s, t in zip(steps, [0] + after[:-1]):
        assert s["learning_rate"] == pytest.approx(1e-3 * (1 - t / budget), rel=1e-9), s["step"]
    assert after[-1] >= budget > after[-2]
    assert r0["global_step"] == r0["max_steps"] == len(steps)


def test_ddp_trainer_dynamic_padding_keeps_lr_and_replicas_in_sync(ddp_runs):
    r0, r1 = ddp_runs["varlen"]
    assert r0["world"] == r1["world"] == 2
    assert [s["gns/tokens"] for s in r0["steps"]] == [s["gns/tokens"] for s in r1["steps"]]
    assert [s["learning_rate"] for s in r0["steps"]] == [s["learning_rate"] for s in r1["steps"]]
    assert r0["params"] == r1["params"]


def test_budget_not_cut_short_when_later_batches_are_shorter_than_the_first(tmp_path):
    """The step estimate comes from the first step's tokens; later, shorter micro-batches need more
    steps. With GNSCallback after the Trainer's own flow callback (callbacks=[...]) the run must still
    end at the first step that reaches the token budget, not at the estimate."""
    dataset = SeqDataset(60, 8, 8)
    dataset.seqs[0], dataset.seqs[1] = torch.randint(0, VOCAB, (16,)), torch.randint(0, VOCAB, (16,))
    gns = hf_gns.GNSCallback(batch_size_policy="steps:0:2")
    trainer = run_trainer(make_args(tmp_path, max_steps=5), tiny_llama(), dataset, [gns])
    tokens = [e["gns/tokens"] for e in step_logs(trainer)]
    budget = 5 * 2 * 16                                   # max_steps x the first step's positions
    assert tokens[-1] >= budget > tokens[-2], tokens
    assert len(tokens) == 1 + -(-(budget - 32) // 16)     # 1 long step, then steps of 16 positions
