"""`hf_gns.GNSLoop` in a custom `accelerate` loop (CPU, one process).

Oracles written from the contract, not from the library: the groups of micro-batches follow
the policy in tokens (the last, shorter group of the data included), the parameters after the
loop equal a hand-written SGD loop over the same groups with each group's loss normalized by
its own label tokens, and a wrapped linear schedule spans the token budget.
"""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

import hf_gns
from helpers import clone
from token_batches import MICRO, SeqDataset, collate, cumulative, hand_sgd, micro_batches, positions, tiny_llama


pytestmark = pytest.mark.usefixtures("one_thread")


def expected_groups(batches, thresholds: list[tuple[int, int]], start: int = 1):
    """Group sizes a token-driven step schedule gives: after each group, the size for the tokens so far."""
    groups, i, size, tokens = [], 0, start, 0
    while i < len(batches):
        group = batches[i : i + size]
        groups.append(group)
        i += len(group)
        tokens += sum(positions(b) for b in group)
        for at, batch in thresholds:
            if tokens >= at:
                size = max(size, batch // MICRO)
    return groups


def run_loop(model, dataset, policy, lr=0.05, max_tokens=None, scheduler_steps=None):
    accelerator = Accelerator(cpu=True)
    loader = DataLoader(dataset, batch_size=MICRO, shuffle=False, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, scheduler_steps) if scheduler_steps else None
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loop = hf_gns.GNSLoop(accelerator, model, batch_size_policy=policy, max_tokens=max_tokens)
    loop.set_prepared_model(model)
    if scheduler is not None:
        loop.wrap_scheduler(scheduler, total_steps=scheduler_steps)
    sizes, lrs = [], []
    model.train()
    for group in loop.groups(loader):
        num_items = loop.num_items(group)
        for batch, sync in loop.micro_batches(group):
            with sync:
                accelerator.backward(model(**batch, num_items_in_batch=num_items).loss)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad()
        loop.step()
        sizes.append(len(group))
        if loop.done:
            break
    loop.finish()
    return loop, sizes, lrs


def test_groups_follow_policy_and_params_match_hand_written_loop():
    dataset = SeqDataset(26)                       # 13 micro-batches: the last group is short
    batches = micro_batches(dataset)
    cum = cumulative(positions(b) for b in batches)
    thresholds = [(cum[1], 4), (cum[4], 8)]      # batch 4 after 2 micro-batches, 8 after 5
    policy = "steps:0:2," + ",".join(f"{at}:{b}" for at, b in thresholds)
    init = tiny_llama()
    loop, sizes, _ = run_loop(clone(init), dataset, policy)
    groups = expected_groups(batches, thresholds)
    assert sizes == [len(g) for g in groups] == [1, 1, 2, 2, 4, 3], sizes
    assert loop.clock.tokens == cum[-1]
    ref = hand_sgd(clone(init), groups, lr=0.05)
    for (name, p), (_, q) in zip(loop.model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7, msg=name)
    logged = [h for h in loop.history if "gns/batch_size" in h]
    assert [h["gns/accumulation_steps"] for h in logged] == [float(s) for s in sizes]
    # every step measured (one step late, all read by finish()); |G|^2 may still be <= 0 this early
    assert len(loop.history) == len(sizes)
    assert all(h["gns/skipped"] == 0.0 and math.isfinite(h["gns/g2"]) for h in loop.history)


def test_wrapped_schedule_spans_the_token_budget_and_stops_there():
    dataset = SeqDataset(40, 12, 12)               # fixed length: every micro-batch is 24 positions
    per_micro = MICRO * 12
    budget = per_micro * 9 + 5                      # reached by the 10th micro-batch
    policy = f"steps:0:2,{per_micro * 3}:4"
    _, sizes, lrs = run_loop(tiny_llama(), dataset, policy, lr=0.1, max_tokens=budget, scheduler_steps=7)
    assert sizes == [1, 1, 1, 2, 2, 2, 2], sizes
    before = [0] + cumulative(per_micro * s for s in sizes)[:-1]
    assert lrs == pytest.approx([0.1 * (1 - t / budget) for t in before], rel=1e-9)
    assert sum(sizes) * per_micro >= budget > (sum(sizes) - sizes[-1]) * per_micro


def test_loop_records_what_the_callback_records():
    """One measurement pipeline: the loop's records carry every per-step key the Trainer callback logs."""
    dataset = SeqDataset(12)
    loop, sizes, _ = run_loop(tiny_llama(), dataset, None)
    keys = {"gns/b_simple", "gns/b_simple_tokens", "gns/g2", "gns/trace_sigma", "gns/step_b_simple",
            "gns/step_g2", "gns/step_trace_sigma", "gns/examples", "gns/skipped", "gns/tokens"}
    assert len(loop.history) == len(sizes) and all(keys <= set(h) for h in loop.history)
    for h in loop.history:
        if h["gns/step_g2"] > 0:
            assert h["gns/step_b_simple"] == pytest.approx(h["gns/step_trace_sigma"] / h["gns/step_g2"])
