"""``timm_kd.distill.features`` is :mod:`timm_kd.distill.intermediates` (the intermediate features of any timm
model); this name keeps its imports working."""
import sys

from timm_kd.distill import intermediates as _module

sys.modules[__name__] = _module
