"""Default pretrained cfgs and the model builder shared by the CIFAR model families.

Registered names resolve pretrained weights from a Hub organisation: ``timm-kd`` by default, or the
value of the ``TIMM_KD_HUB_ORG`` environment variable read when ``timm_kd`` is imported. When that Hub
repo has no weights, the local teacher store's folder of the same name is used (:mod:`._store`).
"""
import os
from typing import Any, Callable, Dict

import torch.nn as nn
from timm.models import build_model_with_cfg

from ._store import pretrained_kwargs

__all__ = ['CIFAR100_MEAN', 'CIFAR100_STD', 'DEFAULT_HUB_ORG', 'hub_org', 'cifar_cfg', 'build_cifar_model']

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
DEFAULT_HUB_ORG = 'timm-kd'


def hub_org() -> str:
    """The Hub organisation that holds the published CIFAR-100 weights of registered models."""
    return os.environ.get('TIMM_KD_HUB_ORG', DEFAULT_HUB_ORG).strip('/') or DEFAULT_HUB_ORG


def cifar_cfg(arch: str, tag: str = 'cifar100', **kwargs: Any) -> Dict[str, Any]:
    """Pretrained cfg for a CIFAR-100 model whose weights live at ``<hub_org>/<arch>.<tag>``."""
    return {
        'hf_hub_id': f'{hub_org()}/{arch}.{tag}',
        'num_classes': 100,
        'input_size': (3, 32, 32),
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'mean': CIFAR100_MEAN,
        'std': CIFAR100_STD,
        'first_conv': 'conv1',
        'classifier': 'fc',
        'license': 'apache-2.0',
        **kwargs,
    }


def build_cifar_model(model_cls: Callable[..., nn.Module], variant: str, pretrained: bool = False,
                      **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg``, with ``pretrained=True`` weights from the local teacher store when the
    model's Hub repo has none."""
    if pretrained:
        kwargs = pretrained_kwargs(variant, kwargs)
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
