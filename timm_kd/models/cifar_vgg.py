"""VGG with BatchNorm for CIFAR of the KD literature (vgg8_cifar, vgg11_cifar ... vgg19_cifar).

Layer for layer RepDistiller's ``models/vgg.py`` ``vgg*_bn`` (five conv blocks, convs with bias, no FC
layers but the classifier, global average pooling). Named ``*_cifar`` because timm has its own
vgg11/13/16/19. Module names equal RepDistiller's (``block{0-4}.{j}`` = conv / BN / ReLU sequences,
``classifier``), so its checkpoints load with ``timm.create_model(name, checkpoint_path=...)``.

Input size: blocks 0-3 are each followed by a 2x2 max pool, except that RepDistiller (and Good-DA)
apply the pool after block 3 only for 64 px input (Tiny ImageNet), so block 4 always runs at 4x4 for
32 px and 64 px input. Here that pool runs when block 3's output is at least 8 px high, which is the
same for 32 and 64 px input and treats any larger input like 64 px. ``feature_info`` reductions are
those of 32 px input (block 4 at stride 8; stride 16 for inputs of 64 px and more).
"""
from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ._builder import build_cifar_model, cifar_cfg
from ._cifar_net import CifarNet, init_weights_rd
from ._convert import checkpoint_filter_fn

__all__ = ['CifarVGG']


@register_notrace_module  # the size test is data dependent: keep FX from tracing into it
class ConditionalMaxPool2d(nn.Module):
    """2x2 max pool applied only to maps at least ``min_size`` px high (RepDistiller's ``pool3``)."""

    def __init__(self, min_size: int = 8):
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] >= self.min_size:
            return F.max_pool2d(x, kernel_size=2, stride=2)
        return x


def _conv_block(in_chs: int, widths: Sequence[int], dd) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU repeated, without the last ReLU (RepDistiller's ``_make_layers``)."""
    layers: List[nn.Module] = []
    for chs in widths:
        layers += [nn.Conv2d(in_chs, chs, 3, padding=1, **dd), nn.BatchNorm2d(chs, **dd), nn.ReLU(inplace=True)]
        in_chs = chs
    return nn.Sequential(*layers[:-1])


class CifarVGG(CifarNet):
    """Five conv blocks with 2x2 max pools between them, global average pool, linear classifier.

    Children are registered in forward order (block, act, pool, ...), so timm's feature wrappers
    can walk them; the activation and pool modules hold no weights, so the keys stay RepDistiller's.
    """
    stage_attrs = ('block1', 'block2', 'block3', 'block4')
    head_attr = 'classifier'

    def __init__(
            self,
            widths: Sequence[Sequence[int]] = ((64,), (128,), (256,), (512,), (512,)),
            num_classes: int = 100,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            widths: Conv widths of each of the five blocks.
            num_classes: Number of classes of the classifier (0 for none).
            in_chans: Number of input image channels.
            global_pool: Global pooling type ('' for none).
            drop_rate: Dropout rate before the classifier (RepDistiller: 0).
        """
        super().__init__()
        assert len(widths) == 5, 'VGG has five conv blocks'
        dd = {'device': device, 'dtype': dtype}
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.feature_info = []
        prev_chs, reduction = in_chans, 1
        for i, block_widths in enumerate(widths):
            if i > 0:
                self.add_module(f'pool{i - 1}', ConditionalMaxPool2d() if i == 4 else nn.MaxPool2d(2, 2))
                reduction *= 2 if i < 4 else 1
            self.add_module(f'block{i}', _conv_block(prev_chs, block_widths, dd))
            self.add_module(f'act{i}', nn.ReLU(inplace=True))
            prev_chs = block_widths[-1]
            self.feature_info.append(dict(num_chs=prev_chs, reduction=reduction, module=f'act{i}'))
        self._init_head(prev_chs, num_classes, global_pool, drop_rate, dd)
        init_weights_rd(self, linear_std=0.01)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^block0\.', blocks=r'^block([1-4])\.')

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act0(self.block0(x))

    def forward_stage(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, f'pool{idx}')(x)
        return getattr(self, f'act{idx + 1}')(super().forward_stage(idx, x))

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> List[int]:
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        for idx in range(max(take_indices), len(self.stage_attrs)):  # pool and act of the pruned stages
            setattr(self, f'pool{idx}', nn.Identity())
            setattr(self, f'act{idx + 1}', nn.Identity())
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([
                self.block0, self.act0, self.pool0, self.block1, self.act1, self.pool1, self.block2, self.act2,
                self.pool2, self.block3, self.act3, self.pool3, self.block4, self.act4], x)
        x = self.act0(self.block0(x))
        x = self.act1(self.block1(self.pool0(x)))
        x = self.act2(self.block2(self.pool1(x)))
        x = self.act3(self.block3(self.pool2(x)))
        return self.act4(self.block4(self.pool3(x)))

    def forward_classifier(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)



def _cfg(arch: str, **kwargs: Any) -> Dict[str, Any]:
    return cifar_cfg(
        arch, pool_size=(4, 4), first_conv='block0.0', classifier='classifier',
        paper_name='Very Deep Convolutional Networks for Large-Scale Image Recognition', paper_ids='arXiv:1409.1556',
        origin_url='https://github.com/HobbitLong/RepDistiller', **kwargs)


_ARCHS = {  # RepDistiller's cfg 'S', 'A', 'B', 'D', 'E': conv widths per block
    'vgg8_cifar': ((64,), (128,), (256,), (512,), (512,)),
    'vgg11_cifar': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    'vgg13_cifar': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    'vgg16_cifar': ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    'vgg19_cifar': ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

default_cfgs = generate_default_cfgs({f'{name}.cifar100': _cfg(name) for name in _ARCHS})
# RepDistiller calls them vgg8 / vgg8_bn ... (read by timm_kd.models.map_arch when converting teachers)
ORIGINAL_NAMES = {name.replace('_cifar', bn): name for name in _ARCHS for bn in ('', '_bn')}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    return build_cifar_model(
        CifarVGG, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4)),
        **dict(dict(widths=_ARCHS[variant]), **kwargs),
    )


@register_model
def vgg8_cifar(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-8 with BN for CIFAR (RepDistiller's vgg8_bn)."""
    return _create('vgg8_cifar', pretrained, **kwargs)


@register_model
def vgg11_cifar(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-11 with BN for CIFAR (RepDistiller's vgg11_bn)."""
    return _create('vgg11_cifar', pretrained, **kwargs)


@register_model
def vgg13_cifar(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-13 with BN for CIFAR (RepDistiller's vgg13_bn)."""
    return _create('vgg13_cifar', pretrained, **kwargs)


@register_model
def vgg16_cifar(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16 with BN for CIFAR (RepDistiller's vgg16_bn)."""
    return _create('vgg16_cifar', pretrained, **kwargs)


@register_model
def vgg19_cifar(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-19 with BN for CIFAR (RepDistiller's vgg19_bn)."""
    return _create('vgg19_cifar', pretrained, **kwargs)
