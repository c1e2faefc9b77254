""" Token: timm's token distillation, for students with a distillation token (DeiT)

Touvron et al., "Training data-efficient image transformers & distillation through attention" (ICML 2021), as
timm's ``TokenDistillationTask`` runs it (``train.py --kd-distill-type token``): the student has a class token
and a distillation token, each with its own head (timm's ``VisionTransformerDistilled``, e.g.
``deit_tiny_distilled_patch16_224``). In distilled training (``set_distilled_training(True)``, switched on here)
its forward returns both heads' logits; the class head gets the task's CE on the labels, the distillation head
the teacher:

    soft: T²·KL(softmax(t/T) ‖ softmax(s_dist/T))          hard: CE(s_dist, argmax t)

In eval mode the student predicts the mean of its two heads, as timm. timm's defaults are CE weight 1 and α = 1,
and a single weight flag sets the other as 1 − it, as in timm. On the teacher-labelled views the distillation
head is trained too: with the KL at T (``--view-loss kl``) or with this loss (``--view-loss method``, e.g. the
hard teacher label of every view); the pick criteria score the distillation head.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import unwrap_model

from ..losses import kd_loss
from . import register_method
from .base import Distiller

__all__ = ['TokenDistillation', 'TOKEN_DISTILL_TYPES', 'has_distillation_token']

TOKEN_DISTILL_TYPES = ('soft', 'hard')


def has_distillation_token(model: nn.Module) -> bool:
    """Whether ``model`` can train a distillation head (timm's ``set_distilled_training``)."""
    return hasattr(unwrap_model(model), 'set_distilled_training')


@register_method('token')
class TokenDistillation(Distiller):
    """The teacher on the distillation head of a DeiT-style student: soft (KL at T) or hard (CE on argmax t)."""
    logit_method = True
    loss_weights = (1.0, 1.0)
    complementary_weights = True

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 distill_type: str = 'soft'):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature)
        if distill_type not in TOKEN_DISTILL_TYPES:
            raise ValueError(f"Unknown token distill_type {distill_type!r}: use 'soft' or 'hard'.")
        self.check_student(student)
        unwrap_model(student).set_distilled_training(True)
        self.distill_type = distill_type

    @classmethod
    def check_student(cls, student: nn.Module) -> None:
        if not has_distillation_token(student):
            raise ValueError(f'Token distillation needs a student with a distillation token (DeiT-style, e.g. '
                             f'deit_tiny_distilled_patch16_224); {type(unwrap_model(student)).__name__} has none: use '
                             f'--kd-distill-type logit or feature.')

    def logit_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   target: Optional[torch.Tensor]) -> torch.Tensor:
        if self.distill_type == 'soft':
            return kd_loss(student_logits, teacher_logits, self.temperature)
        return F.cross_entropy(student_logits.float(), teacher_logits.argmax(-1))

    @classmethod
    def add_args(cls, group) -> None:
        group.add_argument('--kd-token-distill-type', default='soft', choices=TOKEN_DISTILL_TYPES,
                           help="token (timm's name): soft = KL at --kd-temperature, hard = CE on the teacher's "
                                'argmax, on the distillation head (default soft)')

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(distill_type=args.kd_token_distill_type)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', distill_type={self.distill_type}'
