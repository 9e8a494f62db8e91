"""Token datasets and the hand-written accumulation loop shared by the batch-control tests, the
accelerate-loop tests and their torchrun worker (not a test module)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch.utils.data import Dataset

from helpers import finish

VOCAB = 64
MICRO = 2  # per_device_train_batch_size


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


def tiny_llama(layers: int = 1) -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=32, tie_word_embeddings=False)
    return finish(transformers.LlamaForCausalLM(config))


class SeqDataset(Dataset):
    """Sequences of random lengths in [lo, hi] of tokens below ``vocab`` (input_ids = labels).

    The first two have the longest length, so the first micro-batch (which sets the default token
    budget, max_steps x its tokens) is never short: the runs then last at least as many micro-batches
    as the tests plan for, whatever the random lengths."""

    def __init__(self, n: int, lo: int = 8, hi: int = 16, vocab: int = VOCAB):
        lengths = torch.randint(lo, hi + 1, (n,))
        lengths[:2] = hi
        self.seqs = [torch.randint(0, vocab, (int(L),)) for L in lengths]

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return {"input_ids": self.seqs[i]}


class TokenSequences(Dataset):
    """Given 1-D token tensors as examples (input_ids only; `collate` pads and labels them)."""

    def __init__(self, seqs):
        self.seqs = seqs

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return {"input_ids": self.seqs[i]}


def micro_batches(dataset, micro=MICRO):
    """The micro-batches of one epoch in order (what the sequential Trainer sees)."""
    return [collate([dataset[j] for j in range(i, min(i + micro, len(dataset)))])
            for i in range(0, len(dataset), micro)]


def positions(batch) -> int:
    return batch["input_ids"].numel()


def label_tokens(batch) -> int:
    """Labels the causal LM loss counts: labels[:, 1:] != -100 (the shift drops position 0)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def cumulative(values):
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def hand_sgd(model, groups, lr):
    """The oracle loop: per optimizer step, sum over its micro-batches of (summed token
    cross-entropy) / (label tokens of the whole step), backward, SGD step, zero_grad."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for group in groups:
        n = sum(label_tokens(b) for b in group)
        for b in group:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), b["labels"][:, 1:].reshape(-1),
                                 ignore_index=-100, reduction="sum")
            (ce / n).backward()
        opt.step()
        opt.zero_grad()
    return model
