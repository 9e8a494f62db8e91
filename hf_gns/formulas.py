"""Normalization formulas described as data.

Every LayerNorm / RMSNorm variant in Hugging Face models is one `NormFormula`: whether the
mean is subtracted, whether the weight carries a +1 offset, and where the result is cast
back to the activation dtype. `reference_forward` computes a formula with plain PyTorch ops,
in the same order as the modelling code it describes, and accepts weights that broadcast
per example (shape ``[B, 1, ..., D]``), which is how per-example gradients are taken on the
PyTorch path. The Triton kernels implement the same formulas.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class CastOrder(enum.Enum):
    """Where the float32 normalized value meets the weight and the activation dtype."""

    NATIVE = "native"
    """``F.layer_norm(x, w + offset, b)``: float32 inside, output in input dtype; Nemotron's
    ``1 + w`` is added in the weight's dtype."""
    CAST_THEN_SCALE = "cast_then_scale"
    """Llama: ``weight * normed.to(input_dtype)``."""
    SCALE_THEN_CAST = "scale_then_cast"
    """OLMo2, Gemma, Cohere: ``(weight.float() * normed).to(input_dtype)``."""
    T5 = "t5"
    """T5: variance in float32, ``x * rsqrt(var)`` in promoted dtype, cast to a half weight dtype."""


@dataclass(frozen=True)
class NormFormula:
    """One normalization variant. ``name`` is for messages and logs only."""

    name: str
    centered: bool
    weight_offset: float
    cast: CastOrder
    has_bias: bool = False

    @property
    def kernel_key(self) -> tuple:
        return (self.centered, self.weight_offset, self.cast, self.has_bias)


#: The variants found in transformers 5.x modelling code. Order matters only for messages.
KNOWN_FORMULAS: tuple[NormFormula, ...] = (
    NormFormula("layer_norm", centered=True, weight_offset=0.0, cast=CastOrder.NATIVE, has_bias=True),
    NormFormula("layer_norm_no_bias", centered=True, weight_offset=0.0, cast=CastOrder.NATIVE),
    NormFormula("llama_rms", centered=False, weight_offset=0.0, cast=CastOrder.CAST_THEN_SCALE),
    NormFormula("olmo2_rms", centered=False, weight_offset=0.0, cast=CastOrder.SCALE_THEN_CAST),
    NormFormula("gemma_rms", centered=False, weight_offset=1.0, cast=CastOrder.SCALE_THEN_CAST),
    NormFormula("t5_rms", centered=False, weight_offset=0.0, cast=CastOrder.T5),
    NormFormula("nemotron_layer_norm_1p", centered=True, weight_offset=1.0, cast=CastOrder.NATIVE, has_bias=True),
    NormFormula("cohere_layer_norm", centered=True, weight_offset=0.0, cast=CastOrder.SCALE_THEN_CAST),
)


def native_output_dtype(x: torch.Tensor) -> torch.dtype:
    """The output dtype of ``F.layer_norm`` on ``x`` in the current autocast state."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.float32 if device_type == "cuda" else torch.get_autocast_dtype(device_type)
    return x.dtype


def _normalize_fp32(x32: torch.Tensor, centered: bool, eps: float) -> torch.Tensor:
    if centered:
        mean = x32.mean(-1, keepdim=True)
        centred = x32 - mean
        return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


def reference_forward(
    formula: NormFormula,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Compute ``formula`` on ``x`` (normalized over the last dim) with plain PyTorch ops.

    ``weight`` / ``bias`` may have shape ``[D]`` or any shape that broadcasts against ``x``,
    for instance ``[B, 1, D]`` to take per-example gradients.
    """
    in_dtype = x.dtype
    if formula.cast is CastOrder.NATIVE:
        normed = F.layer_norm(x.to(torch.float32), x.shape[-1:], None, None, eps)
        scale = (weight + formula.weight_offset).to(torch.float32)  # in the weight's dtype, as Nemotron
        if bias is None:
            return (normed * scale).to(in_dtype)
        return torch.addcmul(bias.to(torch.float32), normed, scale).to(in_dtype)
    if formula.cast is CastOrder.T5:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        normed = x * torch.rsqrt(variance + eps)
        if weight.dtype in (torch.float16, torch.bfloat16):
            normed = normed.to(weight.dtype)
        return weight * normed
    normed = _normalize_fp32(x.to(torch.float32), formula.centered, eps)
    if formula.cast is CastOrder.CAST_THEN_SCALE:
        return weight * normed.to(in_dtype)
    scale = 1.0 + weight.float() if formula.weight_offset else weight.float()
    return (normed * scale).to(in_dtype)
