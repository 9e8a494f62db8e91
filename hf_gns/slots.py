"""Per-example gradient slots: how statistics leave the backward pass, eager or compiled.

Each patched norm holds a *tap*: a small float32 leaf tensor that requires grad (not a
parameter, not a buffer, so optimizers, DDP and ``state_dict`` never see it). Once per
forward pass the norm draws from it a zero tensor of *slots*, ``[examples, numel]`` (a
stride-0 view: no memory), and feeds it into its computation so that the gradient of slot
row i is example i's gradient of the norm's parameters. Autograd adds up the slot gradients
of every call of the module in that pass (ALBERT's shared layer) before `ExampleSlots`'
backward squares them, and adds the tap's gradient over backward passes (micro-batches).
So the statistics are an ordinary gradient: they survive ``torch.compile``, need no hook
and no host sync, and read ``tap.grad`` = `TapLayout`:

    [examples, sum_i c_i (all parameters, flat), sum_i c_i**2 (elementwise, same columns)]

Every entry but the count is a sum over slot rows of one column of ``c_i`` or ``c_i**2``:
reductions over the examples that read the same per-example gradients as the parameter's
own gradient does, so inductor emits them in the kernel that sums those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TapLayout:
    """The named layout of a tap's gradient for parameters ``names`` of ``sizes`` elements.

    ``numel``, ``width`` and ``positions`` are plain fields (computed once), so that a compiled
    graph which holds a layout as a constant reads them without calling Python."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    numel: int = field(init=False, compare=False, repr=False)  # elements of all parameters: a slot row's width
    width: int = field(init=False, compare=False, repr=False)  # 1 + 2 * numel
    positions: tuple[int, int] = field(init=False, compare=False, repr=False)  # of weight / bias in names, -1: absent

    COUNT = 0

    def __post_init__(self) -> None:
        numel = sum(self.sizes)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "width", 1 + 2 * numel)
        object.__setattr__(self, "positions",
                           tuple(self.names.index(n) if n in self.names else -1 for n in ("weight", "bias")))

    def sum_slice(self, k: int) -> slice:
        """Where sum_i c_i of parameter ``k`` is."""
        part = self.column_slice(k)
        return slice(1 + part.start, 1 + part.stop)

    def square_slice(self, k: int) -> slice:
        """Where sum_i c_i**2 of parameter ``k`` is, elementwise (its sum is sum_i ||c_i||^2)."""
        part = self.column_slice(k)
        return slice(1 + self.numel + part.start, 1 + self.numel + part.stop)

    def column_slice(self, k: int) -> slice:
        """Columns of parameter ``k`` in a slot row."""
        start = sum(self.sizes[:k])
        return slice(start, start + self.sizes[k])


def new_tap(layout: TapLayout, device: torch.device) -> torch.Tensor:
    """A tap for ``layout``, its gradient already allocated (zeros; see `hf_gns.stats.clear_tap_grads`)."""
    tap = torch.zeros(layout.width, dtype=torch.float32, device=device, requires_grad=True)
    tap.grad = torch.zeros_like(tap)
    return tap


class ExampleSlots(torch.autograd.Function):
    """``tap -> zero slots`` whose gradients are folded into the tap's layout.

    The slots are one ``[rows, numel]`` tensor, or (``split``) one ``[rows, size]`` tensor per
    parameter: then each parameter's gradient reaches the fold as its own tensor and its sums
    over the rows read it directly, so inductor fuses them with the reduction that gives the
    parameter's own gradient (no copy of the per-example gradients into one buffer first).
    ``count`` is the number of examples (an int, or a float32 device scalar for a packed batch,
    whose ``rows`` is an upper bound: unused rows get zero gradient, which adds nothing).
    """

    @staticmethod
    def forward(ctx, tap: torch.Tensor, rows: int, count, layout: TapLayout, split: bool):
        ctx.count = count
        if split:
            return tuple(tap.new_zeros(1, 1).expand(rows, size) for size in layout.sizes)
        return tap.new_zeros(1, 1).expand(rows, layout.numel)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        per_example = [g.float() for g in grads]
        if isinstance(ctx.count, torch.Tensor):
            count = ctx.count.reshape(1).float()
        else:
            count = per_example[0].new_full((1,), float(ctx.count))
        sums = [g.sum(0) for g in per_example]
        squares = [g.square().sum(0) for g in per_example]
        return torch.cat([count, *sums, *squares]), None, None, None, None


def draw_slots(tap: torch.Tensor, rows: int, count, layout: TapLayout, split: bool = False):
    """The per-example slots of one forward pass (see `ExampleSlots`): a tensor, or a tuple of
    one tensor per parameter of ``layout`` (``split``)."""
    return ExampleSlots.apply(tap, rows, count, layout, split)
