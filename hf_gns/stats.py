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

from .distributed import world_size
from .layout import warn_problems
from .patch import PatchedNorm, patched_parts
from .slots import TapLayout


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


@dataclass(frozen=True)
class _Tapped:
    """A patched module's tap and the names of its parameters in the statistics."""

    names: tuple[str, ...]
    layout: TapLayout
    tap: torch.Tensor


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers (which only prefix names)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _tapped(norms: list[tuple[str, PatchedNorm]]) -> list[_Tapped]:
    out = []
    for name, state in norms:  # names as in named_parameters() of the unwrapped model (PEFT too)
        if state.tap is not None and state.unmeasurable is None:
            prefix = f"{name}." if name else ""
            out.append(_Tapped(tuple(prefix + n for n in state.tap_layout.names), state.tap_layout, state.tap))
    return out


def _world_size(reduce: bool) -> int:
    return world_size() if reduce else 1


def clear_tap_grads(taps: list[torch.Tensor]) -> None:
    """Zero the taps' gradients in place (one multi-tensor op), never dropping them: autograd then
    adds each backward into the same tensor instead of adopting its gradient, which under CUDA
    graphs (``mode="reduce-overhead"``) is memory the next replay overwrites."""
    present = [t.grad for t in taps if t.grad is not None]
    if present:
        torch._foreach_zero_(present)
    for tap in taps:
        if tap.grad is None:
            tap.grad = torch.zeros_like(tap)


def clear_statistics(taps: list[torch.Tensor], counters: list) -> None:
    """Zero the counters' banks (`hf_gns.slots.TapBank`), whose regions the taps' gradients are views
    of, in one op, relinking any tap whose gradient something replaced; a tap outside every bank is
    zeroed on its own."""
    clear_tap_grads([root for counter in counters for root in counter.bank.roots])
    banked = set()
    for counter in counters:
        counter.bank.relink()
        banked.update(id(tap) for tap in counter.bank.taps.values())
    clear_tap_grads([tap for tap in taps if id(tap) not in banked])


def reset_stats(model: nn.Module) -> None:
    """Forget everything recorded since the last reset."""
    norms, counters = patched_parts(model, names_in=unwrap(model))
    clear_statistics([entry.tap for entry in _tapped(norms)], counters)
    for counter in counters:
        counter.take_tokens()
        counter.take_problems()


def gather_stats(model: nn.Module, reset: bool = True, reduce: bool = True) -> GradientStats:
    """Gradient statistics of every patched parameter since the last reset (one host sync).

    ``reduce`` all-reduces across torch.distributed ranks when a process group is initialized
    (every rank must call this together). ``reset`` clears the statistics afterwards.
    """
    return gather_stats_async(model, reset=reset, reduce=reduce).result()


class PendingStats:
    """Statistics reduced on the device and being copied to the host without blocking.

    `result` waits for the copy (a no-op once `ready`), so a training loop can start the
    gather after step k and read it during step k+1 without ever stalling the GPU queue.
    The reduced vector holds, per parameter, [examples, sum_i ||c_i||^2, ||sum_i c_i||^2],
    then the device token count.
    """

    def __init__(self, names: list[str], values: torch.Tensor, event, world: int, problems: list[str]) -> None:
        self._names, self._values = names, values
        self._event, self._world, self._problems = event, world, problems
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
        counts, example_sq, batch_sq = values[:n], values[n : 2 * n], values[2 * n : 3 * n]
        tokens = values[3 * n]
        per_param = {}
        for i, name in enumerate(self._names):
            if counts[i] > 0:
                per_param[name] = ParamStats(int(round(counts[i])), example_sq[i] / world**2, batch_sq[i] / world**2)
        total = _total(per_param, problems)
        warn_problems(problems)
        return GradientStats(per_param=per_param, total=total, problems=tuple(problems), tokens=tokens)


def gather_stats_async(model: nn.Module, reset: bool = True, reduce: bool = True) -> PendingStats:
    """Like `gather_stats`, but returns at once; call ``.result()`` when the numbers are needed.

    A fixed, small number of device ops whatever the number of layers. Under
    torch.distributed the all-reduce is enqueued here, so every rank must call this at the
    same point of training.
    """
    norms, counters = patched_parts(model, names_in=unwrap(model))
    entries = _tapped(norms)
    for counter in counters:
        counter.say_notes()
    problems = [p for c in counters for p in c.take_problems()]
    world = _world_size(reduce)
    device_tokens = [t for t in (c.take_tokens(reset) for c in counters) if t is not None]
    device = _stats_device(entries, device_tokens, world)
    grads = [e.tap.grad if e.tap.grad is not None else torch.zeros(e.layout.width, device=device)
             for e in entries]
    token_total = torch.zeros(1, dtype=torch.float64, device=device)
    for tokens in device_tokens:
        token_total = token_total + tokens.to(device)
    flat = torch.cat([torch.cat(grads).to(device=device, dtype=torch.float64), token_total]) if grads else token_total
    if world > 1:
        dist.all_reduce(flat)
    index = _flat_index(tuple(e.layout for e in entries), device)
    n_params = len(index.owners_count)
    example_sq = torch.zeros(n_params, dtype=torch.float64, device=device).index_add_(0, index.owner, flat[index.squares])
    batch_sq = torch.zeros(n_params, dtype=torch.float64, device=device).index_add_(0, index.owner, flat[index.sums].pow(2))
    out = torch.cat([flat[index.count], example_sq, batch_sq, flat[-1:]])
    event = None
    if out.device.type == "cuda":
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        out = host
    if reset:
        clear_statistics([e.tap for e in entries], counters)
    names = [name for e in entries for name in e.names]
    return PendingStats(names, out, event, world, problems)


@dataclass(frozen=True)
class _FlatIndex:
    """Positions in the concatenated tap gradients: per parameter, its example count; per element,
    where its sum_i c_i and sum_i c_i**2 are and which parameter (``owner``) it belongs to."""

    count: torch.Tensor
    sums: torch.Tensor
    squares: torch.Tensor
    owner: torch.Tensor
    owners_count: tuple[int, ...]


_INDEX_CACHE: dict = {}


def _flat_index(layouts: tuple[TapLayout, ...], device: torch.device) -> _FlatIndex:
    key = (layouts, device)
    if key not in _INDEX_CACHE:
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.clear()
        count, sums, squares, owner = [], [], [], []
        offset = param = 0
        for layout in layouts:
            for k in range(len(layout.names)):
                count.append(offset + TapLayout.COUNT)
                part, square = layout.sum_slice(k), layout.square_slice(k)
                sums.extend(range(offset + part.start, offset + part.stop))
                squares.extend(range(offset + square.start, offset + square.stop))
                owner.extend([param] * (part.stop - part.start))
                param += 1
            offset += layout.width
        as_index = lambda values: torch.tensor(values, dtype=torch.long).to(device)  # noqa: E731
        _INDEX_CACHE[key] = _FlatIndex(as_index(count), as_index(sums), as_index(squares), as_index(owner),
                                       tuple(range(param)))
    return _INDEX_CACHE[key]


def _stats_device(entries: list[_Tapped], tokens: list, world: int) -> torch.device:
    if entries:
        device = entries[0].tap.device
    else:
        device = tokens[0].device if tokens else torch.device("cpu")
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
