"""Checkpoints of ``train_kd.py``: atomic writes, RNG capture, and finding what to resume from.

A checkpoint is one dict (timm's keys plus resume state)::

    arch, args, epoch, metric, state_dict[, state_dict_ema], optimizer, scheduler, scaler,
    next_epoch, next_step       # where training continues (next_step > 0: inside an epoch)
    best_metric, best_epoch, best_top1, best_top5, teacher_top1, teacher_top5, world_size,
    rank_states                 # per process: RNG states (torch, cuda, numpy, python) and epoch meters

Files: ``last.pth.tar`` (end of every epoch), ``recovery.pth.tar`` (every ``--checkpoint-every`` steps),
``model_best.pth.tar`` and ``checkpoint-<epoch>.pth.tar`` (hard links or copies of an epoch's last).
Everything is written to a temporary file in the same directory, fsynced and renamed over the target,
so a kill at any moment leaves either the old or the new file. Loading uses ``weights_only=True``:
RNG states are stored as tensors and plain Python values, nothing needs unpickling of code.
"""
import os
import random
import shutil
from typing import IO, Any, Callable, Dict, Optional

import numpy as np
import torch

__all__ = ['atomic_save', 'atomic_write_text', 'atomic_link_or_copy', 'capture_rng_state', 'restore_rng_state',
           'load_checkpoint', 'find_resume_checkpoint', 'CHECKPOINT_NAMES']

CHECKPOINT_NAMES = ('recovery.pth.tar', 'last.pth.tar')


def _tmp_name(path: str) -> str:
    d, b = os.path.split(os.path.abspath(path))
    return os.path.join(d, f'.{b}.tmp-{os.getpid()}')


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, data: Any, mode: str, write: Callable[[Any, IO], None]) -> None:
    """Write to a temp file, fsync, rename over ``path`` and fsync the folder: a kill leaves the old file or
    the new one, never a broken one."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode) as f:
            write(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to ``path`` atomically."""
    _atomic_write(path, obj, 'wb', torch.save)


def atomic_write_text(path: str, text: str) -> None:
    """Write text to ``path`` atomically."""
    _atomic_write(path, text, 'w', lambda t, f: f.write(t))


def atomic_link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` the same content as ``src`` (hard link when possible), atomically."""
    tmp = _tmp_name(dst)
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a train_kd checkpoint (weights_only). Raises ValueError with a reason when it is not one."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling / IO failure means "not a usable checkpoint"
        raise ValueError(f'{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})') from e
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt:
        raise ValueError(f'{path} is not a training checkpoint (no state_dict)')
    return ckpt


def _progress(path: str) -> Optional[tuple]:
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        return int(ckpt['next_epoch']), int(ckpt['next_step'])
    except Exception:  # noqa: BLE001 - unreadable or foreign files are not candidates
        return None


def find_resume_checkpoint(path: str) -> str:
    """``path`` itself for a file; for a run directory the most advanced of recovery.pth.tar / last.pth.tar."""
    if not os.path.isdir(path):
        return path
    found = [(p, _progress(p)) for p in (os.path.join(path, n) for n in CHECKPOINT_NAMES) if os.path.isfile(p)]
    found = [(p, prog) for p, prog in found if prog is not None]
    if not found:
        raise ValueError(f'{path} holds no readable recovery.pth.tar or last.pth.tar')
    return max(found, key=lambda x: x[1])[0]
