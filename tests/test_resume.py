"""A run whose batch grew, killed (SIGKILL, no clean shutdown) and resumed from a checkpoint, continues
the uninterrupted run: the same examples in the same micro-batches and steps, the same LR, batch,
loss and GNS, the same parameters at the end. One process, and 2 gloo processes under torchrun.

The Trainer places the data on resume from its step count alone (`hf_gns.resume`); the runs cross an
epoch boundary after the batch grew, on the Trainer's own shuffled sampler, with checkpoints every step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from hf_gns import resume
from ddp_worker import free_port
from token_batches import VOCAB, tiny_llama

SEQ = 12
WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


# ---------------------------------------------------------------------------------------------
# the arithmetic, against the Trainer's own (transformers' _init_training_state) by hand
# ---------------------------------------------------------------------------------------------
def trainer_skip(global_step: int, micro_per_epoch: int, start_accumulation: int) -> tuple[int, int]:
    """(epochs, micro-batches) the Trainer skips on resume from ``global_step``."""
    per_epoch = -(-micro_per_epoch // start_accumulation)
    return global_step // per_epoch, (global_step % per_epoch) * start_accumulation


@pytest.mark.parametrize("micro_per_epoch,start", [(20, 1), (10, 1), (21, 3), (49, 2), (7, 7)])
def test_trainer_step_makes_the_trainer_skip_exactly_what_was_consumed(micro_per_epoch, start):
    for epoch in range(3):
        for consumed in range(0, micro_per_epoch + 1, start):
            if consumed == 0 and epoch == 0:
                continue
            share = epoch + consumed / micro_per_epoch  # state.epoch as the Trainer keeps it
            step = resume.trainer_step(consumed, micro_per_epoch, share, start)
            epochs, skip = trainer_skip(step, micro_per_epoch, start)
            if consumed == micro_per_epoch:
                assert (epochs, skip) == (epoch + 1, 0)
            else:
                assert (epochs, skip) == (epoch, consumed)
    assert resume.trainer_step(5, None, 0.5, 1) is None        # an iterable dataset: length unknown
    if start > 1:
        assert resume.trainer_step(1, micro_per_epoch, 1 / micro_per_epoch, start) is None


def test_marked_checkpoint_round_trips_through_trainer_state(tmp_path):
    from transformers import TrainerState

    TrainerState(global_step=9, epoch=1.0).save_to_json(str(tmp_path / "trainer_state.json"))
    resume.mark_checkpoint(str(tmp_path), real_step=9, step_for_trainer=20)
    state = TrainerState.load_from_json(str(tmp_path / "trainer_state.json"))
    assert state.global_step == 20 and resume.marked_steps(state) == (9, 20)

    class Counters:
        _globalstep_last_logged = 20
        _initial_global_step = 20

    counters = Counters()
    assert resume.restore_real_step(state, counters, 9, 20)
    assert state.global_step == 9 and resume.marked_steps(state) is None
    assert counters._globalstep_last_logged == 9 and counters._initial_global_step == 9
    state.global_step = 20  # a marker whose step is not the state's is not this checkpoint's
    assert resume.marked_steps(state) is None


def prepare(directory, world: int) -> None:
    """A tiny model, 40 sequences (20 micro-batches of 2 an epoch in one process, 10 per rank in two),
    2 epochs (the token budget set out of reach), and a policy that doubles the global batch twice:
    after 3 and 7 global micro-batches' tokens."""
    tiny_llama().save_pretrained(directory / "model")
    torch.save([torch.randint(0, VOCAB, (SEQ,)) for _ in range(40)], directory / "data.pt")
    per_micro = 2 * world * SEQ
    batch = 2 * world
    (directory / "config.json").write_text(json.dumps({
        "micro": 2, "lr": 3e-3, "epochs": 2,
        "policy": f"steps:0:{batch},{3 * per_micro}:{2 * batch},{7 * per_micro}:{4 * batch}"}))


def launch(directory, world: int, name: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    if world == 1:
        cmd = [sys.executable, WORKER]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), WORKER]
    cmd += [str(directory), name, "--out", out, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, cwd=os.path.dirname(__file__))


def records(directory, name: str, rank: int = 0) -> tuple[list, dict]:
    """(micro-batches as (step, ids) in order, logged steps by step)."""
    micro, steps = [], {}
    for line in (directory / f"{name}.rank{rank}.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "micro" in row:
            micro.append((row["micro"], row["ids"]))
        else:
            steps[row["step"]] = row
    return micro, steps


def assert_continues(directory, world: int, reference: str, resumed: str, after: int) -> None:
    for rank in range(world):
        micro_a, steps_a = records(directory, reference, rank)
        micro_c, steps_c = records(directory, resumed, rank)
        assert micro_c == [m for m in micro_a if m[0] > after], f"rank {rank}: other examples after step {after}"
        assert sorted(steps_c) == [s for s in sorted(steps_a) if s > after]
        for step, c in steps_c.items():
            a = steps_a[step]
            assert c["learning_rate"] == pytest.approx(a["learning_rate"], rel=1e-9), step
            assert c["loss"] == pytest.approx(a["loss"], rel=1e-5), step
            for key in ("ga", "gns/batch_size", "gns/accumulation_steps", "gns/tokens", "gns/examples"):
                assert c[key] == a[key], (key, step)
            for key in ("gns/b_simple", "gns/g2", "gns/trace_sigma"):
                assert c[key] == pytest.approx(a[key], rel=1e-4, nan_ok=True), (key, step)
        final_a = torch.load(directory / f"{reference}.rank{rank}.pt")
        final_c = torch.load(directory / f"{resumed}.rank{rank}.pt")
        for key in final_a:
            torch.testing.assert_close(final_c[key], final_a[key], rtol=1e-5, atol=1e-7, msg=key)


def killed(result: subprocess.CompletedProcess, world: int) -> bool:
    if world == 1:
        return result.returncode == -signal.SIGKILL
    return result.returncode != 0 and "Signal 9 (SIGKILL) received" in result.stderr + result.stdout


def test_killed_after_the_batch_grew_resumes_the_uninterrupted_run(tmp_path):
    """One process: 20 micro-batches an epoch; GA 1 -> 2 (step 4) -> 4 (step 6); epoch 1 ends with
    step 9 exactly, epoch 2 is steps 10-14. Killed at step 13, resumed from the last checkpoint (12,
    in the next epoch), from the epoch's end (9) and from mid-epoch after the first change (5)."""
    prepare(tmp_path, 1)
    a = launch(tmp_path, 1, "a", "out_a")
    assert a.returncode == 0, a.stderr[-4000:]
    _, steps_a = records(tmp_path, "a")
    assert sorted(steps_a) == list(range(1, 15))
    assert [steps_a[s]["ga"] for s in range(1, 15)] == [1, 1, 1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    assert steps_a[9]["epoch"] == pytest.approx(1.0) and steps_a[10]["epoch"] > 1.0
    b = launch(tmp_path, 1, "b", "out_b", "--kill_at", "13")
    assert killed(b, 1), (b.returncode, b.stderr[-3000:])
    assert not (tmp_path / "out_b" / "checkpoint-13").exists()
    for start in (12, 9, 5):  # later first: a resumed run rewrites the checkpoints after its start
        state = json.loads((tmp_path / "out_b" / f"checkpoint-{start}" / "trainer_state.json").read_text())
        assert state["stateful_callbacks"]["hf_gns"]["global_step"] == start  # the real step, kept beside
        c = launch(tmp_path, 1, f"c{start}", "out_b", "--resume", str(start))
        assert c.returncode == 0, c.stderr[-4000:]
        assert "place the data" not in c.stderr  # no warning that the data order differs
        assert_continues(tmp_path, 1, "a", f"c{start}", start)
    # such a checkpoint needs the Trainer's step counters restored: without attach, a clear refusal
    d = launch(tmp_path, 1, "d", "out_b", "--resume", "5", "--no_attach")
    assert d.returncode != 0 and "Resume with hf_gns.attach(trainer) as well" in d.stderr, d.stderr[-3000:]


def test_killed_ddp_run_after_the_batch_grew_resumes_the_uninterrupted_run(tmp_path):
    """2 gloo processes, 10 micro-batches per rank an epoch: GA 1 -> 2 (step 4) -> 4 (step 6), epoch 1
    ends with a group of 2 at step 7; epoch 2 is steps 8-10. Both ranks killed at step 9, resumed
    from step 8 (in the second epoch, after both changes)."""
    prepare(tmp_path, 2)
    a = launch(tmp_path, 2, "a", "out_a")
    assert a.returncode == 0, (a.stdout + a.stderr)[-4000:]
    _, steps_a = records(tmp_path, "a")
    assert sorted(steps_a) == list(range(1, 11))
    assert [steps_a[s]["ga"] for s in range(1, 11)] == [1, 1, 1, 2, 2, 4, 4, 4, 4, 4]
    assert steps_a[7]["epoch"] == pytest.approx(1.0) and steps_a[8]["epoch"] > 1.0
    b = launch(tmp_path, 2, "b", "out_b", "--kill_at", "9")
    assert killed(b, 2), (b.returncode, (b.stdout + b.stderr)[-3000:])
    c = launch(tmp_path, 2, "c", "out_b", "--resume", "8")
    assert c.returncode == 0, (c.stdout + c.stderr)[-4000:]
    assert_continues(tmp_path, 2, "a", "c", 8)
