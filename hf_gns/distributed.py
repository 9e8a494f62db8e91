"""Host-side counts summed over torch.distributed ranks, without a device sync.

Token counts are known on the host (from input shapes), and every rank must feed the same
number to its LR schedule and budget. Under NCCL a device all-reduce would stall the host
until the GPU queue drains, so the sum goes through a CPU (gloo) group, created once.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

_CPU_GROUP: dict = {}


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _cpu_group():
    """A gloo group of all ranks (the default group when it is gloo already), or None."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    key = id(dist.group.WORLD)
    if key not in _CPU_GROUP:
        try:
            _CPU_GROUP[key] = dist.new_group(backend="gloo")
        except Exception as error:  # no gloo: fall back to a device all-reduce (one host sync)
            logger.warning("hf_gns: no gloo process group (%s); token counts are summed on the device", error)
            _CPU_GROUP[key] = None
    return _CPU_GROUP[key]


def sum_over_ranks(value: float) -> float:
    """``value`` summed over all ranks (every rank must call this at the same point)."""
    if world_size() == 1:
        return float(value)
    group = _cpu_group()
    if group is not None:
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, group=group)
        return float(tensor.item())
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())
