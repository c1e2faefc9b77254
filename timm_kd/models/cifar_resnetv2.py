"""ResNet-18 / ResNet-50 for CIFAR, as used in the KD literature.

The ``ResNet18`` / ``ResNet50`` of RepDistiller's ``models/resnetv2.py`` (Tian et al., "Contrastive
Representation Distillation"), layer for layer: an ImageNet-width ResNet (64..512 channels, post-activation,
not timm's pre-activation ResNetV2) with a 3x3 stride-1 stem and no max-pool, stages at strides 1, 2, 2, 2.
Module names equal RepDistiller's (``conv1, bn1, layer{1-4}.{i}.{conv,bn}{1-3}, ...shortcut.{0,1}, linear``),
so RepDistiller checkpoints load unchanged. Pooling is global, so 32x32 (CIFAR) and 64x64 (Tiny ImageNet)
inputs both work.
"""
from typing import Any, Dict, Tuple, Type

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ._builder import build_cifar_model, cifar_cfg
from ._cifar_net import CifarNet
from ._convert import checkpoint_filter_fn

__all__ = ['CifarResNetV2']


def _shortcut(in_chs: int, out_chs: int, stride: int, dd: Dict[str, Any]) -> nn.Sequential:
    """1x1 conv + BN projection when the shape changes; an empty Sequential (identity, no keys) otherwise."""
    if stride == 1 and in_chs == out_chs:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd),
        nn.BatchNorm2d(out_chs, **dd),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(planes, **dd)
        self.shortcut = _shortcut(in_chs, planes, stride, dd)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False, **dd)  # stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(out_chs, **dd)
        self.shortcut = _shortcut(in_chs, out_chs, stride, dd)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


class CifarResNetV2(CifarNet):
    """Four-stage CIFAR ResNet (RepDistiller ``resnetv2.ResNet``): feature levels stem + ``layer1..layer4``."""
    stage_attrs = ('layer1', 'layer2', 'layer3', 'layer4')
    head_attr = 'linear'

    def __init__(
            self,
            block: Type[nn.Module] = BasicBlock,
            layers: Tuple[int, ...] = (2, 2, 2, 2),
            num_classes: int = 100,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            block: ``BasicBlock`` (ResNet-18) or ``Bottleneck`` (ResNet-50).
            layers: Number of blocks in each of the four stages.
            num_classes: Classifier outputs; 0 removes the classifier.
            in_chans: Input image channels.
            global_pool: Global pooling type ('' disables pooling and flattening, needs num_classes=0).
            drop_rate: Dropout before the classifier (RepDistiller has none: 0).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.in_chans = in_chans
        self.grad_checkpointing = False

        # registration order == execution order, FeatureListNet rebuilds the forward from the children
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(64, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=64, reduction=1, module='act1')]
        in_chs = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(in_chs, planes, stride if j == 0 else 1, **dd))
                in_chs = planes * block.expansion
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=2 ** i, module=f'layer{i + 1}'))

        self._init_head(in_chs, num_classes, global_pool, drop_rate, dd)

        # RepDistiller's init; the Linear keeps PyTorch's default init as in RepDistiller
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|^bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_classifier(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)



def _cfg(arch: str, **kwargs: Any) -> Dict[str, Any]:
    return cifar_cfg(arch, classifier='linear', pool_size=(4, 4), **kwargs)


default_cfgs = generate_default_cfgs({
    'resnet18_cifar.cifar100': _cfg('resnet18_cifar'),
    'resnet50_cifar.cifar100': _cfg('resnet50_cifar'),
})
# RepDistiller's names (read by timm_kd.models.map_arch when converting teachers)
ORIGINAL_NAMES = {'ResNet18': 'resnet18_cifar', 'ResNet50': 'resnet50_cifar'}


def _create_resnetv2(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNetV2:
    return build_cifar_model(
        CifarResNetV2, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNetV2:
    """ResNet-18 for CIFAR (RepDistiller ``ResNet18``): BasicBlock, 2-2-2-2, 64..512 channels."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnetv2('resnet18_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNetV2:
    """ResNet-50 for CIFAR (RepDistiller ``ResNet50``): Bottleneck, 3-4-6-3, 256..2048 output channels."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnetv2('resnet50_cifar', pretrained, **dict(model_args, **kwargs))
