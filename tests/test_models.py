"""The CIFAR model zoo: sizes, shapes, registration, and equality with RepDistiller's architectures."""
import copy
import json
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn

from models_reference import NAMES as REFERENCE_NAMES, reference_forward

# the paper's Tab. 6: conv + fc weights and biases, BatchNorm excluded, 100 classes
PARAMS = {
    'resnet8': 83_220, 'resnet14': 179_988, 'resnet20': 276_756, 'resnet32': 470_292, 'resnet44': 663_828,
    'resnet56': 857_364, 'resnet110': 1_728_276, 'resnet8x4': 1_230_788, 'resnet32x4': 7_423_940,
    'wrn_16_1': 179_988, 'wrn_16_2': 701_460, 'wrn_40_1': 567_060, 'wrn_40_2': 2_249_748,
    'vgg8_cifar': 3_962_084, 'vgg11_cifar': 9_271_780, 'vgg13_cifar': 9_456_292, 'vgg16_cifar': 14_765_988,
    'vgg19_cifar': 20_075_684, 'resnet18_cifar': 11_210_532, 'resnet50_cifar': 23_652_132,
    'mobilenetv2_cifar': 794_468, 'shufflenetv1_cifar': 925_522, 'shufflenetv2_cifar': 1_339_348,
}
MODELS = list(PARAMS)


def _conv_fc_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               for p in m.parameters(recurse=False))


@pytest.mark.parametrize('name', MODELS)
def test_param_count_matches_paper(name):
    model = timm.create_model(name, num_classes=100, device='meta')
    assert _conv_fc_params(model) == PARAMS[name]


@pytest.mark.parametrize('name', MODELS)
def test_forward_32_and_64_px(name):
    model = timm.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        for size in (32, 64):
            out = model(torch.randn(2, 3, size, size))
            assert out.shape == (2, 10) and torch.isfinite(out).all(), size


@pytest.mark.parametrize('name', ['resnet8', 'wrn_16_1', 'vgg8_cifar'])
def test_num_classes_variants(name):
    x = torch.randn(2, 3, 32, 32)
    for num_classes in (1, 7, 200):
        assert timm.create_model(name, num_classes=num_classes)(x).shape == (2, num_classes)
    headless = timm.create_model(name, num_classes=0)
    assert headless(x).shape == (2, headless.num_features)
    assert timm.create_model(name).default_cfg['num_classes'] == 100  # CIFAR-100 by default


@pytest.mark.parametrize('name', REFERENCE_NAMES)
def test_same_keys_and_logits_as_repdistiller(name):
    """Our model with RepDistiller's keys gives RepDistiller's logits and is_feat features f0..fn."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=100).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for key, t in model.state_dict().items():
            if key.endswith('running_var'):
                t.uniform_(0.5, 1.5)
            elif key.endswith(('running_mean', 'bias')):
                t.normal_(0., 0.1)
            elif t.is_floating_point() and t.dim() == 1:
                t.uniform_(0.5, 1.5)
    sd = model.state_dict()
    for size in (32, 64):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            ref_logits, ref_feats, used = reference_forward(name, sd, x)
            logits = model(x)
            feats = model.forward_intermediates(x, intermediates_only=True)
        assert used == set(sd), f'keys only in the model: {sorted(set(sd) - used)[:5]}'
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
        assert len(feats) == len(ref_feats)
        for f, r in zip(feats, ref_feats):
            torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-5)


def test_features_only_levels():
    model = timm.create_model('resnet8x4', features_only=True)
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert model.feature_info.reduction() == [1, 1, 2, 4]
    outs = model(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
    vgg = timm.create_model('vgg8_cifar', features_only=True)
    assert [tuple(o.shape[1:3]) for o in vgg(torch.randn(1, 3, 64, 64))] == [
        (64, 64), (128, 32), (256, 16), (512, 8), (512, 4)]  # block 4 at 4x4, as RepDistiller at 64 px


@pytest.mark.parametrize('name', ['resnet8', 'wrn_16_1', 'vgg8_cifar'])
def test_prune_intermediate_layers(name):
    """Pruned to level i, the model computes the unpruned level-i features with only the weights it keeps."""
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        for i in range(len(taps)):
            stopped = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(stopped[0], taps[i])
    for i in range(len(taps)):
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([i], prune_norm=True)
        with torch.no_grad():
            kept = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
            torch.testing.assert_close(kept[0], taps[i])
            torch.testing.assert_close(pruned(x), taps[i])  # no norm, pool or head left: the features end at the tap
        assert pruned.num_features == taps[i].shape[1]
        pruned.train()
        sum(f.sum() for f in pruned.forward_intermediates(x, indices=take, intermediates_only=True)).backward()
        assert all(p.grad is not None for p in pruned.parameters()), f'level {i}: unused parameters kept'


def test_registration_replaces_no_timm_model():
    code = (
        'import json, warnings, timm\n'
        'from timm.models import model_entrypoint\n'
        'before = (timm.list_models(), timm.list_pretrained())\n'
        'with warnings.catch_warnings():\n'
        '    warnings.filterwarnings("error", message="Overwriting")  # timm re-registering a name\n'
        '    import timm_kd\n'
        'after = (timm.list_models(), timm.list_pretrained())\n'
        'moved = [n for n in before[0] if not model_entrypoint(n).__module__.startswith("timm.")]\n'
        'print(json.dumps(dict(before=before, after=after, moved=moved)))\n'
    )
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    (models_before, pretrained_before), (models_after, pretrained_after) = out['before'], out['after']
    assert not out['moved'], f'timm entrypoints replaced: {out["moved"]}'
    assert set(models_before) <= set(models_after)
    assert set(pretrained_before) <= set(pretrained_after), 'pretrained tags of timm models were dropped'
    added = set(models_after) - set(models_before)
    assert set(MODELS) - {'resnet18_cifar', 'resnet50_cifar', 'mobilenetv2_cifar', 'shufflenetv1_cifar',
                          'shufflenetv2_cifar'} <= added


def test_list_models_pattern_and_pretrained_tags():
    assert {'resnet8x4', 'resnet32x4'} <= set(timm.list_models('resnet*x4'))
    assert 'resnet32x4.cifar100' in timm.list_pretrained('resnet32x4*')
    cfg = timm.create_model('vgg13_cifar', pretrained=False).pretrained_cfg
    assert cfg['first_conv'] == 'block0.0' and cfg['classifier'] == 'classifier'
    assert cfg['input_size'] == (3, 32, 32) and cfg['crop_pct'] == 1.0
