"""Architecture names of other KD code bases (RepDistiller / CRD, mdistiller, Good-DA) -> our registered names.

Each family module lists the names that differ from ours in a module-level ``ORIGINAL_NAMES`` dict
(``vgg13`` -> ``vgg13_cifar``); names equal to ours need no entry. The table is read from timm's
registry, so a new family file is picked up by importing it: nothing else to edit.
"""
import os
import sys
from typing import Dict, Optional, Union

import timm
from timm.models import model_entrypoint

__all__ = ['original_names', 'map_arch', 'arch_from_path']

_CHECKPOINT_SUFFIXES = ('.pth.tar', '.safetensors', '.pth', '.pt', '.bin')


def original_names() -> Dict[str, str]:
    """Every name a KD checkpoint may use for one of our models -> our registered name."""
    names: Dict[str, str] = {}
    for model in timm.list_models():
        module = model_entrypoint(model).__module__
        if module.startswith('timm_kd.'):
            names.setdefault(model, model)
            names.update(getattr(sys.modules[module], 'ORIGINAL_NAMES', {}))
    return names


def map_arch(name: str) -> str:
    """Our registered name for a RepDistiller-style architecture name (any case), or a registered timm name."""
    names = original_names()
    found = names.get(name) or {k.lower(): v for k, v in names.items()}.get(name.lower())
    if found:
        return found
    if timm.is_model(name):
        return name
    raise ValueError(f'Unknown teacher architecture {name!r}: expected a RepDistiller name '
                     f'({", ".join(sorted(n for n, ours in names.items() if n != ours))}, or one of ours) '
                     f'or a registered timm model; pass --arch.')


def arch_from_path(path: Union[str, os.PathLike]) -> Optional[str]:
    """The architecture a checkpoint path names (``<arch>_vanilla/ckpt_epoch_240.pth``, ``<arch>_best.pth``,
    ``<arch>.cifar100.pth``), as written there; None when the path names none of ours."""
    parts = str(path).replace('\\', '/').rstrip('/').split('/')
    if len(parts) > 1 and '_vanilla' in parts[-2]:
        return parts[-2].split('_vanilla')[0]
    stem = parts[-1]
    for ext in _CHECKPOINT_SUFFIXES:
        if stem.endswith(ext):
            stem = stem[:-len(ext)]
            break
    for suffix in ('_best', '_last', '_vanilla', '.cifar100'):
        stem = stem.split(suffix)[0]
    return stem if stem.lower() in {n.lower() for n in original_names()} else None
