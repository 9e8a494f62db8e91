"""pytest set-up for the hf_gns test-suite; the shared helpers are in helpers.py.

Every test gets a fresh random seed (printed, and reproducible with HF_GNS_TEST_SEED=<n>).
"""

from __future__ import annotations

import os

# The Triton kernels run under the interpreter on CPU; triton reads this when first imported,
# so it must be set before anything imports triton (transformers may).
if os.environ.get("HF_GNS_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random

import pytest
import torch

# under pytest-xdist (pyproject's addopts), the workers share the cores instead of each taking all
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh random inputs every run; the seed is printed (shown by pytest on failure)."""
    env = os.environ.get("HF_GNS_TEST_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    random.seed(seed)
    print(f"[hf_gns tests] {request.node.nodeid}: seed={seed} (rerun with HF_GNS_TEST_SEED={seed})")
    yield seed


@pytest.fixture
def one_thread():
    """Tiny matrices: one intra-op thread is faster (and, on a shared 2-core box, far steadier).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
