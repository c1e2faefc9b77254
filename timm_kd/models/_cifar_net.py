"""Shared timm model API for the CIFAR nets of the KD literature (stem -> stages -> [norm] -> pool -> head).

The architectures keep RepDistiller's module attribute names so that its checkpoints load unchanged;
this base class adds what timm expects on top: head reset, intermediates, pruning, grad checkpointing.
A family sets ``stage_attrs`` (its stage attribute names) and implements ``forward_stem``,
``forward_features`` (explicit, so it stays TorchScript/FX friendly), ``forward_classifier`` if its head
is not ``fc`` (TorchScript needs the literal attribute) and, if it has one, the final norm or head conv.
"""
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier, get_device_dtype
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

__all__ = ['CifarNet', 'init_weights_rd']


def init_weights_rd(model: nn.Module, linear_std: Optional[float] = None, zero_linear_bias: bool = False) -> None:
    """RepDistiller's init: conv weights N(0, sqrt(2 / fan_out)), conv biases 0, BN (1, 0).

    Linear layers keep PyTorch's default unless ``linear_std`` (weights N(0, std)) or ``zero_linear_bias``.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0., math.sqrt(2. / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0., linear_std)
            if (zero_linear_bias or linear_std is not None) and m.bias is not None:
                nn.init.zeros_(m.bias)


class CifarNet(nn.Module):
    """Base class: timm's classifier/feature API over ``stem -> stages -> final norm -> pool -> head``.

    Feature level 0 is the stem output, level i (1..n) the output of stage i, as RepDistiller's
    ``is_feat`` features f0..fn.
    """
    stage_attrs: Tuple[str, ...] = ()
    head_attr: str = 'fc'  # RepDistiller's classifier attribute name, keeps state_dict keys equal
    head_in_sequential: bool = False  # the Linear sits in a Sequential (RepDistiller key ``classifier.0``)
    # the layer after the last stage is a head conv that changes the width (MobileNetV2, ShuffleNetV2),
    # not a norm: ``forward_intermediates(norm=True)`` never applies it to an intermediate
    final_conv: bool = False

    def _init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float, dd) -> None:
        self.num_classes = num_classes
        self.num_features = num_features
        self.drop_rate = drop_rate
        self.global_pool, head = create_classifier(num_features, num_classes, pool_type=global_pool, **dd)
        setattr(self, self.head_attr, nn.Sequential(head) if self.head_in_sequential else head)
        self.head_hidden_size = num_features * self.global_pool.feat_mult()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_attr)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self._init_head(self.num_features, num_classes, global_pool, self.drop_rate, dd)
        self.global_pool.train(self.training)
        self.get_classifier().train(self.training)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm/activation (pre-activation nets) or head conv after the last stage; identity by default."""
        return x

    def prune_norm(self) -> None:
        """Drop the final norm / head conv (``prune_intermediate_layers``); nothing to do by default."""

    def num_stages(self) -> int:
        return len(self.stage_attrs)

    def _stage_blocks(self, idx: int) -> nn.Sequential:
        """The Sequential of blocks of stage ``idx`` (0-based)."""
        return getattr(self, self.stage_attrs[idx])

    def _set_stage_blocks(self, idx: int, blocks: nn.Sequential) -> None:
        setattr(self, self.stage_attrs[idx], blocks)

    def forward_stage(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        blocks = self._stage_blocks(idx)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(blocks, x)
        return blocks(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (level 0 = stem, level i = stage i).

        Args:
            x: Input image tensor.
            indices: Take last n levels if int, all if None, select matching indices if sequence.
            norm: Apply the final norm (if any) to the last level.
            stop_early: Stop after the last requested level.
            output_fmt: Shape of intermediate feature outputs (NCHW only).
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        num_stages = self.num_stages()
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)
        intermediates = []
        x = self.forward_stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        last = max_index if stop_early else num_stages
        for i in range(1, last + 1):
            x = self.forward_stage(i - 1, x)
            if i in take_indices:
                last_norm = norm and i == num_stages and not self.final_conv
                intermediates.append(self.forward_norm(x) if last_norm else x)
        if intermediates_only:
            return intermediates
        if last == num_stages:
            x = self.forward_norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune the stages (and norm / head) not needed for the requested intermediates."""
        num_stages = self.num_stages()
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)
        for idx in range(max_index, num_stages):
            # an empty Sequential, not Identity: forward_stage may still iterate it for checkpointing
            self._set_stage_blocks(idx, nn.Sequential())
        prune_end = max_index < num_stages
        if prune_norm or prune_end:
            self.prune_norm()
            num_chs = self.feature_info[max_index]['num_chs']
            if prune_end or num_chs != self.num_features:
                # the features now end at the last kept level (or lost the head conv's width),
                # the head was sized for the final features
                self.num_features = self.head_hidden_size = num_chs
                prune_head = True
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.forward_classifier(x)

    def forward_classifier(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
