"""The example's next-token accuracy through `evaluate` and its local metric module (offline)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("evaluate")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

from transformers import EvalPrediction  # noqa: E402

import train_lm  # noqa: E402


def test_token_accuracy_matches_a_direct_count():
    compute_metrics, preprocess = train_lm.token_accuracy_metrics()
    rng = np.random.default_rng()
    N, T, V = int(rng.integers(1, 5)), int(rng.integers(2, 9)), 7
    labels = rng.integers(0, V, (N, T))
    labels[rng.random((N, T)) < 0.3] = -100                       # padding / ignored positions
    predictions = np.where(rng.random((N, T)) < 0.5, np.roll(labels, -1, axis=1), rng.integers(0, V, (N, T)))
    got = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))["accuracy"]
    # position t predicts token t + 1; positions whose next label is -100 are not counted
    pairs = [(predictions[i, t], labels[i, t + 1]) for i in range(N) for t in range(T - 1) if labels[i, t + 1] != -100]
    want = sum(p == r for p, r in pairs) / len(pairs) if pairs else float("nan")
    assert got == pytest.approx(want, nan_ok=True)


def test_preprocess_keeps_only_predicted_ids():
    import torch

    _, preprocess = train_lm.token_accuracy_metrics()
    logits = torch.randn(2, 5, 11)
    assert torch.equal(preprocess(logits, None), logits.argmax(-1))
