"""Living beside the ``kernels`` library, which transformers uses to swap layer forwards for Hub kernels.

transformers 5.25 (seen here; 5.17 only with ``use_kernels=True``) kernelizes ``from_pretrained`` models by default
(``use_kernels`` is on when the ``kernels`` package is installed, which transformers then requires): every layer class decorated
with ``@use_kernel_forward_from_hub`` (RMSNorm among them) gets a Hub kernel's forward on the
instance, or, where none loads (no network, a CPU), its own forward put back by deleting the
instance attribute. It does so again whenever the model's mode changes, i.e. at the Trainer's
``model.train()`` after an evaluation or a ``from_pretrained`` model's first training step. Both
would undo hf_gns's patch without a word.

So hf_gns (1) takes a kernelized norm back: its class forward (the formula the Hub kernel computes
too) is patched, and the kernel's forward is restored by `hf_gns.unpatch_model`; (2) makes
``kernelize`` skip the norms it has patched, through the per-instance ``kernel_condition`` hook the
``kernels`` library provides on the class.
"""

from __future__ import annotations

from types import MethodType
from typing import Callable

from torch import nn

_GUARD = "_hf_gns_kernel_guard"


def is_hub_kernel_layer(module: nn.Module) -> bool:
    """Whether ``module``'s class is one the ``kernels`` library may swap forwards of."""
    return hasattr(type(module), "kernel_layer_name")


def kernelized_forward(module: nn.Module) -> Callable | None:
    """The forward ``kernels.kernelize`` put on the instance (a Hub kernel's), if any."""
    if not is_hub_kernel_layer(module):
        return None
    forward = module.__dict__.get("forward")
    if isinstance(forward, MethodType) and forward.__self__ is module and "_kernel_repo" in module.__dict__:
        return forward
    return None


def keep_from_kernelize(module: nn.Module, is_patched: Callable[[nn.Module], bool]) -> None:
    """Make ``kernels.kernelize`` leave the instances ``is_patched`` accepts alone (once per class):
    the class's ``kernel_condition`` is wrapped to return False for them, as it would for any
    instance its own condition turns down."""
    cls = type(module)
    original = getattr(cls, "kernel_condition", None)
    if not is_hub_kernel_layer(module) or getattr(original, _GUARD, False):
        return

    def condition(instance: nn.Module) -> bool:
        if is_patched(instance):
            return False
        return True if original is None else bool(original(instance))

    setattr(condition, _GUARD, True)  # the mark is on the condition itself: whoever replaces it drops it too
    cls.kernel_condition = staticmethod(condition)
