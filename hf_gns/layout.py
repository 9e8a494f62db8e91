"""Where the examples of a forward pass are, and what the pass consumed.

A patched model's entry modules (`hf_gns.patch.EntryForward`) mark each forward pass; the
pass's first patched norm reads the model's inputs (`PassCounter.start_pass`): the batch
size, packed sequences (``position_ids`` restarting at 0 or ``cu_seq_lens_*``) and the token
count. Each patched norm then asks `find_spec` which dimension of its input indexes examples.
This runs inside ``torch.compile``'d graphs too: it only assigns attributes and appends to
lists (no reads of Python numbers that would specialize a graph), and it never copies from
the device to the host.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .slots import TapBank


@dataclass(frozen=True)
class ExampleSpec:
    """Where the examples of one norm input are.

    Dimension ``dim`` of the input indexes examples (``group`` consecutive entries per example,
    for inputs flattened to ``[B*T, D]``), or, for a packed batch (``segment_ids`` given), the
    tokens of dimension ``dim`` belong to the sequences numbered by ``segment_ids`` (at most
    ``count`` of them; ``segments`` holds their start offsets when known on the host).
    """

    dim: int
    count: int
    group: int = 1
    segment_ids: torch.Tensor | None = None
    segments: tuple[int, ...] | None = None

    @property
    def packed(self) -> bool:
        return self.segment_ids is not None

    @property
    def canonical_dim(self) -> int:
        """Where the computation expects that dimension: 0 for examples, 1 for packed tokens."""
        return 1 if self.packed else 0


@dataclass(frozen=True)
class PackedBatch:
    """The sequences of a packed (padding-free) batch of ``tokens`` tokens in one row."""

    tokens: int
    segment_ids: torch.Tensor          # int64 [tokens]: the sequence of each token (device)
    count: torch.Tensor                # number of sequences, float32 scalar (device)
    starts: tuple[int, ...] | None = None  # start offsets plus the end, when known on the host


@dataclass(frozen=True)
class PassInputs:
    """What the model's inputs say about the examples of a pass."""

    batch_size: int | None = None
    seq_len: int | None = None       # tokens per example (last dim of input_ids), if known
    image_rows: int | None = None    # rows of a flattened ``pixel_values`` (vision patches of all images)


def find_spec(x: torch.Tensor, inputs: PassInputs, packed: PackedBatch | None,
              known_dim: Callable[[], int | None] = lambda: None) -> ExampleSpec | str:
    """The example structure of ``x``, or why it cannot be known.

    A shape coincidence never decides: when dims 0 and 1 of ``x`` could both hold the batch
    (a sequence length or head count equal to the batch size), ``known_dim()``, the dimension an
    unambiguous call of the module (or else of the model) showed, decides, or nothing does. It is
    asked only then, so that a compiled graph specializes on it only where it matters. Rows of a 2-D input are one
    example each, or the tokens of the examples in order (``batch x seq_len`` rows); anything
    else (vision patches, a table shared by all examples) belongs to no example.
    """
    if x.dim() < 2:
        return f"input of shape {tuple(x.shape)} has no batch dimension"
    if packed is not None:
        if x.shape[0] == 1:
            for dim in range(1, x.dim() - 1):
                if x.shape[dim] == packed.tokens:
                    return ExampleSpec(dim, packed.tokens, segment_ids=packed.segment_ids, segments=packed.starts)
        return f"packed batch of {packed.tokens} tokens, but no dimension of input {tuple(x.shape)} has that size"
    batch = inputs.batch_size
    if batch is None:
        return ExampleSpec(0, x.shape[0])
    if batch == 1 and x.shape[0] == 1:
        return ExampleSpec(0, 1)
    if x.dim() == 2:
        if inputs.image_rows is not None and x.shape[0] == inputs.image_rows:
            return f"its {x.shape[0]} input rows are image patches, which are not mapped to examples"
        if x.shape[0] == batch:
            return ExampleSpec(0, batch)
        if inputs.seq_len is not None and x.shape[0] == batch * inputs.seq_len:
            return ExampleSpec(0, batch, group=inputs.seq_len)
        return f"the {x.shape[0]} rows of its 2-D input are neither the {batch} examples nor their tokens"
    first, second = x.shape[0] == batch, x.shape[1] == batch
    if first and second:  # [B, B, ...]: batch-first with T == B, or sequence-first
        known = known_dim()
        if known is not None:
            return ExampleSpec(known, batch)
        return (f"dims 0 and 1 of its input {tuple(x.shape)} both match the batch size {batch} and no earlier "
                "call showed which one holds the examples")
    if first:
        return ExampleSpec(0, batch)
    if second:
        if inputs.seq_len is not None and inputs.seq_len == batch and known_dim() != 1:
            return (f"dim 1 of its input {tuple(x.shape)} matches the batch size {batch}, but so does the "
                    "sequence length")
        return ExampleSpec(1, batch)
    return f"no dimension of input {tuple(x.shape)} matches the batch size {batch}"


class PassCounter:
    """The current forward pass of a patched model: its batch layout, and what passes consumed.

    ``slots`` maps each patched norm to its per-example gradient slots of this pass, so that a
    module called several times in one forward (ALBERT) sums its per-example gradients over
    the calls before they are squared. ``totals`` (float64, on the model's device) adds up the
    input positions (padding included) and non-padding tokens of training forwards in place:
    a compiled graph updates it without specializing on running counts.
    """

    def __init__(self) -> None:
        self.inputs = PassInputs()
        self.example_dim: int | None = None  # where the model's examples are, once a call showed it
        self.packed: PackedBatch | None = None
        self.slots: dict = {}
        self.totals: torch.Tensor | None = None
        self.problems: list[str] = []
        self.notes: list[str] = []  # warnings raised while a graph was being compiled
        self.entered: list[nn.Module] = []  # entry modules whose call is in progress, outermost first
        self.pending: tuple | None = None  # (module, args, kwargs) of a pass whose inputs are not read yet
        # the lowest module holding every patched norm: the pass's slots are dropped when it returns
        # (under torch.compile, slots kept past a graph break would become outputs of the graph),
        # unless a pass showed it called more than once per pass
        self.holder: nn.Module | None = None
        self.drop_at_holder = True
        self.holder_calls = 0
        self.serial = 0  # forward passes started (eager bookkeeping of calls per pass)
        self.paused = False
        self.bank = TapBank()  # every norm's tap gradient, in one flat leaf per device

    def __getstate__(self) -> dict:
        """Copies and pickles carry no tensors of a pass in flight (they are not leaves)."""
        return {**self.__dict__, "slots": {}, "packed": None, "problems": [], "entered": [], "pending": None}

    @torch.compiler.disable
    def place(self, device: torch.device) -> None:
        """Keep the running totals on ``device`` (outside any compiled graph). A compiled forward
        adds to them in place; marked as a static address, they are an input that CUDA graphs
        (``mode="reduce-overhead"``) may mutate, instead of a reason to skip the graph."""
        if self.totals is None:
            self.totals = torch.zeros(2, dtype=torch.float64, device=device)
        elif self.totals.device != device:
            self.totals = self.totals.to(device)
        else:
            return
        torch._dynamo.mark_static_address(self.totals)

    @property
    def depth(self) -> int:
        """Entry-module calls in progress (0: no forward pass is running)."""
        return len(self.entered)

    def enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A call of an entry module begins; the outermost one starts a pass.

        A module already in progress is not nested in itself: its earlier call ended by an
        exception without `exit` (compiled entries mark the pass without try/finally, see
        `hf_gns.patch.EntryForward`), and this call starts a new pass."""
        if any(m is module for m in self.entered):
            self.entered.clear()
        if not self.entered:
            self.pending = (module, args, kwargs)
            self.holder_calls = 0
        if module is self.holder and self.drop_at_holder and len(self.entered) > 0:
            self.holder_calls += 1
            if self.holder_calls > 1:  # its first call's slots are gone: this pass cannot be measured
                self.problems.append(f"{type(module).__name__} ran twice in one forward pass; its calls' per-example "
                                     "gradients are summed from the next step on")
                self.drop_at_holder = False
        self.entered.append(module)

    def begin(self) -> None:
        """Read the inputs of the pass that has started, if not yet done: called by every patched
        norm, so that the first one does it. Under ``torch.compile`` this keeps the reading in the
        graph of the model's layers: done in the entry call itself, it would become a graph of its
        own whenever the model's code breaks the graph after the layers (GPT-2's loss)."""
        if self.pending is not None:
            module, args, kwargs = self.pending
            self.pending = None
            self.start_pass(module, args, kwargs)

    def exit(self) -> None:
        left = self.entered.pop() if self.entered else None
        if not self.entered:
            self.begin()  # a pass that ran no patched norm still counts its tokens
            self.slots = {}
        elif left is self.holder and self.drop_at_holder:
            self.slots = {}

    def in_pass(self) -> bool:
        """Whether a forward pass of the model is running, or autograd is recomputing one
        (activation checkpointing), so that the current layout applies."""
        return self.depth > 0 or _in_backward()

    def start_pass(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.paused:
            return
        self.slots = {}
        if not torch.compiler.is_compiling():
            self.serial += 1
        self.inputs = pass_inputs(args, kwargs)
        self.packed = packed_batch(kwargs) if self.inputs.batch_size in (None, 1) else None
        if module.training and torch.is_grad_enabled():
            device = _input_device(args, kwargs)
            if device is not None:
                if self.totals is None or self.totals.device != device:
                    self.place(device)
                self.totals[0].add_(input_positions(args, kwargs))
                tokens = count_tokens(args, kwargs)
                if tokens is not None:
                    self.totals[1].add_(tokens)

    def take_positions(self) -> int:
        """Input positions (padding included) of training forwards since the last call (a host sync)."""
        if self.totals is None:
            return 0
        taken = int(self.totals[0].item())
        self.totals[0].zero_()
        return taken

    def take_tokens(self, reset: bool = True) -> torch.Tensor | None:
        """Non-padding tokens since the last reset, as a device scalar (no host sync)."""
        if self.totals is None:
            return None
        taken = self.totals[1].clone()
        if reset:
            self.totals[1].zero_()
        return taken

    def say_notes(self) -> None:
        """Issue the warnings noted while compiling (outside any graph)."""
        for note in self.notes:
            warnings.warn(note, stacklevel=3)
        del self.notes[:]

    def take_problems(self) -> list[str]:
        taken = list(self.problems)
        del self.problems[:]
        return taken


def _in_backward() -> bool:
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _input_device(args: tuple, kwargs: dict) -> torch.device | None:
    for value in list(kwargs.values()) + list(args):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


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


def pass_inputs(args: tuple, kwargs: dict) -> PassInputs:
    """Batch size, tokens per example and image rows of a model call, from its inputs' shapes."""
    seq_len = None
    for name in ("input_ids", "decoder_input_ids"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            seq_len = value.shape[-1]
            break
    else:
        embeds = kwargs.get("inputs_embeds")
        if isinstance(embeds, torch.Tensor) and embeds.dim() >= 3:
            seq_len = embeds.shape[-2]
        elif args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2 and not args[0].is_floating_point():
            seq_len = args[0].shape[1]
    pixels = kwargs.get("pixel_values")
    image_rows = pixels.shape[0] if isinstance(pixels, torch.Tensor) and pixels.dim() == 2 else None
    return PassInputs(batch_size(args, kwargs), seq_len, image_rows)


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


def packed_batch(kwargs: dict) -> PackedBatch | None:
    """The sequences of a packed batch, or None for an ordinary one.

    Reads ``cu_seq_lens_q`` (flash-attention varlen) or a single row of ``position_ids``
    (``DataCollatorWithFlattening``): every position 0 starts a sequence, so a single
    unpacked row is one sequence. Sequence ids are computed on the device (no host sync).
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = kwargs.get("cu_seqlens_q")
    if isinstance(cu, torch.Tensor) and cu.dim() == 1 and cu.numel() > 2:
        tokens = kwargs["position_ids"].shape[-1] if isinstance(kwargs.get("position_ids"), torch.Tensor) else None
        if tokens is None:
            ids = kwargs.get("input_ids")
            tokens = ids.shape[-1] if isinstance(ids, torch.Tensor) else None
        if tokens is None:
            return None
        positions = torch.arange(tokens, device=cu.device)
        ids = torch.bucketize(positions, cu[1:].to(positions.dtype), right=True)
        count = torch.full((), cu.numel() - 1, dtype=torch.float32, device=cu.device)
        return PackedBatch(tokens, ids, count)
    pos = kwargs.get("position_ids")
    if not isinstance(pos, torch.Tensor) or pos.dim() != 2 or pos.shape[0] != 1 or pos.shape[1] < 2:
        return None
    starts = pos[0] == 0
    ids = torch.cumsum(starts, 0) - 1
    count = starts.sum().to(torch.float32)
    return PackedBatch(pos.shape[1], ids.clamp_(min=0), count)


def host_segment_starts(packed: PackedBatch) -> tuple[int, ...]:
    """Start offsets plus the end of a packed batch's sequences (one device-to-host copy)."""
    change = torch.nonzero(torch.diff(packed.segment_ids, prepend=packed.segment_ids[:1] - 1)).flatten()
    return tuple(change.tolist()) + (packed.tokens,)


def warn_problems(problems: list[str]) -> None:
    if problems:
        warnings.warn("hf_gns skipped a measurement: " + "; ".join(problems[:5]), stacklevel=3)
