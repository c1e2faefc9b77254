""" Distillation losses shared by the task, the pick criteria and the logit methods

All functions take raw logits and compute in float32 (logits may come out of autocast in bf16/fp16).
The exact formulas are written out in docs/methods.md.

The per-sample pick scores (``per_sample_kl``, ``entropy``) are defined with the pick criteria in
``timm_kd.data.pick`` and exported here too.
"""
import torch
import torch.nn.functional as F

from timm_kd.data.pick import entropy, per_sample_kl  # the pick scores, exported here beside the losses

__all__ = ['kd_loss', 'per_sample_kl', 'entropy', 'soft_target_cross_entropy', 'standardize_logits']


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD loss: T² · mean over samples of KL(p_t || p_s) at temperature T.

    Equals ``F.kl_div(log p_s, log p_t, reduction='batchmean', log_target=True) * T**2`` (timm's
    LogitDistillationTask, RepDistiller's DistillKL).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction='batchmean', log_target=True) * (temperature ** 2)


def soft_target_cross_entropy(logits: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of -Σ_c q_c log p_c. With CutMix soft targets q = λ·onehot(y) + (1−λ)·onehot(y[perm])
    this is λ·CE(y) + (1−λ)·CE(y[perm]) per sample (the KD+CutMix baseline)."""
    return -(soft_target.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of every row: (z − mean(z)) / (std(z) + eps), std with Bessel's correction.

    The pre-process of logit standardization (Sun et al., CVPR 2024), applied to student and teacher
    logits before the temperature softmax; eps as in the authors' KD/DKD code.
    """
    logits = logits.float()
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + eps)
