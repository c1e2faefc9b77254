""" The distillation step: KD + teacher-labelled mixed views (+ pick), as a timm TrainingTask

loss = γ·CE(s(x), y) + α·KL(s(x), t(x)) + α·w·L_mix, with

* L_mix = KL(s(x'), t(x')) for the teacher-labelled views (TLmixup, TLCutMix, Cutout, PMU), on the whole
  pool or on the picked rows (TLCutMix+pick),
* L_mix = λ·CE(s(x'), y) + (1−λ)·CE(s(x'), y[perm]) for the hard-label KD+CutMix baseline,

KL = T²·batchmean KL(p_t || p_s) at temperature T; γ = task_loss_weight, α = distill_loss_weight,
w = mixed_kd_weight (paper: 0.1, 0.9, 1).

Forward passes per step (B images, pool N = n_candidates·B, k picked):

* teacher: one eval-mode, no-grad forward over cat(x, pool) (or cat(x, picked) for pick='random');
  the pool's logits are reused for the picked rows (the authors recompute them);
* student: x with grad; for 'kld' / 's_ent' a no-grad scoring pass over the pool in train-mode
  BatchNorm (batch statistics, as the authors) that leaves the running statistics untouched (the
  authors' pass updates them); then the picked rows (or the pool) with grad, a separate forward so
  each view gets its own BatchNorm batch statistics, as the authors.
"""
import logging
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.task import DistillationTeacher, LogitDistillationTask, TrainingTask
from timm.task.classification import resolve_classification_loss
from timm.utils import unwrap_model

from timm_kd.data.mixup import DistillMixup, MixedViews
from .losses import kd_loss, per_sample_kl, soft_target_cross_entropy
from .pick import batchnorm_modules, frozen_bn_stats, pick_scores, pick_topk

__all__ = ['DistillationTask']

_logger = logging.getLogger(__name__)


def _norm_cfg(model: nn.Module) -> Optional[Tuple[tuple, tuple]]:
    cfg = getattr(unwrap_model(model), 'pretrained_cfg', None)
    if isinstance(cfg, dict) and cfg.get('mean') is not None and cfg.get('std') is not None:
        return tuple(float(v) for v in cfg['mean']), tuple(float(v) for v in cfg['std'])
    return None


class DistillationTask(LogitDistillationTask):
    """Logit distillation with teacher-labelled mixed views (Wang et al.) on top of timm's task API.

    A subclass of ``timm.task.LogitDistillationTask``, so timm's plumbing applies: ``trainable_module`` is
    the student (what DDP / accelerate wrap, what checkpoints hold), the teacher stays unwrapped, frozen
    and in eval mode (``task.train()`` keeps it so), ``compile()``, ``setup_ema()``, ``prepare_distributed()``.

    Args:
        student: the model to train.
        teacher: an ``nn.Module``, a ``timm.task.DistillationTeacher`` or a timm model name (built with
            pretrained weights by timm's ``DistillationTeacher``, with the student's num_classes).
        mixup: a ``DistillMixup`` (None: plain KD). The task calls it on every batch.
        temperature: KD temperature T (also for the 'kld' pick score and the KL ratio).
        task_loss_weight: γ, weight of CE(s(x), y).
        distill_loss_weight: α, weight of KL(s(x), t(x)).
        mixed_kd_weight: w, the mixed-view term is weighted α·w.
        criterion: loss on the original batch, default ``nn.CrossEntropyLoss()`` (timm's
            ``create_classification_loss(**criterion_kwargs)``).
        criterion_kwargs: arguments for timm's ``create_classification_loss`` when criterion is None.
        teacher_pretrained_path / teacher_pretrained_cfg_overlay: for a teacher given by name (timm).
        diagnostics: also return kl_ratio, label_disagreement, picked_share, pick_coverage (a handful of
            small kernels per step; False skips them, e.g. for speed comparisons).
        device, dtype: for the task's buffers (default: the student's device).

    The teacher input is re-normalized (as timm does) only when both models carry a ``pretrained_cfg``
    with mean/std and these differ; decided once here, so the step has no host/device sync.

    ``task(x, y)`` returns a dict of tensors: ``loss``, ``output`` (student logits on x), ``task_loss``,
    ``kd_loss``, ``mixed_loss`` (unweighted, 0 without a mixed view) and, when meaningful,
    ``label_disagreement`` (share of the trained mixed views whose teacher argmax differs from the
    larger-area source label), ``kl_ratio`` (r = mean KL of picked / mean KL of pool, paper Eq. 4; picks
    by 'kld' / 's_ent'), ``picked_share`` (picked / pool) and ``pick_coverage`` (share of the batch's
    images with at least one picked view).
    """

    def __init__(
            self,
            student: nn.Module,
            teacher: Union[str, nn.Module, DistillationTeacher],
            mixup: Optional[DistillMixup] = None,
            temperature: float = 4.0,
            task_loss_weight: float = 0.1,
            distill_loss_weight: float = 0.9,
            mixed_kd_weight: float = 1.0,
            criterion: Optional[nn.Module] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            diagnostics: bool = True,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = False,
    ):
        if device is None:
            param = next(student.parameters(), None)
            device = param.device if param is not None else None
        # LogitDistillationTask.__init__ insists on student.pretrained_cfg (a plain nn.Module has none),
        # so set up the same attributes here; its train/prepare_distributed/compile then work unchanged.
        TrainingTask.__init__(self, device=device, dtype=dtype, verbose=verbose)
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}.')
        if mixup is not None and not isinstance(mixup, DistillMixup):
            raise TypeError(f'mixup must be a timm_kd.DistillMixup or None, got {type(mixup).__name__}.')

        student_unwrapped = unwrap_model(student)
        if isinstance(teacher, DistillationTeacher):
            pass
        elif isinstance(teacher, str):
            teacher = DistillationTeacher(
                teacher,
                num_classes=getattr(student_unwrapped, 'num_classes', None),
                in_chans=getattr(student_unwrapped, 'in_chans', 3),
                pretrained_path=teacher_pretrained_path,
                pretrained_cfg_overlay=teacher_pretrained_cfg_overlay,
                device=self.device,
                dtype=self.dtype,
            )
        elif isinstance(teacher, nn.Module):
            teacher = DistillationTeacher(teacher, device=self.device, dtype=self.dtype)
        else:
            raise TypeError(f'teacher must be a model name or an nn.Module, got {type(teacher).__name__}.')
        teacher.eval()
        teacher.requires_grad_(False)

        s_classes = getattr(student_unwrapped, 'num_classes', None)
        t_classes = getattr(unwrap_model(teacher.model), 'num_classes', None)
        if isinstance(s_classes, int) and isinstance(t_classes, int) and s_classes != t_classes:
            raise ValueError(
                f'The teacher predicts {t_classes} classes but the student {s_classes}: '
                'distillation needs the same classes (check the teacher checkpoint / num_classes).')
        if mixup is not None and mixup.label_mode == 'hard' and isinstance(s_classes, int) \
                and mixup.num_classes != s_classes:
            raise ValueError(
                f"DistillMixup(num_classes={mixup.num_classes}) builds hard labels for a student with "
                f'{s_classes} classes: pass num_classes={s_classes}.')

        self.trainable_module = student
        self.teacher = teacher
        self.mixup = mixup
        self.criterion = resolve_classification_loss(criterion, self.device, criterion_kwargs=criterion_kwargs)
        self.loss_type = 'kl'
        self.temperature = float(temperature)
        self.task_loss_weight = float(task_loss_weight)
        self.distill_loss_weight = float(distill_loss_weight)
        self.mixed_kd_weight = float(mixed_kd_weight)
        self.diagnostics = diagnostics

        s_norm, t_norm = _norm_cfg(student), _norm_cfg(teacher.model)
        self._renormalize = s_norm is not None and t_norm is not None and s_norm != t_norm
        if s_norm is not None:
            self.register_buffer(
                'student_mean', torch.tensor(s_norm[0], device=self.device, dtype=self.dtype).view(1, -1, 1, 1),
                persistent=False)
            self.register_buffer(
                'student_std', torch.tensor(s_norm[1], device=self.device, dtype=self.dtype).view(1, -1, 1, 1),
                persistent=False)
        else:
            self.student_mean = self.student_std = None
        if self._renormalize:
            # the teacher's mean/std must be the ones from its cfg (a wrapper made elsewhere may differ)
            teacher.mean_kd.copy_(torch.tensor(t_norm[0]).view(1, -1, 1, 1))
            teacher.std_kd.copy_(torch.tensor(t_norm[1]).view(1, -1, 1, 1))
        if self.verbose:
            _logger.info(f'DistillationTask: T={self.temperature}, task={self.task_loss_weight}, '
                         f'distill={self.distill_loss_weight}, mixed={self.mixed_kd_weight}, mixup={mixup}, '
                         f'teacher re-normalization={self._renormalize}')

    def extra_repr(self) -> str:
        return (f'temperature={self.temperature}, task_loss_weight={self.task_loss_weight}, '
                f'distill_loss_weight={self.distill_loss_weight}, mixed_kd_weight={self.mixed_kd_weight}, '
                f'mixup={self.mixup}')

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a student-normalized batch (eval mode, no grad)."""
        if self._renormalize:
            x = (x * self.student_std + self.student_mean - self.teacher.mean_kd) / self.teacher.std_kd
        return self.teacher(x)

    def forward(
            self,
            input: torch.Tensor,
            target: torch.Tensor,
            views: Optional[MixedViews] = None,
    ) -> Dict[str, torch.Tensor]:
        """One distillation step on batch ``input`` with labels ``target``.

        ``views``: the pool made by a DistillMixup for this batch; by default the task's ``mixup`` makes it.
        """
        if self.teacher.training or self.teacher.model.training:
            self.teacher.eval()  # a user's teacher.train() elsewhere must not put teacher BN in train mode
        if views is None and self.mixup is not None:
            views = self.mixup(input, target)
        student = self.trainable_module
        temp = self.temperature
        batch_size = input.shape[0]

        output = student(input)
        task_loss = self.criterion(output, target)
        result: Dict[str, torch.Tensor] = {}

        if views is None:
            t_out = self.teacher_logits(input)
            kd = kd_loss(output, t_out, temp)
            mixed_loss = kd.new_zeros(())
        elif views.soft_target is not None:
            # KD+CutMix baseline: hard CutMix labels on x', the teacher only sees x
            t_out = self.teacher_logits(input)
            kd = kd_loss(output, t_out, temp)
            mixed_loss = soft_target_cross_entropy(student(views.x_mix), views.soft_target)
        else:
            pool, rows = views.x_mix, None
            if views.pick == 'random':
                rows = views.pick_index
                x_view = pool.index_select(0, rows)
                t_all = self.teacher_logits(torch.cat([input, x_view]))
                t_out, t_view = t_all[:batch_size], t_all[batch_size:]
            else:
                t_all = self.teacher_logits(torch.cat([input, pool]))
                t_out, t_view = t_all[:batch_size], t_all[batch_size:]
                x_view = pool
                if views.pick is not None:
                    s_pool = kl_pool = None
                    if views.pick in ('kld', 's_ent'):
                        with torch.no_grad(), frozen_bn_stats(batchnorm_modules(unwrap_model(student))):
                            s_pool = student(pool)
                        kl_pool = per_sample_kl(s_pool, t_view, temp)
                    scores = kl_pool if views.pick == 'kld' else pick_scores(views.pick, s_pool, t_view, temp)
                    rows = pick_topk(scores, views.num_pick)
                    x_view, t_view = pool.index_select(0, rows), t_view.index_select(0, rows)
                    if kl_pool is not None and self.diagnostics:
                        result['kl_ratio'] = kl_pool[rows].mean() / kl_pool.mean()
            s_view = student(x_view)
            kd = kd_loss(output, t_out, temp)
            mixed_loss = kd_loss(s_view, t_view, temp)
            if rows is not None and self.diagnostics:
                result['picked_share'] = kd.new_full((), rows.shape[0] / pool.shape[0])
                covered = torch.zeros(batch_size, dtype=torch.bool, device=input.device)
                covered[views.source.index_select(0, rows)] = True
                result['pick_coverage'] = covered.float().mean()
            if self.diagnostics and target is not None and target.ndim == 1:
                major, mixed = views.major_target(), views.mixed
                if rows is not None:
                    major, mixed = major.index_select(0, rows), mixed.index_select(0, rows)
                disagree = (t_view.argmax(-1) != major) & mixed
                result['label_disagreement'] = disagree.sum() / mixed.sum().clamp(min=1)

        loss = (self.task_loss_weight * task_loss + self.distill_loss_weight * kd
                + self.distill_loss_weight * self.mixed_kd_weight * mixed_loss)
        out = {
            'loss': loss,
            'output': output,
            'task_loss': task_loss,
            'kd_loss': kd,
            'mixed_loss': mixed_loss,
        }
        out.update({k: v.detach() for k, v in result.items()})
        return out
