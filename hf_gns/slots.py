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

    [examples, sum_i ||c_i||^2 per parameter..., sum_i c_i (all parameters, flat)]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TapLayout:
    """The named layout of a tap's gradient for parameters ``names`` of ``sizes`` elements."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Elements of all parameters together: the width of a slot row."""
        return sum(self.sizes)

    @property
    def width(self) -> int:
        return 1 + len(self.names) + self.numel

    COUNT = 0

    def square_index(self, k: int) -> int:
        """Where sum_i ||c_i||^2 of parameter ``k`` is."""
        return 1 + k

    def sum_slice(self, k: int) -> slice:
        """Where sum_i c_i of parameter ``k`` is."""
        start = 1 + len(self.names) + sum(self.sizes[:k])
        return slice(start, start + self.sizes[k])

    def column_slice(self, k: int) -> slice:
        """Columns of parameter ``k`` in a slot row."""
        start = sum(self.sizes[:k])
        return slice(start, start + self.sizes[k])


def new_tap(layout: TapLayout, device: torch.device) -> torch.Tensor:
    return torch.zeros(layout.width, dtype=torch.float32, device=device, requires_grad=True)


class ExampleSlots(torch.autograd.Function):
    """``tap -> zeros [rows, numel]`` whose gradient is folded into the tap's layout.

    ``count`` is the number of examples (an int, or a float32 device scalar for a packed
    batch, whose ``rows`` is an upper bound: unused rows get zero gradient).
    """

    @staticmethod
    def forward(ctx, tap: torch.Tensor, rows: int, count, layout: TapLayout) -> torch.Tensor:
        ctx.layout, ctx.count = layout, count
        return tap.new_zeros(1, 1).expand(rows, layout.numel)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layout = ctx.layout
        per_example = grad.float()
        n = len(layout.names)
        out = per_example.new_empty(layout.width)
        if len(set(layout.sizes)) == 1:  # weight and bias of one size: one reduction for both
            torch.sum(per_example.view(per_example.shape[0], n, -1).square(), (0, 2), out=out[1 : 1 + n])
        else:
            for k in range(n):
                out[1 + k] = per_example[:, layout.column_slice(k)].square().sum()
        torch.sum(per_example, 0, out=out[1 + n :])
        out[0] = ctx.count
        return out, None, None, None


def draw_slots(tap: torch.Tensor, rows: int, count, layout: TapLayout) -> torch.Tensor:
    """The per-example slots of one forward pass (see `ExampleSlots`)."""
    return ExampleSlots.apply(tap, rows, count, layout)
