"""``timm_kd.figures`` is :mod:`timm_kd.experiments.figures` (figures of runs); this name keeps its imports
working."""
import sys

from timm_kd.experiments import figures as _module

sys.modules[__name__] = _module
