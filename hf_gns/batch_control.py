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
ranks take the same decision without another collective. A checkpoint taken after a change
resumes on the right micro-batch through `hf_gns.resume`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict

from torch.optim.lr_scheduler import LambdaLR
from transformers.trainer_callback import ProgressCallback

from . import resume
from .estimator import GNSTracker
from .schedule import POLICY_STATES, BatchSizePolicy, accumulation_for, make_policy, policy_state
from .token_clock import LR_SCALINGS, LRScaling, TokenClock, scale_lr_for_batch, wrap_lambda_lr
from .validation import check_choice, check_number

logger = logging.getLogger(__name__)

STATE_FILE = "hf_gns_state.json"


class TrainerBatchControl:
    """Drive ``args.gradient_accumulation_steps``, the LR clock and the token budget of a Trainer.

    Args:
        policy: a `hf_gns.schedule` policy or its string form.
        max_tokens: token budget; default: ``max_steps`` optimizer steps at the starting batch.
        lr_scaling: "none", "sqrt" (Adam-family) or "linear": LR times (batch / start batch)^p.
    """

    def __init__(self, policy: BatchSizePolicy | str, max_tokens: float | None = None,
                 lr_scaling: LRScaling = "none") -> None:
        check_choice("lr_scaling", lr_scaling, LR_SCALINGS)
        check_number("max_tokens", max_tokens, optional=True)
        self.policy = make_policy(policy)
        self.max_tokens = max_tokens
        self.lr_scaling = lr_scaling
        self.clock = TokenClock()
        self.start_accumulation = 1
        self.accumulation = 1
        self.pending: int | None = None
        self.micro_batch = 1  # examples per micro-batch, all ranks together
        self.micro_in_epoch = 0
        self.changes: list[dict] = []
        self.policy_state: str | None = None  # see hf_gns.schedule.POLICY_STATES
        self.policy_target: int | None = None
        self.scheduler: LambdaLR | None = None
        self._progress = None
        self._micro_per_epoch: int | None = None
        self._resume_micro: int | None = None
        self._checked_data = False

    @property
    def budget(self) -> float | None:
        """The token budget, once known (``max_tokens``, or after the first step)."""
        return self.clock.budget

    # -- wiring ----------------------------------------------------------------------------
    def on_train_begin(self, args, state, lr_scheduler=None, callbacks=(), saved: dict | None = None,
                       train_dataloader=None, trainer_step: int | None = None) -> None:
        """Start (or, with ``saved`` from a checkpoint, resume) controlling this run. ``trainer_step``:
        the step the Trainer placed the data from, when the checkpoint stored one (`hf_gns.resume`)."""
        self.micro_batch = args.per_device_train_batch_size * max(1, args.world_size)
        self._progress = next((c for c in callbacks if isinstance(c, ProgressCallback)), None)
        try:
            self._micro_per_epoch = len(train_dataloader) if train_dataloader is not None else None
        except TypeError:  # an iterable dataset
            self._micro_per_epoch = None
        if saved is not None:
            step = state.global_step if trainer_step is None else trainer_step
            self._resume_micro = self._trainer_resume_position(args, step)
            self.load_state_dict(saved)
            self._restore(args, state, exact=trainer_step is not None)
        else:
            self.start_accumulation = self.accumulation = args.gradient_accumulation_steps
            self.clock.horizon = float(state.max_steps) if state.max_steps and state.max_steps > 0 else None
            self.clock.budget = self.max_tokens
            min_steps = getattr(self.policy, "min_steps", 0)
            if self.max_tokens is None and 0 < state.max_steps <= min_steps:
                logger.warning("hf_gns: the batch-size policy %r waits for min_steps=%d measured steps, but the run "
                               "has %d: the batch will not change (lower min_steps)", self.policy, min_steps,
                               state.max_steps)
        if lr_scheduler is not None:
            self._wrap_scheduler(lr_scheduler)
        if args.world_size > 1 and not args.dataloader_drop_last:
            logger.warning("hf_gns: batch-size control under several processes assumes every rank sees "
                           "micro-batches of one shape; set dataloader_drop_last=True")

    def _trainer_resume_position(self, args, global_step: int) -> int:
        """Micro-batches of the current epoch the Trainer skips on resume from ``global_step`` (its own
        arithmetic)."""
        if args.ignore_data_skip:
            return 0
        ga = args.gradient_accumulation_steps  # the Trainer computed its skip with the starting count
        if self._micro_per_epoch:
            per_epoch = max(self._micro_per_epoch // ga + int(self._micro_per_epoch % ga > 0), 1)
        else:
            per_epoch = max(args.max_steps, 1)
        return (global_step % per_epoch) * ga

    def _wrap_scheduler(self, scheduler) -> None:
        inner = wrap_lambda_lr(scheduler, self.clock)
        if inner is None:
            logger.warning("hf_gns: the LR scheduler (%s) is not a LambdaLR; it keeps counting optimizer steps",
                           type(getattr(scheduler, "scheduler", scheduler)).__name__)
        self.scheduler = inner

    # -- per step --------------------------------------------------------------------------
    def on_epoch_begin(self) -> None:
        if self._resume_micro is not None:  # the epoch the Trainer resumes in, part-consumed
            self.micro_in_epoch, self._resume_micro = self._resume_micro, None
        else:
            self.micro_in_epoch = 0

    def on_substep_end(self) -> None:
        self.micro_in_epoch += 1

    def on_optimizer_step(self, step_tokens: float, state=None) -> None:
        """Count this step's (global) tokens before the LR scheduler reads the clock."""
        self.clock.tokens += step_tokens
        if self.clock.tokens_per_step0 is None and step_tokens > 0:
            self.clock.tokens_per_step0 = step_tokens
            if self.clock.budget is None:
                steps = self.clock.horizon or 1.0
                self.clock.budget = steps * step_tokens
        if state is not None and self.budget is not None and self.clock.tokens < self.budget:
            # the budget, not the step count, ends the run: the Trainer's own step-count check runs in
            # callbacks that may come before this one, with the step about to become global_step + 1
            state.max_steps = max(state.max_steps, state.global_step + 2)

    def on_step_end(self, args, state, control, tracker: GNSTracker) -> None:
        self.micro_in_epoch += 1
        if not self._checked_data:
            self._checked_data = True
            self._check_budget_fits_data(state)
        target = self.policy.target(self.clock.tokens, tracker.b_simple,
                                    self.micro_batch * self.start_accumulation, self.budget, tracker.steps)
        self._note_state(policy_state(self.policy, target, self.batch_size, self.clock.tokens, tracker.b_simple,
                                      tracker.steps), target, state.global_step)
        if target is not None:
            wanted = accumulation_for(target, self.micro_batch, self.accumulation)
            if wanted > self.accumulation and (self.pending is None or wanted > self.pending):
                self.pending = wanted
        if self.pending is not None and self.micro_in_epoch % self.pending == 0:
            self._apply(args, state, self.pending)
        if self.budget is not None and self.clock.tokens_per_step0:
            if self.clock.tokens >= self.budget:
                control.should_training_stop = True
            self._update_max_steps(state)

    def _check_budget_fits_data(self, state) -> None:
        """Warn when the Trainer's planned epochs hold fewer tokens than the budget."""
        epochs = getattr(state, "num_train_epochs", None)
        if not (self.budget and self._micro_per_epoch and epochs and self.clock.tokens_per_step0):
            return
        per_micro = self.clock.tokens_per_step0 / self.start_accumulation
        planned = epochs * self._micro_per_epoch * per_micro
        if self.budget > planned * (1 + 1e-9):
            logger.warning(
                "hf_gns: the token budget (%.4g tokens) is more than the %d epoch(s) the Trainer planned hold "
                "(about %.4g tokens): training ends with the data, at about %.0f%% of the budget. Raise max_steps "
                "(or num_train_epochs) so that the planned epochs cover max_tokens.",
                self.budget, epochs, planned, 100 * planned / self.budget)

    def _apply(self, args, state, accumulation: int) -> None:
        old = self.accumulation
        self.accumulation = accumulation
        args.gradient_accumulation_steps = accumulation
        self.pending = None
        scale_lr_for_batch(self.clock, self.lr_scaling, accumulation / self.start_accumulation, self.scheduler)
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

    def _note_state(self, state_and_why: tuple[str, str], target: int | None, step: int) -> None:
        """Keep the policy's state for the log; say it whenever it changes."""
        state, why = state_and_why
        if state != self.policy_state:
            logger.warning("hf_gns: step %d: batch-size policy %s (%s)", step, state.replace("_", " "), why)
        self.policy_state, self.policy_target = state, target

    def log_values(self, prefix: str = "gns/") -> dict[str, float]:
        """The batch in force, the token clock and the policy's state as of the last step's end."""
        return {prefix + "policy_state": POLICY_STATES.get(self.policy_state, math.nan),
                prefix + "policy_target": float(self.policy_target) if self.policy_target is not None else math.nan,
                prefix + "batch_size": float(self.batch_size),
                prefix + "accumulation_steps": float(self.accumulation),
                prefix + "tokens": self.clock.tokens,
                prefix + "lr_step_equivalent": self.clock.step_equivalent(0)}

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"clock": asdict(self.clock), "accumulation": self.accumulation, "pending": self.pending,
                "start_accumulation": self.start_accumulation, "micro_in_epoch": self.micro_in_epoch,
                "changes": self.changes}

    def load_state_dict(self, data: dict) -> None:
        clock = data["clock"]
        self.clock.tokens = clock["tokens"]
        self.clock.tokens_per_step0 = clock["tokens_per_step0"]
        self.clock.lr_factor = clock["lr_factor"]
        self.clock.budget = clock.get("budget", data.get("budget"))
        self.clock.horizon = clock.get("horizon")
        self.accumulation, self.pending = data["accumulation"], data["pending"]
        self.start_accumulation = data["start_accumulation"]
        self.micro_in_epoch, self.changes = data["micro_in_epoch"], data["changes"]

    def trainer_step(self, state) -> int | None:
        """The step count a checkpoint taken now must show the Trainer so that it resumes on the
        micro-batch this run is at (see `hf_gns.resume`); None when no step count does."""
        return resume.trainer_step(self.micro_in_epoch, self._micro_per_epoch, state.epoch or 0.0,
                                   self.start_accumulation)

    def _restore(self, args, state, exact: bool = False) -> None:
        """Continue a resumed run with the accumulation count its checkpoint had."""
        args.gradient_accumulation_steps = self.accumulation
        planned = state.global_step * self.start_accumulation
        if self.accumulation != self.start_accumulation and not exact:
            logger.warning(
                "hf_gns: resuming after the accumulation count changed (%d -> %d). The Trainer places the data "
                "as if every step had %d micro-batches (%d in all), while this epoch had consumed %d: the data "
                "order differs from the uninterrupted run from here on (LR, batch size, EMAs and budget "
                "continue exactly). Checkpoints taken before the first change resume exactly, and so do later "
                "ones saved with hf_gns.attach(trainer) from a dataset of known length.",
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
