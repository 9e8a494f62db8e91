"""The measurement pipeline shared by `GNSCallback` and `GNSLoop`.

gather (asynchronously, after each optimizer step) -> estimate |G|^2 and tr(Sigma) -> a logged
record, or the reason the step was skipped (warned once per kind) -> EMAs. Each step's
reduction is started when the step ends and read one step later, so the GPU queue never drains.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch import nn

from .estimator import GNSTracker, NotEstimable, estimate, estimate_per_param
from .stats import GradientStats, PendingStats, gather_stats_async

logger = logging.getLogger(__name__)


def read_loss_scale(scaler) -> Any:
    """The loss scale of an fp16 ``GradScaler`` without a host sync (1.0 when there is none)."""
    if scaler is None or not scaler.is_enabled():
        return 1.0
    get_async = getattr(scaler, "_get_scale_async", None)
    return get_async() if get_async is not None else scaler.get_scale()


class GNSMeter:
    """Per-step GNS records with EMAs; ``history`` holds every resolved step's record."""

    def __init__(self, ema: float = 0.99, prefix: str = "gns/", log_layers: bool = False) -> None:
        self.ema = ema
        self.prefix = prefix
        self.log_layers = log_layers
        self.tracker = GNSTracker(ema)
        self.layer_trackers: dict[str, GNSTracker] = {}
        self.history: list[dict[str, float]] = []
        self.tokens_seen = 0.0  # non-padding input tokens of training forwards, all ranks
        self._in_flight: list[tuple[int, PendingStats, Any, bool, dict]] = []
        self._reasons_seen: set[str] = set()

    def start(self, model: nn.Module, step: int, scale: Any = 1.0, skipped: bool = False,
              extra: dict[str, float] | None = None) -> None:
        """Start the reduction of the statistics of optimizer step ``step`` (no host sync);
        ``extra`` values (batch size, tokens of a policy's clock) are added to its record."""
        self._in_flight.append((step, gather_stats_async(model, reset=True), scale, skipped, dict(extra or {})))

    def resolve(self, upto: int) -> dict[str, float] | None:
        """Fold in every started step <= ``upto``, oldest first; the newest record, if any."""
        newest = None
        while self._in_flight and self._in_flight[0][0] <= upto:
            step, pending, scale, skipped, extra = self._in_flight.pop(0)
            stats = pending.result()
            record = self.measure(stats, step, float(scale), skipped)
            self.tokens_seen += stats.tokens
            record[self.prefix + "tokens"] = self.tokens_seen  # (a batch-size policy's clock overrides it)
            record.update(extra)
            self.history.append({"step": step, **record})
            newest = record
        return newest

    def measure(self, stats: GradientStats, step: int, scale: float = 1.0, skipped: bool = False) -> dict[str, float]:
        """One step's record from its statistics, updating the EMAs (or why it was skipped)."""
        p = self.prefix
        reason = None
        if skipped:
            reason = "optimizer step skipped (fp16 overflow)"
        elif stats.problems:
            reason = "; ".join(stats.problems[:2])
        elif stats.total.num_examples == 0:
            reason = ("no per-example statistics were recorded (no trainable normalization parameter, "
                      "or no patched norm ran with gradients enabled)")
        else:
            try:
                est = estimate(stats, scale=scale)
            except NotEstimable as error:
                reason = str(error)
        if reason is not None:
            # once per kind of reason at warning level, then quietly (a batch of 1 would repeat it every step)
            kind = reason.split(":")[0].split(",")[0]
            level = logging.DEBUG if kind in self._reasons_seen else logging.WARNING
            self._reasons_seen.add(kind)
            logger.log(level, "hf_gns: step %d not measured: %s", step, reason)
            return {p + "skipped": 1.0}
        self.tracker.update(est)
        tokens_per_example = stats.tokens / est.num_examples if stats.tokens else math.nan
        record = {
            p + "b_simple": self.tracker.b_simple,
            p + "b_simple_tokens": self.tracker.b_simple * tokens_per_example,
            p + "g2": self.tracker.g2.get(),
            p + "trace_sigma": self.tracker.trace_sigma.get(),
            p + "step_b_simple": est.b_simple,
            p + "step_g2": est.g2,
            p + "step_trace_sigma": est.trace_sigma,
            p + "examples": float(est.num_examples),
            p + "skipped": 0.0,
        }
        if self.log_layers:
            for name, layer_est in estimate_per_param(stats, scale=scale).items():
                tracker = self.layer_trackers.setdefault(name, GNSTracker(self.ema))
                tracker.update(layer_est)
                record[f"{p}layer/{name}"] = tracker.b_simple
        return record

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict(), "tokens_seen": self.tokens_seen,
                "layer_trackers": {n: t.state_dict() for n, t in self.layer_trackers.items()},
                "history": self.history}

    def load_state_dict(self, data: dict) -> None:
        self.tracker.load_state_dict(data["tracker"])
        for name, tracker_state in data.get("layer_trackers", {}).items():
            self.layer_trackers.setdefault(name, GNSTracker(self.ema)).load_state_dict(tracker_state)
        self.history = list(data.get("history", []))
        self.tokens_seen = float(data.get("tokens_seen", 0.0))


class MeterViews:
    """What `GNSCallback` and `GNSLoop` expose of their ``self.meter``."""

    meter: GNSMeter

    @property
    def tracker(self) -> GNSTracker:
        """The EMAs of |G|^2 and tr(Sigma) (``tracker.b_simple``)."""
        return self.meter.tracker

    @property
    def history(self) -> list[dict[str, float]]:
        """Every measured step's record (``step`` and the logged ``gns/*`` values)."""
        return self.meter.history
