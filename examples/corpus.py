"""Offline default corpus and tokenizer for the examples.

Every machine with Python has the same text on disk: the English documentation
topics of `pydoc_data` and the standard library's own source files. This module
turns them into plain `train.txt` / `validation.txt` files, trains a small
byte-level BPE tokenizer on them and packs the tokens into fixed-size blocks,
so the examples run without any network access.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from itertools import chain
from typing import Any

import datasets
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
VALIDATION_EVERY = 20  # every 20th document goes to the validation split


def _documents(include_stdlib: bool) -> list[str]:
    """Return the raw documents in a fixed order: pydoc topics, then stdlib sources."""
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)]
    if include_stdlib:
        stdlib = sysconfig.get_paths()["stdlib"]
        for name in sorted(os.listdir(stdlib)):
            path = os.path.join(stdlib, name)
            if name.endswith(".py") and os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    docs.append(f.read())
    return [doc for doc in docs if doc.strip()]


def _write_atomic(path: str, text: str) -> None:
    """Write text to path via a temporary file so readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def default_corpus_files(
    out_dir: str, max_chars: int | None = None, include_stdlib: bool = True
) -> list[str]:
    """Write the default corpus to `out_dir` and return [train.txt, validation.txt].

    Documents are taken in a fixed order and cut off once `max_chars` characters
    have been collected; every `VALIDATION_EVERY`-th document goes to validation.
    Files are reused when they were written with the same settings; otherwise
    they are rewritten and subdirectories of `out_dir` (cached tokenizers) removed.
    """
    os.makedirs(out_dir, exist_ok=True)
    train_path = os.path.join(out_dir, "train.txt")
    val_path = os.path.join(out_dir, "validation.txt")
    meta_path = os.path.join(out_dir, "corpus.json")
    meta = {
        "python": sys.version.split()[0],
        "max_chars": max_chars,
        "include_stdlib": include_stdlib,
    }
    if os.path.exists(meta_path) and os.path.exists(train_path) and os.path.exists(val_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                return [train_path, val_path]

    for name in os.listdir(out_dir):  # e.g. a tokenizer trained on an older corpus
        if os.path.isdir(os.path.join(out_dir, name)):
            shutil.rmtree(os.path.join(out_dir, name))

    train_docs: list[str] = []
    val_docs: list[str] = []
    total = 0
    for i, doc in enumerate(_documents(include_stdlib)):
        if max_chars is not None:
            if total >= max_chars:
                break
            doc = doc[: max_chars - total]
        total += len(doc)
        (val_docs if i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else train_docs).append(doc)

    _write_atomic(train_path, "\n\n".join(train_docs) + "\n")
    _write_atomic(val_path, "\n\n".join(val_docs) + "\n")
    _write_atomic(meta_path, json.dumps(meta))
    return [train_path, val_path]


def load_text_dataset(
    dataset_name: str | None,
    data_files: list[str] | None,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Load a Hub dataset by name, or the local [train, validation] text files.

    Local files give one row per line (line breaks kept) in a "text" column.
    """
    if dataset_name is not None:
        return datasets.load_dataset(dataset_name, cache_dir=cache_dir)
    if not data_files or len(data_files) != 2:
        raise ValueError("data_files must be [train_file, validation_file]")
    return datasets.load_dataset(
        "text",
        data_files={"train": data_files[0], "validation": data_files[1]},
        cache_dir=cache_dir,
        keep_linebreaks=True,
    )


def train_bpe_tokenizer(
    files: list[str], vocab_size: int, out_dir: str
) -> PreTrainedTokenizerFast:
    """Train (or load from `out_dir`) a byte-level BPE tokenizer on `files`.

    The tokenizer has a single special token, `<|endoftext|>`, used as bos, eos
    and pad token, like GPT-2.
    """
    if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        return PreTrainedTokenizerFast.from_pretrained(out_dir)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tmp_dir = f"{out_dir}.tmp{os.getpid()}"
    tokenizer.save_pretrained(tmp_dir)
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    if os.path.exists(out_dir):  # an empty or partial directory from an earlier crash
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return PreTrainedTokenizerFast.from_pretrained(out_dir)


def _pack(examples: dict[str, list[Any]], block_size: int) -> dict[str, list[Any]]:
    """Concatenate a batch of tokenized rows and cut it into `block_size` blocks."""
    concatenated = {k: list(chain.from_iterable(examples[k])) for k in examples}
    total = (len(concatenated["input_ids"]) // block_size) * block_size
    result = {
        k: [t[i : i + block_size] for i in range(0, total, block_size)]
        for k, t in concatenated.items()
    }
    result["labels"] = [ids.copy() for ids in result["input_ids"]]
    return result


def group_texts(
    raw: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    num_proc: int | None = None,
) -> datasets.DatasetDict:
    """Tokenize `raw` and pack it into blocks of `block_size` tokens (labels = input_ids).

    As in transformers' run_clm example, each `map` batch of 1000 rows is
    concatenated and its remainder shorter than one block is dropped.
    """
    columns = raw["train"].column_names

    def tokenize(examples: dict[str, list[str]]) -> dict[str, list[Any]]:
        return tokenizer(examples[text_column])

    tokenized = raw.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=columns,
        desc="Tokenizing",
    )
    return tokenized.map(
        _pack,
        batched=True,
        num_proc=num_proc,
        fn_kwargs={"block_size": block_size},
        desc=f"Packing into blocks of {block_size}",
    )
