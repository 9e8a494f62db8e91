"""Apply a batch-size policy inside an unmodified Hugging Face Trainer.

The Trainer reads ``args.gradient_accumulation_steps`` afresh for every optimizer step,
so the global batch grows by raising it, at safe points only: right after an optimizer
step, when the micro-batches consumed this epoch divide by the new count (the next group
then starts on a boundary), never below the starting count. The count only grows, in
multiples of the current one, so every change is reachable within a few steps.

Because a growing batch makes optimizer steps unequal, the run is counted in tokens: a
`TokenClock` (input positions of every micro-batch, times the world size) drives the LR
schedule (the Trainer's LambdaLR, made to read step-equivalents = tokens / tokens of the
first step), the policy, the token budget and ``state.max_steps``. Every input is the same
on every rank (all ranks see micro-batches of one shape, and GNS is all-reduced), so all
ranks take the same decision without another collective.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass

from torch.optim.lr_scheduler import LambdaLR

from .estimator import GNSTracker
from .schedule import Policy, accumulation_for, make_policy

logger = logging.getLogger(__name__)

STATE_FILE = "hf_gns_state.json"
LR_SCALINGS = ("none", "sqrt", "linear")


@dataclass
class TokenClock:
    """Tokens consumed so far (global) and what a step meant at the start of training."""

    tokens: float = 0.0
    tokens_per_step0: float | None = None
    lr_factor: float = 1.0

    def step_equivalent(self, fallback_step: int) -> float:
        if not self.tokens_per_step0:
            return fallback_step
        return self.tokens / self.tokens_per_step0


def _token_lambda(fn, clock: TokenClock):
    # a plain function, so LambdaLR.state_dict does not try to save the clock
    def lr_lambda(step: int) -> float:
        return fn(clock.step_equivalent(step)) * clock.lr_factor

    return lr_lambda


class TrainerBatchControl:
    """Drive ``args.gradient_accumulation_steps``, the LR clock and the token budget of a Trainer.

    Args:
        policy: a `hf_gns.schedule` policy or its string form.
        max_tokens: token budget; default: ``max_steps`` optimizer steps at the starting batch.
        lr_scaling: "none", "sqrt" (Adam-family) or "linear": LR times (batch / start batch)^p.
    """

    def __init__(self, policy: Policy | str, max_tokens: float | None = None, lr_scaling: str = "none") -> None:
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}")
        self.policy = make_policy(policy)
        self.max_tokens = max_tokens
        self.lr_scaling = lr_scaling
        self.clock = TokenClock()
        self.start_accumulation = 1
        self.accumulation = 1
        self.pending: int | None = None
        self.micro_batch = 1  # examples per micro-batch, all ranks together
        self.micro_in_epoch = 0
        self.budget: float | None = None
        self.changes: list[dict] = []
        self.trainer = None
        self._progress = None

    # -- wiring ----------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, lr_scheduler=None, callbacks=(), saved: dict | None = None) -> None:
        """Start (or, with ``saved`` from a checkpoint, resume) controlling this run."""
        self.micro_batch = args.per_device_train_batch_size * max(1, args.world_size)
        self._progress = next((c for c in callbacks if hasattr(c, "training_bar")), None)
        if saved is not None:
            self.load_state_dict(saved)
            self._restore(args, state)
        else:
            self.start_accumulation = self.accumulation = args.gradient_accumulation_steps
        if lr_scheduler is not None:
            self._wrap_scheduler(lr_scheduler)
        if args.world_size > 1 and not args.dataloader_drop_last:
            logger.warning("hf_gns: batch-size control under several processes assumes every rank sees "
                           "micro-batches of one shape; set dataloader_drop_last=True")

    def _wrap_scheduler(self, scheduler) -> None:
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
        if not isinstance(inner, LambdaLR):
            logger.warning("hf_gns: the LR scheduler (%s) is not a LambdaLR; it keeps counting optimizer steps",
                           type(inner).__name__)
            return
        if getattr(inner, "_hf_gns_wrapped", False):
            return
        inner.lr_lambdas = [_token_lambda(fn, self.clock) for fn in inner.lr_lambdas]
        inner._hf_gns_wrapped = True

    # -- per step --------------------------------------------------------------------------
    def on_epoch_begin(self) -> None:
        self.micro_in_epoch = 0

    def on_substep_end(self) -> None:
        self.micro_in_epoch += 1

    def on_optimizer_step(self, step_tokens: float) -> None:
        """Count this step's tokens before the LR scheduler reads the clock."""
        self.clock.tokens += step_tokens
        if self.clock.tokens_per_step0 is None and step_tokens > 0:
            self.clock.tokens_per_step0 = step_tokens

    def on_step_end(self, args, state, control, tracker: GNSTracker) -> None:
        self.micro_in_epoch += 1
        if self.budget is None and self.clock.tokens_per_step0:
            self.budget = self.max_tokens or state.max_steps * self.clock.tokens_per_step0
        target = self.policy.target(self.clock.tokens, tracker.b_simple,
                                    self.micro_batch * self.start_accumulation, self.budget, tracker.steps)
        if target is not None:
            wanted = accumulation_for(target, self.micro_batch, self.accumulation)
            if wanted > self.accumulation and (self.pending is None or wanted > self.pending):
                self.pending = wanted
        if self.pending is not None and self.micro_in_epoch % self.pending == 0:
            self._apply(args, state, self.pending)
        if self.budget is not None:
            if self.clock.tokens >= self.budget:
                control.should_training_stop = True
            self._update_max_steps(state)

    def _apply(self, args, state, accumulation: int) -> None:
        old = self.accumulation
        self.accumulation = accumulation
        args.gradient_accumulation_steps = accumulation
        self.pending = None
        if self.lr_scaling != "none":
            power = 0.5 if self.lr_scaling == "sqrt" else 1.0
            self.clock.lr_factor = (accumulation / self.start_accumulation) ** power
        self.changes.append({"step": state.global_step, "tokens": self.clock.tokens,
                             "accumulation_steps": accumulation, "batch_size": self.batch_size})
        logger.info("hf_gns: step %d, %.4g tokens: gradient accumulation %d -> %d (global batch %d)",
                    state.global_step, self.clock.tokens, old, accumulation, self.batch_size)

    def _update_max_steps(self, state) -> None:
        """Keep ``state.max_steps`` (and the progress bar) at the steps the budget still needs."""
        tokens_per_step = self.clock.tokens_per_step0 * self.accumulation / self.start_accumulation
        remaining = max(0.0, self.budget - self.clock.tokens)
        state.max_steps = state.global_step + math.ceil(remaining / tokens_per_step - 1e-9)
        bar = getattr(self._progress, "training_bar", None)
        if bar is not None and bar.total != state.max_steps:
            bar.total = state.max_steps
            bar.refresh()

    @property
    def batch_size(self) -> int:
        """Global batch in examples."""
        return self.micro_batch * self.accumulation

    def log_values(self, prefix: str = "gns/") -> dict[str, float]:
        return {prefix + "batch_size": float(self.batch_size),
                prefix + "accumulation_steps": float(self.accumulation),
                prefix + "tokens": self.clock.tokens,
                prefix + "lr_step_equivalent": self.clock.step_equivalent(0)}

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"clock": asdict(self.clock), "accumulation": self.accumulation, "pending": self.pending,
                "start_accumulation": self.start_accumulation, "micro_in_epoch": self.micro_in_epoch,
                "budget": self.budget, "changes": self.changes}

    def load_state_dict(self, data: dict) -> None:
        self.clock.tokens = data["clock"]["tokens"]
        self.clock.tokens_per_step0 = data["clock"]["tokens_per_step0"]
        self.clock.lr_factor = data["clock"]["lr_factor"]
        self.accumulation, self.pending = data["accumulation"], data["pending"]
        self.start_accumulation = data["start_accumulation"]
        self.micro_in_epoch, self.budget, self.changes = data["micro_in_epoch"], data["budget"], data["changes"]

    def _restore(self, args, state) -> None:
        """Continue a resumed run with the accumulation count its checkpoint had."""
        args.gradient_accumulation_steps = self.accumulation
        planned = state.global_step * self.start_accumulation
        if self.accumulation != self.start_accumulation:
            logger.warning(
                "hf_gns: resuming after the accumulation count changed (%d -> %d). The Trainer places the data "
                "as if every step had %d micro-batches (%d in all), while this epoch had consumed %d: the data "
                "order differs from the uninterrupted run from here on (LR, batch size, EMAs and budget "
                "continue exactly). Checkpoints taken before the first change resume exactly.",
                self.start_accumulation, self.accumulation, self.start_accumulation, planned, self.micro_in_epoch)


def save_state(directory: str, data: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(data, f)


def load_state(directory: str) -> dict | None:
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
