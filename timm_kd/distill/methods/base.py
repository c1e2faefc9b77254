""" The distillation-method interface: what a method sees of both models and what it returns

A method ("distiller") is an ``nn.Module`` built once per run from the student and the teacher. The
``DistillationTask`` owns the step; per batch it gives the method the outputs of both models on the
ORIGINAL batch and adds the method's named, weighted terms to the loss:

    loss = γ·CE(s(x), y) + α·[L_logit(x) + w·L_view(x')] + Σ terms of the method on x

* ``L_logit`` is the method's ``distill_loss``: its ``logit_loss`` on the logits, which is Hinton's KL at T
  for every method except the logit methods (DKD, DIST, ...) that replace it; a method may compare other
  outputs instead (timm's feature distillation: the MSE of the pre-logits). γ, α, w are the task's weights
  (``task_loss_weight``, ``distill_loss_weight``, ``mixed_kd_weight``); ``loss_weights`` are a method's
  published (γ, α).
* A student with a distillation token (DeiT-style, in distilled training) has two heads: the class head gets the
  CE, the distillation head every teacher term (``ModelOutputs.distill_logits``).
* ``L_view`` on the teacher-labelled views x' (mixed, picked or per-sample augmented) is the KL at T,
  or with ``view_loss='method'`` the method's ``logit_loss`` (logit methods only).
* Feature / relation methods return their terms (already multiplied by their own β) from ``forward``,
  computed on the original batch only, as the authors of the teacher-labelled views do.
"""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from timm_kd.utils.ranges import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, FlagRange
from ..losses import kd_loss

__all__ = ['ModelOutputs', 'Distiller', 'FlagRange', 'POSITIVE', 'NON_NEGATIVE', 'AT_LEAST_ONE']



@dataclass
class ModelOutputs:
    """What a method sees of one model on one batch.

    Attributes:
        logits: (B, num_classes).
        features: intermediate feature maps (NCHW), from timm's ``forward_intermediates`` /
            ``feature_info``; only filled when the method sets ``needs_features``.
        pre_logits: (B, D) pooled features before the classifier (``forward_head(pre_logits=True)``);
            only filled when the method sets ``needs_features``.
        distill_logits: (B, num_classes) of the distillation head of a student with a distillation token in
            distilled training (timm's ``set_distilled_training``); None for a model with one head.
    """
    logits: torch.Tensor
    features: Optional[List[torch.Tensor]] = None
    pre_logits: Optional[torch.Tensor] = None
    distill_logits: Optional[torch.Tensor] = None

    @property
    def distill_head(self) -> torch.Tensor:
        """The logits every teacher term compares: the distillation head's when there is one."""
        return self.logits if self.distill_logits is None else self.distill_logits


class Distiller(nn.Module):
    """One distillation method's loss on the ORIGINAL batch (CE and the KD/logit term are the task's).

    Subclasses are registered by name with ``@register_method('name')`` (``timm_kd.distill.methods``)
    and then exist for ``DistillationTask(method='name')`` and ``train_kd.py --distill name``.

    Class attributes:
        needs_features: the task asks both models for intermediates and pre-logits (else logits only,
            the fast path: nothing extra is computed).
        needs_index: the loader must yield sample indices (``extras['index']``, e.g. CRD's memory bank).
        logit_method: the method overrides ``logit_loss``; it may also replace the KL on the views.
        needs_class_target: the loss needs class-index targets (B,), not soft ones (timm --mixup).
        loss_weights: the published (γ CE weight, α logit-term weight) of the method, the defaults of
            ``train_kd.py --distill NAME`` when no weight flag is given.
        complementary_weights: a single weight flag sets the other weight as 1 − it (timm's rule); None: only
            when the published weights sum to 1 (KD's (1 − α, α)).

    Args:
        student, teacher: the two models (the teacher unwrapped from timm's ``DistillationTeacher``);
            a method may build trainable parts from them (probe shapes with a dummy forward).
        num_classes: classes of both models.
        temperature: the task's temperature T.
        **hparams: the method's own hyper-parameters (see ``add_args`` / ``kwargs_from_args``).

    Trainable parameters and buffers of a method train with the student and go into the training
    checkpoint (``task.distiller.state_dict()``), never into the exported student.
    """
    method_name: ClassVar[str] = ''  # set by register_method
    needs_features: ClassVar[bool] = False
    needs_index: ClassVar[bool] = False
    logit_method: ClassVar[bool] = False
    needs_class_target: ClassVar[bool] = False
    loss_weights: ClassVar[Tuple[float, float]] = (1.0, 0.0)
    complementary_weights: ClassVar[Optional[bool]] = None

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float, **hparams):
        super().__init__()
        if hparams:
            raise TypeError(f'{type(self).__name__} got unknown hyper-parameters {sorted(hparams)}.')
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.epoch = 0  # set by the task (``task.set_epoch``) at the start of every epoch; for warm-ups

    def set_epoch(self, epoch: int) -> None:
        """The training epoch (0-based) about to run; methods with a warm-up read ``self.epoch``."""
        self.epoch = int(epoch)

    def logit_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   target: Optional[torch.Tensor]) -> torch.Tensor:
        """The logit term α weighs: Hinton's T²·KL(p_t || p_s) at T; logit methods replace it."""
        return kd_loss(student_logits, teacher_logits, self.temperature)

    def distill_loss(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor) -> torch.Tensor:
        """The term α weighs on the original batch (the task's ``kd_loss``): ``logit_loss`` on the student's
        logits (its distillation head's, if it has one) and the teacher's."""
        return self.logit_loss(student.distill_head, teacher.logits, target)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Named, weighted loss terms on the original batch, added to the task's loss (none by default).

        ``teacher`` is computed without grad; ``index`` holds the sample indices when ``needs_index``.
        """
        return {}

    @classmethod
    def check_student(cls, student: nn.Module) -> None:
        """Raise ValueError (one sentence) when the method cannot train ``student`` (e.g. token distillation
        without a distillation token); ``train_kd.py`` asks as soon as the student is built."""

    @classmethod
    def default_loss_weights(cls, args: Any) -> Tuple[float, float]:
        """(γ, α) of ``train_kd.py --distill NAME`` when no weight flag is given: the published ones."""
        return cls.loss_weights

    @classmethod
    def add_args(cls, group) -> None:
        """Add the method's own flags to an argparse group (names unique across methods)."""

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        """The allowed values of each numeric flag of ``add_args`` (by dest), declared beside them."""
        return {}

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        """The ``**hparams`` of the constructor from parsed ``train_kd.py`` arguments."""
        return {}

    def extra_repr(self) -> str:
        return f'temperature={self.temperature}'
