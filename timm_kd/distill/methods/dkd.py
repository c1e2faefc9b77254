""" DKD: decoupled knowledge distillation

Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022). The KL at temperature T splits into a
target-class part (TCKD: KL between the binary distributions b = [p_target, 1 − p_target]) and a
non-target part (NCKD: KL between the distributions over the other classes, renormalized), weighted
independently:

    L_DKD = w(epoch) · T² · mean over samples of (α·TCKD + β·NCKD),   w = min((epoch + 1) / warmup, 1)

Published defaults (megvii-research/mdistiller, ``DKD`` config and ``configs/cifar100/dkd/*.yaml``):
CE weight 1, α = 1, β = 8 (β = 2 for resnet56→resnet20 and resnet110→resnet32, β = 6 for
wrn_40_2→wrn_16_2 / wrn_40_1 / vgg13→vgg8 per the configs), T = 4, linear warm-up over 20 epochs
(mdistiller counts epochs from 1, so the first epoch has weight 1/20; here epochs count from 0, hence
``epoch + 1``). On ImageNet (mdistiller ``configs/imagenet/r34_r18/dkd.yaml``, which sets no α: the default 1)
α = 1, β = 0.5, T = 1, warm-up 1 epoch: ``configs/imagenet/dkd/``.

With ``logit_std`` the logits are z-scored first and the base temperature replaces T (logit
standardization, see ``kd.py``); the authors' CIFAR-100 script then multiplies α by 9 and sets
β = 9·α = 81, i.e. ``train_kd.py --distill dkd --logit-std --kd-alpha 9 --dkd-beta 9`` here.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from . import register_method
from .base import NON_NEGATIVE, Distiller, FlagRange
from .kd import LogitStandardization

__all__ = ['DKD', 'dkd_loss']


def _other_classes(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C−1) column indices of the non-target classes, in order (a gather index, no host sync)."""
    cols = torch.arange(num_classes - 1, device=target.device).expand(target.shape[0], -1)
    return cols + (cols >= target[:, None]).long()


def dkd_loss(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
) -> torch.Tensor:
    """T²·mean(α·TCKD + β·NCKD) (no warm-up factor), computed in log space in float32."""
    if target is None or target.ndim != 1:
        got = 'none' if target is None else f'shape {tuple(target.shape)}'
        raise ValueError(f'DKD splits the target class from the others and needs class-index targets (B,), got {got}.')
    batch, num_classes = student_logits.shape
    other = _other_classes(target, num_classes)
    t = target[:, None]
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # binary [target, not target]; log(1 − p_target) as a logsumexp over the other classes (stable)
    log_b_s = torch.cat([log_p_s.gather(1, t), log_p_s.gather(1, other).logsumexp(1, keepdim=True)], 1)
    log_b_t = torch.cat([log_p_t.gather(1, t), log_p_t.gather(1, other).logsumexp(1, keepdim=True)], 1)
    tckd = F.kl_div(log_b_s, log_b_t, reduction='sum', log_target=True)
    # the other classes renormalized among themselves: a softmax over the non-target logits
    log_q_s = F.log_softmax(student_logits.float().gather(1, other) / temperature, dim=-1)
    log_q_t = F.log_softmax(teacher_logits.float().gather(1, other) / temperature, dim=-1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction='sum', log_target=True)
    return (alpha * tckd + beta * nckd) * (temperature ** 2) / batch


@register_method('dkd')
class DKD(LogitStandardization, Distiller):
    """Decoupled KD as the logit term (replaces the KL on x; on the views with ``view_loss='method'``,
    where the target of a view is the label of its larger-area source)."""
    logit_method = True
    needs_class_target = True
    loss_weights = (1.0, 1.0)
    loss_weights_logit_std = (1.0, 9.0)

    def __init__(self, student, teacher, *, num_classes: int, temperature: float, alpha: float = 1.0,
                 beta: float = 8.0, warmup_epochs: int = 20, logit_std: bool = False,
                 logit_std_temperature: float = 2.0):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature)
        if alpha < 0 or beta < 0:
            raise ValueError(f'DKD alpha and beta must be >= 0, got {alpha}, {beta}.')
        if warmup_epochs < 0:
            raise ValueError(f'DKD warmup_epochs must be >= 0, got {warmup_epochs}.')
        self.alpha, self.beta, self.warmup_epochs = float(alpha), float(beta), int(warmup_epochs)
        self._init_logit_std(logit_std, logit_std_temperature)

    def warmup_factor(self) -> float:
        """min((epoch + 1) / warmup, 1): 1/warmup in the first epoch, 1 from epoch warmup − 1 on."""
        return min((self.epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs else 1.0

    def logit_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   target: Optional[torch.Tensor]) -> torch.Tensor:
        s, t, temp = self._prepare(student_logits, teacher_logits)
        return self.warmup_factor() * dkd_loss(s, t, target, self.alpha, self.beta, temp)

    @classmethod
    def add_args(cls, group) -> None:
        group.add_argument('--dkd-alpha', type=float, default=1.0, metavar='A',
                           help='DKD: weight of the target-class term TCKD (default 1)')
        group.add_argument('--dkd-beta', type=float, default=8.0, metavar='B',
                           help='DKD: weight of the non-target term NCKD (default 8; mdistiller uses 2 for '
                                'resnet56->resnet20, 6 for wrn_40_2 pairs)')
        group.add_argument('--dkd-warmup', type=int, default=20, metavar='EPOCHS',
                           help='DKD: linear warm-up of the DKD term over this many epochs (default 20)')

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        return dict(dkd_alpha=NON_NEGATIVE, dkd_beta=NON_NEGATIVE, dkd_warmup=NON_NEGATIVE)

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(alpha=args.dkd_alpha, beta=args.dkd_beta, warmup_epochs=args.dkd_warmup,
                    **cls.logit_std_kwargs(args))

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', alpha={self.alpha}, beta={self.beta}, warmup_epochs={self.warmup_epochs}'
                + (f', logit_std_temperature={self.logit_std_temperature}' if self.logit_std else ''))
