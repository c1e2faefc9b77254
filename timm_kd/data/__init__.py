"""Data: DistillMixup (mixed views for distillation), KD recipe transforms and datasets."""
from .mixup import DistillMixup, MixedViews
from .datasets import DatasetNotFoundError, create_kd_dataset, dataset_defaults
from .transforms import create_kd_transform
