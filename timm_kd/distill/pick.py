""" The BatchNorm guard of the pick step's scoring pass; the criteria table is ``timm_kd.data.pick``

The student scores a pool of views in train mode (batch statistics, as the authors' code) without moving
its BatchNorm running statistics: ``frozen_bn_stats(batchnorm_modules(student))``. The pick criteria
(``PICK_CRITERIA``, ``pick_scores``, ``pick_topk``) are read from here too, under the names this module
always had.
"""
from contextlib import contextmanager
from typing import Iterable, Iterator, List

import torch.nn as nn

from timm_kd.data.pick import PICK_CRITERIA, PickCriterion, pick_scores, pick_topk

__all__ = ['PickCriterion', 'PICK_CRITERIA', 'pick_scores', 'pick_topk', 'batchnorm_modules', 'frozen_bn_stats']


def batchnorm_modules(module: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers of ``module`` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def frozen_bn_stats(modules: Iterable[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Train-mode BatchNorm (batch statistics) that leaves running_mean/var and num_batches_tracked alone.

    Inside the block ``track_running_stats`` is False: PyTorch's BatchNorm then normalizes a training
    batch with its own statistics (exactly what the authors' scoring pass computes) and passes no
    running buffers, so nothing is updated. Only Python attributes flip: no copies, no kernels.
    In eval mode the layers still use their running statistics.
    """
    toggled = [m for m in modules if m.track_running_stats]
    for m in toggled:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in toggled:
            m.track_running_stats = True
