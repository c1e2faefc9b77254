""" The values a number may take: one rule and one wording for every range timm-kd checks

train_kd's flags (``timm_kd.train.args``), each method's flags (``Distiller.arg_ranges``) and the sections of timm's
policy strings (``timm_kd.data.views``) declare their ranges in this form and are checked and named by these helpers,
so a bound reads the same wherever a user meets it.
"""
import math
from typing import Optional, Tuple

__all__ = ['FlagRange', 'POSITIVE', 'NON_NEGATIVE', 'AT_LEAST_ONE', 'in_range', 'range_text']

# (low, high, low excluded, high excluded); None = unbounded
FlagRange = Tuple[Optional[float], Optional[float], bool, bool]
POSITIVE: FlagRange = (0, None, True, False)
NON_NEGATIVE: FlagRange = (0, None, False, False)
AT_LEAST_ONE: FlagRange = (1, None, False, False)


def in_range(value: float, allowed: FlagRange) -> bool:
    """``value`` is finite and within ``allowed``."""
    low, high, low_open, high_open = allowed
    return math.isfinite(value) and (low is None or (value > low if low_open else value >= low)) and \
        (high is None or (value < high if high_open else value <= high))


def range_text(allowed: FlagRange) -> str:
    """``allowed`` in words, to follow 'must be': '> 0', '>= 1', 'in [0, 1)', or 'a finite number' (no bounds)."""
    low, high, low_open, high_open = allowed
    if low is None:
        return 'a finite number'
    if high is None:
        return f'{">" if low_open else ">="} {low:g}'
    return f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
