"""Which rows are examples: never decided by a shape coincidence.

Oracles: one ``torch.autograd.grad`` per example on an unpatched copy. Where the examples of a
norm's input cannot be known (T == B before any call showed the layout, rows that belong to no
example), the parameter is left out with a warning, never measured wrongly.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import hf_gns
import helpers
from helpers import VOCAB, assert_stats_match, batch_loss, clone, example_grads_bruteforce, norm_param_names, oracle_stats


def _xlnet():
    return helpers._build(transformers.XLNetLMHeadModel, transformers.XLNetConfig, vocab_size=VOCAB,
                           d_model=lambda h: h, n_layer=2, n_head=4, d_inner=40)()


def _batch(B, T):
    return {"input_ids": torch.randint(0, VOCAB, (B, T)), "targets": torch.randint(0, VOCAB, (B, T))}


def test_sequence_first_with_t_equal_b_waits_for_an_unambiguous_call():
    """XLNet keeps hidden states as [T, B, D]. A first pass with T == B is left out with a warning;
    once a pass with T != B showed dim 1, T == B is measured, and matches brute force."""
    model = _xlnet()
    ref = clone(model)
    hf_gns.patch_model(model, kernel="torch")
    with pytest.warns(UserWarning, match="both match the batch size"):
        batch_loss(model, _batch(3, 3)).backward()
    assert hf_gns.gather_stats(model).per_param == {}
    batch_loss(model, _batch(3, 5)).backward()
    hf_gns.reset_stats(model)
    square = _batch(4, 4)
    batch_loss(model, square).backward()
    stats = hf_gns.gather_stats(model)
    assert_stats_match(stats, oracle_stats(example_grads_bruteforce(ref, square, norm_param_names(ref))),
                       rtol=1e-5, what="xlnet T == B")


def test_multiple_choice_with_t_equal_b_is_left_out():
    """BertForMultipleChoice flattens [B, C, T] to [B*C, T, D]: with T == B dim 1 matches the batch
    size only by coincidence; nothing is recorded, with a warning."""
    model = helpers._build(transformers.BertForMultipleChoice, transformers.BertConfig, **helpers._common)()
    hf_gns.patch_model(model, kernel="torch")
    B = 3
    ids = torch.randint(0, VOCAB, (B, 2, B))
    with pytest.warns(UserWarning, match="sequence length"):
        model(input_ids=ids, labels=torch.randint(0, 2, (B,))).loss.backward()
    assert hf_gns.gather_stats(model).per_param == {}


def test_deberta_relative_embedding_norm_is_left_out():
    """DeBERTa-v2 normalizes its relative-position table (rows of no example) with the encoder's
    LayerNorm, which also normalizes per-example states: that LayerNorm is left out with a
    warning at any batch size, and every other norm matches brute force."""
    config = transformers.DebertaV2Config(vocab_size=VOCAB, hidden_size=72, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=40, relative_attention=True,
                                          norm_rel_ebd="layer_norm", position_buckets=8, max_relative_positions=16,
                                          pos_att_type=["p2c", "c2p"], hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0)
    model = helpers.finish(transformers.DebertaV2ForMaskedLM(config))
    ref = clone(model)
    hf_gns.patch_model(model, kernel="torch")
    batch = _batch(2, 8)  # the relative table has 2 x 8 = 16 rows: as many as the batch's tokens
    with pytest.warns(UserWarning, match="deberta.encoder.LayerNorm"):
        batch_loss(model, batch).backward()
    stats = hf_gns.gather_stats(model)
    expected = [n for n in norm_param_names(ref) if not n.startswith("deberta.encoder.LayerNorm")]
    assert_stats_match(stats, oracle_stats(example_grads_bruteforce(ref, batch, expected)), rtol=1e-5,
                       what="deberta")


class _VisionTower(nn.Module):
    """A norm over every image's patches stacked as [total patches, D] (Qwen2-VL's layout)."""

    def __init__(self, dim: int = 12):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids, pixel_values):
        return self.embed(input_ids).sum() + self.norm(pixel_values).sum()


def test_stacked_image_patches_are_left_out():
    model = _VisionTower()
    hf_gns.patch_model(model, kernel="torch")
    ids = torch.randint(0, VOCAB, (2, 3))
    with pytest.warns(UserWarning, match="image patches"):
        model(input_ids=ids, pixel_values=torch.randn(6, 12)).backward()  # 6 patches == 2 x 3 tokens
    assert hf_gns.gather_stats(model).per_param == {}
