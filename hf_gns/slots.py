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


class TapBank:
    """Flat float32 leaves (``roots``, one per device) whose gradients hold every tap gradient of a
    pass counter's norms, one region per norm, by name. Each norm keeps its own leaf tap for eager
    calls, its ``.grad`` a view of its region, so eager backwards add into the same buffer; a compiled
    graph reads ``roots[i].narrow(offset, width)``, so autograd accumulates one gradient per root and
    graph instead of one per norm (on the GPU: one ``AccumulateGrad`` and its kernel launch per
    micro-batch instead of one per norm).

    A region is made when a norm is patched (or moved to another device, or to another model's
    counter), wide enough for all its parameters, so a compiled graph never meets a root that grows
    while it is traced: a later layout (a parameter frozen) uses the start of the same region. Copies
    and pickles keep the regions, with roots of their own."""

    def __init__(self) -> None:
        self.roots: list[torch.Tensor] = []
        self.regions: dict[str, tuple[int, int, int]] = {}  # norm name -> (root index, offset, reserved width)
        self.taps: dict[str, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        return {"regions": dict(self.regions), "roots": [(root.numel(), root.device) for root in self.roots]}

    def __setstate__(self, state: dict) -> None:
        self.regions, self.taps, self.roots = dict(state["regions"]), {}, []
        for size, device in state["roots"]:
            self.roots.append(_flat_leaf(size, device))

    @torch.compiler.disable
    def attach(self, name: str, tap: torch.Tensor, reserve: int | None = None) -> tuple[int, int]:
        """Give ``tap`` (the leaf of the norm ``name``) a region on its device, of at least ``reserve``
        elements; its ``.grad`` becomes a view of the region, zeroed. (root index, offset)."""
        width = tap.numel()
        index = self._root_index(tap.device)
        region = self.regions.get(name)
        if region is None or region[0] != index or region[2] < width:
            end = max((o + w for i, o, w in self.regions.values() if i == index), default=0)
            region = self.regions[name] = (index, end, max(width, reserve or 0))
        self.taps[name] = tap
        if self.roots[index].numel() < region[1] + region[2]:
            self._grow(index, region[1] + region[2])
        tap.grad = self.roots[index].grad.narrow(0, region[1], width).zero_()
        return region[:2]

    def detach(self, name: str) -> None:
        """Forget the norm ``name`` (unpatched, or moved to another counter); its region stays unused."""
        self.regions.pop(name, None)
        self.taps.pop(name, None)

    def relink(self) -> None:
        """Point every tap's ``.grad`` at its region again where something replaced it (a backward with
        ``create_graph=True`` accumulates out of place). Called when the statistics are cleared."""
        for name, tap in self.taps.items():
            index, offset, _ = self.regions[name]
            grad = self.roots[index].grad
            if tap.grad is None or tap.grad.data_ptr() != grad.data_ptr() + offset * grad.element_size():
                tap.grad = grad.narrow(0, offset, tap.numel())

    def _root_index(self, device: torch.device) -> int:
        for index, root in enumerate(self.roots):
            if root.device == device:
                return index
        self.roots.append(_flat_leaf(0, device))
        return len(self.roots) - 1

    def _grow(self, index: int, size: int) -> None:
        old = self.roots[index]
        root = _flat_leaf(size, old.device)
        root.grad[: old.numel()].copy_(old.grad)
        self.roots[index] = root
        for name, tap in self.taps.items():
            i, offset, _ = self.regions[name]
            if i == index:
                tap.grad = root.grad.narrow(0, offset, tap.numel())


def _flat_leaf(size: int, device: torch.device) -> torch.Tensor:
    leaf = torch.zeros(size, dtype=torch.float32, device=device, requires_grad=True)
    leaf.grad = torch.zeros_like(leaf)
    return leaf


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
