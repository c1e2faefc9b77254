import os

import torch

import timm_kd  # noqa: F401  (registers our models before tests collect them)

# 2 cores: use both unless the caller pinned threads (parallel runs oversubscribe badly otherwise).
torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', min(2, os.cpu_count() or 1))))
