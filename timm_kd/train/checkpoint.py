"""RNG capture and restore for ``train_kd.py``'s checkpoints (what a checkpoint holds is
``timm_kd.train.state.TrainState``). The atomic writes once here live in ``timm_kd.utils.files``; their names
stay importable from this module."""
import random
from typing import Any, Dict

import numpy as np
import torch

from timm_kd.utils.files import (  # noqa: F401 - the names this module always had
    TEMP_PREFIX, OutputError, atomic_copy, atomic_save, atomic_write_bytes, atomic_write_text, output_error,
    remove_stale_temp_files)

__all__ = ['capture_rng_state', 'restore_rng_state']


def capture_rng_state() -> Dict[str, Any]:
    """RNG states of this process as tensors / plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        'python': random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()  # this process's device
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
