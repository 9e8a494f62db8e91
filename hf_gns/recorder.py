"""Per-parameter accumulation of per-example gradients.

During one backward pass a patched module hands its per-example gradient vectors
(``[B, numel]``, float32) to the `ParamAccumulator` of each of its parameters. Calls of the
same module within one forward (ALBERT's shared layer) are summed first; once the
parameter's gradient for that backward is complete, the per-example vectors are squared
and folded into running sums. Everything stays on the device: no host sync here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn


class ParamAccumulator:
    """Per-example gradients of one parameter since the last reset.

    A backward's per-example vectors (``[B, numel]`` float32) are kept as they arrive,
    summed over repeated calls within one forward pass (ALBERT's shared layer), and set
    aside when a call of another forward pass arrives or the statistics are gathered. All
    squaring and reduction is left to `gather_stats`, which does it for every parameter at
    once: no per-layer work, hook or host sync here.
    """

    def __init__(self, name: str, param: nn.Parameter) -> None:
        self.name = name
        self.param = param
        self.pending: torch.Tensor | None = None
        self.pending_sum: torch.Tensor | None = None
        self.pending_pass: int | None = None
        self.finished: list[torch.Tensor] = []
        self.finished_sums: list[torch.Tensor] = []
        self.num_examples = 0
        self.problems: list[str] = []

    def add(self, per_example: torch.Tensor, pass_id: int, total: torch.Tensor | None = None) -> None:
        """Add one call's per-example gradients (``[B, *param.shape]``) for forward pass ``pass_id``.

        ``total`` is their sum over examples (float32, flat), when the caller has it already.
        """
        vectors = per_example if per_example.dim() == 2 else per_example.reshape(per_example.shape[0], -1)
        if vectors.dtype != torch.float32:
            vectors = vectors.float()
        if self.pending is not None and self.pending_pass != pass_id:
            self.finalize()
        if self.pending is None:
            self.pending, self.pending_sum, self.pending_pass = vectors, total, pass_id
        elif self.pending.shape != vectors.shape:
            self.problems.append(
                f"{self.name}: calls within one forward saw {self.pending.shape[0]} and "
                f"{vectors.shape[0]} examples"
            )
        else:
            self.pending = self.pending + vectors
            self.pending_sum = self.pending_sum + total if self.pending_sum is not None and total is not None else None

    def finalize(self) -> None:
        """Set aside the (summed) per-example vectors of the last forward pass."""
        if self.pending is None:
            return
        self.finished.append(self.pending)
        self.finished_sums.append(self.pending_sum if self.pending_sum is not None else self.pending.sum(0))
        self.num_examples += self.pending.shape[0]
        self.pending = self.pending_sum = self.pending_pass = None

    def grad_sum(self) -> torch.Tensor | None:
        """sum_i c_i over everything recorded since the last reset."""
        if not self.finished_sums:
            return None
        if len(self.finished_sums) == 1:
            return self.finished_sums[0]
        return torch.stack(self.finished_sums).sum(0)

    def reset(self) -> None:
        self.pending = self.pending_sum = self.pending_pass = None
        self.finished, self.finished_sums = [], []
        self.num_examples = 0
        self.problems = []


@dataclass(frozen=True)
class ExampleSpec:
    """Where the examples of one norm input are.

    Dimension ``dim`` of the input indexes examples (``group`` consecutive entries per
    example, for inputs flattened to ``[B*T, D]``), or, for a packed batch, tokens whose
    sequences start at ``segments``.
    """

    dim: int
    count: int
    group: int = 1
    segments: list[int] | None = None

    @property
    def canonical_dim(self) -> int:
        """Where the kernels expect that dimension: 0 for examples, 1 for packed tokens."""
        return 1 if self.segments is not None else 0


@dataclass
class ExampleLayout:
    """The batch of one forward pass: its size and, for a packed batch, its sequences.

    An example is one index along the batch dimension of a norm's input (dim 0 normally,
    dim 1 for sequence-first models, groups of rows for inputs flattened to ``[B*T, D]``).
    For packed, padding-free batches (batch dim 1, ``position_ids`` restarting at 0 or
    ``cu_seq_lens_*``), each packed sequence is an example.
    """

    segment_starts: list[int] | None = None
    batch_size: int | None = None
    _device_cache: dict = field(default_factory=dict)
    _spec_cache: dict = field(default_factory=dict)

    def spec_for(self, x: torch.Tensor) -> ExampleSpec | str:
        """The example structure of ``x``, or why it cannot be found (memoized per shape)."""
        shape = x.shape
        spec = self._spec_cache.get(shape)
        if spec is None:
            spec = self._spec_cache[shape] = self._find_spec(x)
        return spec

    def _find_spec(self, x: torch.Tensor) -> ExampleSpec | str:
        if x.dim() < 2:
            return f"input of shape {tuple(x.shape)} has no batch dimension"
        if self.segment_starts is not None:
            tokens, count = self.segment_starts[-1], len(self.segment_starts) - 1
            if x.shape[0] == 1:
                for dim in range(1, x.dim() - 1):
                    if x.shape[dim] == tokens:
                        return ExampleSpec(dim, count, segments=self.segment_starts)
            return f"packed batch of {tokens} tokens, but no dimension of input {tuple(x.shape)} has that size"
        batch = self.batch_size
        if batch is None or x.shape[0] == batch:
            return ExampleSpec(0, x.shape[0])
        if x.dim() == 2 and x.shape[0] % batch == 0:
            return ExampleSpec(0, batch, group=x.shape[0] // batch)
        if x.dim() >= 3 and x.shape[1] == batch:
            return ExampleSpec(1, batch)
        return f"no dimension of input {tuple(x.shape)} matches the batch size {batch}"

    def device_tensor(self, key: str, values: list[int], device: torch.device) -> torch.Tensor:
        """A cached int32 copy of ``values`` on ``device`` (one upload per forward)."""
        cache_key = (key, device)
        if cache_key not in self._device_cache:
            self._device_cache[cache_key] = to_device_async(values, device, torch.int32)
        return self._device_cache[cache_key]


def to_device_async(values: list, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``values`` on ``device``, copied from pinned memory without blocking."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class PassCounter:
    """Counts forward passes of a patched model, and describes the current batch layout."""

    def __init__(self) -> None:
        self.pass_id = 0
        self.layout = ExampleLayout()
        self.host_tokens = 0.0
        self.device_tokens: list[torch.Tensor] = []
        self.positions = 0
        self.paused = False
        self.keep_inputs = False
        self.last_inputs: dict | None = None

    def start_pass(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.paused:
            return
        self.pass_id += 1
        self.layout = ExampleLayout(segment_starts=packed_segments(kwargs), batch_size=batch_size(args, kwargs))
        if module.training and torch.is_grad_enabled():
            if self.keep_inputs:
                self.last_inputs = dict(kwargs)
            self.positions += input_positions(args, kwargs)
            count = count_tokens(args, kwargs)
            if isinstance(count, torch.Tensor):
                self.device_tokens.append(count)
            elif count is not None:
                self.host_tokens += count

    def take_positions(self) -> int:
        """Input positions of training forwards since the last call (a host count)."""
        taken, self.positions = self.positions, 0
        return taken

    def take_tokens(self, reset: bool = True) -> tuple[float, list[torch.Tensor]]:
        """Tokens seen since the last reset: a host count and device counts (masks)."""
        taken = (self.host_tokens, list(self.device_tokens))
        if reset:
            self.host_tokens, self.device_tokens = 0.0, []
        return taken


_BATCH_INPUTS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features",
                 "attention_mask", "decoder_input_ids", "labels")


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """The batch size of a model call, from its usual inputs (None if none is recognised)."""
    for name in _BATCH_INPUTS:
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return value.shape[0]
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
        return args[0].shape[0]
    return None


def input_positions(args: tuple, kwargs: dict) -> int:
    """Input positions (tokens, padding included) of one forward, from shapes alone."""
    for name in ("input_ids", "inputs_embeds", "labels", "decoder_input_ids"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[0] * value.shape[1]
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
        first = args[0]
        return first.shape[0] * (first.shape[1] if first.dim() >= 2 and not first.is_floating_point() else 1)
    return 0


def count_tokens(args: tuple, kwargs: dict) -> torch.Tensor | int | None:
    """Non-padding input tokens of one forward: a device tensor for a mask, else a host int.

    Never copies between host and device.
    """
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.sum(dtype=torch.float64)
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(ids, torch.Tensor) and ids.dim() >= 1:
        return ids.numel() if ids.dim() <= 2 else ids.shape[0] * ids.shape[1]
    return None


def packed_segments(kwargs: dict) -> list[int] | None:
    """Start offsets (plus the end) of packed sequences, or None for an ordinary batch.

    Reads ``cu_seq_lens_q`` (flash-attention varlen) or ``position_ids`` restarting at 0, as
    produced by ``DataCollatorWithFlattening``. Costs one device-to-host copy, only for
    batches of a single row.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = kwargs.get("cu_seqlens_q")
    if isinstance(cu, torch.Tensor) and cu.numel() > 2:
        return [int(v) for v in cu.tolist()]
    pos = kwargs.get("position_ids")
    if not isinstance(pos, torch.Tensor) or pos.dim() != 2 or pos.shape[0] != 1 or pos.shape[1] < 2:
        return None
    starts = torch.nonzero(pos[0] == 0).flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return starts + [pos.shape[1]]


def warn_problems(problems: list[str]) -> None:
    if problems:
        warnings.warn("hf_gns skipped a measurement: " + "; ".join(problems[:5]), stacklevel=3)
