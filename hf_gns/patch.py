"""`patch_model` / `unpatch_model`: swap the forward of every normalization layer in place.

The module keeps its class (an ``nn.LayerNorm`` stays one, so the Trainer's weight-decay
rule still sees it), its Parameter objects and its state_dict keys. Only the instance's
``forward`` attribute is bound to a wrapper; the per-layer state lives in a plain Python
attribute (``_hf_gns``), never in a buffer.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import itertools
import logging
import os
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch
from torch import nn

from . import torch_path
from .layout import ExampleSpec, PassCounter, find_spec, host_segment_starts
from .formulas import native_output_dtype
from .hub_kernels import keep_from_kernelize, kernelized_forward
from .probe import NormPlan, Unsupported, is_norm_candidate, other_norm_kind, plan_for
from .slots import TapLayout, draw_slots, new_tap

logger = logging.getLogger(__name__)

KERNELS = ("auto", "triton", "torch")
_FOLDED = "folded"  # this pass's slot entry of a module whose statistics go straight to its tap
_STATE = "_hf_gns"
_ROOT_STATE = "_hf_gns_root"
_ENTRY = "_hf_gns_entry"


@dataclass(frozen=True)
class NormView:
    """What the forward of one patched norm decides on, apart from its input and the pass.

    A compiled forward takes it as one constant (`_view_of`), so dynamo guards the state's `view_key`
    instead of every attribute behind it (about 50 guards per norm, each evaluated before every
    compiled forward). Whatever changes these fields bumps `PatchedNorm.version`; a change of the
    parameters' ``requires_grad`` or device recompiles through the parameters' own guards."""

    layout: TapLayout | None  # of the parameters that require grad; None while recording is off
    device: torch.device | None  # the parameters'
    measurable: bool
    shared_in_pass: bool
    has_bias: bool
    fold_dim: int | None  # D, when a compiled graph may fold this norm's statistics in the Triton backward
    interpreted: bool  # Triton kernels under TRITON_INTERPRET=1 (CPU tests)
    tap_region: tuple[int, int] | None = None  # (root, offset) of this norm's tap in its pass counter's `TapBank`


# every live PatchedNorm by its key: a compiled graph hands `_view_of` the norm's `view_key`, a string
# "key:version", since dynamo takes only plain constants as the arguments of a function whose result
# it takes as a constant (torch 2.11), and an int would not stay one: where one code object runs
# several norms (a model that breaks the graph inside each layer, like the MoE ones), dynamo's
# automatic dynamic shapes turn an int attribute seen with different values into a symbol
_BY_KEY: "weakref.WeakValueDictionary[int, PatchedNorm]" = weakref.WeakValueDictionary()
_KEYS = itertools.count()


def _norm_of(view_key: str) -> "PatchedNorm":
    return _BY_KEY[int(view_key.partition(":")[0])]


@torch._dynamo.assume_constant_result
def _view_of(view_key: str) -> NormView:
    """The `NormView` of the norm ``view_key`` names; a compiled graph evaluates it once, when
    traced, and guards the key's value."""
    return _norm_of(view_key).view()


@torch._dynamo.assume_constant_result
def _kernel_config_of(view_key: str, in_dtype: torch.dtype, native_dtype: torch.dtype, weight_dtype: torch.dtype):
    """The kernel switches (`hf_gns.kernels.op.KernelConfig`) of the norm ``view_key`` names for
    these dtypes (a constant of the graph, like `_view_of`)."""
    state = _norm_of(view_key)
    return _kernels().kernel_config_for(state.plan.formula, state.plan.eps, in_dtype, native_dtype, weight_dtype)


def _forward_attr(module: nn.Module) -> str:
    """Accelerate's big-model hooks keep the real forward in ``_old_forward``."""
    return "_old_forward" if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward") else "forward"


class PatchedNorm:
    """The state and wrapper forward of one patched normalization module."""

    def __init__(self, module: nn.Module, qualname: str, plan: NormPlan, kernel: str, counter: PassCounter):
        self.qualname = qualname
        self.plan = plan
        self.kernel = kernel
        self.counter = counter
        self.forward_attr = _forward_attr(module)
        self.saved_forward = module.__dict__.get(self.forward_attr)
        own = getattr(module, self.forward_attr)
        # the class's own forward is bound when needed (a pickled model must not pickle a bound
        # method that would resolve, when loaded, to the patched forward itself)
        self._original = None if getattr(own, "__func__", None) is type(module).forward else own
        self.module_ref = module
        self._enabled = True
        self.version = 0
        self._register()
        self.warned: set[str] = set()
        self.tap: torch.Tensor | None = None
        self.tap_layout: TapLayout | None = None
        self.example_dim: int | None = None
        self.unmeasurable: str | None = None
        # eager Triton path: a module called once per forward pass folds its statistics into the tap's
        # gradient inside its own backward (no slots); learned from the previous pass
        self.once: bool | None = None
        self._pass_serial: int | None = None
        self._calls = 0
        # compiled: a module seen running twice in one pass gets slots (summed over its calls) instead
        self.shared_in_pass = False
        self.graph_fold = kernel != "torch" and plan.formula is not None and _load_graph_op()
        self._ensure_tap(self.trainable_layout(), module._parameters[plan.param_names[0]].device)
        keep_from_kernelize(module, _is_patched)

    def __setstate__(self, state: dict) -> None:
        """A loaded model (pickle, torch.save) loads the compiled-graph operator as patching does."""
        state = dict(state)
        state.setdefault("_enabled", state.pop("enabled", True))
        version = state.pop("_version", state.pop("version", 0))
        self.__dict__.update(state)
        self.version = version
        self._register()  # a copy or a loaded model is another norm: its own key
        self.graph_fold = bool(state.get("graph_fold")) and _load_graph_op()
        self.shared_in_pass = state.get("shared_in_pass", False)
        keep_from_kernelize(self.module_ref, _is_patched)

    def _register(self) -> None:
        self.key = next(_KEYS)
        _BY_KEY[self.key] = self
        self.view_key = f"{self.key}:{self._version}"

    @property
    def version(self) -> int:
        """Bumped by whatever changes this norm's `NormView` (a compiled graph guards `view_key`)."""
        return self._version

    @version.setter
    def version(self, value: int) -> None:
        self._version = value
        self.view_key = f"{getattr(self, 'key', -1)}:{value}"  # (-1 until registered)

    @property
    def enabled(self) -> bool:
        """Whether the module records (`hf_gns.set_recording`)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        self.version += 1

    def view(self) -> NormView:
        """The current `NormView`, with a tap made for its layout if there is none yet."""
        layout = self.trainable_layout() if self._enabled else None
        params = self.module_ref._parameters
        device = params[layout.names[0]].device if layout is not None else None
        if layout is not None:
            self._tap_for(layout, device)
        formula = self.plan.formula
        weight = params.get("weight")
        foldable = (self.graph_fold and formula is not None and weight is not None and weight.dim() == 1
                    and weight.shape[0] <= _GRAPH_OP.MAX_D)
        region = None
        if layout is not None:
            bank = self.counter.bank
            region = bank.regions.get(self.qualname)
            if region is None or bank.taps.get(self.qualname) is not self.tap:
                # a copy or a loaded model (its regions came with it: no root grows while a graph is traced)
                region = bank.attach(self.qualname, self.tap, self.reserved_width())
            region = region[:2]
        return NormView(layout, device, self.unmeasurable is None, self.shared_in_pass,
                        formula is not None and formula.has_bias, weight.shape[0] if foldable else None,
                        self.kernel == "triton" and os.environ.get("TRITON_INTERPRET") == "1", region)

    @property
    def original_forward(self) -> Callable:
        if self._original is not None:
            return self._original
        return functools.partial(type(self.module_ref).forward, self.module_ref)

    # -- statistics channel ------------------------------------------------------------------
    def trainable_layout(self) -> TapLayout | None:
        """The tap layout of the parameters that currently require grad (None if none does)."""
        params = self.module_ref._parameters
        names = tuple(n for n in self.plan.param_names if params[n].requires_grad)
        if not names:
            return None
        if self.tap_layout is not None and self.tap_layout.names == names:
            return self.tap_layout
        return TapLayout(names, tuple(params[n].numel() for n in names))

    def apply(self, fn: Callable, recurse: bool = True) -> nn.Module:
        """The module's ``_apply`` (``.to()``, ``.cuda()``, ``.half()``), then the tap follows the
        parameters' device, so a compiled graph never meets a tap on another device."""
        module = type(self.module_ref)._apply(self.module_ref, fn, recurse)
        self.follow_parameters()
        return module

    def follow_parameters(self) -> None:
        """Move the tap (its statistics so far are dropped) and the pass counter's token totals to
        the parameters' device: a model patched on the CPU and moved after, by ``.to()``, must not
        meet totals on the CPU in its first compiled forward (moving them there is a graph break,
        which dynamo then keeps in every norm's frame)."""
        params = self.module_ref._parameters
        first = next((p for p in params.values() if p is not None), None)
        if first is not None:
            self.counter.place(first.device)
        if self.tap is not None:
            device = params[self.tap_layout.names[0]].device
            if self.tap.device != device:
                self._ensure_tap(self.tap_layout, device)

    @torch.compiler.disable
    def _ensure_tap(self, layout: TapLayout | None, device: torch.device) -> None:
        """A tap for ``layout`` on ``device`` (made outside any compiled graph)."""
        if layout is None:
            self.tap, self.tap_layout = None, None
        elif self.tap is None or self.tap_layout != layout or self.tap.device != device:
            self.tap, self.tap_layout = new_tap(layout, device), layout
            self.counter.bank.attach(self.qualname, self.tap, self.reserved_width())
        else:  # an equal layout: the tap stays, and `_tap_for`'s identity check holds from now on
            self.tap_layout = layout

    def _tap_for(self, layout: TapLayout, device: torch.device) -> torch.Tensor:
        """The tap for ``layout`` on ``device`` (eager calls), made first if needed."""
        # identity, not equality: `trainable_layout` hands back the tap's own layout while the names hold
        if self.tap is None or self.tap_layout is not layout or self.tap.device != device:
            self._ensure_tap(layout, device)
        return self.tap

    def reserved_width(self) -> int:
        """The tap width of all the module's parameters: its region in the bank fits every layout."""
        params = self.module_ref._parameters
        return 1 + 2 * sum(params[n].numel() for n in self.plan.param_names)

    def _bank_tap(self, layout: TapLayout) -> torch.Tensor:
        """In a compiled graph: this norm's region of its counter's bank (made for this layout by `view`)."""
        index, offset = _view_of(self.view_key).tap_region
        return self.counter.bank.roots[index].narrow(0, offset, layout.width)

    def _slots(self, x: torch.Tensor, spec: ExampleSpec, layout: TapLayout, split: bool = False):
        """This pass's per-example slots of the module (shared by all its calls in the pass): one
        tensor, or one per parameter (``split``, see `ExampleSlots`)."""
        slots = self.counter.slots.get(self)
        rows = spec.count
        if slots is None:
            if torch.compiler.is_compiling():
                tap = self._bank_tap(layout)
            else:
                tap = self._tap_for(layout, self.module_ref._parameters[layout.names[0]].device)
            count = self.counter.packed.count if spec.packed else rows
            slots = self.counter.slots[self] = draw_slots(tap, rows, count, layout, split)
        elif isinstance(slots, tuple) != split:
            self.counter.problems.append(f"{self.qualname}: calls within one forward ran compiled and eager")
            return None
        elif (slots[0] if split else slots).shape[0] != rows:
            seen = (slots[0] if split else slots).shape[0]
            self.counter.problems.append(f"{self.qualname}: calls within one forward saw {seen} and {rows} examples")
            return None
        return slots

    # -- forward -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        self.counter.begin()
        x = _single_input(args, kwargs)
        view = _view_of(self.view_key)
        layout = view.layout
        if layout is None or not torch.is_grad_enabled() or self.counter.paused:
            return self.original_forward(*args, **kwargs)
        if x is None:  # called with more than the input (a gate, ...)
            self._warn_once("it was called with extra arguments; its parameters are left out of the statistics")
            return self.original_forward(*args, **kwargs)
        if not self.counter.in_pass():
            self._warn_once("it ran outside any call of the patched model, so the examples of its input are "
                            "unknown; left out of the statistics (patch the module you call)")
            return self.original_forward(*args, **kwargs)
        if x.device != view.device:
            raise RuntimeError(f"hf_gns: {self.qualname}: input on {x.device}, parameters on {view.device}: a "
                               "replica of nn.DataParallel? Use DistributedDataParallel (torchrun / accelerate launch)")
        if not view.measurable:
            return self.original_forward(*args, **kwargs)
        if _is_parameter_data(x):
            self._give_up("its input is a parameter (a table shared by all examples, like DeBERTa's relative "
                          "positions), whose rows belong to no example")
            return self.original_forward(*args, **kwargs)
        spec = find_spec(x, self.counter.inputs, self.counter.packed, self._known_dim)
        if isinstance(spec, str):
            self._warn_once(f"{spec}; its parameters are left out of the statistics")
            if (x.dim() == 2 and spec.startswith("the ")) or "image patches" in spec:
                self._give_up(spec)  # rows of no example: its per-example gradients cannot be taken
            return self.original_forward(*args, **kwargs)
        if not spec.packed and x.dim() >= 3 and x.shape[0] != x.shape[1]:
            # an unambiguous call shows where this module's (and the model's) examples are; written, not
            # read, so that a compiled graph does not specialize on it
            self.example_dim = self.counter.example_dim = spec.dim
        kind = "rows" if x.dim() == 2 and spec.group > 1 else "batched"
        seen = self.counter.slots.setdefault(("kinds", self), kind)
        if seen != kind:  # one module fed per-example inputs and flattened rows in one pass
            self._give_up("it gets per-example inputs and flattened rows in one forward, so the rows' examples are unknown")
            return self.original_forward(*args, **kwargs)
        compiling = torch.compiler.is_compiling()
        if not compiling and self._use_triton(x):
            return self._triton_forward(x, spec, layout, args, kwargs)
        if compiling and _folds_in_graph(x, spec, view):
            entry = self.counter.slots.get(self)
            if entry is _FOLDED:  # a second call in one pass: the first one's examples are squared already
                self.shared_in_pass, self.once = True, False
                self.version += 1
                self.counter.problems.append(f"{self.qualname} ran more than once in one forward pass; its calls' "
                                             "per-example gradients are summed from the next step on")
                return self.original_forward(*args, **kwargs)
            if entry is None and not view.shared_in_pass and self.counter.drop_at_holder:
                return self._folded_forward(x, spec, view, args, kwargs)
        slots = self._slots(x, spec, layout, split=compiling)
        if slots is None:
            return self.original_forward(*args, **kwargs)
        norm = torch_path.SlottedNorm(self.plan.formula, self.plan.eps, self.module_ref, self.original_forward, layout,
                                      spec)
        return norm(x, slots) if compiling else norm.recorded(x, slots)

    def _folded_forward(self, x: torch.Tensor, spec: ExampleSpec, view: NormView, args: tuple, kwargs: dict):
        """The module's own forward; its backward is the Triton kernels, which fold each example's
        gradient straight into the tap's (a module that runs once per pass)."""
        graph_op = _GRAPH_OP
        params = self.module_ref._parameters
        weight = params["weight"]
        bias = params.get("bias") if view.has_bias else None
        tap = self._bank_tap(view.layout)
        self.counter.slots[self] = _FOLDED
        cfg = _kernel_config_of(self.view_key, x.dtype, native_output_dtype(x), weight.dtype)
        plan = graph_op.fold_plan(cfg, x.numel() // x.shape[-1], spec.count, view.layout)
        moved = spec.dim != spec.canonical_dim
        _, x2d = graph_op.canonical_rows(x, spec)
        with torch.no_grad():
            y = self.original_forward(*args, **kwargs)
        out = graph_op.folded_norm(y.movedim(spec.dim, spec.canonical_dim) if moved else y, x2d, weight, bias,
                                   tap, plan)
        return out.movedim(spec.canonical_dim, spec.dim) if moved else out

    def _triton_forward(self, x: torch.Tensor, spec: ExampleSpec, layout: TapLayout, args: tuple, kwargs: dict):
        """The eager CUDA path: the Triton kernels, folding straight into the tap when the module
        runs once per pass, else through this pass's slots."""
        calls = self._count_call()
        folded = self.counter.slots.get(self) is _FOLDED
        if folded and calls > 1:
            self.once = False
            self._give_up("it ran once per forward pass, then more than once in one pass (its calls must be "
                          "summed per example before squaring, which this pass did not do)")
            return self.original_forward(*args, **kwargs)
        if spec.packed:
            spec = replace(spec, segments=self._host_starts())
        params, op = self.module_ref._parameters, _kernels()
        weight, bias = params["weight"], params.get("bias") if self.plan.formula.has_bias else None
        cfg = op.cached_config(self.plan.formula, self.plan.eps, x, weight)
        channels = tuple(("weight", "bias").index(n) for n in layout.names)
        if self.once and not folded and self.counter.slots.get(self) is None:
            tap = self._tap_for(layout, weight.device)
            self.counter.slots[self] = _FOLDED
            count = len(spec.segments) - 1 if spec.packed else spec.count
            fold = op.TapFold(float(count), layout.positions, layout.width)
            return op.triton_norm(x, weight, bias, tap, cfg, spec, channels, fold)
        slots = self._slots(x, spec, layout)
        if slots is None:
            return self.original_forward(*args, **kwargs)
        return op.triton_norm(x, weight, bias, slots, cfg, spec, channels)

    def _count_call(self) -> int:
        """This call's number within the current forward pass (0 for a recomputation in backward),
        updating whether the module ran exactly once in its previous pass."""
        if self.counter.depth == 0:
            return 0
        serial = self.counter.serial
        if serial != self._pass_serial:
            if self._pass_serial is not None and self.once is not False:
                self.once = self._calls == 1
            self._pass_serial, self._calls = serial, 0
        self._calls += 1
        return self._calls

    def _host_starts(self) -> tuple[int, ...]:
        starts = self.counter.slots.get("starts")
        if starts is None:
            starts = self.counter.slots["starts"] = host_segment_starts(self.counter.packed)
        return starts

    def _known_dim(self) -> int | None:
        """Where an unambiguous call showed this module's (else the model's) examples to be."""
        return self.example_dim if self.example_dim is not None else self.counter.example_dim

    def _give_up(self, reason: str) -> None:
        """Leave this module's parameters out of the statistics for good (its taps are dropped)."""
        if self.unmeasurable is None:
            self.unmeasurable = reason
            self.version += 1
            self._warn_once(f"{reason}; its parameters are left out of the statistics")

    def _warn_once(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            text = f"hf_gns: {self.qualname or type(self.module_ref).__name__}: {message}"
            if torch.compiler.is_compiling():  # a warning would break the graph: said when gathered
                self.counter.notes.append(text)
            else:
                warnings.warn(text, stacklevel=4)

    def _use_triton(self, x: torch.Tensor) -> bool:
        if self.kernel == "torch" or self.plan.formula is None or torch.compiler.is_compiling():
            return False
        if self.kernel == "triton":
            return True
        return x.is_cuda and _triton_importable()

    def extra_repr(self) -> str:
        """The module's own ``extra_repr`` plus what hf_gns does with it (``print(model)``)."""
        own = type(self.module_ref).extra_repr(self.module_ref)
        tag = f"hf_gns={self.plan.formula.name if self.plan.formula else 'generic'}"
        if self.unmeasurable is not None:
            tag += " (left out)"
        elif not self.enabled:
            tag += " (recording off)"
        return f"{own}, {tag}" if own else tag

    # -- lifecycle -----------------------------------------------------------------------
    def restore(self) -> None:
        module = self.module_ref
        if self.saved_forward is None:
            module.__dict__.pop(self.forward_attr, None)
        else:
            module.__dict__[self.forward_attr] = self.saved_forward
        module.__dict__.pop("_apply", None)
        module.__dict__.pop("extra_repr", None)
        self.counter.bank.detach(self.qualname)


def _folds_in_graph(x: torch.Tensor, spec: ExampleSpec, view: NormView) -> bool:
    """Whether a compiled call can keep the module's own forward and fold its statistics in the
    Triton backward (`hf_gns.kernels.graph_op`): a known formula and a 1-D weight of the input's
    width (``view.fold_dim``), examples in equal blocks of rows, static shapes, and CUDA inputs (or
    interpreted kernels, ``kernel="triton"``)."""
    if view.fold_dim is None or spec.packed or spec.group > 1 or x.shape[-1] != view.fold_dim:
        return False
    if any(not isinstance(size, int) for size in x.shape):
        return False
    return x.is_cuda or view.interpreted


def _is_parameter_data(x: torch.Tensor) -> bool:
    """Whether ``x`` is a parameter or a view of one: no example's data."""
    return isinstance(x, nn.Parameter) or isinstance(x._base, nn.Parameter)


def _single_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The input tensor of a plain ``norm(x)`` / ``norm(input=x)`` call, else None."""
    if len(args) == 1 and not kwargs:
        value = args[0]
    elif not args and len(kwargs) == 1:
        value = next(iter(kwargs.values()))
    else:
        return None
    return value if isinstance(value, torch.Tensor) else None


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_GRAPH_OP = None  # hf_gns.kernels.graph_op once loaded (a compiled forward reads it, never imports it)


def _load_graph_op() -> bool:
    """Load the compiled-graph backward operator (when patching); False without Triton."""
    global _GRAPH_OP
    if _GRAPH_OP is None and _triton_importable():
        from .kernels import graph_op

        _GRAPH_OP = graph_op
    return _GRAPH_OP is not None


@functools.lru_cache(maxsize=None)
def _kernels():
    from .kernels import op

    return op


def _foreign_forward(module: nn.Module) -> str | None:
    """Why the module's forward is already someone else's, if it is."""
    if type(module).__name__.startswith("Liger"):
        return "a Liger-Kernel module: hf_gns cannot record it (patch before applying Liger, or skip Liger)"
    attr = _forward_attr(module)
    if attr == "forward" and "forward" in module.__dict__:
        return ("its forward was already replaced on the instance (by Liger-Kernel or another library): "
                "call hf_gns.patch_model before it")
    return None


def _is_patched(module: nn.Module) -> bool:
    return _STATE in module.__dict__


def _matches(name: str, patterns: Iterable[str] | str | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class EntryForward:
    """The forward of an entry module: the pass is marked around the module's own forward, in the
    same (possibly compiled) frame, so per-pass state never leaves a compiled graph as an output.
    Its signature is the wrapped forward's (the Trainer and PEFT inspect it)."""

    def __init__(self, module: nn.Module, counter: PassCounter, inner: Callable) -> None:
        self.module, self.counter = module, counter
        self._inner = None if getattr(inner, "__func__", None) is type(module).forward else inner

    @property
    def inner(self) -> Callable:
        if self._inner is not None:
            return self._inner
        return functools.partial(type(self.module).forward, self.module)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.inner)

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            # no try/finally here: dynamo cannot resume a frame inside a try block after a graph break in
            # the model's own code, and would compile the marking as a graph of its own. A pass ended by an
            # exception is closed when its module is next entered (`PassCounter.enter`). In this frame, not
            # a helper's: every frame on the stack at a graph break costs a guard check per call.
            self.counter.enter(self.module, args, kwargs)
            output = self.inner(*args, **kwargs)
            self.counter.exit()
            return output
        return self._eager_call(args, kwargs)

    def _eager_call(self, args: tuple, kwargs: dict):
        self.counter.enter(self.module, args, kwargs)
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.counter.exit()


def _root_counter(model: nn.Module) -> PassCounter:
    """The model's pass counter; a part of it patched before (``patch_model(m.model)``) hands over its
    counter, so every input is counted once whichever level was patched first."""
    counter = model.__dict__.get(_ROOT_STATE)
    if counter is None:
        inner = [m.__dict__.pop(_ROOT_STATE) for m in model.modules() if m is not model and _ROOT_STATE in m.__dict__]
        counter = inner[0] if inner else PassCounter()
        first = next(model.parameters(), None)
        counter.place(first.device if first is not None else torch.device("cpu"))
        model.__dict__[_ROOT_STATE] = counter
    return counter


def _remove_entry(module: nn.Module) -> None:
    entry = module.__dict__.pop(_ENTRY, None)
    if entry is not None:
        saved = entry[1]
        if saved is None:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = saved


def _remove_entries(model: nn.Module) -> None:
    for module in model.modules():
        _remove_entry(module)


def _set_entries(model: nn.Module, counter: PassCounter) -> None:
    """Mark where a forward pass starts: the model and every module on the path down to the lowest
    module that holds all patched norms. A pass starts at the outermost of them that is called, so
    ``model(...)``, ``model.forward(...)`` and ``model.model(...)`` (a custom head) all count."""
    names = [name for name, _ in patched_modules(model)]
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts) if parts else ():
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if parts and len(common) == min(len(p) for p in parts):
        common = common[:-1]  # a single patched norm: its parent is the lowest holder
    chain = [model]
    for depth in range(1, len(common) + 1):
        chain.append(model.get_submodule(".".join(common[:depth])))
    for module in model.modules():  # entries of an earlier patch that are no longer on the path
        entry = module.__dict__.get(_ENTRY)
        if entry is not None and (entry[0] is not counter or not any(module is c for c in chain)):
            _remove_entry(module)
    counter.holder = chain[-1]
    for module in chain:
        if _ENTRY not in module.__dict__:
            saved = module.__dict__.get("forward")
            module.__dict__["forward"] = EntryForward(module, counter, module.forward)
            module.__dict__[_ENTRY] = (counter, saved)


def patch_model(
    model: nn.Module,
    *,
    kernel: str = "auto",
    include: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
) -> list[str]:
    """Patch every supported normalization module of ``model`` in place.

    Args:
        kernel: ``"auto"`` (Triton for CUDA inputs, PyTorch otherwise), ``"triton"`` or ``"torch"``.
        include: glob patterns of module names to patch (default: all norm layers).
        exclude: glob patterns of module names to leave alone.

    Returns the qualified names of all patched modules. Idempotent. Norm-like modules that
    cannot be patched exactly are listed in a warning, never patched silently.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "triton" and not _triton_importable():
        raise RuntimeError("kernel='triton' needs the triton package")
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_model: model must be a torch.nn.Module, got {type(model).__name__}")
    if kernel == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        devices = {p.device.type for p in model.parameters()}
        if devices - {"cuda"}:
            raise ValueError(f"patch_model: kernel='triton' runs the Triton kernels, which need CUDA tensors, but "
                             f"the model's parameters are on {sorted(devices)}: move the model to a GPU first, "
                             "use kernel='auto' (Triton on CUDA, PyTorch elsewhere), or set TRITON_INTERPRET=1")
    if isinstance(model, nn.DataParallel):
        raise TypeError("patch_model: nn.DataParallel is not supported (its replicas would run the patched norms "
                        "on the original module's weights): use DistributedDataParallel (torchrun / accelerate "
                        "launch), or patch the module inside before wrapping it in anything else")
    counter = _root_counter(model)
    skipped: list[str] = []
    no_params: list[str] = []
    others: dict[str, list[str]] = {}  # norms of other kinds, with parameters: left out, said once
    for name, module in model.named_modules():
        if _STATE not in module.__dict__ and not is_norm_candidate(module):
            kind = other_norm_kind(module)
            if kind is not None and not _matches(name, exclude) and (include is None or _matches(name, include)):
                others.setdefault(kind, []).append(name)
            continue
        if _STATE in module.__dict__:
            continue
        if (include is not None and not _matches(name, include)) or _matches(name, exclude):
            continue
        # a Hub kernel's forward (transformers' default kernelize): patch the class forward, which computes
        # the same norm, and give the kernel back on unpatch (see hf_gns.hub_kernels)
        hub_forward = kernelized_forward(module)
        if hub_forward is not None:
            del module.__dict__["forward"]
        reason = _foreign_forward(module)
        if reason is None:
            try:
                plan = plan_for(module, getattr(module, _forward_attr(module)))
            except Unsupported as error:
                reason = str(error)
        if reason is not None:
            if hub_forward is not None:
                module.__dict__["forward"] = hub_forward
            (no_params if "no affine parameters" in reason else skipped).append(f"{name} ({type(module).__name__}): {reason}")
            continue
        state = PatchedNorm(module, name, plan, kernel, counter)
        if hub_forward is not None:
            state.saved_forward = hub_forward
        module.__dict__[_STATE] = state
        module.__dict__[state.forward_attr] = state.forward
        module.__dict__["_apply"] = state.apply
        module.__dict__["extra_repr"] = state.extra_repr
    for name, state in patched_modules(model):  # norms patched before through a part of the model
        if state.counter is not counter or state.qualname != name:
            state.counter.bank.detach(state.qualname)
            state.counter, state.qualname = counter, name
            if state.tap is not None:
                counter.bank.attach(name, state.tap, state.reserved_width())
    _set_entries(model, counter)
    if not patched_modules(model) and not skipped and not no_params:
        warnings.warn(f"hf_gns: {type(model).__name__} has no normalization layer to patch: nothing will be "
                      "measured (hf_gns reads per-example gradients of LayerNorm / RMSNorm parameters)", stacklevel=2)
    if no_params:
        logger.warning("hf_gns: %d norm module(s) have no trainable affine parameters, nothing to record: %s",
                       len(no_params), ", ".join(n.split(" ")[0] for n in no_params[:8]))
    if skipped:
        warnings.warn("hf_gns could not patch these normalization modules, their gradients are not "
                      "in the statistics:\n  " + "\n  ".join(skipped), stacklevel=2)
    if others:
        warnings.warn("hf_gns: normalization modules of other kinds are left out of the statistics:\n  " + "\n  ".join(
            f"{len(names)} {kind}: {', '.join(names)}" for kind, names in others.items()), stacklevel=2)
    return patched_module_names(model)


def place_statistics(model: nn.Module) -> None:
    """Put every tap and token total on its parameters' device (done on ``.to()`` too); call it
    after moving parameters by other means, before the first compiled forward."""
    for _, state in patched_modules(model):
        state.follow_parameters()
    first = next(model.parameters(), None)
    if first is not None:
        for counter in pass_counters(model):
            counter.place(first.device)


def pass_counters(model: nn.Module) -> list[PassCounter]:
    """The pass counters of every patched root inside ``model`` (wrappers included)."""
    return patched_parts(model)[1]


def patched_modules(model: nn.Module) -> list[tuple[str, PatchedNorm]]:
    """(name, state) of every patched module in ``model``."""
    return patched_parts(model)[0]


def patched_parts(model: nn.Module, names_in: nn.Module | None = None
                  ) -> tuple[list[tuple[str, PatchedNorm]], list[PassCounter]]:
    """`patched_modules` and `pass_counters` of ``model`` in one walk of its modules (once per step);
    the norms named as in ``names_in``, a module inside ``model`` (the model a wrapper holds)."""
    norms, counters = [], {}
    prefix = None if names_in is not None and names_in is not model else ""
    for name, module in _named_modules(model):
        if prefix is None and module is names_in:
            prefix = name + "."
        found = module.__dict__
        if _STATE in found:
            norms.append((name[len(prefix):] if prefix and name.startswith(prefix) else name, found[_STATE]))
        if _ROOT_STATE in found:
            counters.setdefault(id(found[_ROOT_STATE]), found[_ROOT_STATE])
    return norms, list(counters.values())


def _named_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """``model.named_modules()``, same names and order (pre-order, each module once), without its
    recursive generators: it runs on every optimizer step."""
    seen: set[int] = set()
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        children = module._modules
        if children:
            prefix = name + "." if name else ""
            stack.extend((prefix + child_name, child) for child_name, child in reversed(children.items())
                         if child is not None)


def patched_module_names(model: nn.Module) -> list[str]:
    return [state.qualname for _, state in patched_modules(model)]


def unpatch_model(model: nn.Module) -> None:
    """Restore the original forwards of every patched module and drop all hf_gns state."""
    for _, state in patched_modules(model):
        state.restore()
        del state.module_ref.__dict__[_STATE]
    _remove_entries(model)
    for module in model.modules():
        module.__dict__.pop(_ROOT_STATE, None)


def set_recording(model: nn.Module, enabled: bool) -> None:
    """Turn per-example recording on or off; patched layers keep computing the same outputs."""
    for _, state in patched_modules(model):
        state.enabled = enabled


def describe(model: nn.Module) -> dict[str, str]:
    """Module name -> formula name (or "generic") for every patched module."""
    return {state.qualname: (state.plan.formula.name if state.plan.formula else "generic")
            for _, state in patched_modules(model)}

