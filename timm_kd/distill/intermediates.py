""" Intermediate features of any timm model: stage maps, pre-logits and logits in one forward

Feature methods (FitNet, AT, SP, CC, VID, PKT, CRD) compare the student's and the teacher's intermediate
feature maps or pooled features. RepDistiller gets them from its own models' ``is_feat=True`` forward,
a list ``f0 (stem), f1..fn (stage outputs), pooled``. timm-kd takes them from timm's standard API, so
every timm model that implements it works (our CIFAR zoo, timm's ImageNet models, mixed families):

* levels: ``model.feature_info`` (one entry per level: ``num_chs``, ``reduction``, ``module``) and
  ``model.forward_intermediates(x, indices)``, which returns the final features together with the
  requested levels; for a CNN level 0 is the stem, levels 1..n the stages (RepDistiller's f0..fn);
* pre-logits: ``model.forward_head(final, pre_logits=True)`` (RepDistiller's pooled ``feat[-1]``),
  then the classifier ``model.get_classifier()`` on it gives the logits.

``forward_with_features`` runs ONE forward per model: stem and stages once (keeping the requested
levels), the head once on the final features, so its logits equal ``model(x)``. A student wrapped by
DistributedDataParallel runs it through the wrapper, so its gradients are still reduced across processes.

Stage matching between a student and a teacher of different depths (``matched_stages``): the stem
(level 0) is dropped as in RepDistiller (``feat[1:-1]``), and the deepest ``n = min(stages)`` stages of
each model are paired from the end (last with last, ...). For pairs with as many stages (every
RepDistiller pair), this is RepDistiller's choice; for resnet18 <- resnet34 it pairs layer1..layer4.
Maps of different spatial size are compared after average-pooling the larger one to the smaller
(``match_spatial``, RepDistiller's rule for AT and VID).
"""
import functools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import unwrap_model

__all__ = [
    'FeatureOutputs', 'check_feature_models', 'feature_channels', 'pre_logits_dim', 'matched_stages', 'matched_level',
    'forward_with_features', 'match_spatial', 'no_autocast',
]


# logits (B, C), the requested feature maps (or None), pre-logits (B, D) (or None)
FeatureOutputs = Tuple[torch.Tensor, Optional[List[torch.Tensor]], Optional[torch.Tensor]]


def check_feature_models(student: nn.Module, teacher: nn.Module, method: str) -> None:
    """Raise ValueError (one sentence) when the student or the teacher cannot give intermediate features.

    Args:
        student, teacher: the two models (DDP / torch.compile wrappers are looked through).
        method: the method's name, for the message.
    """
    for model, role in ((student, 'student'), (teacher, 'teacher')):
        model = unwrap_model(model)
        missing = [name for name in ('forward_intermediates', 'feature_info', 'forward_head', 'get_classifier')
                   if not hasattr(model, name)]
        if missing:
            raise ValueError(
                f"distillation method {method!r} needs intermediate features, but the {role} "
                f"{type(model).__name__} has no {', '.join(missing)} (a timm model with forward_intermediates "
                f"and feature_info is needed).")


def feature_channels(model: nn.Module) -> List[int]:
    """Channels of every feature level of ``model`` (``feature_info``, level 0 first)."""
    return [int(info['num_chs']) for info in unwrap_model(model).feature_info]


def pre_logits_dim(model: nn.Module) -> int:
    """Width of ``forward_head(x, pre_logits=True)`` (timm's ``head_hidden_size``, else ``num_features``)."""
    model = unwrap_model(model)
    return int(getattr(model, 'head_hidden_size', None) or model.num_features)


def _stage_levels(model: nn.Module) -> List[int]:
    """Feature levels after the stem (level 0 is dropped unless it is the only one)."""
    num_levels = len(unwrap_model(model).feature_info)
    return list(range(1, num_levels)) if num_levels > 1 else [0]


def matched_stages(student: nn.Module, teacher: nn.Module) -> Tuple[List[int], List[int]]:
    """Student and teacher feature levels to pair: the deepest ``min(#stages)`` stages of each, from the end.

    Returns:
        (student_levels, teacher_levels), equally long, shallow to deep.
    """
    s_levels, t_levels = _stage_levels(student), _stage_levels(teacher)
    n = min(len(s_levels), len(t_levels))
    return s_levels[-n:], t_levels[-n:]


def matched_level(student: nn.Module, teacher: nn.Module, student_level: int) -> int:
    """The teacher level paired with the student's ``student_level`` (same distance from the last level).

    Raises ValueError when the student has no such level or the teacher has too few levels.
    """
    s_num, t_num = len(unwrap_model(student).feature_info), len(unwrap_model(teacher).feature_info)
    teacher_level = student_level + t_num - s_num
    if not 0 <= student_level < s_num or teacher_level < 0:
        raise ValueError(
            f'feature level {student_level} does not exist in both models: the student has levels '
            f'0..{s_num - 1}, the teacher 0..{t_num - 1} (paired from the last level).')
    return teacher_level


def _features_forward(net: nn.Module, x: torch.Tensor, indices: Sequence[int], pre_logits: bool) -> FeatureOutputs:
    levels = sorted(set(indices))
    final, features = net.forward_intermediates(x, indices=levels) if levels else (net.forward_features(x), [])
    by_level = dict(zip(levels, features))
    features = [by_level[i] for i in indices] or None
    if pre_logits:
        pooled = net.forward_head(final, pre_logits=True)
        head = net.get_classifier()
        # a student with a distillation token has two heads on two tokens (a tuple): its own head forward
        logits = head(pooled) if isinstance(head, nn.Module) else net.forward_head(final)
        return logits, features, pooled
    return net.forward_head(final), features, None


def forward_with_features(
        model: nn.Module,
        x: torch.Tensor,
        indices: Sequence[int] = (),
        pre_logits: bool = False,
) -> FeatureOutputs:
    """Logits, the feature maps at ``indices`` and (optionally) the pre-logits of ``model`` in one forward.

    Args:
        model: a timm model, or one wrapped by DistributedDataParallel (the forward then runs through the
            wrapper, so that DDP synchronizes the gradients) or torch.compile (its original module runs).
        x: the input batch.
        indices: feature levels to return, in this order (``feature_info`` numbering).
        pre_logits: also return ``forward_head(final, pre_logits=True)``; the logits are then the
            classifier applied to it, the same computation as ``forward_head(final)``.

    Returns:
        ``(logits, features or None, pre_logits or None)``, the fields of the methods' ``ModelOutputs``.
    """
    if not indices and not pre_logits:
        return model(x), None, None
    net = unwrap_model(model)
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return _features_forward(net, x, indices, pre_logits)
    # DDP only reduces the gradients of a forward made through it: let it call this forward instead of
    # the module's own for one call
    own_forward = net.__dict__.get('forward')
    net.forward = functools.partial(_features_forward, net, indices=indices, pre_logits=pre_logits)
    try:
        return model(x)
    finally:
        if own_forward is None:
            del net.forward
        else:
            net.forward = own_forward


def match_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two NCHW maps to the other's height and width (RepDistiller's AT / VID rule)."""
    s_hw, t_hw = f_s.shape[-2:], f_t.shape[-2:]
    if s_hw == t_hw:
        return f_s, f_t
    if s_hw[0] * s_hw[1] > t_hw[0] * t_hw[1]:
        return F.adaptive_avg_pool2d(f_s, t_hw), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, s_hw)


def no_autocast(like: torch.Tensor) -> torch.autocast:
    """Autocast off on ``like``'s device: relation losses (Gram matrices, exp of scores) need float32 or
    float64 matmuls even when the models run under bf16 / fp16 autocast."""
    return torch.autocast(like.device.type, enabled=False)
