"""Data: DistillMixup (mixed views for distillation)."""
from .mixup import DistillMixup, MixedViews
