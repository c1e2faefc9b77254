import os

import pytest
import torch

import timm_kd  # noqa: F401  (registers our models before tests collect them)

# 2 cores: use both unless the caller pinned threads (parallel runs oversubscribe badly otherwise).
torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', min(2, os.cpu_count() or 1))))


@pytest.fixture(scope='module')
def one_torch_thread():
    """One intra-op thread, as in the tests' subprocesses (OMP_NUM_THREADS=1): tiny tensors run fastest on
    one thread, two threads thrash when the 2 cores are shared, and equal thread counts keep float sums
    identical between in-process and subprocess runs (exact-resume tests)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
