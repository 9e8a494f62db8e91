"""GNS and a batch size that follows it in a custom `accelerate` training loop.

The loop accumulates gradients itself, in groups whose size the policy sets (the way the
accelerate maintainers advise for a changing accumulation count): `GNSLoop.groups` cuts
the dataloader into groups of micro-batches, every micro-batch's loss is normalized by the
tokens of its whole group (so the last, shorter group of an epoch weighs what it should),
gradients are synchronized on the last micro-batch only, and `GNSLoop.step` measures GNS
and picks the next group's size. ``accelerator.gradient_accumulation_steps`` stays 1.

    loop = hf_gns.GNSLoop(accelerator, model, batch_size_policy=hf_gns.GNSPolicy(max_batch=256))
    loop.wrap_scheduler(scheduler)                  # LR schedule counted in tokens
    for group in loop.groups(train_dataloader):
        num_items = loop.num_items(group)
        for batch, sync in loop.micro_batches(group):
            with sync:
                loss = model(**batch, num_items_in_batch=num_items).loss
                accelerator.backward(loss)
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
        logs = loop.step()                          # gns/* (one step behind, no GPU stall)
        if loop.done:
            break
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .token_clock import LR_SCALINGS, LRScaling, TokenClock, scale_lr_for_batch, wrap_lambda_lr
from .distributed import sum_over_ranks
from .full_model import count_label_tokens
from .measure import GNSMeter, MeterViews, read_loss_scale
from .patch import pass_counters, patch_model, patched_modules, place_statistics
from .schedule import BatchSizePolicy, accumulation_for, make_policy
from .validation import check_choice, check_fraction, check_number, check_positive_int, check_type

logger = logging.getLogger(__name__)


class GNSLoop(MeterViews):
    """Measure GNS every optimizer step of a custom loop and size the next accumulation group.

    Args:
        accelerator: the run's ``accelerate.Accelerator``.
        model: the (unwrapped or prepared) model; patched here if it is not yet.
        batch_size_policy: None (measure only) or a batch-size policy (see `GNSCallback`).
        accumulation_steps: micro-batches per optimizer step at the start.
        max_tokens: token budget; `done` turns True once it is consumed.
        lr_scaling: "none", "sqrt" or "linear" LR scaling with the batch (see `wrap_scheduler`).
        ema: decay of the EMAs of |G|^2 and tr(Sigma).
    """

    def __init__(self, accelerator, model: nn.Module, batch_size_policy: BatchSizePolicy | str | None = None,
                 accumulation_steps: int = 1, max_tokens: float | None = None, lr_scaling: LRScaling = "none",
                 ema: float = 0.99, prefix: str = "gns/", batch_size: BatchSizePolicy | str | None = None) -> None:
        if batch_size is not None:
            if batch_size_policy is not None:
                raise TypeError("GNSLoop: give batch_size_policy only (batch_size is its old name)")
            warnings.warn("GNSLoop(batch_size=...) is now batch_size_policy=...", FutureWarning, stacklevel=2)
            batch_size_policy = batch_size
        check_positive_int("accumulation_steps", accumulation_steps)
        check_number("max_tokens", max_tokens, optional=True)
        check_choice("lr_scaling", lr_scaling, LR_SCALINGS)
        check_fraction("ema", ema)
        check_type("prefix", prefix, str, "a string")
        self.policy = make_policy(batch_size_policy) if batch_size_policy is not None else None
        self.accelerator = accelerator
        self.model = accelerator.unwrap_model(model) if hasattr(accelerator, "unwrap_model") else model
        if not patched_modules(self.model):
            patch_model(self.model)
        place_statistics(self.model)
        self.start_accumulation = self.accumulation = accumulation_steps
        self.max_tokens = max_tokens
        self.lr_scaling = lr_scaling
        self.meter = GNSMeter(ema, prefix)
        self.clock = TokenClock()
        self.prefix = prefix
        self.steps = 0
        self.micro_batch: int | None = None
        self._scale: Any = 1.0
        self._scheduler = None
        self._group_size = accumulation_steps
        self._tokens_counted = False

    # -- data ------------------------------------------------------------------------------
    def groups(self, dataloader: Iterable) -> Iterator[list]:
        """Micro-batches of ``dataloader`` in groups of the current accumulation count."""
        group: list = []
        for batch in dataloader:
            group.append(batch)
            if len(group) >= self.accumulation:
                yield group
                group = []
        if group:
            yield group

    def micro_batches(self, group: list) -> Iterator[tuple[Any, contextlib.AbstractContextManager]]:
        """(batch, context): gradients are all-reduced on the group's last micro-batch only."""
        self._scale = read_loss_scale(getattr(self.accelerator, "scaler", None))
        self._group_size = len(group)
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            yield batch, contextlib.nullcontext() if last else self.accelerator.no_sync(self.model_for_sync)
        if self.micro_batch is None:
            self.micro_batch = _batch_rows(group[0]) * self.accelerator.num_processes
        self._count_tokens()  # before the optimizer and LR scheduler steps read the clock

    def _count_tokens(self) -> None:
        """Add the group's input positions, summed over ranks, to the token clock."""
        positions = sum(c.take_positions() for c in pass_counters(self.model))
        step_tokens = sum_over_ranks(positions)
        self.clock.tokens += step_tokens
        if self.clock.tokens_per_step0 is None and step_tokens:
            self.clock.tokens_per_step0 = step_tokens
        self._tokens_counted = True

    @property
    def model_for_sync(self) -> nn.Module:
        prepared = getattr(self, "_prepared", None)  # (a compiled module has no truth value)
        return prepared if prepared is not None else self.model

    def set_prepared_model(self, model: nn.Module) -> None:
        """The model as returned by ``accelerator.prepare`` (for ``no_sync`` under DDP)."""
        self._prepared = model
        place_statistics(self.model)

    @staticmethod
    def num_items(group: list, label_key: str = "labels", shift: bool = True) -> torch.Tensor:
        """Tokens carrying a label in the whole group (after the causal shift): the loss divisor."""
        total = None
        for batch in group:
            if not isinstance(batch.get(label_key), torch.Tensor):
                raise KeyError(f"GNSLoop.num_items: a micro-batch has no {label_key!r} tensor")
            count = count_label_tokens(batch, shift, label_key)
            total = count if total is None else total + count
        return total

    # -- per optimizer step ----------------------------------------------------------------
    def wrap_scheduler(self, scheduler, total_steps: int | None = None) -> None:
        """Make a LambdaLR (or accelerate's wrapper of one) count tokens instead of steps.

        With ``total_steps`` (the steps the schedule was built for) and ``max_tokens``, the
        schedule spans the token budget exactly; otherwise one step is the first step's tokens.
        """
        inner = wrap_lambda_lr(scheduler, self.clock)
        if inner is None:
            raise TypeError(f"wrap_scheduler needs a LambdaLR, got {type(getattr(scheduler, 'scheduler', scheduler)).__name__}")
        self._scheduler = inner
        if total_steps is not None and self.max_tokens is not None:
            self.clock.budget, self.clock.horizon = float(self.max_tokens), float(total_steps)

    def step(self) -> dict[str, float]:
        """Call after ``optimizer.step()``: count tokens, start this step's GNS reduction, read the
        previous one, and choose the next group's size. Returns the newest measured values."""
        self.steps += 1
        if not self._tokens_counted:  # the group's micro-batches were not iterated to the end
            self._count_tokens()
        self._tokens_counted = False
        skipped = bool(getattr(self.accelerator, "optimizer_step_was_skipped", False))
        self.meter.start(self.model, self.steps, self._scale, skipped, self._log_batch())
        self.meter.resolve(self.steps - 1)
        self._choose_accumulation()
        return self.history[-1] if self.history else {}

    def finish(self) -> dict[str, float]:
        """Read every measurement still in flight (end of training)."""
        self.meter.resolve(self.steps)
        return self.history[-1] if self.history else {}

    @property
    def done(self) -> bool:
        """True once the token budget is consumed."""
        return self.max_tokens is not None and self.clock.tokens >= self.max_tokens

    @property
    def batch_size(self) -> int | None:
        return None if self.micro_batch is None else self.micro_batch * self.accumulation

    def _choose_accumulation(self) -> None:
        if self.policy is None or self.micro_batch is None:
            return
        start_batch = self.micro_batch * self.start_accumulation
        budget = self.max_tokens
        target = self.policy.target(self.clock.tokens, self.tracker.b_simple, start_batch, budget,
                                    self.tracker.steps)
        if target is None:
            return
        wanted = accumulation_for(target, self.micro_batch, self.accumulation)  # the Trainer's rule
        if wanted > self.accumulation:
            logger.info("hf_gns: step %d: accumulation %d -> %d", self.steps, self.accumulation, wanted)
            self.accumulation = wanted
            scale_lr_for_batch(self.clock, self.lr_scaling, wanted / self.start_accumulation, self._scheduler)

    def _log_batch(self) -> dict[str, float]:
        """The step just taken: its micro-batches (the last group of the data may be short)."""
        p = self.prefix
        rows = self.micro_batch or 0
        return {p + "batch_size": float(rows * self._group_size), p + "accumulation_steps": float(self._group_size),
                p + "tokens": self.clock.tokens}


def _batch_rows(batch) -> int:
    if isinstance(batch, dict):
        batch = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return batch.shape[0]
