""" SP: similarity-preserving distillation

Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019): for a batch of B samples the
B x B Gram matrix of the flattened feature maps, G = Q·Qᵀ (Q = F reshaped to (B, C·H·W)), is row-wise
L2-normalized; the loss is the squared Frobenius distance of the student's and the teacher's,

    L_SP = β · ‖norm(G_t) − norm(G_s)‖²_F / B²

Published defaults (RepDistiller ``--distill similarity -r 1 -a 0 -b 3000``): β = 3000, CE weight 1, no KD
term; the feature is the last stage's map (RepDistiller's ``feat[-2]``), for both models (spatial sizes
and channels may differ: only the B x B matrices are compared). No trainable parts.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..intermediates import matched_stages, no_autocast
from . import register_method
from .base import ModelOutputs
from .feature import FeatureDistiller

__all__ = ['SP', 'similarity_matrix']


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, B) row-normalized Gram matrix of the flattened features."""
    flat = features.float().flatten(1)
    return F.normalize(flat @ flat.t())


@register_method('sp')
class SP(FeatureDistiller):
    """Similarity-preserving loss on the last stage's feature map."""
    default_beta = 3000.0

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 beta: Optional[float] = None):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature, beta=beta)
        s_levels, t_levels = matched_stages(student, teacher)
        self.student_levels, self.teacher_levels = s_levels[-1:], t_levels[-1:]

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        batch_size = student.features[0].shape[0]
        with no_autocast(student.features[0]):
            diff = similarity_matrix(teacher.features[0]) - similarity_matrix(student.features[0])
        return {'sp_loss': self.beta * diff.pow(2).sum() / batch_size ** 2}
