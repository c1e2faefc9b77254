"""timm-kd: knowledge distillation with teacher-labelled data augmentation for timm.

``import timm_kd`` registers the CIFAR model zoo in timm's registry.
"""
__version__ = '0.1.0'

from . import models
from .models import KDCheckpointError, load_kd_checkpoint, read_kd_checkpoint
# distill before data: data.mixup reads the pick-criteria table of timm_kd.distill.pick, and
# timm_kd.distill.task imports data.mixup (which then finds distill.pick already loaded)
from .distill import DistillationTask
from .data.mixup import DistillMixup
from . import hub
