""" KD: Hinton's knowledge distillation, optionally with logit standardization

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015):
L_KD = T²·KL(softmax(t/T) || softmax(s/T)), averaged over the batch. Published defaults (RepDistiller
``-r 0.1 -a 0.9 --kd_T 4``, the paper of the teacher-labelled views): γ = 0.1, α = 0.9, T = 4.

Logit standardization (``logit_std=True``): Sun et al., "Logit Standardization in Knowledge
Distillation" (CVPR 2024): both logit vectors are z-scored per sample before the softmax and the
temperature becomes a base temperature τ: L = τ²·KL(softmax(Z(t)/τ) || softmax(Z(s)/τ)),
Z(z) = (z − mean z) / (std z + 1e-7). The authors' CIFAR-100 recipe (``--logit-stand --base-temp 2
--kd-weight 9``, CE weight 0.1): τ = 2, α = 9, γ = 0.1.
"""
from typing import Any, Dict, Optional, Tuple

import torch

from ..losses import kd_loss, standardize_logits
from . import register_method
from .base import Distiller

__all__ = ['KD', 'LogitStandardization']


class LogitStandardization:
    """The logit-standardization switch shared by the logit methods that support it (KD, DKD)."""
    supports_logit_std = True

    def _init_logit_std(self, logit_std: bool, logit_std_temperature: float) -> None:
        if logit_std_temperature <= 0:
            raise ValueError(f'logit_std_temperature must be > 0, got {logit_std_temperature}.')
        self.logit_std = bool(logit_std)
        self.logit_std_temperature = float(logit_std_temperature)

    def _prepare(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, float]:
        """(student logits, teacher logits, temperature) as the loss must see them."""
        if self.logit_std:
            return standardize_logits(student_logits), standardize_logits(teacher_logits), self.logit_std_temperature
        return student_logits, teacher_logits, self.temperature

    @staticmethod
    def logit_std_kwargs(args: Any) -> Dict[str, Any]:
        return dict(logit_std=args.logit_std, logit_std_temperature=args.logit_std_temp)

    @classmethod
    def default_loss_weights(cls, args: Any) -> Tuple[float, float]:
        return cls.loss_weights_logit_std if args.logit_std else cls.loss_weights


@register_method('kd')
class KD(LogitStandardization, Distiller):
    """Hinton KD (the task's default): the logit term is T²·KL at T; with ``logit_std`` on z-scored logits
    at the base temperature ``logit_std_temperature``. No extra terms, no parameters."""
    logit_method = True
    loss_weights = (0.1, 0.9)
    loss_weights_logit_std = (0.1, 9.0)

    def __init__(self, student, teacher, *, num_classes: int, temperature: float, logit_std: bool = False,
                 logit_std_temperature: float = 2.0):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature)
        self._init_logit_std(logit_std, logit_std_temperature)

    def logit_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   target: Optional[torch.Tensor]) -> torch.Tensor:
        return kd_loss(*self._prepare(student_logits, teacher_logits))

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return cls.logit_std_kwargs(args)

    def extra_repr(self) -> str:
        std = f', logit_std_temperature={self.logit_std_temperature}' if self.logit_std else ''
        return super().extra_repr() + std
