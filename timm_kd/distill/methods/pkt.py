""" PKT: probabilistic knowledge transfer

Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018):
the pooled features of a batch define, per sample i, a conditional distribution over the other samples
from cosine similarities mapped to [0, 1], p_{j|i} = K(i, j) / Σ_j K(i, j), K = (cos + 1) / 2; the loss
is the KL divergence of the student's from the teacher's distributions, averaged over all (i, j):

    L_PKT = β · mean_{i,j} p^t_{j|i} · log((p^t_{j|i} + ε) / (p^s_{j|i} + ε)),   ε = 1e-7

(the diagonal j = i is included, as in the authors' code). Published defaults (RepDistiller
``--distill pkt -r 1 -a 0 -b 30000``): β = 30000, CE weight 1, no KD term; the feature is the pooled
pre-logits (RepDistiller's ``feat[-1]``). No trainable parts.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..intermediates import no_autocast
from . import register_method
from .base import ModelOutputs
from .feature import FeatureDistiller

__all__ = ['PKT', 'cosine_affinity']

_EPS = 1e-7


def cosine_affinity(features: torch.Tensor) -> torch.Tensor:
    """(B, B) row-stochastic matrix of (cosine similarity + 1) / 2 between the samples' features.

    In float64: the loss is a KL between nearly equal distributions, float32 loses ~1e-5 of it (B x B only).
    """
    flat = features.double().flatten(1)
    # the authors' normalization: divide by (norm + ε), so an all-zero feature stays zero
    unit = flat / (flat.norm(dim=1, keepdim=True) + _EPS)
    affinity = (unit @ unit.t() + 1.0) / 2.0
    return affinity / affinity.sum(dim=1, keepdim=True)


@register_method('pkt')
class PKT(FeatureDistiller):
    """Probabilistic knowledge transfer on the pre-logits."""
    default_beta = 30000.0
    needs_pre_logits = True

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        with no_autocast(student.pre_logits):
            p_s, p_t = cosine_affinity(student.pre_logits), cosine_affinity(teacher.pre_logits)
            loss = (p_t * torch.log((p_t + _EPS) / (p_s + _EPS))).mean().float()
        return {'pkt_loss': self.beta * loss}
