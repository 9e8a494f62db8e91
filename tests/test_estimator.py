"""GNS estimators on synthetic per-example gradients with known |G|^2 and tr(Sigma).

c_i = (G + n_i) / B with n_i ~ N(0, diag(sigma2)): the estimates must be unbiased for
|G|^2 = ||G||^2 and tr(Sigma) = sum(sigma2), for every batch size.
"""

from __future__ import annotations

import math

import pytest
import torch

import hf_gns
from hf_gns import EMA, GNSTracker, NotEstimable, ParamStats, estimate
from helpers import (
    batch_loss,
    clone,
    example_grads_bruteforce,
    make_batch,
    make_model,
    norm_param_names,
    rand_length,
)


def draw_stats(G: torch.Tensor, sigma2: torch.Tensor, B: int, draws: int):
    """[draws] float64 tensors of sum_i ||c_i||^2 and ||sum_i c_i||^2, with c_i = (G + n_i) / B."""
    noise = torch.randn(draws, B, G.numel(), dtype=torch.float64) * sigma2.sqrt()
    c = (G + noise) / B
    return c.pow(2).sum((1, 2)), c.sum(1).pow(2).sum(-1)


def problem(dim: int = 48):
    G = torch.randn(dim, dtype=torch.float64)
    sigma2 = torch.rand(dim, dtype=torch.float64) * 2.0 + 0.1
    return G, sigma2


@pytest.mark.parametrize("B", [2, 3, 8])
def test_unbiased_g2_and_trace_sigma(B):
    G, sigma2 = problem(dim=256)
    g2_true, tr_true = float(G.pow(2).sum()), float(sigma2.sum())
    draws = 6000
    sq, bsq = draw_stats(G, sigma2, B, draws)
    g2, tr = [], []
    for s, b in zip(sq.tolist(), bsq.tolist()):
        est = estimate(ParamStats(num_examples=B, example_sq_norm_sum=s, batch_sq_norm=b))
        assert est.num_examples == B
        g2.append(est.g2)
        tr.append(est.trace_sigma)
    g2, tr = torch.tensor(g2, dtype=torch.float64), torch.tensor(tr, dtype=torch.float64)
    # guard against a flaky test: 2% must be far outside the sampling error (>= 7 standard errors)
    assert 7 * g2.std() / math.sqrt(draws) < 0.02 * g2_true and 7 * tr.std() / math.sqrt(draws) < 0.02 * tr_true
    assert abs(g2.mean() - g2_true) <= 0.02 * g2_true, (float(g2.mean()), g2_true)
    assert abs(tr.mean() - tr_true) <= 0.02 * tr_true, (float(tr.mean()), tr_true)
    # B_simple of the ratio of means converges to tr(Sigma) / |G|^2
    assert abs(float(tr.mean() / g2.mean()) / (tr_true / g2_true) - 1) <= 0.04
    # per-step values are sometimes negative for small batches; they are returned unclamped
    if B == 2:
        small_signal = draw_stats(G * 0.05, sigma2, B, 200)
        values = [estimate(ParamStats(B, s, b)).g2 for s, b in zip(*(t.tolist() for t in small_signal))]
        assert min(values) < 0


def test_exact_without_noise_and_with_zero_gradient():
    G, sigma2 = problem()
    for B in (2, 5):
        sq, bsq = draw_stats(G, torch.zeros_like(sigma2), B, 1)
        est = estimate(ParamStats(B, float(sq[0]), float(bsq[0])))
        assert est.g2 == pytest.approx(float(G.pow(2).sum()), rel=1e-12)
        assert abs(est.trace_sigma) <= 1e-12 * float(G.pow(2).sum())
        assert est.b_simple == pytest.approx(0.0, abs=1e-12)
    # G = 0: |G|^2 estimates average to 0 and B_simple is NaN whenever the estimate is <= 0
    sq, bsq = draw_stats(torch.zeros_like(G), sigma2, 4, 3000)
    ests = [estimate(ParamStats(4, s, b)) for s, b in zip(sq.tolist(), bsq.tolist())]
    g2 = torch.tensor([e.g2 for e in ests])
    assert abs(float(g2.mean())) <= 4 * float(g2.std()) / math.sqrt(len(ests))
    assert all(math.isnan(e.b_simple) for e in ests if e.g2 <= 0)


def test_independent_formula_sample_covariance():
    """|G|^2 ~ ||g_bar||^2 - tr(S)/B, tr(Sigma) ~ tr(S) with S the sample covariance of g_i = B c_i."""
    for B in (2, 3, 7):
        c = torch.randn(B, 31, dtype=torch.float64) + torch.randn(31, dtype=torch.float64)
        g = B * c
        g_bar = g.mean(0)
        tr_s = (g - g_bar).pow(2).sum() / (B - 1)
        est = estimate(ParamStats(B, float(c.pow(2).sum()), float(c.sum(0).pow(2).sum())))
        assert est.trace_sigma == pytest.approx(float(tr_s), rel=1e-10)
        assert est.g2 == pytest.approx(float(g_bar.pow(2).sum() - tr_s / B), rel=1e-10, abs=1e-10)


def test_common_scale_cancels_and_scale_argument_divides_it_out():
    G, sigma2 = problem()
    sq, bsq = draw_stats(G, sigma2, 5, 1)
    base = estimate(ParamStats(5, float(sq[0]), float(bsq[0])))
    for s in (1e-3, 7.0, 65536.0):
        scaled = ParamStats(5, float(sq[0]) * s * s, float(bsq[0]) * s * s)
        est = estimate(scaled)
        assert est.b_simple == pytest.approx(base.b_simple, rel=1e-12)
        assert est.g2 == pytest.approx(base.g2 * s * s, rel=1e-12)
        undone = estimate(scaled, scale=s)
        assert undone.g2 == pytest.approx(base.g2, rel=1e-12)
        assert undone.trace_sigma == pytest.approx(base.trace_sigma, rel=1e-12)


def test_not_estimable():
    with pytest.raises(NotEstimable):
        estimate(ParamStats(1, 2.0, 2.0))
    with pytest.raises(NotEstimable):
        estimate(ParamStats(0, 0.0, 0.0))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(NotEstimable):
            estimate(ParamStats(4, bad, 1.0))
        with pytest.raises(NotEstimable):
            estimate(ParamStats(4, 1.0, bad))
    empty = hf_gns.GradientStats(per_param={}, total=ParamStats(0, 0.0, 0.0))
    with pytest.raises(NotEstimable):
        estimate(empty)
    assert issubclass(NotEstimable, ValueError)
    stats = hf_gns.GradientStats(
        per_param={"a": ParamStats(4, 1.0, 0.5), "b": ParamStats(4, math.nan, 0.5), "c": ParamStats(1, 1.0, 1.0)},
        total=ParamStats(4, 1.0, 0.5))
    assert set(hf_gns.estimate_per_param(stats)) == {"a"}


def test_ema_bias_corrected_closed_form():
    decay = 0.9
    xs = (torch.randn(30, dtype=torch.float64) * 3).tolist()
    ema = EMA(decay)
    assert math.isnan(ema.get())
    for n, x in enumerate(xs, start=1):
        got = ema.update(x)
        weights = [(1 - decay) * decay ** (n - k) for k in range(1, n + 1)]
        expected = sum(w * v for w, v in zip(weights, xs[:n])) / (1 - decay**n)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
        if n == 1:
            assert got == pytest.approx(xs[0], rel=1e-15)
    clone_ema = EMA(decay)
    clone_ema.load_state_dict(ema.state_dict())
    assert clone_ema.get() == ema.get()
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            EMA(bad)


def test_tracker_separate_emas_no_clamping():
    tracker = GNSTracker(decay=0.5)
    steps = [hf_gns.GNSEstimate(g2=2.0, trace_sigma=4.0, num_examples=4),
             hf_gns.GNSEstimate(g2=-5.0, trace_sigma=-1.0, num_examples=4)]
    tracker.update(steps[0])
    assert tracker.b_simple == pytest.approx(2.0)
    tracker.update(steps[1])
    # bias-corrected weights 1/3, 2/3: negative per-step values are averaged in, never clamped
    g2 = (0.25 * 2.0 + 0.5 * -5.0) / 0.75
    tr = (0.25 * 4.0 + 0.5 * -1.0) / 0.75
    assert tracker.g2.get() == pytest.approx(g2)
    assert tracker.trace_sigma.get() == pytest.approx(tr)
    assert math.isnan(tracker.b_simple)  # smoothed |G|^2 <= 0
    tracker.update(hf_gns.GNSEstimate(g2=30.0, trace_sigma=3.0, num_examples=4))
    g2 = (0.125 * 2.0 + 0.25 * -5.0 + 0.5 * 30.0) / 0.875
    tr = (0.125 * 4.0 + 0.25 * -1.0 + 0.5 * 3.0) / 0.875
    assert tracker.b_simple == pytest.approx(tr / g2)  # ratio of the smoothed values
    assert tracker.steps == 3
    other = GNSTracker(decay=0.5)
    other.load_state_dict(tracker.state_dict())
    assert other.b_simple == tracker.b_simple and other.steps == 3


def test_end_to_end_patched_model_vs_bruteforce():
    """gather_stats + estimate on a real model == the sample-covariance formula on brute-force c_i."""
    for name in ("llama", "gpt2"):
        model = make_model(name)
        ref = clone(model)
        hf_gns.patch_model(model, kernel="torch")
        B = int(torch.randint(2, 6, ()))
        batch = make_batch(name, model, B, rand_length(1, 7, B))
        batch_loss(model, batch).backward()
        est = estimate(hf_gns.gather_stats(model))
        per_example = example_grads_bruteforce(ref, batch, norm_param_names(ref))
        c = torch.cat(list(per_example.values()), dim=1)  # all norm parameters as one vector
        g = B * c
        g_bar = g.mean(0)
        tr_s = float((g - g_bar).pow(2).sum() / (B - 1))
        g2 = float(g_bar.pow(2).sum()) - tr_s / B
        scale = float(g_bar.pow(2).sum()) + tr_s
        assert est.num_examples == B
        assert abs(est.trace_sigma - tr_s) <= 1e-5 * scale, (est, tr_s)
        assert abs(est.g2 - g2) <= 1e-5 * scale, (est, g2)
