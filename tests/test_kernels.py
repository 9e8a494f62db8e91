"""The Triton kernels against float64 brute force.

On CPU (CI) the real kernels run under TRITON_INTERPRET=1 at small, odd shapes. With
HF_GNS_TEST_DEVICE=cuda the same checks run on the GPU at large shapes (D up to 16384,
up to 65536 rows): ``HF_GNS_TEST_DEVICE=cuda python -m pytest tests/test_kernels.py``.
"""

from __future__ import annotations

import os

DEVICE = os.environ.get("HF_GNS_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton kernels

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from hf_gns.formulas import KNOWN_FORMULAS, CastOrder, NormFormula  # noqa: E402
from hf_gns.kernels import op, triton_norm  # noqa: E402
from hf_gns.layout import ExampleSpec  # noqa: E402
from hf_gns.probe import NormPlan  # noqa: E402

ON_GPU = DEVICE == "cuda"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}
EPS = 1e-5

if ON_GPU:
    SHAPES = [(8, 2048, 768), (16, 1024, 4096), (2, 8192, 8192), (4, 4096, 16384), (65536, 1, 72), (1, 65536, 3000)]
else:
    SHAPES = [(3, 5, 72), (1, 1, 72), (4, 1, 33), (2, 7, 129), (1, 3, 1), (5, 2, 200)]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element the kernel forgets to write fails."""

    def empty_nan(shape, dtype, device):
        return torch.full(shape if isinstance(shape, tuple) else (shape,), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(triton_norm, "_empty", empty_nan)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite (unwritten?) output"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _rel_sum(a: torch.Tensor, b: torch.Tensor, terms: torch.Tensor) -> float:
    """Error of a sum over examples relative to the size of its per-example ``terms`` ([B, ...])."""
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite (unwritten?) output"
    scale = max(b.norm().item(), terms.double().abs().sum(0).norm().item(), 1e-30)
    return (a - b).norm().item() / scale


def _oracle_forward(formula: NormFormula, x, w, b):
    """float64 math of the formula, without any rounding to low precision."""
    x = x.double()
    if formula.centered:
        x = x - x.mean(-1, keepdim=True)
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    y = normed * (w.double() + formula.weight_offset)
    return y + b.double() if b is not None else y


def _make_module(formula: NormFormula, D: int, pdtype: torch.dtype) -> tuple[nn.Module, NormPlan]:
    m = nn.Module()
    m.weight = nn.Parameter(torch.randn(D, device=DEVICE).to(pdtype))
    m.bias = nn.Parameter(torch.randn(D, device=DEVICE).to(pdtype)) if formula.has_bias else None
    names = ("weight", "bias") if formula.has_bias else ("weight",)
    return m, NormPlan(formula=formula, eps=EPS, param_names=names)


def _brute_force(formula, m, x, dy, segments=None):
    """Per-example (or per-segment) gradients in float64: torch.func per example, no kernels."""
    w = m.weight.detach().double()
    b = m.bias.detach().double() if m.bias is not None else None

    def example_loss(w, b, xi, dyi):
        return (_oracle_forward(formula, xi.unsqueeze(0), w, b) * dyi.unsqueeze(0).double()).sum()

    grad = torch.func.grad(example_loss, argnums=(0, 1) if b is not None else 0)
    if segments is None:
        out = torch.func.vmap(grad, in_dims=(None, None, 0, 0))(w, b, x, dy)
    else:
        pieces = [grad(w, b, x[0, a:c], dy[0, a:c]) for a, c in zip(segments[:-1], segments[1:])]
        out = tuple(torch.stack(t) for t in zip(*pieces)) if b is not None else torch.stack(pieces)
    return out if b is not None else (out, None)


def _offsets(lengths: list[int]) -> list[int]:
    """Start offsets of packed sequences of ``lengths``, plus the end."""
    segments = [0]
    for n in lengths:
        segments.append(segments[-1] + n)
    return segments


def _spec(x: torch.Tensor, segments=None) -> ExampleSpec:
    if segments is None:
        return ExampleSpec(0, x.shape[0])
    lengths = torch.tensor([b - a for a, b in zip(segments[:-1], segments[1:])])
    ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(x.device)
    return ExampleSpec(1, x.shape[1], segment_ids=ids, segments=tuple(segments))


def _norm(m, plan, x, slots, spec):
    """The op as `patch_model` calls it: weight (and bias) slots, in that order."""
    cfg = op.kernel_config(plan.formula, plan.eps, x, m.weight)
    channels = (0, 1) if m.bias is not None else (0,)
    return op.triton_norm(x, m.weight, m.bias, slots, cfg, spec, channels)


def _run(formula, x, m, plan, dy, segments=None):
    """Forward + backward through the kernels; ``got`` holds the slot gradients per example."""
    spec = _spec(x, segments)
    D = x.shape[-1]
    n_params = 2 if m.bias is not None else 1
    slots = torch.full((spec.count, n_params * D), float("nan"), device=x.device).zero_().requires_grad_()
    xin = x.detach().clone().requires_grad_()
    y = _norm(m, plan, xin, slots, spec)
    y.backward(dy.to(y.dtype))
    grad = slots.grad
    examples = len(segments) - 1 if segments else spec.count
    if segments:  # one slot row per token: rows past the sequences stay zero
        assert torch.equal(grad[examples:], torch.zeros_like(grad[examples:]))
    got = {"weight": grad[:examples, :D]}
    if n_params == 2:
        got["bias"] = grad[:examples, D:]
    return y, xin.grad, got


@pytest.mark.parametrize("formula", KNOWN_FORMULAS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_and_per_example(formula, dtype, shape):
    B, T, D = shape
    m, plan = _make_module(formula, D, torch.float32)
    x = (torch.randn(B, T, D, device=DEVICE) * 2 + 0.5).to(dtype)
    dy = torch.randn(B, T, D, device=DEVICE)
    y, dx, got = _run(formula, x, m, plan, dy)
    dy = dy.to(y.dtype).float()  # what backward received (a bf16 output gets a bf16 gradient)

    x64 = x.double().requires_grad_()
    w64 = m.weight.detach().double().requires_grad_()
    b64 = m.bias.detach().double().requires_grad_() if m.bias is not None else None
    ref = _oracle_forward(formula, x64, w64, b64)
    ref.backward(dy.double())
    tol = TOL[dtype]
    assert y.shape == x.shape
    assert _rel(y, ref) <= tol
    # dx cancels to ~eps-sized values when D == 1: measure against the size of its terms
    xc = x64.detach() - x64.detach().mean(-1, keepdim=True) if formula.centered else x64.detach()
    terms = dy.double() * (m.weight.detach().double() + formula.weight_offset) / torch.sqrt(xc.pow(2).mean(-1, keepdim=True) + EPS)
    assert (dx.double() - x64.grad).norm() <= tol * max(x64.grad.norm(), terms.norm() if D == 1 else 0)
    per_w, per_b = _brute_force(formula, m, x, dy)
    # sums over rows and examples may cancel (D = 1: every normalized value is about +-1): errors
    # are measured against the size of the summed terms, per example
    normed = _oracle_forward(formula, x, torch.full((D,), 1.0 - formula.weight_offset, device=x.device), None)
    mag_w = (dy.double() * normed).abs().reshape(B, -1, D).sum(1)
    mag_b = dy.double().abs().reshape(B, -1, D).sum(1)
    assert _rel_sum(m.weight.grad, w64.grad, mag_w) <= tol
    assert got["weight"].shape == (B, D)
    assert (got["weight"].double() - per_w).norm() <= tol * max(per_w.norm(), mag_w.norm())
    if formula.has_bias:
        assert _rel_sum(m.bias.grad, b64.grad, mag_b) <= tol
        assert (got["bias"].double() - per_b).norm() <= tol * max(per_b.norm(), mag_b.norm())
    else:
        assert "bias" not in got
    # squared norms, as the statistics use them
    got_sq, want_sq = got["weight"].double().pow(2).sum().item(), per_w.pow(2).sum().item()
    bound = 2 * tol * (per_w.abs() * mag_w).sum().item() + tol**2 * mag_w.pow(2).sum().item()
    assert abs(got_sq - want_sq) <= bound + 1e-20


@pytest.mark.parametrize("formula", [f for f in KNOWN_FORMULAS if f.name in ("layer_norm", "llama_rms", "gemma_rms")],
                         ids=lambda f: f.name)
def test_packed_segments(formula):
    lengths = [3, 1, 6, 2] if not ON_GPU else [1000, 1, 3000, 96, 4096]
    segments = _offsets(lengths)
    D = 72 if not ON_GPU else 2048
    m, plan = _make_module(formula, D, torch.float32)
    x = torch.randn(1, segments[-1], D, device=DEVICE)
    dy = torch.randn_like(x)
    _, _, got = _run(formula, x, m, plan, dy, segments)
    per_w, per_b = _brute_force(formula, m, x, dy, segments)
    assert got["weight"].shape == (len(lengths), D)
    assert _rel(got["weight"], per_w) <= 1e-5
    if per_b is not None:
        assert _rel(got["bias"], per_b) <= 1e-5


def test_four_dim_input_and_noncontiguous():
    """(B, T, H, hd) like qwen3's q_norm, given as a transposed (non-contiguous) view."""
    formula = next(f for f in KNOWN_FORMULAS if f.name == "llama_rms")
    B, T, H, hd = (3, 4, 5, 24) if not ON_GPU else (8, 1024, 16, 128)
    m, plan = _make_module(formula, hd, torch.float32)
    x = torch.randn(B, H, T, hd, device=DEVICE).transpose(1, 2)
    assert not x.is_contiguous()
    dy = torch.randn(B, T, H, hd, device=DEVICE)
    y, dx, got = _run(formula, x, m, plan, dy)
    per_w, _ = _brute_force(formula, m, x, dy)
    assert _rel(got["weight"], per_w) <= 1e-5
    ref = _oracle_forward(formula, x, m.weight.detach(), None)
    assert _rel(y, ref) <= 1e-5


@pytest.mark.parametrize("pdtype", [torch.float32, torch.bfloat16], ids=str)
def test_output_dtypes_follow_modelling_code(pdtype):
    """Output dtype of each casting order matches `reference_forward` in every dtype mix."""
    from hf_gns.formulas import reference_forward

    for formula in KNOWN_FORMULAS:
        if formula.cast is CastOrder.NATIVE and pdtype != torch.float32:
            continue
        m, plan = _make_module(formula, 40, pdtype)
        x = torch.randn(2, 3, 40, device=DEVICE, dtype=torch.bfloat16)
        ref = reference_forward(formula, x, m.weight, m.bias, EPS)
        slots = torch.zeros(2, 3, 2 * 40 if m.bias is not None else 40, device=DEVICE)[:, 0]
        got = _norm(m, plan, x, slots, _spec(x))
        assert got.dtype == ref.dtype, formula.name
        assert _rel(got, ref) <= 2e-2


def test_slots_without_grad_leave_the_usual_gradients():
    """Slots that need no gradient (nothing recorded): dx, dweight, dbias as float64 autograd."""
    formula = KNOWN_FORMULAS[0]
    m, plan = _make_module(formula, 72, torch.float32)
    x = torch.randn(4, 3, 72, device=DEVICE, requires_grad=True)
    dy = torch.randn(4, 3, 72, device=DEVICE)
    _norm(m, plan, x, torch.zeros(4, 144, device=DEVICE), _spec(x)).backward(dy)
    x64 = x.detach().double().requires_grad_()
    w64 = m.weight.detach().double().requires_grad_()
    b64 = m.bias.detach().double().requires_grad_()
    _oracle_forward(formula, x64, w64, b64).backward(dy.double())
    assert _rel(x.grad, x64.grad) <= 1e-5
    assert _rel(m.weight.grad, w64.grad) <= 1e-5
    assert _rel(m.bias.grad, b64.grad) <= 1e-5


def test_accumulated_micro_batches_match_torch_path():
    """Gradient accumulation over micro-batches: the Triton path's statistics equal the PyTorch
    path's (autograd adds each micro-batch's slot gradients into the taps)."""
    import copy

    import hf_gns
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=40, intermediate_size=56, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    base = LlamaForCausalLM(config).to(DEVICE)
    batches = [torch.randint(0, 50, (3, 5), device=DEVICE) for _ in range(3)]
    results = {}
    for kernel in ("torch", "triton"):
        model = copy.deepcopy(base)
        hf_gns.patch_model(model, kernel=kernel)
        for ids in batches:
            model(input_ids=ids, labels=ids).loss.backward()
        results[kernel] = hf_gns.gather_stats(model)
    for name, want in results["torch"].per_param.items():
        got = results["triton"].per_param[name]
        assert got.num_examples == want.num_examples == 9
        assert abs(got.example_sq_norm_sum - want.example_sq_norm_sum) <= 1e-5 * want.example_sq_norm_sum
        assert abs(got.batch_sq_norm - want.batch_sq_norm) <= 1e-5 * want.example_sq_norm_sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 72), (1, 1, 33), (4, 7, 129)] if not ON_GPU else [(4, 2048, 16384)],
                         ids=lambda s: "x".join(map(str, s)))
def test_wide_rows_bias_summed_outside_the_kernel(dtype, shape, monkeypatch):
    """The wide-row path (dbias per example summed outside the kernel) against float64 brute force."""
    monkeypatch.setattr(triton_norm, "SEPARATE_BIAS_FROM", 1)
    formula = next(f for f in KNOWN_FORMULAS if f.name == "layer_norm")
    B, T, D = shape
    m, plan = _make_module(formula, D, torch.float32)
    x = (torch.randn(B, T, D, device=DEVICE) * 2 + 0.5).to(dtype)
    dy = torch.randn(B, T, D, device=DEVICE)
    y, dx, got = _run(formula, x, m, plan, dy)
    per_w, per_b = _brute_force(formula, m, x, dy)
    tol = TOL[dtype]
    assert _rel(got["weight"], per_w) <= tol and _rel(got["bias"], per_b) <= tol
    x64 = x.double().requires_grad_()
    b64 = m.bias.detach().double().requires_grad_()
    _oracle_forward(formula, x64, m.weight.detach().double(), b64).backward(dy.double())
    assert _rel(dx, x64.grad) <= tol
    assert _rel(m.bias.grad, b64.grad) <= tol


@pytest.mark.parametrize("tiling", [None, (1, 1, 8), (1, 4, 16), (4, 2, 32), (2, 64, 8), (8, 8, 64)],
                         ids=lambda t: "default" if t is None else "x".join(map(str, t)))
@pytest.mark.parametrize(("examples", "items", "channels"),
                         [(1, 1, 1), (2, 70, 2), (7, 5, 2), (3, 16, 1), (40, 2, 2), (5, 1, 2)])
def test_fold_sums_items_per_example_then_squares(examples, items, channels, tiling, monkeypatch):
    """The fold kernel alone, on random partials, against float64: the default tiling and forced
    ones (examples x items x columns per load) with several loads per loop on each axis, partly
    masked tiles, and D spanning several programs, not a multiple of the block."""
    if tiling is not None:
        monkeypatch.setattr(triton_norm, "fold_tiling", lambda *args: tiling)
    D = 150
    partial = torch.randn(examples * items, channels, D, device=DEVICE)
    weight = torch.randn(D, device=DEVICE)
    bias = torch.randn(D, device=DEVICE) if channels == 2 else None
    names = 1 + (channels == 2)
    positions = (1, 0) if channels == 2 else (0, -1)  # the bias first in the tap: positions are honoured
    dw, db, out = triton_norm.fold_examples(partial, examples, float(examples), weight, bias, True, True, positions,
                                            1 + 2 * names * D)
    per_example = partial.double().view(examples, items, channels, D).sum(1)
    assert out[0].item() == examples
    for channel, k in enumerate(positions[:channels]):
        c = per_example[:, channel]
        assert _rel(out[1 + k * D : 1 + (k + 1) * D], c.sum(0)) <= 1e-6
        squares = 1 + names * D + k * D
        assert _rel(out[squares : squares + D], c.pow(2).sum(0)) <= 1e-6
    assert _rel(dw, per_example[:, 0].sum(0)) <= 1e-6
    if bias is not None:
        assert _rel(db, per_example[:, 1].sum(0)) <= 1e-6


@pytest.mark.parametrize("formula", KNOWN_FORMULAS, ids=lambda f: f.name)
@pytest.mark.parametrize("shape", [(3, 5, 72), (1, 1, 33), (2, 7, 129)], ids=lambda s: "x".join(map(str, s)))
def test_graph_operator_backward_against_float64(formula, shape):
    """The compiled graph's backward (`graph_op.norm_backward_fold` body: mean and rstd recomputed
    from x, then the fold), called directly: dx, dweight, dbias and the tap's per-example sums
    against float64 brute force, for every formula."""
    from hf_gns.kernels import graph_op

    B, T, D = shape
    m, plan = _make_module(formula, D, torch.float32)
    x = torch.randn(B, T, D, device=DEVICE) * 2 + 0.5
    dy = torch.randn(B, T, D, device=DEVICE)
    cfg = op.kernel_config(formula, EPS, x, m.weight)
    names = 1 + formula.has_bias
    dx, dw, db, tap = graph_op._backward_fold(
        dy.reshape(-1, D), x.reshape(-1, D), m.weight, m.bias, EPS, cfg.centered, cfg.offset,
        triton_norm.ROUND_CODES[cfg.round_to], T, B, 0, 1 if formula.has_bias else -1, 1 + 2 * names * D,
        True, formula.has_bias, triton_norm._direct)
    x64 = x.double().requires_grad_()
    w64 = m.weight.detach().double().requires_grad_()
    b64 = m.bias.detach().double().requires_grad_() if m.bias is not None else None
    _oracle_forward(formula, x64, w64, b64).backward(dy.double())
    assert _rel(dx.view(B, T, D), x64.grad) <= 1e-5 or D == 1
    assert _rel(dw, w64.grad) <= 1e-5
    per = _brute_force(formula, m, x, dy)
    assert tap[0].item() == B
    for k in range(names):
        assert _rel(tap[1 + k * D : 1 + (k + 1) * D], per[k].sum(0)) <= 1e-5
        squares = 1 + names * D + k * D
        assert _rel(tap[squares : squares + D], per[k].pow(2).sum(0)) <= 1e-5
    if formula.has_bias:
        assert _rel(db, b64.grad) <= 1e-5


def _run_folded(formula, x, m, plan, dy, names, segments=None):
    """Forward + backward with the statistics folded into a tap (a module called once per pass)."""
    from hf_gns.slots import TapLayout

    spec = _spec(x, segments)
    D = x.shape[-1]
    layout = TapLayout(names, (D,) * len(names))
    tap = torch.zeros(layout.width, device=x.device, requires_grad=True)
    count = len(segments) - 1 if segments else spec.count
    positions = tuple(names.index(n) if n in names else -1 for n in ("weight", "bias"))
    fold = op.TapFold(float(count), positions, layout.width)
    cfg = op.kernel_config(plan.formula, plan.eps, x, m.weight)
    channels = tuple(("weight", "bias").index(n) for n in names)
    xin = x.detach().clone().requires_grad_()
    y = op.triton_norm(xin, m.weight, m.bias, tap, cfg, spec, channels, fold)
    y.backward(dy.to(y.dtype))
    return y, xin.grad, tap.grad, layout


@pytest.mark.parametrize("formula", [f for f in KNOWN_FORMULAS if f.name in ("layer_norm", "llama_rms", "gemma_rms", "layer_norm_no_bias")],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("shape", SHAPES[:4] + [(2, 3, 300), (2, 150, 40), (17, 40, 24)] if not ON_GPU else SHAPES,
                         ids=lambda s: "x".join(map(str, s)))
def test_folded_tap_gradient(formula, shape):
    """Statistics folded in the backward (count, sum_i ||c_i||^2, sum_i c_i per parameter) and the
    parameter gradients, against float64 brute force; D spans several fold programs, examples
    span several work items (the last one short) and more than one block of examples."""
    B, T, D = shape
    m, plan = _make_module(formula, D, torch.float32)
    x = torch.randn(B, T, D, device=DEVICE) * 2 + 0.5
    dy = torch.randn(B, T, D, device=DEVICE)
    y, dx, grad, layout = _run_folded(formula, x, m, plan, dy, plan.param_names)
    per = dict(zip(("weight", "bias"), _brute_force(formula, m, x, dy)))
    x64 = x.double().requires_grad_()
    w64 = m.weight.detach().double().requires_grad_()
    b64 = m.bias.detach().double().requires_grad_() if m.bias is not None else None
    _oracle_forward(formula, x64, w64, b64).backward(dy.double())
    assert _rel(dx, x64.grad) <= 1e-5 or D == 1
    assert grad[0].item() == B
    for k, name in enumerate(layout.names):
        want = per[name]
        assert _rel(grad[layout.sum_slice(k)], want.sum(0)) <= 1e-5
        assert _rel(grad[layout.square_slice(k)], want.pow(2).sum(0)) <= 1e-5
    assert _rel(m.weight.grad, w64.grad) <= 1e-5
    if m.bias is not None:
        assert _rel(m.bias.grad, b64.grad) <= 1e-5


def test_folded_tap_gradient_packed_and_bias_only():
    """A packed batch folded per sequence, with only the bias trainable (the tap holds the bias alone)."""
    formula = next(f for f in KNOWN_FORMULAS if f.name == "layer_norm")
    lengths = [3, 1, 6, 2] if not ON_GPU else [1000, 1, 3000, 96, 4096]
    segments = _offsets(lengths)
    D = 150 if not ON_GPU else 2048
    m, plan = _make_module(formula, D, torch.float32)
    m.weight.requires_grad_(False)
    x = torch.randn(1, segments[-1], D, device=DEVICE)
    dy = torch.randn_like(x)
    _, _, grad, layout = _run_folded(formula, x, m, plan, dy, ("bias",), segments)
    _, per_b = _brute_force(formula, m, x, dy, segments)
    assert layout.width == 1 + 2 * D and grad[0].item() == len(lengths)
    assert _rel(grad[1 : 1 + D], per_b.sum(0)) <= 1e-5
    assert _rel(grad[1 + D :], per_b.pow(2).sum(0)) <= 1e-5
    assert m.weight.grad is None


@pytest.mark.parametrize(("name", "checkpointing"),  # ALBERT has no activation checkpointing
                         [(n, c) for n in ("llama", "gpt2") for c in ("off", "non_reentrant", "reentrant")]
                         + [("albert", "off")])
def test_triton_model_over_micro_batches_matches_brute_force(name, checkpointing):
    """The Triton path of a whole model over several micro-batches: the first pass goes through
    slots, later ones fold each once-called module's statistics in its backward (ALBERT's shared
    layer never folds); activation checkpointing recomputes inside the backward."""
    import hf_gns
    from helpers import (assert_stats_match, batch_loss, clone, example_grads_bruteforce, make_batch,
                          make_model, norm_param_names, num_label_tokens, oracle_stats, rand_length, slice_batch)

    model = make_model(name).to(DEVICE)
    ref = clone(model)
    if checkpointing != "off":
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"})
    hf_gns.patch_model(model, kernel="triton")
    T = rand_length(1, 5, 2, 6)
    batch = {k: v.to(DEVICE) for k, v in make_batch(name, model, 6, T).items()}
    total = num_label_tokens(batch)
    for k in range(3):
        batch_loss(model, slice_batch(batch, 2 * k, 2 * k + 2), normalizer=total).backward()
    states = [s for _, s in hf_gns.patch.patched_modules(model)]
    folding = [s.once for s in states]
    stats = hf_gns.gather_stats(model)
    oracle = oracle_stats(example_grads_bruteforce(ref, batch, norm_param_names(ref)))
    assert_stats_match(stats, oracle, rtol=1e-5, what=f"{name} triton checkpointing={checkpointing}")
    assert stats.total.num_examples == 6
    if checkpointing != "reentrant":  # reentrant checkpointing's forward runs without grad: no pass counted
        if name == "albert":
            assert any(f is False for f in folding) and all(s.unmeasurable is None for s in states)
        else:
            assert all(folding)


def test_triton_module_called_more_often_later_is_left_out(recwarn):
    """A module that ran once per pass, then twice in one pass (its folded statistics would miss the
    cross terms): left out with a warning; the other norm is still measured."""
    import hf_gns

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(12, 12)
            self.norm = nn.LayerNorm(12)
            self.other = nn.LayerNorm(12)
            self.repeat = 1

        def forward(self, x):
            h = self.inner(x)
            for _ in range(self.repeat):
                h = self.norm(h)
            return self.other(h)

    model = Twice().to(DEVICE)
    hf_gns.patch_model(model, kernel="triton")
    x = torch.randn(3, 4, 12, device=DEVICE)
    model(x).square().sum().backward()
    model(x).square().sum().backward()
    model.repeat = 2
    with pytest.warns(UserWarning, match="norm: it ran once per forward pass, then more than once"):
        model(x).square().sum().backward()
    stats = hf_gns.gather_stats(model)
    assert set(stats.per_param) == {"other.weight", "other.bias"}
