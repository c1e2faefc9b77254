""" The distillation step: a method's loss + teacher-labelled views (+ pick), as a timm TrainingTask

loss = γ·CE(s(x), y) + α·L_logit(x) + α·w·L_view + Σ terms of the method, with

* L_logit = the method's term on x (``Distiller.distill_loss``): its logit term, Hinton's KL at T by default
  (KD and every feature method), DKD's, DIST's or the distillation token's loss for those logit methods;
  timm's feature distillation compares the pre-logits instead (MSE);
* L_view = KL(s(x'), t(x')) on the teacher-labelled views (TLmixup, TLCutMix, Cutout, PMU, per-sample
  augmented views), on the whole pool or on the picked rows (TLCutMix+pick); with
  ``view_loss='method'`` the logit method's own loss instead of the KL;
* L_view = λ·CE(s(x'), y) + (1−λ)·CE(s(x'), y[perm]) for the hard-label KD+CutMix baseline;
* the method's terms (feature / relation methods) are computed on the original batch x only;

KL = T²·batchmean KL(p_t || p_s) at temperature T; γ = task_loss_weight, α = distill_loss_weight,
w = mixed_kd_weight (paper: 0.1, 0.9, 1). The per-method rules are tabled in docs/methods.md.

Forward passes per step (B images, pool N = n_candidates·B, k picked), in this order:

* teacher first: one eval-mode, no-grad forward over cat(x, pool) (or cat(x, picked) for a criterion
  without score, 'random'), resized to the teacher's input size when it has one of its own
  (``resolution.py``); the pool's logits are reused for the picked rows (the authors recompute
  them). Running it before the student's grad pass is cheaper (the student's saved activations are not
  yet resident) and changes no number: the teacher is in eval mode and draws no random numbers;
* student: x with grad (with intermediates only for a method that needs features); for a criterion
  that needs the student ('kld', 's_ent') a no-grad scoring pass over the pool in train-mode BatchNorm
  (batch statistics, as the authors) that leaves the running statistics untouched (the authors' pass
  updates them); then the picked rows (or the pool) with grad, a separate forward so each view gets its
  own BatchNorm batch statistics, as the authors.
"""
import logging
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.task import DistillationTeacher, LogitDistillationTask, TrainingTask
from timm.task.classification import resolve_classification_loss
from timm.utils import unwrap_model

from timm_kd.data.mixup import DistillMixup, MixedViews
from timm_kd.data.pick import PICK_CRITERIA, PickCriterion, pick_topk
from .diagnostics import kl_ratio, label_disagreement, pick_diagnostics
from .intermediates import forward_with_features
from .losses import kd_loss, soft_target_cross_entropy
from .methods import Distiller, ModelOutputs, create_method
from .pick import batchnorm_modules, frozen_bn_stats
from .resolution import ImageSize, image_size, resize_for_teacher

__all__ = ['DistillationTask', 'VIEW_LOSSES']

_logger = logging.getLogger(__name__)

VIEW_LOSSES = ('kl', 'method')


def _heads(out: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(class-head logits, distillation-head logits or None) of a forward: a student with a distillation token in
    distilled training (timm's ``set_distilled_training``) returns both, any other model one tensor."""
    return (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)


def _distill_head(out: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The logits a teacher term trains: the distillation head's when the student has one."""
    cls_logits, dist_logits = _heads(out)
    return cls_logits if dist_logits is None else dist_logits


def model_outputs(model: nn.Module, x: torch.Tensor, method: Distiller, role: str) -> ModelOutputs:
    """The outputs of ``model`` (``role`` 'student' or 'teacher') on ``x`` that ``method`` sees: logits only on
    the fast path, else also its feature levels and pre-logits, from the same forward (``intermediates.py``)."""
    if not method.needs_features:
        logits, dist_logits = _heads(model(x))
        return ModelOutputs(logits=logits, distill_logits=dist_logits)
    levels = method.student_levels if role == 'student' else method.teacher_levels
    logits, features, pre_logits = forward_with_features(model, x, levels, method.needs_pre_logits)
    logits, dist_logits = _heads(logits)
    return ModelOutputs(logits, features, pre_logits, dist_logits)


def _unmixed_views(view_input: torch.Tensor, target: Optional[torch.Tensor]) -> MixedViews:
    """A per-sample augmented second view of the batch as a pool of B teacher-labelled views."""
    batch_size = view_input.shape[0]
    rows = torch.arange(batch_size, device=view_input.device)
    return MixedViews(
        x=view_input, target=target, x_mix=view_input, source=rows, partner=rows,
        lam=torch.ones(batch_size, device=view_input.device), mixed=torch.zeros_like(rows, dtype=torch.bool))


def _norm_cfg(model: nn.Module) -> Optional[Tuple[tuple, tuple]]:
    cfg = getattr(unwrap_model(model), 'pretrained_cfg', None)
    if isinstance(cfg, dict) and cfg.get('mean') is not None and cfg.get('std') is not None:
        return tuple(float(v) for v in cfg['mean']), tuple(float(v) for v in cfg['std'])
    return None


def _check_classes(student: nn.Module, teacher: DistillationTeacher, mixup: Optional[DistillMixup]) -> Optional[int]:
    """The student's class count (None if it has none); the teacher and a hard-label mixer must agree with it."""
    s_classes = getattr(unwrap_model(student), 'num_classes', None)
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
    return s_classes


class _Labelled(NamedTuple):
    """The view rows the teacher labelled in its pass: the rows, their teacher logits, the rows drawn up front
    ('random', else None) and the pick criterion (None: train on the whole pool)."""
    x: torch.Tensor
    logits: torch.Tensor
    rows: Optional[torch.Tensor]
    criterion: Optional[PickCriterion]


class DistillationTask(LogitDistillationTask):
    """Logit distillation with teacher-labelled mixed views (Wang et al.) on top of timm's task API.

    A subclass of ``timm.task.LogitDistillationTask``, so timm's plumbing applies: ``trainable_module`` is
    the student (what DDP / accelerate wrap, what checkpoints hold), the teacher stays unwrapped, frozen
    and in eval mode (``task.train()`` keeps it so), ``compile()``, ``setup_ema()``, ``prepare_distributed()``.

    Args:
        student: the model to train.
        teacher: an ``nn.Module``, a ``timm.task.DistillationTeacher`` or a timm model name (built with
            pretrained weights by timm's ``DistillationTeacher``, with the student's num_classes).
        mixup: a ``DistillMixup`` (None: no mixed view). The task calls it on every batch (on
            ``view_input`` when the loader gives one).
        method: a name of ``timm_kd.distill.methods.METHODS`` ('kd', 'dkd', 'dist', ...) or a built
            ``Distiller``; ``task.distiller`` is the method. Default 'kd': Hinton KD, as before.
        method_kwargs: hyper-parameters of the method given by name (e.g. ``dict(beta=8.0)`` for DKD).
        view_loss: loss on the teacher-labelled views: 'kl' (the KL at T, the authors' rule for every
            method) or 'method' (a logit method's own loss, e.g. DKD on the views).
        temperature: KD temperature T (also for the 'kld' pick score and the KL ratio).
        task_loss_weight: γ, weight of CE(s(x), y).
        distill_loss_weight: α, weight of KL(s(x), t(x)).
        mixed_kd_weight: w, the mixed-view term is weighted α·w.
        criterion: loss on the original batch, default ``nn.CrossEntropyLoss()`` (timm's
            ``create_classification_loss(**criterion_kwargs)``).
        criterion_kwargs: arguments for timm's ``create_classification_loss`` when criterion is None.
        teacher_pretrained_path / teacher_pretrained_cfg_overlay: for a teacher given by name (timm).
        teacher_input_size: the image size the teacher takes, ``N`` or ``(H, W)`` (or timm's ``(C, H, W)``): every
            batch it sees (x, the pool of views, picked rows) is resized to it on the device, bilinear with
            antialiasing (``timm_kd.distill.resolution``); the student's input is never resized. None (default):
            the teacher sees the student's input as it is. ``resolution.pretrained_input_size(teacher)`` is the
            size in the teacher's pretrained cfg.
        diagnostics: also return kl_ratio, label_disagreement, picked_share, pick_coverage (a handful of
            small kernels per step; False skips them, e.g. for speed comparisons).
        device, dtype: for the task's buffers (default: the student's device).

    The teacher input is re-normalized (as timm does) only when both models carry a ``pretrained_cfg``
    with mean/std and these differ; decided once here, so the step has no host/device sync.

    A student with a distillation token (DeiT-style, ``method='token'``) returns two heads in training: the class
    head gets the CE and is ``output``, the distillation head every teacher term (on x, on the views, in the
    pick score); the KD+CutMix baseline's hard labels train the class head.

    ``task(x, y)`` returns a dict of tensors: ``loss``, ``output`` (student logits on x), ``task_loss``,
    ``kd_loss`` (the unweighted logit term L_logit: the KL for KD, DKD's loss for DKD, ...), ``mixed_loss``
    (unweighted L_view, 0 without a view), ``teacher_output`` (detached teacher logits on x), the
    method's weighted terms by name (detached copies), and, when views are trained,
    ``teacher_view_output`` (detached teacher logits on the trained views) and, when meaningful,
    ``label_disagreement`` (share of the trained mixed views whose teacher argmax differs from the
    larger-area source label), ``kl_ratio`` (r = mean KL of picked / mean KL of pool, paper Eq. 4; for
    the criteria that score with the student: 'kld', 's_ent'), ``picked_share`` (picked / pool) and
    ``pick_coverage`` (share of the batch's images with at least one picked view).
    """

    def __init__(
            self,
            student: nn.Module,
            teacher: Union[str, nn.Module, DistillationTeacher],
            mixup: Optional[DistillMixup] = None,
            method: Union[str, Distiller] = 'kd',
            method_kwargs: Optional[Dict[str, Any]] = None,
            view_loss: str = 'kl',
            temperature: float = 4.0,
            task_loss_weight: float = 0.1,
            distill_loss_weight: float = 0.9,
            mixed_kd_weight: float = 1.0,
            criterion: Optional[nn.Module] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            teacher_input_size: Union[None, int, Tuple[int, ...]] = None,
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

        teacher = self._wrap_teacher(teacher, student, teacher_pretrained_path, teacher_pretrained_cfg_overlay)
        s_classes = _check_classes(student, teacher, mixup)
        if isinstance(method, Distiller):
            if method_kwargs:
                raise ValueError('method_kwargs only apply to a method given by name, not to a built Distiller.')
            distiller = method
        else:
            distiller = create_method(method, unwrap_model(student), unwrap_model(teacher.model),
                                      num_classes=s_classes, temperature=temperature, **(method_kwargs or {}))
        if view_loss not in VIEW_LOSSES:
            raise ValueError(f"Unknown view_loss '{view_loss}', expected one of {VIEW_LOSSES}.")
        if view_loss == 'method' and not distiller.logit_method:
            raise ValueError(f"view_loss='method' applies a logit method's loss to the views; "
                             f"{type(distiller).__name__} is not a logit method: use view_loss='kl'.")

        self.trainable_module = student
        self.teacher = teacher
        self.distiller = distiller
        self.view_loss = view_loss
        self.mixup = mixup
        self.criterion = resolve_classification_loss(criterion, self.device, criterion_kwargs=criterion_kwargs)
        self.loss_type = 'kl'
        self.temperature = float(temperature)
        self.task_loss_weight = float(task_loss_weight)
        self.distill_loss_weight = float(distill_loss_weight)
        self.mixed_kd_weight = float(mixed_kd_weight)
        self.diagnostics = diagnostics
        self.teacher_input_size: Optional[ImageSize] = \
            None if teacher_input_size is None else image_size(teacher_input_size)
        self._setup_normalization(student, teacher)
        if self.verbose:
            _logger.info(f'DistillationTask: {self.extra_repr()}, teacher re-normalization={self._renormalize}')

    def _wrap_teacher(self, teacher: Union[str, nn.Module, DistillationTeacher], student: nn.Module,
                      pretrained_path: Optional[str], pretrained_cfg_overlay: Optional[Dict[str, Any]]
                      ) -> DistillationTeacher:
        """timm's ``DistillationTeacher`` of ``teacher``: as given, wrapping a module, or built by name with
        pretrained weights for the student's classes and channels (a plain nn.Module student may lack them:
        timm's own resolution would fail there). Eval mode, frozen."""
        if not isinstance(teacher, DistillationTeacher):
            if not isinstance(teacher, (str, nn.Module)):
                raise TypeError(f'teacher must be a model name or an nn.Module, got {type(teacher).__name__}.')
            s = unwrap_model(student)
            teacher = DistillationTeacher(
                teacher, num_classes=getattr(s, 'num_classes', None), in_chans=getattr(s, 'in_chans', 3),
                pretrained_path=pretrained_path, pretrained_cfg_overlay=pretrained_cfg_overlay, device=self.device,
                dtype=self.dtype)
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher

    def _setup_normalization(self, student: nn.Module, teacher: DistillationTeacher) -> None:
        """The student's mean/std as buffers, and whether the teacher's input is re-normalized to its own (only
        when both models carry a ``pretrained_cfg`` with mean/std and these differ; decided once, no sync)."""
        s_norm, t_norm = _norm_cfg(student), _norm_cfg(teacher.model)
        self._renormalize = s_norm is not None and t_norm is not None and s_norm != t_norm
        if s_norm is not None:
            for name, values in (('student_mean', s_norm[0]), ('student_std', s_norm[1])):
                buffer = torch.tensor(values, device=self.device, dtype=self.dtype).view(1, -1, 1, 1)
                self.register_buffer(name, buffer, persistent=False)
        else:
            self.student_mean = self.student_std = None
        if self._renormalize:
            # the teacher's mean/std must be the ones from its cfg (a wrapper made elsewhere may differ)
            teacher.mean_kd.copy_(torch.tensor(t_norm[0]).view(1, -1, 1, 1))
            teacher.std_kd.copy_(torch.tensor(t_norm[1]).view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return (f'method={self.distiller.method_name or type(self.distiller).__name__}, '
                f'temperature={self.temperature}, task_loss_weight={self.task_loss_weight}, '
                f'distill_loss_weight={self.distill_loss_weight}, mixed_kd_weight={self.mixed_kd_weight}, '
                f'view_loss={self.view_loss}, teacher_input_size={self.teacher_input_size}, mixup={self.mixup}')

    def set_epoch(self, epoch: int) -> None:
        """The training epoch (0-based) about to run: the method's warm-up reads it (DKD)."""
        self.distiller.set_epoch(epoch)

    def _teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """A student-normalized batch as the teacher takes it: at its input size, in its normalization."""
        x = resize_for_teacher(x, self.teacher_input_size)
        if self._renormalize:
            x = (x * self.student_std + self.student_mean - self.teacher.mean_kd) / self.teacher.std_kd
        return x

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a student-normalized batch (eval mode, no grad)."""
        return self.teacher(self._teacher_input(x))

    @torch.no_grad()
    def _teacher_outputs(self, x: torch.Tensor) -> ModelOutputs:
        if not self.distiller.needs_features:
            return ModelOutputs(logits=self.teacher_logits(x))
        return model_outputs(self.teacher.model, self._teacher_input(x), self.distiller, 'teacher')

    def _views(self, input: torch.Tensor, target: torch.Tensor, views: Optional[MixedViews],
               view_input: Optional[torch.Tensor]) -> Optional[MixedViews]:
        """The teacher-labelled views of this batch: given, made by the mixer (from the batch, or from the
        loader's second view when there is one), or the second view itself."""
        if views is not None:
            return views
        if view_input is None:
            return self.mixup(input, target) if self.mixup is not None else None
        if self.mixup is not None:
            return self.mixup(view_input, target)
        return _unmixed_views(view_input, target)

    def forward(
            self,
            input: torch.Tensor,
            target: torch.Tensor,
            views: Optional[MixedViews] = None,
            view_input: Optional[torch.Tensor] = None,
            index: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """One distillation step on batch ``input`` with labels ``target``.

        Args:
            views: the views of this batch (a ``MixedViews``); by default the task's ``mixup`` makes them.
            view_input: a per-sample augmented second view of the batch (B, C, H, W) from the loader: a
                pool of B teacher-labelled views (mixed by the task's ``mixup`` when it has one).
            index: (B,) int64 sample indices, for methods with ``needs_index`` (CRD).
        """
        if self.teacher.training or self.teacher.model.training:
            self.teacher.eval()  # a user's teacher.train() elsewhere must not put teacher BN in train mode
        views = self._views(input, target, views, view_input)
        # 1. the teacher first, one no-grad pass over x and the view rows it labels
        t_x, labelled = self._teacher_pass(input, views)
        # 2. the student on x, the method's loss on x
        s_x = model_outputs(self.trainable_module, input, self.distiller, 'student')
        task_loss = self.criterion(s_x.logits, target)
        kd = self.distiller.distill_loss(s_x, t_x, target)
        terms = self.distiller(s_x, t_x, target, index=index)
        # 3. the views: pick (no grad), then the student on the trained rows
        mixed_loss, extras = self._view_term(views, labelled, target, kd, input.shape[0])

        loss = (self.task_loss_weight * task_loss + self.distill_loss_weight * kd
                + self.distill_loss_weight * self.mixed_kd_weight * mixed_loss)
        for term in terms.values():
            loss = loss + term
        out = {
            'loss': loss,
            'output': s_x.logits,
            'task_loss': task_loss,
            'kd_loss': kd,
            'mixed_loss': mixed_loss,
            'teacher_output': t_x.logits,
        }
        out.update({k: v.detach() for k, v in terms.items()})
        out.update({k: v.detach() for k, v in extras.items()})
        return out

    def _teacher_pass(self, input: torch.Tensor, views: Optional[MixedViews]
                      ) -> Tuple[ModelOutputs, Optional[_Labelled]]:
        """The teacher's outputs on x and, unless there are no views or they carry hard labels (the KD+CutMix
        baseline: the teacher sees only x), its logits on the view rows: the whole pool, or only the rows a
        criterion without a score ('random') drew up front. One pass over cat(x, rows)."""
        if views is None or views.soft_target is not None:
            return self._teacher_outputs(input), None
        crit = PICK_CRITERIA[views.pick] if views.pick is not None else None
        rows = views.pick_index if crit is not None and crit.score is None else None
        x_view = views.x_mix if rows is None else views.x_mix.index_select(0, rows)
        t_x, t_view = self._split_teacher(self._teacher_outputs(torch.cat([input, x_view])), input.shape[0])
        return t_x, _Labelled(x_view, t_view, rows, crit)

    def _view_term(self, views: Optional[MixedViews], labelled: Optional[_Labelled], target: torch.Tensor,
                   kd: torch.Tensor, batch_size: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(unweighted L_view, view outputs and diagnostics): picks the scored rows of the pool, runs the student
        on the trained rows and applies the view loss; 0 without views, the hard-label CE for the baseline."""
        if views is None:
            return kd.new_zeros(()), {}
        student = self.trainable_module
        if labelled is None:  # the KD+CutMix baseline
            return soft_target_cross_entropy(_heads(student(views.x_mix))[0], views.soft_target), {}
        extras: Dict[str, torch.Tensor] = {}
        x_view, t_view, rows, crit = labelled
        if crit is not None and crit.score is not None:
            rows = self._pick(x_view, t_view, crit, views.num_pick, extras)
            x_view, t_view = x_view.index_select(0, rows), t_view.index_select(0, rows)
        s_view = _distill_head(student(x_view))
        major = views.major_target() if target is not None and target.ndim == 1 else None
        if rows is not None and major is not None:
            major = major.index_select(0, rows)
        if self.view_loss == 'method':
            mixed_loss = self.distiller.logit_loss(s_view, t_view, major)
        else:
            mixed_loss = kd_loss(s_view, t_view, self.temperature)
        extras['teacher_view_output'] = t_view
        if self.diagnostics:
            if rows is not None:
                extras.update(pick_diagnostics(rows, views.x_mix.shape[0], views.source, batch_size, kd))
            if major is not None:
                mixed = views.mixed if rows is None else views.mixed.index_select(0, rows)
                extras['label_disagreement'] = label_disagreement(t_view, major, mixed)
        return mixed_loss, extras

    def _pick(self, pool: torch.Tensor, t_pool: torch.Tensor, crit: PickCriterion, num_pick: int,
              extras: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``num_pick`` pool rows with the largest score: the student scores the pool without grad, in
        train-mode BatchNorm that leaves the running statistics alone, when the criterion needs it. Adds the
        KL ratio of the picked rows to ``extras`` when the student scored."""
        s_pool = None
        if crit.needs_student:
            with torch.no_grad(), frozen_bn_stats(batchnorm_modules(unwrap_model(self.trainable_module))):
                s_pool = _distill_head(self.trainable_module(pool))
        rows = pick_topk(crit.score(s_pool, t_pool, self.temperature), num_pick)
        if s_pool is not None and self.diagnostics:
            extras['kl_ratio'] = kl_ratio(s_pool, t_pool, rows, self.temperature)
        return rows

    @staticmethod
    def _split_teacher(outputs: ModelOutputs, batch_size: int) -> Tuple[ModelOutputs, torch.Tensor]:
        """(the teacher's outputs on x, its logits on the views) from one pass over cat(x, views)."""
        def head(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t[:batch_size]
        on_x = ModelOutputs(
            logits=outputs.logits[:batch_size], pre_logits=head(outputs.pre_logits),
            features=None if outputs.features is None else [f[:batch_size] for f in outputs.features])
        return on_x, outputs.logits[batch_size:]
