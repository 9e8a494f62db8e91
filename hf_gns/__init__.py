"""hf_gns: live gradient noise scale for Hugging Face Transformers training.

    import hf_gns
    hf_gns.patch_model(model)                          # per-example norms of every norm layer
    trainer = Trainer(...)
    hf_gns.attach(trainer)                             # GNS in every log, first among the callbacks
"""

# what users call (the rest stays importable from its module, and from here for existing code)
from .estimator import EMA, GNSEstimate, GNSTracker, NotEstimable, estimate, estimate_per_param  # noqa: F401
from .patch import describe, patch_model, patched_module_names, set_recording, unpatch_model  # noqa: F401
from .schedule import BatchSizePolicy, GNSPolicy, LinearSchedule, StepSchedule
from .stats import GradientStats, ParamStats, PendingStats, gather_stats, gather_stats_async, reset_stats  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "attach",
    "GNSCallback",
    "GNSLoop",
    "patch_model",
    "unpatch_model",
    "set_recording",
    "describe",
    "gather_stats",
    "reset_stats",
    "BatchSizePolicy",
    "GNSPolicy",
    "LinearSchedule",
    "StepSchedule",
]


def __getattr__(name: str):
    # these import transformers / accelerate only when asked for
    if name in ("GNSCallback", "attach"):
        from . import callback

        return getattr(callback, name)
    if name == "GNSLoop":
        from .accelerate_loop import GNSLoop

        return GNSLoop
    raise AttributeError(name)
