"""Helpers shared by the Trainer batch-control tests and their torchrun worker (not a test module)."""

from __future__ import annotations

import torch


def collate(items):
    """Right padding: input_ids 0, attention_mask 0, labels -100 on padding."""
    T = max(len(it["input_ids"]) for it in items)
    ids = torch.zeros(len(items), T, dtype=torch.long)
    mask = torch.zeros(len(items), T, dtype=torch.long)
    for r, it in enumerate(items):
        ids[r, :len(it["input_ids"])] = it["input_ids"]
        mask[r, :len(it["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class RandomTokens(torch.utils.data.Dataset):
    """``count`` random sequences of ``length`` tokens below ``vocab`` (labels = inputs), fixed by ``seed``."""

    def __init__(self, count: int, length: int, vocab: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (count, length), generator=generator)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}
