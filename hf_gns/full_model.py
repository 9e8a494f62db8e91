"""Whole-model GNS as a diagnostic: exact per-example gradients of every parameter.

One backward per example (``torch.autograd.grad``, so ``.grad`` is untouched), with the
loss normalized as in the batch (``num_items_in_batch`` = label tokens of the whole
batch). Slow (B passes at batch 1), meant for every N-th step, to check on one's own model
that the normalization layers' GNS tracks the whole model's, as Gray et al. (2024) found.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .patch import pass_counters, patched_modules, set_recording
from .stats import GradientStats, ParamStats, _total


class InputKeeper:
    """The keyword inputs of a model's latest training forward, for the whole-model diagnostic:
    a forward pre-hook on the model, registered only while the diagnostic is on."""

    def __init__(self, model: nn.Module) -> None:
        self.inputs: dict | None = None
        self._handle = model.register_forward_pre_hook(self._keep, with_kwargs=True)

    def _keep(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled() and kwargs:
            self.inputs = dict(kwargs)

    def remove(self) -> None:
        self._handle.remove()
        self.inputs = None


def count_label_tokens(batch: dict, shift: bool = True, label_key: str = "labels") -> torch.Tensor | None:
    """Tokens of ``batch`` that carry a label (not -100), after the causal shift: a loss divisor."""
    labels = batch.get(label_key)
    if not isinstance(labels, torch.Tensor):
        return None
    labels = labels[..., 1:] if shift else labels
    return (labels != -100).sum()


def _example(batch: dict, i: int, size: int) -> dict:
    return {k: (v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == size else v)
            for k, v in batch.items()}


def per_example_gradient_stats(
    model: nn.Module,
    batch: dict,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    names: list[str] | None = None,
) -> GradientStats:
    """`GradientStats` of every trainable parameter (or of ``names``) on ``batch``, by brute force.

    ``loss_fn(model, example)`` returns one example's contribution to the batch loss; by
    default the model's ``.loss`` with ``num_items_in_batch`` set to the batch's label tokens.
    """
    batch = {k: v for k, v in batch.items() if k != "num_items_in_batch"}
    size = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() >= 1)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)}
    num_items = count_label_tokens(batch)

    def default_loss(m: nn.Module, example: dict) -> torch.Tensor:
        if num_items is None:
            raise ValueError("the batch has no 'labels': pass loss_fn")
        return m(**example, num_items_in_batch=num_items).loss

    loss_fn = loss_fn or default_loss
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    squares = {n: torch.zeros((), dtype=torch.float64, device=p.device) for n, p in params.items()}
    recording = [state.enabled for _, state in patched_modules(model)]
    set_recording(model, False)
    counters = pass_counters(model)
    for counter in counters:  # these passes are no training steps: count no tokens, no passes
        counter.paused = True
    try:
        for i in range(size):
            loss = loss_fn(model, _example(batch, i, size))
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads):
                if g is not None:
                    g = g.float()
                    sums[n] += g
                    squares[n] += g.pow(2).sum(dtype=torch.float64)
    finally:
        for (_, state), enabled in zip(patched_modules(model), recording):
            state.enabled = enabled
        for counter in counters:
            counter.paused = False
    names_list = list(params)
    values = torch.stack([squares[n] for n in names_list] + [sums[n].double().pow(2).sum() for n in names_list])
    values = values.tolist()
    k = len(names_list)
    per_param = {n: ParamStats(size, values[i], values[k + i]) for i, n in enumerate(names_list)}
    problems: list[str] = []
    return GradientStats(per_param=per_param, total=_total(per_param, problems), problems=tuple(problems))


def subset(stats: GradientStats, names) -> GradientStats:
    """The statistics of the parameters in ``names`` only, with their own total."""
    per_param = {n: s for n, s in stats.per_param.items() if n in set(names)}
    return GradientStats(per_param=per_param, total=_total(per_param, []), problems=stats.problems)
