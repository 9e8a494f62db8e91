"""gather_stats under DistributedDataParallel (2 CPU ranks, gloo), eager and torch.compile'd (DDP's
graph splitting at bucket boundaries), and under FSDP2 (``fully_shard``, eager and compiled),
== one process on the full batch. ``triton``: the Triton kernels, interpreted, so that the compiled runs
take the compiled graph's backward operator (`hf_gns.kernels.graph_op`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import hf_gns
from helpers import make_model, rand_length, rel_err


# compiled: the graph operator's path (the Triton kernels under the interpreter), which compiled CUDA runs
# take; the compiled PyTorch path is the same graph rewrite in one process (test_compile.py)
@pytest.mark.parametrize("mode", ["eager", "fsdp2 eager", "compiled triton", "fsdp2 compiled triton"])
def test_ddp_two_ranks_equal_single_process(tmp_path, mode):
    model = make_model("llama")
    model.save_pretrained(tmp_path / "model")
    T = rand_length(1, 6, 4, 8)  # 4 examples per rank, 8 in the single-process run
    batch = {"input_ids": torch.randint(0, model.config.vocab_size, (8, T)),
             "targets": torch.randint(0, model.config.vocab_size, (8, T))}
    torch.save(batch, tmp_path / "batch.pt")

    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, worker, str(tmp_path), *mode.split()], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # every rank returns the same numbers
    assert ranks[0]["per_param"] == ranks[1]["per_param"]
    assert ranks[0]["total"] == ranks[1]["total"]
    assert ranks[0]["tokens"] == ranks[1]["tokens"] == 8 * T
    assert not ranks[0]["problems"]
    if mode.endswith("compiled triton"):
        assert all(r["fold_calls"] > 0 for r in ranks), "the compiled backward did not run the graph operator"

    # one process, the full batch of 8, loss = mean over all 8 examples' tokens
    hf_gns.patch_model(model, kernel="torch")
    logits = model(input_ids=batch["input_ids"]).logits
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["targets"].reshape(-1)).backward()
    single = hf_gns.gather_stats(model)
    got = ranks[0]["per_param"]
    assert set(got) == set(single.per_param)
    floor = 1e-9 * single.total.example_sq_norm_sum
    for name, s in single.per_param.items():
        count, sq, bsq = got[name]
        assert count == s.num_examples == 8, name
        assert abs(sq - s.example_sq_norm_sum) <= 1e-5 * s.example_sq_norm_sum + floor, name
        assert abs(bsq - s.batch_sq_norm) <= 1e-5 * s.batch_sq_norm + floor, name
        # ||sum_i c_i||^2 is the squared norm of DDP's averaged gradient
        assert abs(bsq - ranks[0]["grad_sq"][name]) <= 1e-5 * bsq + floor, name
    assert ranks[0]["total"][0] == 8
    assert rel_err(ranks[0]["total"][1], single.total.example_sq_norm_sum) <= 1e-5
    assert rel_err(ranks[0]["total"][2], single.total.batch_sq_norm) <= 1e-5
