"""Independent functional reference of RepDistiller's CIFAR ResNet, WRN and VGG (models/resnet.py,
wrn.py, vgg.py), written from the architecture description with F.conv2d / F.batch_norm / F.linear over
a state dict with RepDistiller's key names. Eval-mode BatchNorm. Global average pooling (as Good-DA's
versions) so 64 px input works; VGG pools after block 3 only for 64 px input, as RepDistiller does.

Every forward records the keys it read, so a test can check that a model has exactly these keys.
"""
from typing import Dict, List, Sequence, Set, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

RESNETS = {  # depth, (stem, stage widths)
    'resnet8': (8, (16, 16, 32, 64)), 'resnet14': (14, (16, 16, 32, 64)), 'resnet20': (20, (16, 16, 32, 64)),
    'resnet32': (32, (16, 16, 32, 64)), 'resnet44': (44, (16, 16, 32, 64)), 'resnet56': (56, (16, 16, 32, 64)),
    'resnet110': (110, (16, 16, 32, 64)), 'resnet8x4': (8, (32, 64, 128, 256)),
    'resnet32x4': (32, (32, 64, 128, 256)),
}
WRNS = {'wrn_16_1': (16, 1), 'wrn_16_2': (16, 2), 'wrn_40_1': (40, 1), 'wrn_40_2': (40, 2)}
VGGS = {  # RepDistiller cfg S, A, B, D, E
    'vgg8_cifar': [[64], [128], [256], [512], [512]],
    'vgg11_cifar': [[64], [128], [256, 256], [512, 512], [512, 512]],
    'vgg13_cifar': [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    'vgg16_cifar': [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    'vgg19_cifar': [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
NAMES = [*RESNETS, *WRNS, *VGGS]


class _Reader:
    def __init__(self, sd: Dict[str, Tensor]):
        self.sd, self.used = sd, set()

    def __getitem__(self, key: str) -> Tensor:
        self.used.add(key)
        return self.sd[key]

    def conv(self, x: Tensor, p: str, stride: int = 1, bias: bool = False) -> Tensor:
        w = self[f'{p}.weight']
        return F.conv2d(x, w, self[f'{p}.bias'] if bias else None, stride, w.shape[-1] // 2)

    def bn(self, x: Tensor, p: str) -> Tensor:
        self.used.add(f'{p}.num_batches_tracked')
        return F.batch_norm(x, self[f'{p}.running_mean'], self[f'{p}.running_var'], self[f'{p}.weight'],
                            self[f'{p}.bias'], training=False, eps=1e-5)

    def head(self, x: Tensor, p: str) -> Tensor:
        return F.linear(x.mean((2, 3)), self[f'{p}.weight'], self[f'{p}.bias'])


def _resnet(r: _Reader, x: Tensor, depth: int, widths: Sequence[int]) -> Tuple[Tensor, List[Tensor]]:
    n = (depth - 2) // 6
    x = F.relu(r.bn(r.conv(x, 'conv1'), 'bn1'))
    feats, in_chs = [x], widths[0]
    for s, chs in enumerate(widths[1:], 1):
        for i in range(n):
            p, stride = f'layer{s}.{i}', (2 if s > 1 and i == 0 else 1)
            out = F.relu(r.bn(r.conv(x, f'{p}.conv1', stride), f'{p}.bn1'))
            out = r.bn(r.conv(out, f'{p}.conv2'), f'{p}.bn2')
            if stride != 1 or in_chs != chs:  # projection shortcut: 1x1 conv + BN
                x = r.bn(r.conv(x, f'{p}.downsample.0', stride), f'{p}.downsample.1')
            x, in_chs = F.relu(out + x), chs
        feats.append(x)
    return r.head(x, 'fc'), feats


def _wrn(r: _Reader, x: Tensor, depth: int, k: int) -> Tuple[Tensor, List[Tensor]]:
    n, widths = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k)
    x = r.conv(x, 'conv1')
    feats = [x]
    for s in (1, 2, 3):
        for i in range(n):
            p, in_chs = f'block{s}.layer.{i}', (widths[s - 1] if i == 0 else widths[s])
            stride = 2 if s > 1 and i == 0 else 1
            pre = F.relu(r.bn(x, f'{p}.bn1'))  # pre-activation
            out = F.relu(r.bn(r.conv(pre, f'{p}.conv1', stride), f'{p}.bn2'))
            out = r.conv(out, f'{p}.conv2')
            x = out + (x if in_chs == widths[s] else r.conv(pre, f'{p}.convShortcut', stride))
        feats.append(x)
    return r.head(F.relu(r.bn(x, 'bn1')), 'fc'), feats


def _vgg(r: _Reader, x: Tensor, cfg: Sequence[Sequence[int]]) -> Tuple[Tensor, List[Tensor]]:
    h, feats = x.shape[2], []
    for b, widths in enumerate(cfg):
        if 0 < b < 4 or (b == 4 and h == 64):
            x = F.max_pool2d(x, 2, 2)
        for j in range(len(widths)):  # Sequential of conv(bias), BN, ReLU: conv at 3j, BN at 3j + 1
            x = F.relu(r.bn(r.conv(x, f'block{b}.{3 * j}', bias=True), f'block{b}.{3 * j + 1}'))
        feats.append(x)
    return r.head(x, 'classifier'), feats


def reference_forward(name: str, sd: Dict[str, Tensor], x: Tensor) -> Tuple[Tensor, List[Tensor], Set[str]]:
    """(logits, features f0..fn as RepDistiller's ``is_feat``, keys read) of the named architecture."""
    r = _Reader(sd)
    if name in RESNETS:
        logits, feats = _resnet(r, x, *RESNETS[name])
    elif name in WRNS:
        logits, feats = _wrn(r, x, *WRNS[name])
    else:
        logits, feats = _vgg(r, x, VGGS[name])
    return logits, feats, r.used
