"""README promises that drift silently otherwise: the model table and the set-up commands."""
import re
from pathlib import Path

import timm
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()
OUR_MODULES = ('cifar_resnet', 'cifar_wrn', 'cifar_vgg', 'cifar_resnetv2', 'cifar_mobilenetv2', 'cifar_shufflenet')


def _model_table() -> dict:
    section = README.split('## The CIFAR model zoo', 1)[1].split('\n## ', 1)[0]
    rows = re.findall(r'^\| `([a-z0-9_]+)` \| [^|]+ \| ([\d,]+) \|', section, re.M)
    return {name: int(params.replace(',', '')) for name, params in rows}


def test_model_table_lists_exactly_the_registered_models():
    registered = {name for module in OUR_MODULES for name in timm.list_models(module=module)}
    assert set(_model_table()) == registered


def test_model_table_params_match_the_models():
    # the papers' convention: conv + fc weights and biases, BatchNorm excluded, 100 classes
    for name, params in _model_table().items():
        model = timm.create_model(name, num_classes=100, device='meta')
        counted = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                      for p in m.parameters(recurse=False))
        assert counted == params, name


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r'```bash\n(.*?)```', README.split('## Set-up: two commands', 1)[1], re.S)[0]
    test_command = commands.strip().splitlines()[-1].strip()
    ci = (REPO / '.ci' / 'run').read_text().splitlines()
    assert test_command in [line.strip() for line in ci]
