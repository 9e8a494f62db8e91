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
from .recorder import ParamAccumulator, to_device_async, warn_problems


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
    """Gradient statistics of every patched parameter since the last reset (one host sync).

    ``reduce`` all-reduces across torch.distributed ranks when a process group is initialized
    (every rank must call this together). ``reset`` clears the accumulators afterwards.
    """
    return gather_stats_async(model, reset=reset, reduce=reduce).result()


class PendingStats:
    """Statistics reduced on the device and being copied to the host without blocking.

    `result` waits for the copy (a no-op once `ready`), so a training loop can start the
    gather after step k and read it during step k+1 without ever stalling the GPU queue.
    """

    def __init__(self, names, counts, values, event, world, problems, host_tokens: float = 0.0,
                 has_device_tokens: bool = True) -> None:
        self._names, self._counts, self._values = names, counts, values
        self._event, self._world, self._problems = event, world, problems
        self._host_tokens, self._has_device_tokens = host_tokens, has_device_tokens
        self._result: GradientStats | None = None

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def result(self) -> GradientStats:
        if self._result is None:
            if self._event is not None:
                self._event.synchronize()
            self._result = self._build()
        return self._result

    def _build(self) -> GradientStats:
        problems = list(self._problems)
        n, world = len(self._names), self._world
        values = self._values.tolist()
        counts = values[2 * n + 1 :] if self._counts is None else self._counts
        tokens = self._host_tokens + (values[2 * n] if self._has_device_tokens else 0.0)
        per_param = {}
        for i, name in enumerate(self._names):
            if counts[i] > 0:
                per_param[name] = ParamStats(int(round(counts[i])), values[i] / world**2, values[n + i] / world**2)
        total = _total(per_param, problems)
        warn_problems(problems)
        return GradientStats(per_param=per_param, total=total, problems=tuple(problems), tokens=tokens)


def gather_stats_async(model: nn.Module, reset: bool = True, reduce: bool = True) -> PendingStats:
    """Like `gather_stats`, but returns at once; call ``.result()`` when the numbers are needed.

    A fixed, small number of device ops whatever the number of layers. Under
    torch.distributed the all-reduce is enqueued here, so every rank must call this at the
    same point of training.
    """
    accs = _accumulators(model)
    for acc in accs:
        acc.finalize()
    problems = [p for acc in accs for p in acc.problems]
    world = _world_size(reduce)
    taken = [c.take_tokens(reset) for c in pass_counters(model)]
    host_tokens = sum(h for h, _ in taken)
    tokens = [t for _, device_counts in taken for t in device_counts]
    device = _stats_device(accs, tokens, world)
    n = len(accs)
    counts = [float(acc.num_examples) for acc in accs]
    vectors = [v for acc in accs for v in acc.finished]
    owners = tuple(i for i, acc in enumerate(accs) for _ in acc.finished)
    sums = [acc.grad_sum() for acc in accs]
    sums = [s if s is not None else torch.zeros(acc.param.numel(), device=device) for s, acc in zip(sums, accs)]
    device_tokens = torch.stack([t.to(device=device, dtype=torch.float64) for t in tokens]).sum() if tokens else None

    if world > 1:
        example_sq = torch.zeros(n, dtype=torch.float64, device=device)
        if vectors:
            norms = torch.stack(torch._foreach_norm(vectors)).to(device=device, dtype=torch.float64)
            example_sq.index_add_(0, _index(owners, device), norms.pow(2))
        token_total = torch.full((1,), host_tokens, dtype=torch.float64, device=device)
        if device_tokens is not None:
            token_total = token_total + device_tokens
        sizes = [s.numel() for s in sums]
        host_counts = to_device_async(counts, device, torch.float64)
        flat = torch.cat([example_sq, token_total, host_counts]
                         + [s.to(device=device, dtype=torch.float64).reshape(-1) for s in sums])
        dist.all_reduce(flat)
        example_sq, token_total, counts_dev = flat[:n], flat[n], flat[n + 1 : 2 * n + 1]
        owner = _owner_index(tuple(sizes), device)
        batch_sq = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, owner, flat[2 * n + 1 :].pow(2))
        out = torch.cat([example_sq, batch_sq, token_total.reshape(1), counts_dev])
        host_tokens = 0.0  # already in the reduced total
    elif n:
        # one multi-tensor norm for every per-example vector and every gradient sum
        squares = torch.stack(torch._foreach_norm(vectors + sums)).to(device=device, dtype=torch.float64).pow_(2)
        if owners == tuple(range(n)):  # one backward per parameter: nothing to add up
            head = squares
        else:
            example_sq = torch.zeros(n, dtype=torch.float64, device=device)
            example_sq.index_add_(0, _index(owners, device), squares[: len(vectors)])
            head = torch.cat([example_sq, squares[len(vectors):]])
        out = head if device_tokens is None else torch.cat([head, device_tokens.reshape(1)])
    else:  # nothing patched: only the token count, if it lives on the device
        out = device_tokens.reshape(1) if device_tokens is not None else torch.zeros(0, dtype=torch.float64, device=device)
    event = None
    if out.device.type == "cuda":
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        out = host
    if reset:
        for acc in accs:
            acc.reset()
    return PendingStats([a.name for a in accs], None if world > 1 else counts, out, event, world, problems,
                        host_tokens, device_tokens is not None or world > 1)


_INDEX_CACHE: dict = {}


def _index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An int64 index tensor on ``device``, uploaded once per distinct value tuple."""
    key = (values, device)
    if key not in _INDEX_CACHE:
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = to_device_async(list(values), device, torch.int64)
    return _INDEX_CACHE[key]


def _owner_index(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """For a concatenation of vectors of these sizes, the index of the vector of each element."""
    key = ("owner", sizes, device)
    if key not in _INDEX_CACHE:
        repeats = torch.tensor(sizes)
        _INDEX_CACHE[key] = torch.repeat_interleave(torch.arange(len(sizes)), repeats).to(device)
    return _INDEX_CACHE[key]


def _stats_device(accs: list[ParamAccumulator], tokens: list, world: int) -> torch.device:
    for acc in accs:
        if acc.finished_sums:
            device = acc.finished_sums[0].device
            break
    else:
        device = accs[0].param.device if accs else (tokens[0].device if tokens else torch.device("cpu"))
    if world > 1 and dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device


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
