""" Pick criteria of TLCutMix+pick: the one table of the scores that choose which views a student trains on

``PICK_CRITERIA`` is read by everything that knows picking: ``DistillMixup(pick=...)`` (which checks the
name and draws the rows of 'random' up front), the teacher-labelled ``VIEWS`` (one ``cutmix_pick_*`` view
per criterion), ``train_kd.py --pick`` and ``DistillationTask`` (which scores the pool). It lives with the
views, below the distillation step, so the mixer can read it without importing the task. Adding a
criterion = one entry here: a score function, whether it needs the student's no-grad scoring pass over
the pool, a one-line description.

The scores are per-sample statistics of logits (float32, whatever dtype the logits come in):
``per_sample_kl`` (paper Eq. 3) and ``entropy``; ``timm_kd.distill.losses`` exports them beside the losses.
"""
from typing import Callable, Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F

__all__ = ['PickCriterion', 'PICK_CRITERIA', 'pick_scores', 'pick_topk', 'per_sample_kl', 'entropy']

ScoreFn = Callable[[Optional[torch.Tensor], torch.Tensor, float], torch.Tensor]


def per_sample_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """KL(p_t || p_s) per sample, p = softmax(logits / T); no T² factor (paper Eq. 3, the pick score).

    Returns:
        (B,) tensor.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) per sample (nats). The t_ent / s_ent pick scores use T=1.

    Returns:
        (B,) tensor.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


class PickCriterion(NamedTuple):
    """One pick criterion.

    Attributes:
        score: (student logits or None, teacher logits, T) -> (N,) score per pool row, the largest are
            picked; None: the rows are drawn at random up front by ``DistillMixup`` (no scoring).
        needs_student: the task runs a no-grad student pass over the pool for the score.
        description: for ``--help``, the views table and the docs.
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
