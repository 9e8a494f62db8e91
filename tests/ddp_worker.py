"""Helper for test_ddp.py (not a test module): 2 gloo ranks on CPU, DistributedDataParallel or
FSDP2 (``fully_shard`` on every decoder layer and the root).

Usage: python ddp_worker.py <dir> [compiled] [fsdp2] [triton] — <dir> holds a saved tiny model (`model/`) and `batch.pt`
(input_ids [8, T], targets [8, T]). Rank r trains on rows [4r, 4r + 4) with its own mean token
loss (DDP then averages the gradients) and writes `rank{r}.json`: gather_stats and the
norm parameters' averaged gradients. ``triton``: the Triton kernels (interpreted on CPU: set
TRITON_INTERPRET=1), so a compiled run's norms take the compiled graph's backward operator.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def run(rank: int, world: int, directory: str, port: int, compiled: bool, fsdp2: bool = False,
        kernel: str = "torch") -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import hf_gns
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(os.path.join(directory, "model"))
        model.train()
        hf_gns.patch_model(model, kernel=kernel)
        fold_calls = []
        if kernel == "triton":  # count the compiled graph's backward operator calls
            from hf_gns.kernels import graph_op

            real = graph_op._backward_fold
            graph_op._backward_fold = lambda *a, **k: fold_calls.append(1) or real(*a, **k)
        if fsdp2:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            for layer in model.model.layers:
                fully_shard(layer, mesh=mesh)
            ddp = fully_shard(model, mesh=mesh)
        else:
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
        grads = {n: _full(p.grad).double().pow(2).sum().item() for n, p in model.named_parameters()
                 if n in stats.per_param}
        if fsdp2:  # the parameters are sharded: the norm weights must be DTensors for this run to mean anything
            assert all(type(p).__name__ == "DTensor" for n, p in model.named_parameters() if n in stats.per_param)
        out = {
            "per_param": {n: [s.num_examples, s.example_sq_norm_sum, s.batch_sq_norm]
                          for n, s in stats.per_param.items()},
            "total": [stats.total.num_examples, stats.total.example_sq_norm_sum, stats.total.batch_sq_norm],
            "tokens": stats.tokens,
            "problems": list(stats.problems),
            "grad_sq": grads,
            "fold_calls": len(fold_calls),
        }
        with open(os.path.join(directory, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()
    # Results written and the group destroyed: leave without interpreter finalization, where gloo's
    # worker threads can abort the process ("terminate called without an active exception", SIGABRT;
    # the class of teardown crash of pytorch/pytorch#179291). It hit the FSDP2 eager run twice in
    # full CI runs on a busy 2-core machine, never alone. A failure before this line still fails the run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    """A free local TCP port for a torch.distributed rendezvous (the other launching tests use it too;
    this worker imports nothing of the test helpers, which set thread counts and the Triton mode)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (FSDP2 gradients are sharded), else the tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


if __name__ == "__main__":
    directory = sys.argv[1]
    flags = sys.argv[2:]
    mp.spawn(run, args=(2, directory, free_port(), "compiled" in flags, "fsdp2" in flags,
                        "triton" if "triton" in flags else "torch"), nprocs=2, join=True)
