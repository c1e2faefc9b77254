""" VID: variational information distillation

Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019): per matched stage
a regressor μ(F_s) predicts the teacher's map as a Gaussian with a learned per-channel variance
σ²_c = softplus(a_c) + ε; the loss is its negative log-likelihood (up to a constant), averaged over all
elements, summed over stages:

    L_VID = β · Σ_stages mean_{b,c,h,w} ½ · ((μ(F_s) − F_t)² / σ²_c + log σ²_c)

μ = 1x1 conv → ReLU → 1x1 conv → ReLU → 1x1 conv (no biases, C_s → C_t → C_t → C_t), a_c initialised so
that σ² starts at 5 (ε = 1e-5). Published defaults (RepDistiller ``--distill vid -r 1 -a 0 -b 1``):
β = 1, CE weight 1, no KD term; stages = RepDistiller's ``feat[1:-1]`` (``features.matched_stages`` for
other pairs); maps of different size: the larger is average-pooled to the smaller. The regressors and
variances train with the student and are not part of the exported student.
"""
import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..intermediates import feature_channels, match_spatial, matched_stages
from . import register_method
from .base import ModelOutputs
from .feature import FeatureDistiller

__all__ = ['VID']


class _GaussianRegressor(nn.Module):
    """Mean μ(F_s) and per-channel variance of the teacher map given the student map."""

    def __init__(self, in_chs: int, out_chs: int, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.ReLU(),
            nn.Conv2d(out_chs, out_chs, 1, bias=False), nn.ReLU(),
            nn.Conv2d(out_chs, out_chs, 1, bias=False),
        )
        self.eps = eps
        # inverse softplus, so that softplus(log_scale) + eps == init_var at the start
        self.log_scale = nn.Parameter(torch.full((out_chs,), math.log(math.expm1(init_var - eps))))

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        # the 1x1 convs as matmuls over the pixels (channels last): on thin stage maps (16-64 channels) they run
        # about twice as fast as the convolution kernels (forward + backward, CIFAR ResNet stages, CPU)
        mu = f_s.permute(0, 2, 3, 1)
        for layer in self.mean:
            mu = F.linear(mu, layer.weight.flatten(1)) if isinstance(layer, nn.Conv2d) else layer(mu)
        var = F.softplus(self.log_scale) + self.eps
        # mean of ½·((μ − t)²/σ²_c + log σ²_c) over all elements, with the squared errors summed per channel first:
        # one pass over the map instead of one per term, forward and backward
        sq_err = (mu.float() - f_t.permute(0, 2, 3, 1).float()).square().sum((0, 1, 2))
        return 0.5 * ((sq_err / var).sum() / f_t.numel() + var.log().mean())


@register_method('vid')
class VID(FeatureDistiller):
    """Variational information distillation on every matched stage."""
    default_beta = 1.0

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 beta: Optional[float] = None):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature, beta=beta)
        self.student_levels, self.teacher_levels = matched_stages(student, teacher)
        s_chs, t_chs = feature_channels(student), feature_channels(teacher)
        self.regressors = nn.ModuleList(
            _GaussianRegressor(s_chs[s], t_chs[t]) for s, t in zip(self.student_levels, self.teacher_levels))

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        loss = 0.
        for regressor, f_s, f_t in zip(self.regressors, student.features, teacher.features):
            loss = loss + regressor(*match_spatial(f_s, f_t))
        return {'vid_loss': self.beta * loss}
