"""CIFAR ResNets of the KD literature (resnet8 ... resnet110, resnet8x4, resnet32x4).

Layer for layer RepDistiller's ``models/resnet.py`` (He et al. CIFAR ResNet, basic blocks, three
stages, 1x1-conv projection shortcuts), with global average pooling so 32 px and 64 px input both work.
Module names equal RepDistiller's (conv1, bn1, layer{1-3}.{i}.{conv,bn}{1,2}, downsample.{0,1}, fc),
so its checkpoints load with ``timm.create_model(name, checkpoint_path=...)``.
"""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ._builder import build_cifar_model, cifar_cfg
from ._cifar_net import CifarNet, init_weights_rd
from ._convert import checkpoint_filter_fn

__all__ = ['CifarResNet']


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1, dd=None) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **(dd or {}))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (post-activation)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dd=None):
        super().__init__()
        dd = dd or {}
        self.conv1 = _conv3x3(in_chs, out_chs, stride, dd)
        self.bn1 = nn.BatchNorm2d(out_chs, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_chs, out_chs, 1, dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd),
                nn.BatchNorm2d(out_chs, **dd),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.relu(x + shortcut)


class CifarResNet(CifarNet):
    """CIFAR ResNet: 3x3 stem conv, three stages of ``(depth - 2) / 6`` basic blocks (strides 1, 2, 2)."""
    stage_attrs = ('layer1', 'layer2', 'layer3')

    def __init__(
            self,
            depth: int = 20,
            widths: Sequence[int] = (16, 16, 32, 64),
            num_classes: int = 100,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            depth: 6n + 2 layers (n basic blocks per stage).
            widths: stem width, then the width of each of the three stages.
            num_classes: Number of classes of the classifier (0 for none).
            in_chans: Number of input image channels.
            global_pool: Global pooling type ('' for none).
            drop_rate: Dropout rate before the classifier (RepDistiller: 0).
        """
        super().__init__()
        assert (depth - 2) % 6 == 0, f'depth must be 6n + 2, got {depth}'
        assert len(widths) == 4, 'widths: stem width and three stage widths'
        dd = {'device': device, 'dtype': dtype}
        num_blocks = (depth - 2) // 6
        self.in_chans = in_chans
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(widths[0], **dd)
        self.relu = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module='relu')]
        prev_chs, reduction = widths[0], 1
        for i, (chs, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [BasicBlock(prev_chs, chs, stride, dd)]
            blocks += [BasicBlock(chs, chs, 1, dd) for _ in range(num_blocks - 1)]
            self.add_module(self.stage_attrs[i], nn.Sequential(*blocks))
            prev_chs, reduction = chs, reduction * stride
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=self.stage_attrs[i]))
        self._init_head(prev_chs, num_classes, global_pool, drop_rate, dd)
        init_weights_rd(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|^bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        return self.layer3(self.layer2(self.layer1(x)))



def _cfg(arch: str, **kwargs: Any) -> Dict[str, Any]:
    return cifar_cfg(
        arch, pool_size=(8, 8), first_conv='conv1', classifier='fc',
        paper_name='Deep Residual Learning for Image Recognition', paper_ids='arXiv:1512.03385',
        origin_url='https://github.com/HobbitLong/RepDistiller', **kwargs)


_ARCHS = {  # name: (depth, widths); RepDistiller's resnet.py constructors
    'resnet8': (8, (16, 16, 32, 64)),
    'resnet14': (14, (16, 16, 32, 64)),
    'resnet20': (20, (16, 16, 32, 64)),
    'resnet32': (32, (16, 16, 32, 64)),
    'resnet44': (44, (16, 16, 32, 64)),
    'resnet56': (56, (16, 16, 32, 64)),
    'resnet110': (110, (16, 16, 32, 64)),
    'resnet8x4': (8, (32, 64, 128, 256)),
    'resnet32x4': (32, (32, 64, 128, 256)),
}

default_cfgs = generate_default_cfgs({f'{name}.cifar100': _cfg(name) for name in _ARCHS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    depth, widths = _ARCHS[variant]
    return build_cifar_model(
        CifarResNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **dict(dict(depth=depth, widths=widths), **kwargs),
    )


@register_model
def resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8 for CIFAR (widths 16/16/32/64)."""
    return _create('resnet8', pretrained, **kwargs)


@register_model
def resnet14(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-14 for CIFAR (widths 16/16/32/64)."""
    return _create('resnet14', pretrained, **kwargs)


@register_model
def resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (widths 16/16/32/64)."""
    return _create('resnet20', pretrained, **kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (widths 16/16/32/64)."""
    return _create('resnet32', pretrained, **kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (widths 16/16/32/64)."""
    return _create('resnet44', pretrained, **kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (widths 16/16/32/64)."""
    return _create('resnet56', pretrained, **kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (widths 16/16/32/64)."""
    return _create('resnet110', pretrained, **kwargs)


@register_model
def resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8x4 (CRD's 4x wide ResNet-8, widths 32/64/128/256)."""
    return _create('resnet8x4', pretrained, **kwargs)


@register_model
def resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32x4 (CRD's 4x wide ResNet-32, widths 32/64/128/256)."""
    return _create('resnet32x4', pretrained, **kwargs)
