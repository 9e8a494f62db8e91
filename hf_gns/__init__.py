"""hf_gns: live gradient noise scale for Hugging Face Transformers training.

    import hf_gns
    hf_gns.patch_model(model)                          # per-example norms of every norm layer
    trainer = Trainer(...)
    hf_gns.attach(trainer)                             # GNS in every log, first among the callbacks
"""

from .estimator import EMA, GNSEstimate, GNSTracker, NotEstimable, estimate, estimate_per_param
from .patch import describe, patch_model, patched_module_names, set_recording, unpatch_model
from .stats import GradientStats, ParamStats, PendingStats, gather_stats, gather_stats_async, reset_stats

__version__ = "0.1.0"

__all__ = [
    "attach",
    "GNSCallback",
    "GNSLoop",
    "EMA",
    "GNSEstimate",
    "GNSTracker",
    "GradientStats",
    "NotEstimable",
    "ParamStats",
    "describe",
    "estimate",
    "estimate_per_param",
    "gather_stats",
    "gather_stats_async",
    "PendingStats",
    "patch_model",
    "patched_module_names",
    "reset_stats",
    "set_recording",
    "unpatch_model",
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
