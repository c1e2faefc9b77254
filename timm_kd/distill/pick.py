""" Picking the most informative views (TLCutMix+pick): the criteria table and the BatchNorm guard

``PICK_CRITERIA`` is the one table of pick criteria: ``DistillMixup(pick=...)``, ``train_kd.py --pick``
and the task read it. Adding a criterion = one entry here (a score function, whether it needs the
student's no-grad scoring pass over the pool, a one-line description).
"""
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

import torch
import torch.nn as nn

from .losses import entropy, per_sample_kl

__all__ = ['PickCriterion', 'PICK_CRITERIA', 'pick_scores', 'pick_topk', 'batchnorm_modules', 'frozen_bn_stats']

ScoreFn = Callable[[Optional[torch.Tensor], torch.Tensor, float], torch.Tensor]


class PickCriterion(NamedTuple):
    """One pick criterion.

    Attributes:
        score: (student logits or None, teacher logits, T) -> (N,) score per pool row, the largest are
            picked; None: the rows are drawn at random up front by ``DistillMixup`` (no scoring).
        needs_student: the task runs a no-grad student pass over the pool for the score.
        description: for ``--help`` and the docs.
    """
    score: Optional[ScoreFn]
    needs_student: bool
    description: str


def _kld(student_logits, teacher_logits, temperature):
    return per_sample_kl(student_logits, teacher_logits, temperature)


def _teacher_entropy(student_logits, teacher_logits, temperature):
    return entropy(teacher_logits)


def _student_entropy(student_logits, teacher_logits, temperature):
    return entropy(student_logits)


PICK_CRITERIA: Dict[str, PickCriterion] = {
    'kld': PickCriterion(_kld, True, 'per-sample KL(teacher || student) at T (paper Eq. 3, the best)'),
    't_ent': PickCriterion(_teacher_entropy, False, 'entropy of the teacher at T=1'),
    's_ent': PickCriterion(_student_entropy, True, 'entropy of the student at T=1'),
    'random': PickCriterion(None, False, 'random rows (the control)'),
}


def pick_scores(
        criterion: str,
        student_logits: Optional[torch.Tensor],
        teacher_logits: Optional[torch.Tensor],
        temperature: float = 4.0,
) -> torch.Tensor:
    """Score of every candidate under ``criterion``; the largest are picked (the authors sort ascending
    and keep the tail)."""
    crit = PICK_CRITERIA.get(criterion)
    if crit is None or crit.score is None:
        scored = [k for k, c in PICK_CRITERIA.items() if c.score is not None]
        raise ValueError(f"No score for pick criterion '{criterion}' (expected one of {scored}).")
    return crit.score(student_logits, teacher_logits, temperature)


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
