""" Picking the most informative mixed views (TLCutMix+pick) and the BatchNorm guard for scoring
"""
from contextlib import contextmanager
from typing import Iterable, Iterator, List, Optional

import torch
import torch.nn as nn

from timm_kd.data.mixup import PICK_CRITERIA
from .losses import entropy, per_sample_kl

__all__ = ['PICK_CRITERIA', 'pick_scores', 'pick_topk', 'batchnorm_modules', 'frozen_bn_stats']


def pick_scores(
        criterion: str,
        student_logits: Optional[torch.Tensor],
        teacher_logits: Optional[torch.Tensor],
        temperature: float = 4.0,
) -> torch.Tensor:
    """Score of every candidate; the largest are picked (the authors sort ascending and keep the tail).

    'kld': per-sample KL(p_t || p_s) at T (paper Eq. 3), 't_ent' / 's_ent': entropy of the teacher /
    student at T=1.
    """
    if criterion == 'kld':
        return per_sample_kl(student_logits, teacher_logits, temperature)
    if criterion == 't_ent':
        return entropy(teacher_logits)
    if criterion == 's_ent':
        return entropy(student_logits)
    raise ValueError(f"No score for pick criterion '{criterion}' (expected 'kld', 't_ent' or 's_ent').")


def pick_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores (global over the pool, not one per source image)."""
    return torch.topk(scores, k, largest=True, sorted=False).indices


def batchnorm_modules(module: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers of ``module`` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def frozen_bn_stats(modules: Iterable[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Train-mode BatchNorm (batch statistics) that leaves running_mean/var and num_batches_tracked alone.

    Inside the block ``track_running_stats`` is False: PyTorch's BatchNorm then normalizes a training
    batch with its own statistics (exactly what the authors' scoring pass computes) and passes no
    running buffers, so nothing is updated. Only Python attributes flip: no copies, no kernels.
    In eval mode the layers still use their running statistics.
    """
    toggled = [m for m in modules if m.track_running_stats]
    for m in toggled:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in toggled:
            m.track_running_stats = True
