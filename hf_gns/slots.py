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

Every entry is a sum over slot rows of one column of ``[1, c_i, c_i**2]``, so the whole
fold is a single reduction over the examples, which inductor emits as one kernel.
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
        return 1 + 2 * self.numel

    COUNT = 0

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
        per_example = grad.float()
        rows = per_example.shape[0]
        if isinstance(ctx.count, torch.Tensor):  # packed: rows past the sequences count for nothing
            present = (torch.arange(rows, device=grad.device) < ctx.count).float().unsqueeze(1)
        else:
            present = per_example.new_ones(rows, 1)
        # one reduction over the rows of [1, c_i, c_i**2] (see `TapLayout`)
        return torch.cat([present, per_example, per_example.square()], 1).sum(0), None, None, None


def draw_slots(tap: torch.Tensor, rows: int, count, layout: TapLayout) -> torch.Tensor:
    """The per-example slots of one forward pass (see `ExampleSlots`)."""
    return ExampleSlots.apply(tap, rows, count, layout)
