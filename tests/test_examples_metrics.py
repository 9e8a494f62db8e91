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


def test_short_progress_prints_a_short_line_every_n_logs():
    """The main job's bar: one short line every N training logs (and at the last step), not every dict."""
    from types import SimpleNamespace

    written = []
    progress = train_lm.ShortProgress(every=3)
    progress.training_bar = SimpleNamespace(write=written.append)
    for step in range(1, 8):
        state = SimpleNamespace(is_world_process_zero=True, global_step=step, max_steps=7)
        progress.on_log(None, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-3, "gns/b_simple": 2.5,
                                                 "gns/step_g2": -1.0, "grad_norm": 0.5, "epoch": 0.1})
    assert [line.split(":")[0] for line in written] == ["step 3", "step 6", "step 7"]
    assert written[0] == "step 3: loss 0.3333, learning_rate 0.001, gns/b_simple 2.5"
