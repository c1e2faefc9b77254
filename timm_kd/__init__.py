"""timm-kd: knowledge distillation with teacher-labelled data augmentation for timm.

``import timm_kd`` registers the CIFAR model zoo in timm's registry.
"""
__version__ = '0.1.0'

from . import models
from .models import KDCheckpointError, list_teachers, load_kd_checkpoint, read_kd_checkpoint
from .data.mixup import DistillMixup
from .distill import DistillationTask
from . import hub
