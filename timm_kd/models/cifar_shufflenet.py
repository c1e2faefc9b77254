"""ShuffleNet V1 / V2 for CIFAR, as used in the KD literature.

RepDistiller's ``ShuffleV1`` (``models/ShuffleNetv1.py``: widths 240/480/960, blocks 4/8/4, 3 groups) and
``ShuffleV2`` (``models/ShuffleNetv2.py``, net_size 1: widths 116/232/464 + a 1x1 conv to 1024, blocks 3/7/3),
layer for layer. Both use a 1x1 stride-1 stem (24 channels) and no max-pool, so three stride-2 stages end at
a 4x4 map on 32 px input. Module names equal RepDistiller's (``conv1, bn1, layer{1-3}.{i}.{conv,bn}{1-5},
[conv2, bn2,] linear``), so its checkpoints load unchanged. RepDistiller pools with a fixed 4x4 kernel, which
fails at 64 px; here pooling is global, so 32 and 64 px inputs both work.

RepDistiller details kept on purpose (they differ from the ShuffleNet papers): V1 has a ReLU after the
depthwise conv, its first block's 1x1 group conv uses 1 group on the 24-channel stem output, and the
channel shuffle of that block then is a no-op; V2 has no max-pool and puts a ReLU on both 1x1 convs only.
"""
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ._builder import build_cifar_model, cifar_cfg
from ._cifar_net import CifarNet
from ._convert import checkpoint_filter_fn

__all__ = ['CifarShuffleNetV1', 'CifarShuffleNetV2']


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g * k, H, W) -> interleave the g groups of k channels. Written without reading the shape into
    Python ints so that FX tracing works."""
    return x.unflatten(1, [groups, -1]).transpose(1, 2).flatten(1, 2)


class ShuffleV1Block(nn.Module):
    """RepDistiller ShuffleNetV1 ``Bottleneck``: 1x1 group conv, shuffle, 3x3 dw conv, 1x1 group conv.

    Stride 1 adds the input; stride 2 concatenates a 3x3 average-pooled input, so the block outputs
    ``out_chs + in_chs`` channels.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        mid_chs = out_chs // 4
        g1 = 1 if in_chs == 24 else groups  # RepDistiller: the 24-channel stem output is not split into groups
        self.stride = stride
        self.shuffle_groups = g1
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, groups=g1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(mid_chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, groups=mid_chs, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(mid_chs, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(out_chs, **dd)
        # AvgPool2d counts the zero padding (count_include_pad=True), as RepDistiller
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return self.act3(out)


class ShuffleV2Block(nn.Module):
    """RepDistiller ShuffleNetV2 ``BasicBlock``: keep the first half of the channels, run the second half
    through 1x1 -> 3x3 dw -> 1x1, concatenate, shuffle with 2 groups."""

    def __init__(self, chs: int, split_ratio: float = 0.5, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.keep = int(chs * split_ratio)
        branch_chs = chs - self.keep
        self.conv1 = nn.Conv2d(branch_chs, branch_chs, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(branch_chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(branch_chs, branch_chs, 3, 1, 1, groups=branch_chs, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(branch_chs, **dd)
        self.conv3 = nn.Conv2d(branch_chs, branch_chs, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(branch_chs, **dd)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, :self.keep], x[:, self.keep:]
        out = self.act1(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = self.act3(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """RepDistiller ShuffleNetV2 ``DownBlock``: two stride-2 branches of ``out_chs // 2`` channels each
    (left: 3x3 dw -> 1x1; right: 1x1 -> 3x3 dw -> 1x1), concatenated and shuffled with 2 groups."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        mid_chs = out_chs // 2
        # left
        self.conv1 = nn.Conv2d(in_chs, in_chs, 3, 2, 1, groups=in_chs, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(in_chs, **dd)
        self.conv2 = nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(mid_chs, **dd)
        self.act2 = nn.ReLU(inplace=True)
        # right
        self.conv3 = nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(mid_chs, **dd)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(mid_chs, mid_chs, 3, 2, 1, groups=mid_chs, bias=False, **dd)
        self.bn4 = nn.BatchNorm2d(mid_chs, **dd)
        self.conv5 = nn.Conv2d(mid_chs, mid_chs, 1, bias=False, **dd)
        self.bn5 = nn.BatchNorm2d(mid_chs, **dd)
        self.act5 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.act2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.act3(self.bn3(self.conv3(x)))
        right = self.act5(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class _CifarShuffleNet(CifarNet):
    """Shared stem and stages: feature levels stem (``act1``) + ``layer1..layer3``, then an optional head
    conv (ShuffleNetV2's ``conv2, bn2``, the ``final_conv`` of ``CifarNet``), global pooling and ``linear``."""
    stage_attrs = ('layer1', 'layer2', 'layer3')
    head_attr = 'linear'

    def __init__(self, in_chans: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.in_chans = in_chans
        self.grad_checkpointing = False
        # registration order == execution order, FeatureListNet rebuilds the forward from the children
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(24, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=24, reduction=1, module='act1')]

    def _add_stages(self, stages: Sequence[List[nn.Module]], widths: Sequence[int]):
        for i, (blocks, chs) in enumerate(zip(stages, widths)):
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=chs, reduction=2 ** (i + 1), module=f'layer{i + 1}'))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv1|^bn1',
            blocks=[(r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)', None), (r'^conv2|^bn2', (99999,))],
        )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        else:
            x = self.layer3(self.layer2(self.layer1(x)))
        return self.forward_norm(x)

    def forward_classifier(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class CifarShuffleNetV1(_CifarShuffleNet):
    """CIFAR ShuffleNetV1 (RepDistiller ``ShuffleNet``): no head conv, ``num_features`` = last stage width."""

    def __init__(
            self,
            out_planes: Tuple[int, ...] = (240, 480, 960),
            num_blocks: Tuple[int, ...] = (4, 8, 4),
            groups: int = 3,
            num_classes: int = 100,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            out_planes: Output channels of the three stages.
            num_blocks: Blocks per stage (the first one downsamples and concatenates its pooled input).
            groups: Groups of the 1x1 convs (and of the channel shuffle).
            num_classes: Classifier outputs; 0 removes the classifier.
            in_chans: Input image channels.
            global_pool: Global pooling type ('' disables pooling and flattening, needs num_classes=0).
            drop_rate: Dropout before the classifier (RepDistiller has none: 0).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__(in_chans, **dd)
        in_chs = 24
        stages = []
        for out_chs, depth in zip(out_planes, num_blocks):
            blocks = [ShuffleV1Block(in_chs, out_chs - in_chs, 2, groups, **dd)]
            blocks += [ShuffleV1Block(out_chs, out_chs, 1, groups, **dd) for _ in range(depth - 1)]
            stages.append(blocks)
            in_chs = out_chs
        self._add_stages(stages, out_planes)
        self._init_head(in_chs, num_classes, global_pool, drop_rate, dd)


class CifarShuffleNetV2(_CifarShuffleNet):
    """CIFAR ShuffleNetV2 (RepDistiller ``ShuffleNetV2``): a 1x1 conv + BN + ReLU (``conv2``, ``bn2``) widens the
    last stage to ``num_features`` before pooling; it is the last layer of ``forward_features``."""
    final_conv = True

    def __init__(
            self,
            out_channels: Tuple[int, ...] = (116, 232, 464, 1024),
            num_blocks: Tuple[int, ...] = (3, 7, 3),
            num_classes: int = 100,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            out_channels: Output channels of the three stages, then of the head conv.
            num_blocks: Blocks per stage after its downsampling block.
            num_classes: Classifier outputs; 0 removes the classifier.
            in_chans: Input image channels.
            global_pool: Global pooling type ('' disables pooling and flattening, needs num_classes=0).
            drop_rate: Dropout before the classifier (RepDistiller has none: 0).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__(in_chans, **dd)
        in_chs = 24
        stages = []
        for out_chs, depth in zip(out_channels[:3], num_blocks):
            stages.append([ShuffleV2DownBlock(in_chs, out_chs, **dd)] + [
                ShuffleV2Block(out_chs, **dd) for _ in range(depth)])
            in_chs = out_chs
        self._add_stages(stages, out_channels[:3])
        self.conv2 = nn.Conv2d(in_chs, out_channels[3], 1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(out_channels[3], **dd)
        self.act2 = nn.ReLU(inplace=True)
        self._init_head(out_channels[3], num_classes, global_pool, drop_rate, dd)

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(x)))

    def prune_norm(self) -> None:
        self.conv2, self.bn2, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()



def _cfg(arch: str, **kwargs: Any) -> Dict[str, Any]:
    return cifar_cfg(arch, classifier='linear', pool_size=(4, 4), **kwargs)


default_cfgs = generate_default_cfgs({
    'shufflenetv1_cifar.cifar100': _cfg('shufflenetv1_cifar'),
    'shufflenetv2_cifar.cifar100': _cfg('shufflenetv2_cifar'),
})
# RepDistiller's names (read by timm_kd.models.map_arch when converting teachers)
ORIGINAL_NAMES = {'ShuffleV1': 'shufflenetv1_cifar', 'ShuffleV2': 'shufflenetv2_cifar'}


def _create(cls, variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    return build_cifar_model(
        cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


@register_model
def shufflenetv1_cifar(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV1:
    """ShuffleNetV1 for CIFAR (RepDistiller ``ShuffleV1``): 240/480/960 channels, 4/8/4 blocks, 3 groups."""
    model_args = dict(out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3)
    return _create(CifarShuffleNetV1, 'shufflenetv1_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def shufflenetv2_cifar(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV2:
    """ShuffleNetV2 for CIFAR (RepDistiller ``ShuffleV2``, net_size 1): 116/232/464 channels, 3/7/3 blocks,
    1x1 conv to 1024."""
    model_args = dict(out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3))
    return _create(CifarShuffleNetV2, 'shufflenetv2_cifar', pretrained, **dict(model_args, **kwargs))
