"""resnet18_cifar, resnet50_cifar, mobilenetv2_cifar, shufflenetv1_cifar, shufflenetv2_cifar.

The reference below is an independent functional forward (``F.conv2d`` / ``F.batch_norm`` / ``F.linear``),
written from the architecture of RepDistiller's ``models/resnetv2.py``, ``mobilenetv2.py``,
``ShuffleNetv1.py`` and ``ShuffleNetv2.py``. It creates RepDistiller-named random weights (and BatchNorm
statistics) as it runs, so one pass yields both a RepDistiller-keyed state dict and its logits; our models
must load that state dict strictly and give the same logits and feature levels.
"""
import math
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm

import timm_kd
from timm_kd.models._convert import KDCheckpointError

MODELS = ['resnet18_cifar', 'resnet50_cifar', 'mobilenetv2_cifar', 'shufflenetv1_cifar', 'shufflenetv2_cifar']

# conv + fc weights and biases, BatchNorm excluded, 100 classes (the paper's Tab. 6)
PARAMS = {
    'resnet18_cifar': 11_210_532, 'resnet50_cifar': 23_652_132, 'mobilenetv2_cifar': 794_468,
    'shufflenetv1_cifar': 925_522, 'shufflenetv2_cifar': 1_339_348,
}


class Ref:
    """Runs a functional forward over RepDistiller key names, drawing each missing weight on first use."""

    def __init__(self, seed: int = 0):
        self.sd: Dict[str, torch.Tensor] = {}
        self.g = torch.Generator().manual_seed(seed)
        self.taps: List[torch.Tensor] = []

    def _get(self, name: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if name not in self.sd:
            self.sd[name] = make()
        return self.sd[name]

    def _u(self, shape, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.g) * (hi - lo) + lo

    def conv(self, x, name: str, out_chs: int, k: int, stride: int = 1, groups: int = 1) -> torch.Tensor:
        shape = (out_chs, x.shape[1] // groups, k, k)
        w = self._get(name + '.weight', lambda: torch.randn(shape, generator=self.g) * math.sqrt(2 / (k * k * out_chs)))
        return F.conv2d(x, w, None, stride, k // 2, 1, groups)

    def bn(self, x, name: str) -> torch.Tensor:
        c = x.shape[1]
        w = self._get(name + '.weight', lambda: self._u(c, 0.5, 1.5))
        b = self._get(name + '.bias', lambda: self._u(c, -0.2, 0.2))
        mean = self._get(name + '.running_mean', lambda: self._u(c, -0.2, 0.2))
        var = self._get(name + '.running_var', lambda: self._u(c, 0.5, 1.5))
        self._get(name + '.num_batches_tracked', lambda: torch.tensor(100))
        return F.batch_norm(x, mean, var, w, b, training=False, eps=1e-5)

    def linear(self, x, name: str, out_features: int) -> torch.Tensor:
        w = self._get(name + '.weight', lambda: torch.randn((out_features, x.shape[1]), generator=self.g) * 0.05)
        b = self._get(name + '.bias', lambda: self._u(out_features, -0.1, 0.1))
        return F.linear(x, w, b)


def shuffle(x: torch.Tensor, g: int) -> torch.Tensor:
    """Channel shuffle as RepDistiller writes it: view (N, g, C/g, H, W), swap dims 1 and 2."""
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def ref_resnetv2(r: Ref, x, bottleneck: bool, layers, num_classes: int):
    x = F.relu(r.bn(r.conv(x, 'conv1', 64, 3), 'bn1'))
    r.taps.append(x)
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(n):
            s = (1 if i == 0 else 2) if j == 0 else 1
            p = f'layer{i + 1}.{j}.'
            if bottleneck:
                out = F.relu(r.bn(r.conv(x, p + 'conv1', planes, 1), p + 'bn1'))
                out = F.relu(r.bn(r.conv(out, p + 'conv2', planes, 3, s), p + 'bn2'))
                out = r.bn(r.conv(out, p + 'conv3', 4 * planes, 1), p + 'bn3')
            else:
                out = F.relu(r.bn(r.conv(x, p + 'conv1', planes, 3, s), p + 'bn1'))
                out = r.bn(r.conv(out, p + 'conv2', planes, 3), p + 'bn2')
            if s != 1 or x.shape[1] != out.shape[1]:
                x = r.bn(r.conv(x, p + 'shortcut.0', out.shape[1], 1, s), p + 'shortcut.1')
            x = F.relu(out + x)
        r.taps.append(x)
    return r.linear(x.mean((2, 3)), 'linear', num_classes)


def ref_mobilenetv2(r: Ref, x, num_classes: int):
    # mobile_half: T=6, width 0.5 -> int(c / 2) channels; every block has the pw expansion conv, also t=1
    x = F.relu(r.bn(r.conv(x, 'conv1.0', 16, 3, 2), 'conv1.1'))
    r.taps.append(x)
    setting = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    for s_idx, (t, c, n, s) in enumerate(setting):
        for i in range(n):
            p = f'blocks.{s_idx}.{i}.conv.'
            stride, in_chs, out_chs = (s if i == 0 else 1), x.shape[1], c // 2
            mid = in_chs * t
            out = F.relu(r.bn(r.conv(x, p + '0', mid, 1), p + '1'))
            out = F.relu(r.bn(r.conv(out, p + '3', mid, 3, stride, groups=mid), p + '4'))
            out = r.bn(r.conv(out, p + '6', out_chs, 1), p + '7')
            x = x + out if stride == 1 and in_chs == out_chs else out
        if s_idx in (1, 2, 4, 6):
            r.taps.append(x)
    x = F.relu(r.bn(r.conv(x, 'conv2.0', 1280, 1), 'conv2.1'))
    return r.linear(x.mean((2, 3)), 'classifier.0', num_classes)


def ref_shufflev1(r: Ref, x, num_classes: int):
    x = F.relu(r.bn(r.conv(x, 'conv1', 24, 1), 'bn1'))
    r.taps.append(x)
    for i, (width, n) in enumerate(zip((240, 480, 960), (4, 8, 4))):
        for j in range(n):
            p = f'layer{i + 1}.{j}.'
            in_chs = x.shape[1]
            out_chs = width - in_chs if j == 0 else width  # the stride-2 block concatenates its pooled input
            mid, g1 = out_chs // 4, (1 if in_chs == 24 else 3)
            out = F.relu(r.bn(r.conv(x, p + 'conv1', mid, 1, groups=g1), p + 'bn1'))
            out = shuffle(out, g1)
            out = F.relu(r.bn(r.conv(out, p + 'conv2', mid, 3, 2 if j == 0 else 1, groups=mid), p + 'bn2'))
            out = r.bn(r.conv(out, p + 'conv3', out_chs, 1, groups=3), p + 'bn3')
            if j == 0:
                x = F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
            else:
                x = F.relu(out + x)
        r.taps.append(x)
    return r.linear(x.mean((2, 3)), 'linear', num_classes)


def ref_shufflev2(r: Ref, x, num_classes: int):
    x = F.relu(r.bn(r.conv(x, 'conv1', 24, 1), 'bn1'))
    r.taps.append(x)
    for i, (width, n) in enumerate(zip((116, 232, 464), (3, 7, 3))):
        p, in_chs, mid = f'layer{i + 1}.0.', x.shape[1], width // 2
        left = r.bn(r.conv(x, p + 'conv1', in_chs, 3, 2, groups=in_chs), p + 'bn1')
        left = F.relu(r.bn(r.conv(left, p + 'conv2', mid, 1), p + 'bn2'))
        right = F.relu(r.bn(r.conv(x, p + 'conv3', mid, 1), p + 'bn3'))
        right = r.bn(r.conv(right, p + 'conv4', mid, 3, 2, groups=mid), p + 'bn4')
        right = F.relu(r.bn(r.conv(right, p + 'conv5', mid, 1), p + 'bn5'))
        x = shuffle(torch.cat([left, right], 1), 2)
        for j in range(1, n + 1):
            p, half = f'layer{i + 1}.{j}.', width // 2
            x1, x2 = x[:, :half], x[:, half:]
            out = F.relu(r.bn(r.conv(x2, p + 'conv1', half, 1), p + 'bn1'))
            out = r.bn(r.conv(out, p + 'conv2', half, 3, groups=half), p + 'bn2')
            out = F.relu(r.bn(r.conv(out, p + 'conv3', half, 1), p + 'bn3'))
            x = shuffle(torch.cat([x1, out], 1), 2)
        r.taps.append(x)
    x = F.relu(r.bn(r.conv(x, 'conv2', 1024, 1), 'bn2'))
    return r.linear(x.mean((2, 3)), 'linear', num_classes)


REFERENCE = {
    'resnet18_cifar': lambda r, x, nc: ref_resnetv2(r, x, False, (2, 2, 2, 2), nc),
    'resnet50_cifar': lambda r, x, nc: ref_resnetv2(r, x, True, (3, 4, 6, 3), nc),
    'mobilenetv2_cifar': ref_mobilenetv2,
    'shufflenetv1_cifar': ref_shufflev1,
    'shufflenetv2_cifar': ref_shufflev2,
}


def _reference(name: str, x: torch.Tensor, num_classes: int = 100, seed: int = 0) -> Tuple[Ref, torch.Tensor]:
    r = Ref(seed)
    with torch.no_grad():
        logits = REFERENCE[name](r, x, num_classes)
    return r, logits


def _conv_fc_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


@pytest.mark.parametrize('name', MODELS)
def test_param_count(name):
    model = timm.create_model(name, device='meta')
    assert _conv_fc_params(model) == PARAMS[name]
    assert model.num_classes == 100 and model.default_cfg['input_size'] == (3, 32, 32)


@pytest.mark.parametrize('name', MODELS)
def test_same_logits_as_repdistiller_reference(name, tmp_path):
    """State dict keys equal RepDistiller's; a RepDistiller-format checkpoint (``{'epoch', 'model',
    'accuracy', 'optimizer'}``) loads strictly through timm_kd.load_kd_checkpoint; logits and feature levels
    match the reference at 32 px, and at 64 px (where RepDistiller's fixed pooling would fail)."""
    torch.manual_seed(0)
    x32 = torch.randn(1, 3, 32, 32)
    ref, ref32 = _reference(name, x32)
    model = timm.create_model(name).eval()
    assert sorted(model.state_dict()) == sorted(ref.sd)

    path = tmp_path / 'ckpt_epoch_240.pth'
    torch.save({'epoch': 240, 'model': ref.sd, 'accuracy': torch.tensor(70.0), 'optimizer': {}}, path)
    meta = timm_kd.load_kd_checkpoint(model, str(path))
    assert meta['epoch'] == 240
    with torch.no_grad():
        out32 = model(x32)
        taps = model.forward_intermediates(x32, intermediates_only=True)
    torch.testing.assert_close(out32, ref32, rtol=1e-4, atol=1e-5)
    assert len(taps) == len(ref.taps) == len(model.feature_info)
    for ours, theirs in zip(taps, ref.taps):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)

    x64 = torch.randn(1, 3, 64, 64)
    r64 = Ref()
    r64.sd = ref.sd  # same weights
    with torch.no_grad():
        ref64 = REFERENCE[name](r64, x64, 100)
        torch.testing.assert_close(model(x64), ref64, rtol=1e-4, atol=1e-5)


def test_timm_checkpoint_path_and_module_prefix(tmp_path):
    """Plain timm loading of a RepDistiller checkpoint, and a Good-DA (DataParallel ``module.``) student."""
    x = torch.randn(1, 3, 32, 32)
    ref, logits = _reference('shufflenetv2_cifar', x, num_classes=10, seed=1)
    path = tmp_path / 'rd.pth'
    torch.save({'epoch': 240, 'model': ref.sd, 'accuracy': torch.tensor(71.8), 'optimizer': {}}, path)
    model = timm.create_model('shufflenetv2_cifar', num_classes=10, checkpoint_path=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-5)

    model = timm.create_model('shufflenetv2_cifar', num_classes=10).eval()
    timm_kd.load_kd_checkpoint(model, {'model': {'module.' + k: v for k, v in ref.sd.items()}, 'epoch': 1})
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-5)


def test_wrong_architecture_names_keys():
    ref, _ = _reference('shufflenetv2_cifar', torch.randn(1, 3, 32, 32))
    with pytest.raises(KDCheckpointError, match=r'does not fit shufflenetv1_cifar.*unexpected keys: layer1\.0\.conv4'):
        timm_kd.load_kd_checkpoint(timm.create_model('shufflenetv1_cifar'), ref.sd)


@pytest.mark.parametrize('name', MODELS)
def test_forward_32_and_64px_any_classes(name):
    """Shapes only (values are covered above), so on the meta device: no compute."""
    model = timm.create_model(name, num_classes=10, in_chans=1, device='meta').eval()
    pool = model.default_cfg['pool_size']
    for size in (32, 64):
        x = torch.empty(2, 1, size, size, device='meta')
        assert model(x).shape == (2, 10)
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        assert feats.shape[-2:] == (pool[0] * size // 32, pool[1] * size // 32)


@pytest.mark.parametrize('name', ['mobilenetv2_cifar', 'shufflenetv1_cifar'])
def test_features_only_levels_at_64px(name):
    model = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [64 // f.shape[-1] for f in feats] == model.feature_info.reduction()


def test_grad_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    model = timm.create_model('mobilenetv2_cifar', num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    base = model(x)
    base.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # same BN batch statistics either way; running stats update twice, which the output does not read in train
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, base)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', MODELS)
def test_default_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.hf_hub_id == f'{timm_kd.models.hub_org()}/{name}.cifar100'
    assert cfg.tag == 'cifar100' and cfg.crop_pct == 1.0 and cfg.mean == timm_kd.models.CIFAR100_MEAN
    assert (cfg.first_conv, cfg.classifier) == {
        'mobilenetv2_cifar': ('conv1.0', 'classifier.0')}.get(name, ('conv1', 'linear'))
