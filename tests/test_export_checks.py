"""Hub exports check themselves, and every flag of the Hub tools does what it says.

* An export whose written weights differ from the model must fail (the reload check of convert);
  ``--no-verify`` skips that check.
* The sha256 a card or config.json records is the one hashlib computes over the file's bytes.
* A Hub teacher for other classes than the data is refused before training, in one sentence.
* ``timm-kd-convert`` flags, each checked in the folder or repo it writes; ``--timeout`` of both Hub tools
  against a server that never answers; ``--push-to-hub`` / ``--hub-private`` of train_kd.py against the
  local Hub (tests/hub_server.py).
"""
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml
from huggingface_hub import constants as hf_constants

from timm_kd import hub
from timm_kd.hub.cli import convert_main, publish_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ['--model', 'resnet8', '--dataset', 'synthetic/10x8', '--train-num-samples', '8', '--val-num-samples', '4',
        '-b', '4', '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '1']

COVERS = (
    'convert_teachers.py sources', 'convert_teachers.py --out', 'convert_teachers.py --arch',
    'convert_teachers.py --org', 'convert_teachers.py --tag', 'convert_teachers.py --dataset',
    'convert_teachers.py --num-classes', 'convert_teachers.py --accuracy', 'convert_teachers.py --license',
    'convert_teachers.py --push', 'convert_teachers.py --dry-run', 'convert_teachers.py --private',
    'convert_teachers.py --no-verify', 'convert_teachers.py --timeout', 'publish.py --timeout', '--push-to-hub',
    '--hub-private', '--teacher',
)

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train(tmp_path: Path, *argv: str) -> dict:
    return _load(ROOT / 'train_kd.py', 'train_kd_export_checks').main(BASE + ['--output', str(tmp_path), *argv])


@pytest.fixture(scope='module')
def server():
    with HubServer(lifetime=300) as srv:
        yield srv


@pytest.fixture
def hf(server, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, 'ENDPOINT', server.endpoint)
    monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        server.endpoint + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf_cache'))
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(hf_constants, 'HF_HUB_DISABLE_XET', True)
    monkeypatch.setenv('HF_TOKEN', 'hf_export_checks_token')
    server.clear_faults()
    return server


def _rd_teacher(path: Path, seed: int = 0, num_classes: int = 100, acc: float = 70.5) -> torch.nn.Module:
    """A RepDistiller-format teacher file with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    m = timm.create_model('resnet8', num_classes=num_classes)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'epoch': 240, 'model': m.state_dict(), 'accuracy': torch.tensor(acc)}, path)
    return m.eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _perturbed_save_file(monkeypatch):
    """Make every safetensors write store slightly different weights than the model holds."""
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        tensors = {k: v + 1e-3 if v.is_floating_point() else v for k, v in tensors.items()}
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(safetensors.torch, 'save_file', save_file)


def test_convert_verification_catches_an_export_with_other_weights(tmp_path, monkeypatch, capsys):
    src = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    _rd_teacher(src)
    assert convert_main([str(src), '--out', str(tmp_path / 'good')]) == 0  # the unmodified export verifies
    _perturbed_save_file(monkeypatch)
    with pytest.raises(RuntimeError, match='does not reproduce'):
        hub.convert_teacher(src, tmp_path / 'api')
    assert convert_main([str(src), '--out', str(tmp_path / 'bad')]) == 1
    assert 'does not reproduce' in capsys.readouterr().err
    assert convert_main([str(src), '--out', str(tmp_path / 'unchecked'), '--no-verify']) == 0


def test_recorded_sha256_is_the_files_sha256(tmp_path):
    src = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    _rd_teacher(src)
    res = hub.convert_teacher(src, tmp_path / 'out')
    digest = _sha256(src)
    card = (res['folder'] / 'README.md').read_text()
    assert f'`{digest}`' in card and res['sha256'] == digest
    assert json.loads((res['folder'] / 'config.json').read_text())['timm_kd']['source_sha256'] == digest

    # a student export records its checkpoint's sha256
    run = tmp_path / 'run'
    run.mkdir()
    torch.save({'arch': 'resnet8', 'epoch': 0, 'state_dict': timm.create_model('resnet8', num_classes=10).state_dict()},
               run / 'model_best.pth.tar')
    (run / 'results.json').write_text(json.dumps({'model': 'resnet8', 'num_classes': 10}))
    folder = hub.export_student(run, 'kduser/resnet8.sha')
    lineage = json.loads((folder / 'config.json').read_text())['timm_kd']
    assert lineage['checkpoint_sha256'] == _sha256(run / 'model_best.pth.tar')


def test_convert_cli_flags_shape_the_folder_and_the_repo(hf, tmp_path):
    src = tmp_path / 'weights.pth'  # the name does not say the architecture
    ref = _rd_teacher(src, num_classes=10, acc=33.0)
    assert convert_main([str(src), '--out', str(tmp_path / 'x')]) == 1  # no --arch: cannot tell
    assert convert_main([str(src), '--arch', 'resnet8', '--out', str(tmp_path / 'out'), '--org', 'kdflags', '--tag',
                         'mine', '--dataset', 'cifar10', '--num-classes', '10', '--accuracy', '12.34', '--license',
                         'mit', '--push', '--private']) == 0
    folder = tmp_path / 'out' / 'resnet8.mine'
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['num_classes'] == 10 and cfg['pretrained_cfg']['license'] == 'mit'
    assert cfg['timm_kd']['reported_top1'] == 12.34 and cfg['timm_kd']['repo_id'] == 'kdflags/resnet8.mine'
    card = (folder / 'README.md').read_text()
    meta = yaml.safe_load(card.split('---\n')[1])
    assert meta['license'] == 'mit' and meta['datasets'][0].endswith('cifar10') and '12.34' in card
    repo = hf.repos['kdflags/resnet8.mine']
    assert repo.private and hf.files('kdflags/resnet8.mine')['model.safetensors'] == \
        (folder / 'model.safetensors').read_bytes()
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in loaded.state_dict().items())
    # --num-classes that does not fit the checkpoint is an error, --dry-run never uploads
    assert convert_main([str(src), '--arch', 'resnet8', '--out', str(tmp_path / 'nc'), '--num-classes', '7']) == 1
    n = len(hf.log)
    assert convert_main([str(src), '--arch', 'resnet8', '--out', str(tmp_path / 'dry'), '--org', 'kdflags', '--push',
                         '--dry-run']) == 0
    assert len(hf.log) == n and (tmp_path / 'dry' / 'resnet8.cifar100' / 'model.safetensors').is_file()
    assert 'kdflags/resnet8.cifar100' not in hf.repos


def test_hub_teacher_for_other_classes_is_refused_before_training(hf, tmp_path, capsys):
    src = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    _rd_teacher(src, num_classes=100)  # a CIFAR-100 teacher, the data has 10 classes
    res = hub.convert_teacher(src, tmp_path / 'out', org='kdclasses')
    hub.push_folder(res['folder'], res['repo_id'])
    with pytest.raises(SystemExit) as e:
        _train(tmp_path / 'runs', '--teacher', f'hf-hub:{res["repo_id"]}')
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and '100' in err[0] and '10' in err[0], err
    assert not (tmp_path / 'runs').exists()


def test_train_push_to_hub_private(hf, tmp_path):
    for private in (False, True):
        repo = f'kduser/resnet8.private{int(private)}'
        private_flag = ['--hub-private'] if private else []
        res = _train(tmp_path, '--push-to-hub', repo, '--experiment', repo[-8:], *private_flag)
        assert res['hub_url'].endswith(repo) and hf.repos[repo].private is private
        best = torch.load(Path(res['run_dir']) / 'model_best.pth.tar', weights_only=True)['state_dict']
        stored = safetensors.torch.load(hf.files(repo)['model.safetensors'])
        assert stored.keys() == best.keys() and all(torch.equal(stored[k], best[k]) for k in best)


def test_timeout_gives_up_on_a_silent_hub(tmp_path, monkeypatch, capsys):
    """A server that accepts connections and never answers: --timeout 0.2 ends each tool in seconds (exit 1, one
    error line), where the default waits 30 s per request."""
    import socket
    import time
    run = _train(tmp_path, '--experiment', 'run')['run_dir']
    src = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    _rd_teacher(src)
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen(64)  # the kernel completes the handshakes; nobody ever reads or writes
        endpoint = f'http://127.0.0.1:{silent.getsockname()[1]}'
        monkeypatch.setattr(hf_constants, 'ENDPOINT', endpoint)
        monkeypatch.setenv('HF_TOKEN', 'hf_export_checks_token')
        for main, argv in ((publish_main, [run, '--repo-id', 'kduser/silent']),
                           (convert_main, [str(src), '--out', str(tmp_path / 'conv'), '--push', '--org', 'kdsilent'])):
            start = time.monotonic()
            assert main(argv + ['--timeout', '0.2']) == 1
            assert time.monotonic() - start < 20
            assert capsys.readouterr().err.count('error:') == 1
