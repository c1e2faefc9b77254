""" The teacher at its own resolution: the input size it takes and the one resize that gets it there

Hub teachers are often trained at 224 or 384 px while a CIFAR or Tiny ImageNet student trains at 32 or 64 px.
The loader makes every batch at the student's size; the teacher's copy is resized on the device, inside the
task, so the student's input, its views and the data pipeline stay as they are. Every teacher pass goes through
:func:`resize_for_teacher`: the original batch, the pool of teacher-labelled views and, for a criterion that
picks before the teacher runs ('random'), the picked rows (``DistillationTask._teacher_input``), as well as the
teacher's own evaluation and the teacher-only augmentation score.

One interpolation for every size: bilinear with antialiasing (``F.interpolate(mode='bilinear',
align_corners=False, antialias=True)``). Upsampling (32 -> 224) is plain bilinear, as torchvision's default
``Resize``; downsampling averages over the footprint of each output pixel instead of aliasing. Interpolation
is linear and its weights sum to one, so it commutes with the per-channel re-normalisation of the teacher's input.
"""
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import unwrap_model

__all__ = ['TEACHER_INTERPOLATION', 'MIN_IMAGE_SIZE', 'ImageSize', 'image_size', 'pretrained_input_size',
           'resize_for_teacher']

TEACHER_INTERPOLATION = 'bilinear'  # with antialias=True; docs/training.md "Teachers at their own resolution"
MIN_IMAGE_SIZE = 8  # px, the smallest image any recipe uses (8x8 digits); train_kd's --img-size floor too

ImageSize = Tuple[int, int]


def image_size(value: Union[int, Sequence[int]], what: str = 'teacher_input_size') -> ImageSize:
    """``(H, W)`` from ``N`` (square), ``(H, W)`` or ``(C, H, W)`` (timm's ``input_size``).

    Raises ValueError (one sentence naming ``what``) for anything that is not an image size of at least
    ``MIN_IMAGE_SIZE`` px per side.
    """
    sizes = [value] if isinstance(value, int) else list(value) if isinstance(value, (tuple, list)) else None
    ok = sizes is not None and len(sizes) in (1, 2, 3) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in sizes)
    hw = (sizes * 2 if len(sizes) == 1 else sizes[-2:]) if ok else []
    if not ok or min(hw) < MIN_IMAGE_SIZE:
        raise ValueError(f'{what} must be an image size of at least {MIN_IMAGE_SIZE} px per side, got {value!r}.')
    return int(hw[0]), int(hw[1])


def pretrained_input_size(model: nn.Module) -> Optional[ImageSize]:
    """``(H, W)`` of ``model.pretrained_cfg['input_size']`` (the size its weights were trained at), or None."""
    cfg = getattr(unwrap_model(model), 'pretrained_cfg', None)
    size: Any = cfg.get('input_size') if isinstance(cfg, dict) else None
    return image_size(tuple(size), 'pretrained_cfg input_size') if size else None


def resize_for_teacher(x: torch.Tensor, size: Optional[ImageSize]) -> torch.Tensor:
    """``x`` (N, C, H, W) at ``size`` by the one interpolation (module docstring); as it is when ``size`` is None
    or already its size. Half-precision input is resized in float32 (the CPU's antialiased kernel has no bfloat16)
    and returned in its own dtype."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.interpolate(x32, size=tuple(size), mode=TEACHER_INTERPOLATION, align_corners=False, antialias=True)
    return out.to(x.dtype)
