"""Helper for test_ddp.py (not a test module): 2 gloo ranks on CPU, DistributedDataParallel.

Usage: python ddp_worker.py <dir> [compiled] — <dir> holds a saved tiny model (`model/`) and `batch.pt`
(input_ids [8, T], targets [8, T]). Rank r trains on rows [4r, 4r + 4) with its own mean token
loss (DDP then averages the gradients) and writes `rank{r}.json`: gather_stats and the
norm parameters' averaged gradients.
"""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def run(rank: int, world: int, directory: str, port: int, compiled: bool) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import hf_gns
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(os.path.join(directory, "model"))
        model.train()
        hf_gns.patch_model(model, kernel="torch")
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        forward = torch.compile(ddp, backend="aot_eager") if compiled else ddp
        batch = torch.load(os.path.join(directory, "batch.pt"))
        per_rank = batch["input_ids"].shape[0] // world
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        logits = forward(input_ids=batch["input_ids"][rows]).logits
        targets = batch["targets"][rows]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss.backward()
        stats = hf_gns.gather_stats(ddp)
        grads = {n: p.grad.double().pow(2).sum().item() for n, p in model.named_parameters()
                 if n in stats.per_param}
        out = {
            "per_param": {n: [s.num_examples, s.example_sq_norm_sum, s.batch_sq_norm]
                          for n, s in stats.per_param.items()},
            "total": [stats.total.num_examples, stats.total.example_sq_norm_sum, stats.total.batch_sq_norm],
            "tokens": stats.tokens,
            "problems": list(stats.problems),
            "grad_sq": grads,
        }
        with open(os.path.join(directory, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    directory = sys.argv[1]
    mp.spawn(run, args=(2, directory, free_port(), "compiled" in sys.argv[2:]), nprocs=2, join=True)
