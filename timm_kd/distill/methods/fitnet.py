""" FitNet: hint-based feature regression

Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015): a regressor maps the student's hint
layer onto the teacher's guided layer and the loss is their mean squared error,

    L_FitNet = β · mean((r(F_s) − F_t)²),   r = 1x1 conv → BatchNorm → ReLU.

Published defaults (RepDistiller ``--distill hint -r 1 -a 0 -b 100 --hint_layer 2``): β = 100, hint
layer 2 (the output of the second stage of a CIFAR ResNet), CE weight 1, no KD term. The teacher's
level is the one at the same distance from its last level (``features.matched_level``). RepDistiller's
regressor adapts the resolution with a strided / transposed conv; here maps of different size are
average-pooled to the smaller first (``features.match_spatial``), then the 1x1 regressor is RepDistiller's
for equal sizes. The regressor trains with the student and is not part of the exported student.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..intermediates import feature_channels, match_spatial, matched_level
from . import register_method
from .base import NON_NEGATIVE, FlagRange, ModelOutputs
from .feature import FeatureDistiller

__all__ = ['FitNet']


@register_method('fitnet')
class FitNet(FeatureDistiller):
    """FitNet hint loss on one stage (``hint_layer``, 0 = stem), with a trainable 1x1 regressor."""
    default_beta = 100.0

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 beta: Optional[float] = None, hint_layer: int = 2):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature, beta=beta)
        self.student_levels = [int(hint_layer)]
        self.teacher_levels = [matched_level(student, teacher, int(hint_layer))]
        s_chs = feature_channels(student)[self.student_levels[0]]
        t_chs = feature_channels(teacher)[self.teacher_levels[0]]
        self.regressor = nn.Sequential(nn.Conv2d(s_chs, t_chs, 1), nn.BatchNorm2d(t_chs), nn.ReLU())

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        f_s, f_t = match_spatial(student.features[0], teacher.features[0])
        return {'fitnet_loss': self.beta * F.mse_loss(self.regressor(f_s).float(), f_t.float())}

    @classmethod
    def add_args(cls, group) -> None:
        super().add_args(group)
        group.add_argument('--hint-layer', type=int, default=2, metavar='LEVEL',
                           help="FitNet: the student's hint level, 0 = stem (default 2, RepDistiller)")

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        return dict(super().arg_ranges(), hint_layer=NON_NEGATIVE)  # the deepest level depends on the model

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(super().kwargs_from_args(args), hint_layer=args.hint_layer)
