""" Feature: timm's feature distillation, the mean squared error of the pooled pre-logits

timm's ``FeatureDistillationTask`` (``train.py --kd-distill-type feature``): the student's pooled pre-logits
(``forward_head(pre_logits=True)``), mapped by a trainable linear projection when its width differs from the
teacher's, are regressed onto the teacher's:

    L_feature = mean((P·f_s + b − f_t)²),   P: Linear(D_s, D_t) only when D_s ≠ D_t

This is the term α weighs (the task's ``kd_loss``), in place of the KL on the logits; timm's defaults are
CE weight 1 and α = 1, and a single weight flag sets the other as 1 − it, as in timm. The widths come from
``head_hidden_size`` / ``num_features`` (timm's rule) unless given (``--kd-student-feature-dim``,
``--kd-teacher-feature-dim``); a given width that contradicts the model's is refused. The projection trains
with the student and is not part of the exported student.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import unwrap_model

from ..intermediates import pre_logits_dim
from . import register_method
from .base import AT_LEAST_ONE, Distiller, FlagRange, ModelOutputs

__all__ = ['FeatureMSE']


def _width(model: nn.Module, given: Optional[int], role: str) -> int:
    """The pre-logits width of ``model``: ``given`` when set (checked against what the model reports)."""
    try:
        found = pre_logits_dim(model)
    except AttributeError:
        found = None
    flag = f'{role}_feature_dim (--kd-{role}-feature-dim)'
    if given is not None and given < 1:
        raise ValueError(f'{flag} must be >= 1, got {given}.')
    if given is not None and found is not None and given != found:
        raise ValueError(f'{flag} {given} does not match the {role}\'s pre-logits width {found} (its '
                         f'head_hidden_size / num_features): leave it out or give {found}.')
    if given is None and found is None:
        raise ValueError(f'The {role} {type(unwrap_model(model)).__name__} reports no pre-logits width '
                         f'(head_hidden_size / num_features): give {flag}.')
    return int(given if given is not None else found)


@register_method('feature')
class FeatureMSE(Distiller):
    """timm's feature distillation: MSE between the (projected) pre-logits of student and teacher."""
    needs_features = True
    needs_pre_logits = True
    student_levels = ()
    teacher_levels = ()
    loss_weights = (1.0, 1.0)
    complementary_weights = True

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 student_feature_dim: Optional[int] = None, teacher_feature_dim: Optional[int] = None):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature)
        for model, role in ((student, 'student'), (teacher, 'teacher')):
            if not all(hasattr(unwrap_model(model), n) for n in ('forward_features', 'forward_head')):
                raise ValueError(f"distillation method 'feature' needs the pooled pre-logits, but the {role} "
                                 f'{type(unwrap_model(model)).__name__} has no forward_features / forward_head '
                                 f'(a timm model is needed).')
        self.student_feature_dim = _width(student, student_feature_dim, 'student')
        self.teacher_feature_dim = _width(teacher, teacher_feature_dim, 'teacher')
        self.projection = nn.Linear(self.student_feature_dim, self.teacher_feature_dim) \
            if self.student_feature_dim != self.teacher_feature_dim else None

    def distill_loss(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor) -> torch.Tensor:
        f_s = student.pre_logits if self.projection is None else self.projection(student.pre_logits)
        return F.mse_loss(f_s.float(), teacher.pre_logits.float())

    @classmethod
    def add_args(cls, group) -> None:
        group.add_argument('--kd-student-feature-dim', type=int, default=None, metavar='D',
                           help="feature (timm's name): the student's pre-logits width (default: its "
                                'head_hidden_size / num_features)')
        group.add_argument('--kd-teacher-feature-dim', type=int, default=None, metavar='D',
                           help="feature (timm's name): the teacher's pre-logits width (default: its "
                                'head_hidden_size / num_features)')

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        return dict(kd_student_feature_dim=AT_LEAST_ONE, kd_teacher_feature_dim=AT_LEAST_ONE)

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(student_feature_dim=args.kd_student_feature_dim, teacher_feature_dim=args.kd_teacher_feature_dim)

    def extra_repr(self) -> str:
        return f'{self.student_feature_dim} -> {self.teacher_feature_dim}, projection={self.projection is not None}'
