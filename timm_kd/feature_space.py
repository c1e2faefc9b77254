"""``timm_kd.feature_space`` is :mod:`timm_kd.experiments.feature_space` (the feature-space analysis); this name
keeps its imports working."""
import sys

from timm_kd.experiments import feature_space as _module

sys.modules[__name__] = _module
