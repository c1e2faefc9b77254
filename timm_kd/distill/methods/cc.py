""" CC: correlation congruence

Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019), in the form RepDistiller
runs it (``distiller_zoo/CC.py``, the code behind the CRD paper's CC numbers that the teacher-labelled
views paper reuses): the pooled features of both models are projected by trainable linear embeddings
e_s, e_t to d dimensions; with Δ_i = |e_s(f_s,i) − e_t(f_t,i)| (element-wise), consecutive samples of
the batch are correlated,

    L_CC = β · mean_{i < B} Σ_k Δ_i[k] · Δ_{i+1}[k]

Published defaults (RepDistiller ``--distill correlation -r 1 -a 0 -b 0.02 --feat_dim 128``): β = 0.02,
d = 128, CE weight 1, no KD term; the feature is the pooled pre-logits (``feat[-1]``). Both embeddings
(the teacher's too: it sees detached teacher features) train with the student and are not part of the
exported student.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..intermediates import pre_logits_dim
from . import register_method
from .base import AT_LEAST_ONE, FlagRange, ModelOutputs
from .feature import FeatureDistiller

__all__ = ['CC']


@register_method('cc')
class CC(FeatureDistiller):
    """Correlation congruence between linear embeddings of the pre-logits."""
    default_beta = 0.02
    needs_pre_logits = True

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 beta: Optional[float] = None, feat_dim: int = 128):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature, beta=beta)
        self.embed_s = nn.Linear(pre_logits_dim(student), feat_dim)
        self.embed_t = nn.Linear(pre_logits_dim(teacher), feat_dim)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        delta = (self.embed_s(student.pre_logits).float() - self.embed_t(teacher.pre_logits).float()).abs()
        return {'cc_loss': self.beta * (delta[:-1] * delta[1:]).sum(1).mean()}

    @classmethod
    def add_args(cls, group) -> None:
        super().add_args(group)
        group.add_argument('--cc-feat-dim', type=int, default=128, metavar='D',
                           help='CC: width of the linear embeddings (default 128)')

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        return dict(super().arg_ranges(), cc_feat_dim=AT_LEAST_ONE)

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(super().kwargs_from_args(args), feat_dim=args.cc_feat_dim)
