""" AT: attention transfer

Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017): the spatial attention map of a
feature map F (C, H, W) is Q = vec(Σ_c F_c^p) / ‖vec(Σ_c F_c^p)‖₂ (RepDistiller averages over channels
instead of summing, which the normalization cancels); per matched stage the loss is the mean squared
difference of the student's and the teacher's maps, summed over stages:

    L_AT = β · Σ_stages mean_{b,j} (Q_s[b, j] − Q_t[b, j])²

Published defaults (RepDistiller ``--distill attention -r 1 -a 0 -b 1000``, ``Attention(p=2)``):
β = 1000, p = 2, CE weight 1, no KD term; stages = RepDistiller's ``feat[1:-1]`` (every stage output
after the stem), for other pairs ``features.matched_stages``. Maps of different size: the larger is
average-pooled to the smaller. No trainable parts.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..intermediates import match_spatial, matched_stages
from . import register_method
from .base import POSITIVE, FlagRange, ModelOutputs
from .feature import FeatureDistiller

__all__ = ['AT', 'attention_map']


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(B, H·W) spatial attention: the channel mean of F^p, L2-normalized per sample (RepDistiller)."""
    return F.normalize(features.float().pow(p).mean(1).flatten(1))


@register_method('at')
class AT(FeatureDistiller):
    """Attention transfer on every matched stage."""
    default_beta = 1000.0

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 beta: Optional[float] = None, p: float = 2.0):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature, beta=beta)
        self.p = float(p)
        self.student_levels, self.teacher_levels = matched_stages(student, teacher)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        loss = 0.
        for f_s, f_t in zip(student.features, teacher.features):
            f_s, f_t = match_spatial(f_s, f_t)
            loss = loss + (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
        return {'at_loss': self.beta * loss}

    @classmethod
    def add_args(cls, group) -> None:
        super().add_args(group)
        group.add_argument('--at-p', type=float, default=2.0, metavar='P',
                           help='AT: power p of the attention map (default 2)')

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        return dict(super().arg_ranges(), at_p=POSITIVE)  # p <= 0 turns the map of zero activations into inf

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(super().kwargs_from_args(args), p=args.at_p)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', p={self.p}'
