"""MobileNetV2 for CIFAR, as used in the KD literature.

RepDistiller's ``mobile_half`` (``models/mobilenetv2.py``, from "Knowledge Distillation via Route Constrained
Optimization"), layer for layer: expansion 6, width 0.5, a stride-2 3x3 stem, the CIFAR stride plan
(1, 1, 2, 2, 1, 2, 1: total stride 16, a 2x2 map at 32 px), a 1x1 head conv that stays at 1280 channels, and
no dropout. Unlike torchvision / timm, the first block (t=1) keeps its 1x1 expansion conv, so every block is
``conv.{0..7}`` = pw conv, BN, ReLU, dw conv, BN, ReLU, pw-linear conv, BN. Module names equal RepDistiller's
(``conv1.{0,1}, blocks.{s}.{i}.conv.{0-7}, conv2.{0,1}, classifier.0``), so its checkpoints load unchanged.
Pooling is global instead of a fixed ``AvgPool2d(img_size // 16)``, so 32 and 64 px inputs both work.
"""
from typing import Any, Dict, List

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ._builder import build_cifar_model, cifar_cfg
from ._cifar_net import CifarNet
from ._convert import checkpoint_filter_fn

__all__ = ['CifarMobileNetV2']

# (expansion t (None = the model's), channels c, repeats n, first stride s); RepDistiller's CIFAR setting
_BLOCK_CFG = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
              (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
# feature levels after these block groups (RepDistiller's f1..f4); level 0 is the stem
_FEATURE_BLOCKS = (1, 2, 4, 6)


def _conv_bn_relu(in_chs: int, out_chs: int, kernel_size: int, stride: int, dd: Dict[str, Any]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False, **dd),
        nn.BatchNorm2d(out_chs, **dd),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """pw expand -> dw 3x3 -> pw-linear, residual when stride 1 and in == out (also for t=1)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        mid_chs = in_chs * expand_ratio
        self.use_res = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd),
            nn.BatchNorm2d(mid_chs, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, groups=mid_chs, bias=False, **dd),
            nn.BatchNorm2d(mid_chs, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_chs, out_chs, 1, bias=False, **dd),
            nn.BatchNorm2d(out_chs, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class CifarMobileNetV2(CifarNet):
    """CIFAR MobileNetV2: feature levels stem (``conv1``) + after ``blocks.1``, ``blocks.2``, ``blocks.4``,
    ``blocks.6``; ``conv2`` (1x1 to 1280) is the last layer of ``forward_features``."""
    head_attr = 'classifier'
    head_in_sequential = True  # 'classifier.0', RepDistiller's key
    final_conv = True

    def __init__(
            self,
            expand_ratio: int = 6,
            width_mult: float = 0.5,
            num_classes: int = 100,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            expand_ratio: Expansion of blocks 1-6 (block 0 always uses 1).
            width_mult: Channel multiplier (channels are truncated, ``int(c * width_mult)``, as RepDistiller).
            num_classes: Classifier outputs; 0 removes the classifier.
            in_chans: Input image channels.
            global_pool: Global pooling type ('' disables pooling and flattening, needs num_classes=0).
            drop_rate: Dropout before the classifier (RepDistiller has none: 0).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.in_chans = in_chans
        self.grad_checkpointing = False

        in_chs = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, in_chs, 3, 2, dd)
        self.feature_info = [dict(num_chs=in_chs, reduction=2, module='conv1.2')]
        reduction = 2
        blocks = []
        for i, (t, c, n, s) in enumerate(_BLOCK_CFG):
            out_chs = int(c * width_mult)
            stage = []
            for j in range(n):
                stage.append(InvertedResidual(
                    in_chs, out_chs, s if j == 0 else 1, expand_ratio if t is None else t, **dd))
                in_chs = out_chs
            blocks.append(nn.Sequential(*stage))
            reduction *= s
            if i in _FEATURE_BLOCKS:
                self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'blocks.{i}'))
        # a Sequential (RepDistiller: ModuleList, same keys) so features_only can flatten it into levels
        self.blocks = nn.Sequential(*blocks)

        # RepDistiller widens the head conv only for width_mult > 1, the half-width model keeps 1280
        num_features = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_chs, num_features, 1, 1, dd)
        self._init_head(num_features, num_classes, global_pool, drop_rate, dd)

        # RepDistiller's init: N(0, sqrt(2 / (k * k * out_channels))) convs, N(0, 0.01) classifier
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv1\.',
            blocks=[(r'^blocks\.(\d+)' if coarse else r'^blocks\.(\d+)\.(\d+)', None), (r'^conv2\.', (99999,))],
        )

    def num_stages(self) -> int:
        return len(_FEATURE_BLOCKS)

    def _level_ends(self) -> List[int]:
        """Number of block groups run when each feature level is reached (level 0: none)."""
        return [0] + [i + 1 for i in _FEATURE_BLOCKS]

    def _stage_blocks(self, idx: int) -> nn.Sequential:
        """Stage ``idx`` = the block groups up to feature level ``idx + 1``, flattened to the blocks."""
        ends = self._level_ends()
        return nn.Sequential(*[b for group in self.blocks[ends[idx]:ends[idx + 1]] for b in group])

    def _set_stage_blocks(self, idx: int, blocks: nn.Sequential) -> None:
        assert len(blocks) == 0, 'stages can only be pruned'
        self.blocks = self.blocks[:self._level_ends()[idx]]  # RepDistiller's keys for the kept groups

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(x)

    def prune_norm(self) -> None:
        self.conv2 = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x, flatten=True)
        else:
            x = self.blocks(x)
        return self.conv2(x)

    def forward_classifier(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)



default_cfgs = generate_default_cfgs({
    'mobilenetv2_cifar.cifar100': cifar_cfg(
        'mobilenetv2_cifar', first_conv='conv1.0', classifier='classifier.0', pool_size=(2, 2)),
})
# RepDistiller's name (read by timm_kd.models.map_arch when converting teachers)
ORIGINAL_NAMES = {'MobileNetV2': 'mobilenetv2_cifar'}


@register_model
def mobilenetv2_cifar(pretrained: bool = False, **kwargs: Any) -> CifarMobileNetV2:
    """MobileNetV2 for CIFAR (RepDistiller ``MobileNetV2`` = ``mobile_half``): expansion 6, width 0.5."""
    model_args = dict(expand_ratio=6, width_mult=0.5)
    return build_cifar_model(
        CifarMobileNetV2, 'mobilenetv2_cifar', pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4), flatten_sequential=True),
        **dict(model_args, **kwargs),
    )
