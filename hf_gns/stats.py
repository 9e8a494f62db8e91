"""`gather_stats`: per-parameter gradient statistics since the last reset, in one host sync.

Under torch.distributed every rank contributes its examples: the per-example squared norms,
the gradient sums and the example counts are all-reduced in a single flat float64 tensor,
then scaled as the averaged gradient of DDP / FSDP sees them (``c_i / world_size``), so
every rank returns the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .patch import pass_counters, patched_modules
from .recorder import ParamAccumulator, warn_problems


@dataclass(frozen=True)
class ParamStats:
    """``num_examples`` = B, ``example_sq_norm_sum`` = sum_i ||c_i||^2, ``batch_sq_norm`` = ||sum_i c_i||^2."""

    num_examples: int
    example_sq_norm_sum: float
    batch_sq_norm: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.example_sq_norm_sum) and math.isfinite(self.batch_sq_norm)


@dataclass(frozen=True)
class GradientStats:
    """Statistics of every patched parameter (``per_param``) and their sum (``total``)."""

    per_param: dict[str, ParamStats]
    total: ParamStats
    problems: tuple[str, ...] = field(default_factory=tuple)
    tokens: float = 0.0

    @property
    def num_examples(self) -> int:
        return self.total.num_examples


def _accumulators(model: nn.Module) -> list[ParamAccumulator]:
    accs: list[ParamAccumulator] = []
    for _, state in patched_modules(model):
        accs.extend(state.accumulators.values())
    return accs


def _world_size(reduce: bool) -> int:
    if reduce and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reset_stats(model: nn.Module) -> None:
    """Forget everything recorded since the last reset."""
    for acc in _accumulators(model):
        acc.reset()
    for counter in pass_counters(model):
        counter.take_tokens()


def gather_stats(model: nn.Module, reset: bool = True, reduce: bool = True) -> GradientStats:
    """Gradient statistics of every patched parameter since the last reset.

    ``reduce`` all-reduces across torch.distributed ranks when a process group is initialized
    (every rank must call this together). ``reset`` clears the accumulators afterwards.
    """
    accs = _accumulators(model)
    for acc in accs:
        acc.finalize()
    problems = [p for acc in accs for p in acc.problems]
    live = [a for a in accs if a.grad_sum is not None]
    world = _world_size(reduce)
    per_param: dict[str, ParamStats] = {}
    tokens = 0.0
    if live or world > 1:
        token_counts = [t for t in (c.take_tokens() for c in pass_counters(model)) if t is not None]
        values = _reduced_values(accs, world, token_counts)
        tokens = values.pop()
        for i, acc in enumerate(accs):
            count, sq, batch_sq = values[3 * i : 3 * i + 3]
            if count > 0:
                per_param[acc.name] = ParamStats(int(round(count)), sq / world**2, batch_sq / world**2)
    total = _total(per_param, problems)
    if reset:
        for acc in accs:
            acc.reset()
    warn_problems(problems)
    return GradientStats(per_param=per_param, total=total, problems=tuple(problems), tokens=tokens)


def _reduced_values(accs: list[ParamAccumulator], world: int, token_counts: list) -> list[float]:
    """[count, sum_i ||c_i||^2, ||sum_i c_i||^2] per accumulator, then the token count;
    summed over ranks, in one host sync."""
    device = next((a.grad_sum.device for a in accs if a.grad_sum is not None), None)
    if device is None:
        device = accs[0].param.device if accs else torch.device("cpu")
    scalars, vectors = [], []
    for acc in accs:
        numel = acc.param.numel()
        if acc.grad_sum is None:
            scalars.append(torch.zeros(2, dtype=torch.float64, device=device))
            vectors.append(torch.zeros(numel, dtype=torch.float64, device=device))
        else:
            count = torch.tensor([float(acc.num_examples)], dtype=torch.float64, device=device)
            scalars.append(torch.cat([count, acc.example_sq_sum.reshape(1).to(device)]))
            vectors.append(acc.grad_sum.to(device=device, dtype=torch.float64))
    tokens = sum((t.to(device=device, dtype=torch.float64) for t in token_counts),
                 torch.zeros((), dtype=torch.float64, device=device)).reshape(1)
    flat = torch.cat(scalars + [tokens] + vectors)
    if world > 1:
        if dist.get_backend() == "nccl" and flat.device.type != "cuda":
            flat = flat.cuda()
        dist.all_reduce(flat)
    n = len(accs)
    head, tokens, tail = flat[: 2 * n].view(n, 2), flat[2 * n : 2 * n + 1], flat[2 * n + 1 :]
    sizes = [a.param.numel() for a in accs]
    batch_sq = torch.stack([v.pow(2).sum() for v in tail.split(sizes)]) if n else tail
    return torch.cat([torch.cat([head, batch_sq.view(n, 1)], dim=1).flatten(), tokens]).tolist()


def _total(per_param: dict[str, ParamStats], problems: list[str]) -> ParamStats:
    if not per_param:
        return ParamStats(0, 0.0, 0.0)
    counts = {s.num_examples for s in per_param.values()}
    batch = max(counts)
    if len(counts) > 1:
        problems.append(f"parameters saw different numbers of examples {sorted(counts)}")
    used = [s for s in per_param.values() if s.num_examples == batch]
    return ParamStats(
        batch,
        sum(s.example_sq_norm_sum for s in used),
        sum(s.batch_sq_norm for s in used),
    )
