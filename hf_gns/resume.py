"""Exact resume after the batch grew: the Trainer's resume arithmetic, given the step it expects.

On resume the Trainer places the data from ``global_step`` alone: it skips
``global_step // steps_per_epoch`` epochs and then ``(global_step % steps_per_epoch) *
gradient_accumulation_steps`` micro-batches, both counted with the accumulation count it starts
with. Once hf_gns raised that count, the step count no longer says how many micro-batches were
consumed. So a checkpoint saved after a change stores, as its ``global_step``, the step count in
starting-count steps that makes that arithmetic skip exactly the micro-batches consumed (the
*trainer step*), and the real step beside it (``stateful_callbacks["hf_gns"]``, a key the Trainer
keeps and otherwise ignores). At train start `GNSCallback` puts the real step back, with the two
step counters the Trainer took from it for its logging (which needs ``hf_gns.attach``: without it
the checkpoint keeps the real step and resumes with the data placed approximately, as it says).
"""

from __future__ import annotations

import json
import math
import os

MARKER = "hf_gns"
TRAINER_STATE = "trainer_state.json"
# the Trainer's own step counters set from global_step before any callback runs (its logging
# averages the loss over global_step - _globalstep_last_logged)
_TRAINER_COUNTERS = ("_globalstep_last_logged", "_initial_global_step")


def trainer_step(micro_in_epoch: int, micro_per_epoch: int | None, epoch: float, start_accumulation: int) -> int | None:
    """The step count (in starting-count steps) from which the Trainer skips exactly
    ``micro_in_epoch`` micro-batches of the current epoch; None when no step count does."""
    if not micro_per_epoch or micro_in_epoch < 0 or micro_in_epoch > micro_per_epoch:
        return None
    steps_per_epoch = math.ceil(micro_per_epoch / start_accumulation)
    epochs_done = round(epoch - micro_in_epoch / micro_per_epoch)  # state.epoch = epoch index + consumed share
    if micro_in_epoch == micro_per_epoch:  # the epoch is over: the next one starts from its beginning
        return (epochs_done + 1) * steps_per_epoch
    if micro_in_epoch % start_accumulation:
        return None
    return epochs_done * steps_per_epoch + micro_in_epoch // start_accumulation


def mark_checkpoint(checkpoint: str, real_step: int, step_for_trainer: int) -> None:
    """Store ``step_for_trainer`` as the checkpoint's ``global_step`` and the real step beside it."""
    path = os.path.join(checkpoint, TRAINER_STATE)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["global_step"] = step_for_trainer
    callbacks = data.get("stateful_callbacks") or {}
    callbacks[MARKER] = {"global_step": real_step, "trainer_step": step_for_trainer}
    data["stateful_callbacks"] = callbacks
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def marked_steps(state) -> tuple[int, int] | None:
    """(real step, trainer step) when ``state`` was loaded from a checkpoint marked by `mark_checkpoint`."""
    marker = (getattr(state, "stateful_callbacks", None) or {}).get(MARKER)
    if isinstance(marker, dict) and marker.get("trainer_step") == state.global_step:
        return int(marker["global_step"]), int(marker["trainer_step"])
    return None


def restore_real_step(state, trainer, real_step: int, step_for_trainer: int) -> bool:
    """Put the real step back into ``state`` and the Trainer's logging counters; False when the
    counters could not be reached (no trainer)."""
    state.global_step = real_step
    state.stateful_callbacks.pop(MARKER, None)  # a later checkpoint gets its own marker, or none
    if trainer is None:
        return False
    for name in _TRAINER_COUNTERS:
        if getattr(trainer, name, None) == step_for_trainer:
            setattr(trainer, name, real_step)
    return True
