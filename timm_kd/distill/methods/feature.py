""" The shared part of the feature and relation methods (FitNet, AT, SP, CC, VID, PKT, CRD)

They read intermediate features or pre-logits of both models (``timm_kd.distill.features``), add one term
β·L on the original batch, and keep RepDistiller's weights by default: CE weight 1, no KD term
(``-r 1 -a 0 -b β``); β is the flag ``--<name>-beta``.
"""
from typing import Any, ClassVar, Dict, Optional, Sequence

import torch.nn as nn

from ..intermediates import check_feature_models
from .base import NON_NEGATIVE, Distiller, FlagRange

__all__ = ['FeatureDistiller']


class FeatureDistiller(Distiller):
    """Base class: checks that both models give features, holds β and its flag.

    Subclasses set ``default_beta`` (RepDistiller's -b) and what the task must compute for them: the feature
    levels of each model (``feature_info`` numbering, in ``ModelOutputs.features`` order) and whether the
    pre-logits are needed. ``beta=None`` means ``default_beta``.
    """
    needs_features = True
    loss_weights = (1.0, 0.0)
    default_beta: ClassVar[float] = 1.0
    student_levels: Sequence[int] = ()
    teacher_levels: Sequence[int] = ()
    needs_pre_logits: bool = False

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 beta: Optional[float] = None):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature)
        check_feature_models(student, teacher, self.method_name)
        self.beta = float(self.default_beta if beta is None else beta)

    @classmethod
    def add_args(cls, group) -> None:
        group.add_argument(f'--{cls.method_name}-beta', type=float, default=cls.default_beta, metavar='B',
                           help=f'{cls.__name__}: weight β of its loss (default {cls.default_beta:g}, RepDistiller)')

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        return {f'{cls.method_name}_beta': NON_NEGATIVE}

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(beta=getattr(args, f'{cls.method_name}_beta'))

    def extra_repr(self) -> str:
        levels = f', levels={self.student_levels}<-{self.teacher_levels}' if self.student_levels else ''
        return super().extra_repr() + f', beta={self.beta}' + levels
