"""The token clock: a run with a changing batch counted in tokens, and an LR schedule that reads it.

Not Trainer-specific: `hf_gns.batch_control` (the Trainer) and `hf_gns.accelerate_loop` (custom
loops) both count tokens here and make a LambdaLR read step-equivalents = tokens / tokens of the
first step (or tokens / budget x the schedule's horizon), so warm-up and decay follow tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch.optim.lr_scheduler import LambdaLR

#: How the LR follows the batch: not at all, with its square root (Adam-family), or linearly (SGD).
LRScaling = Literal["none", "sqrt", "linear"]
LR_SCALINGS: tuple[str, ...] = get_args(LRScaling)


@dataclass
class TokenClock:
    """Tokens consumed so far (global) and how they map onto the LR schedule's step axis.

    The schedule was built for ``horizon`` optimizer steps; a run with a token ``budget``
    reads it at ``tokens / budget * horizon``, so warm-up and decay span the budget whatever
    the batch does. Without a budget (or horizon), a step is what the first step consumed.
    """

    tokens: float = 0.0
    tokens_per_step0: float | None = None
    lr_factor: float = 1.0
    budget: float | None = None
    horizon: float | None = None

    def step_equivalent(self, fallback_step: int) -> float:
        if self.budget and self.horizon:
            return self.tokens / self.budget * self.horizon
        if not self.tokens_per_step0:
            return fallback_step
        return self.tokens / self.tokens_per_step0


def _token_lambda(fn, clock: TokenClock):
    # a plain function, so LambdaLR.state_dict does not try to save the clock
    def lr_lambda(step: int) -> float:
        return fn(clock.step_equivalent(step)) * clock.lr_factor

    lr_lambda.hf_gns_inner = fn
    lr_lambda.hf_gns_clock = clock
    return lr_lambda


def wrap_lambda_lr(scheduler, clock: TokenClock):
    """Make a LambdaLR (or accelerate's wrapper of one) read ``clock``; returns the LambdaLR, or None.

    The marks live on the wrapper functions, never in the scheduler's ``__dict__`` (which
    ``LambdaLR.state_dict`` saves into every checkpoint). Wrapping again re-points to ``clock``.
    """
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
    if not isinstance(inner, LambdaLR):
        return None
    inner.__dict__.pop("_hf_gns_wrapped", None)  # a mark older checkpoints of hf_gns runs may carry
    inner.lr_lambdas = [_token_lambda(getattr(fn, "hf_gns_inner", fn), clock) for fn in inner.lr_lambdas]
    return inner


def scale_lr_for_batch(clock: TokenClock, scaling: str, batch_ratio: float, scheduler: LambdaLR | None) -> None:
    """Set the LR factor for a batch ``batch_ratio`` times the starting one ("none", "sqrt" or
    "linear") and apply it to the step the scheduler has already prepared."""
    if scaling == "none":
        return
    clock.lr_factor = batch_ratio ** (0.5 if scaling == "sqrt" else 1.0)
    refresh_lr(scheduler)


def refresh_lr(scheduler: LambdaLR | None) -> None:
    """Re-evaluate a wrapped LambdaLR at its current position (after the clock's factor changed)."""
    if scheduler is None:
        return
    step = scheduler.last_epoch
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
