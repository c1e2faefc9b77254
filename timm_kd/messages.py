"""``timm_kd.messages`` is :mod:`timm_kd.utils.messages` (this name is kept for the imports that use it)."""
import sys

from timm_kd.utils import messages

sys.modules[__name__] = messages
