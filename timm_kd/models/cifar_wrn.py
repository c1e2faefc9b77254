"""Wide ResNets for CIFAR of the KD literature (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Layer for layer RepDistiller's ``models/wrn.py`` (Zagoruyko & Komodakis, pre-activation basic blocks,
dropout 0), with global average pooling so 32 px and 64 px input both work. Module names equal
RepDistiller's (conv1, block{1-3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc), so its
checkpoints load with ``timm.create_model(name, checkpoint_path=...)``.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ._builder import build_cifar_model, cifar_cfg
from ._cifar_net import CifarNet, init_weights_rd
from ._convert import checkpoint_filter_fn

__all__ = ['WideResNet']


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

    When the width changes, the 1x1 shortcut conv (``convShortcut``, RepDistiller's name) takes the
    pre-activated input; otherwise the raw input is added.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dd=None):
        super().__init__()
        dd = dd or {}
        self.bn1 = nn.BatchNorm2d(in_chs, **dd)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False, **dd)
        self.convShortcut: Optional[nn.Module] = None
        if in_chs != out_chs:
            self.convShortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return out + shortcut


class NetworkBlock(nn.Module):
    """One stage; the blocks live in ``.layer`` as in RepDistiller (state_dict ``block{i}.layer.{j}``)."""

    def __init__(self, num_blocks: int, in_chs: int, out_chs: int, stride: int, dd=None):
        super().__init__()
        self.layer = nn.Sequential(*[
            PreActBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, dd)
            for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(CifarNet):
    """WRN-depth-k: 3x3 stem conv (16), three stages of ``(depth - 4) / 6`` pre-activation blocks with
    widths 16k / 32k / 64k (strides 1, 2, 2), final BN-ReLU."""
    stage_attrs = ('block1', 'block2', 'block3')

    def __init__(
            self,
            depth: int = 16,
            widen_factor: int = 1,
            num_classes: int = 100,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            depth: 6n + 4 layers (n blocks per stage).
            widen_factor: Width multiplier k of the stages.
            num_classes: Number of classes of the classifier (0 for none).
            in_chans: Number of input image channels.
            global_pool: Global pooling type ('' for none).
            drop_rate: Dropout rate before the classifier (RepDistiller: 0; its in-block dropout is 0 too).
        """
        super().__init__()
        assert (depth - 4) % 6 == 0, f'depth must be 6n + 4, got {depth}'
        dd = {'device': device, 'dtype': dtype}
        num_blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.in_chans = in_chans
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False, **dd)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module='conv1')]
        reduction = 1
        for i, stride in enumerate((1, 2, 2)):
            self.add_module(self.stage_attrs[i], NetworkBlock(num_blocks, widths[i], widths[i + 1], stride, dd))
            reduction *= stride
            self.feature_info.append(dict(num_chs=widths[i + 1], reduction=reduction, module=self.stage_attrs[i]))
        self.bn1 = nn.BatchNorm2d(widths[-1], **dd)
        self.relu = nn.ReLU(inplace=True)
        self._init_head(widths[-1], num_classes, global_pool, drop_rate, dd)
        init_weights_rd(self, zero_linear_bias=True)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv1',
            blocks=[(r'^block(\d+)' if coarse else r'^block(\d+)\.layer\.(\d+)', None), (r'^bn1', (99999,))],
        )

    def _stage_blocks(self, idx: int) -> nn.Sequential:
        return getattr(self, self.stage_attrs[idx]).layer

    def _set_stage_blocks(self, idx: int, blocks: nn.Sequential) -> None:
        getattr(self, self.stage_attrs[idx]).layer = blocks

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(x))

    def prune_norm(self) -> None:
        self.bn1 = nn.Identity()
        self.relu = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.block1.layer, self.block2.layer, self.block3.layer], x, flatten=True)
        else:
            x = self.block3(self.block2(self.block1(x)))
        return self.forward_norm(x)



def _cfg(arch: str, **kwargs: Any) -> Dict[str, Any]:
    return cifar_cfg(
        arch, pool_size=(8, 8), first_conv='conv1', classifier='fc',
        paper_name='Wide Residual Networks', paper_ids='arXiv:1605.07146',
        origin_url='https://github.com/HobbitLong/RepDistiller', **kwargs)


_ARCHS = {'wrn_16_1': (16, 1), 'wrn_16_2': (16, 2), 'wrn_40_1': (40, 1), 'wrn_40_2': (40, 2)}  # (depth, k)

default_cfgs = generate_default_cfgs({f'{name}.cifar100': _cfg(name) for name in _ARCHS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    depth, widen_factor = _ARCHS[variant]
    return build_cifar_model(
        WideResNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **dict(dict(depth=depth, widen_factor=widen_factor), **kwargs),
    )


@register_model
def wrn_16_1(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-1 for CIFAR."""
    return _create('wrn_16_1', pretrained, **kwargs)


@register_model
def wrn_16_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-2 for CIFAR."""
    return _create('wrn_16_2', pretrained, **kwargs)


@register_model
def wrn_40_1(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-40-1 for CIFAR."""
    return _create('wrn_40_1', pretrained, **kwargs)


@register_model
def wrn_40_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-40-2 for CIFAR."""
    return _create('wrn_40_2', pretrained, **kwargs)
