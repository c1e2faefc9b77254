"""Hub: teachers in, students out, against the real huggingface_hub client and a local Hub (tests/hub_server.py).

In this process the client is pointed at the server by patching ``huggingface_hub.constants`` (it reads
HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE at import); subprocesses get environment variables instead,
which is also how the registered-name default (TIMM_KD_HUB_ORG, read when timm_kd is imported) is tested.
"""
import hashlib
import json
import os
import runpy
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import timm
import yaml
from huggingface_hub import constants as hf_constants

import timm_kd
from timm_kd import hub
from timm_kd.hub import io as hub_io
from timm_kd.hub.cli import convert_main, publish_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer, point_client  # noqa: E402
from hub_runs import TOKEN, fake_run, random_model, rd_checkpoint, tree_digest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _point_client(mp: pytest.MonkeyPatch, endpoint: str, cache: Path) -> None:
    point_client(mp, endpoint, cache, TOKEN)


def _free_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there afterwards
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


COVERS = ('publish.py run_dir', 'publish.py --repo-id', 'publish.py --which', 'publish.py --private',
          'publish.py --dry-run', 'publish.py --out', 'convert_teachers.py sources', 'convert_teachers.py --out',
          'convert_teachers.py --org', 'convert_teachers.py --push', 'convert_teachers.py --dry-run')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def server():
    with HubServer(lifetime=300) as srv:  # stops itself after 300 s even if the module never finishes
        yield srv


@pytest.fixture
def hf(server, tmp_path, monkeypatch):
    _point_client(monkeypatch, server.endpoint, tmp_path / 'hf_cache')
    monkeypatch.setattr(hub_io, 'RETRY_WAIT', 0.05)
    server.clear_faults()
    return server


def _fresh_cache(monkeypatch, path: Path) -> None:
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(path))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same_logits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def _visible(folder: Path) -> list:
    """Names in a folder without hidden ones (an export's marker file is hidden and never uploaded)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))


# ---------------------------------------------------------------------------------------------------------
# teachers in
# ---------------------------------------------------------------------------------------------------------

def test_rd_arch_names_map_to_registered_models():
    assert hub.map_arch('resnet32x4') == 'resnet32x4'
    assert hub.map_arch('vgg13') == 'vgg13_cifar'
    assert hub.map_arch('ResNet50') == 'resnet50_cifar'
    assert hub.map_arch('MobileNetV2') == 'mobilenetv2_cifar'
    assert hub.map_arch('ShuffleV1') == 'shufflenetv1_cifar'
    assert hub.map_arch('ShuffleV2') == 'shufflenetv2_cifar'
    assert hub.map_arch('wrn_40_2') == 'wrn_40_2'
    assert all(timm.is_model(v) for v in hub.RD_ARCH_MAP.values())
    assert hub.arch_from_path('save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth') == 'wrn_40_2'
    assert hub.arch_from_path('cifar_teachers/ResNet50_vanilla/ckpt_epoch_240.pth') == 'ResNet50'
    assert hub.arch_from_path('weights/resnet8x4_best.pth') == 'resnet8x4'
    assert hub.arch_from_path('weights/ckpt.pth') is None
    with pytest.raises(ValueError, match='Unknown teacher architecture'):
        hub.map_arch('ResNet1000')


def test_convert_push_then_hf_hub_load_in_fresh_cache(hf, tmp_path, monkeypatch):
    ref = rd_checkpoint(tmp_path / 'rd' / 'resnet8_vanilla' / 'ckpt_epoch_240.pth')
    res = hub.convert_teacher(tmp_path / 'rd' / 'resnet8_vanilla' / 'ckpt_epoch_240.pth', tmp_path / 'out', org='kdconv')
    assert res['repo_id'] == 'kdconv/resnet8.cifar100' and res['accuracy'] == pytest.approx(71.25)
    folder = res['folder']
    assert _visible(folder) == ['README.md', 'config.json', 'model.safetensors']
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == 'resnet8' and cfg['num_classes'] == 100
    assert cfg['pretrained_cfg']['mean'] == [0.5071, 0.4867, 0.4408] and 'hf_hub_id' not in cfg['pretrained_cfg']
    card = (folder / 'README.md').read_text()
    digest = hashlib.sha256((tmp_path / 'rd' / 'resnet8_vanilla' / 'ckpt_epoch_240.pth').read_bytes()).hexdigest()
    assert res['sha256'] == digest and digest in card and '71.25' in card and 'transformers' not in card
    assert card.split('```python\n', 1)[1].startswith('import timm_kd')

    url = hub.push_folder(folder, res['repo_id'])
    assert url == f'{hf.endpoint}/kdconv/resnet8.cifar100'
    assert {'config.json', 'model.safetensors', 'README.md'} <= set(hf.files(res['repo_id']))
    assert not any(f.endswith(('.bin', '.pth')) for f in hf.files(res['repo_id']))

    _fresh_cache(monkeypatch, tmp_path / 'fresh')
    loaded = timm.create_model('hf-hub:kdconv/resnet8.cifar100', pretrained=True)
    assert _same_weights(loaded, ref) and _same_logits(loaded, ref)
    teacher = hub.create_teacher('hf-hub:kdconv/resnet8.cifar100', num_classes=100)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert _same_logits(teacher, ref)
    # a checkpoint file inside a Hub repo, for a registered architecture
    teacher2 = hub.create_teacher('resnet8', checkpoint='hf-hub:kdconv/resnet8.cifar100/model.safetensors')
    assert _same_weights(teacher2, ref)


def test_convert_teachers_cli_tar_and_dir(hf, tmp_path):
    src = tmp_path / 'cifar_teachers'
    refs = {'resnet8': rd_checkpoint(src / 'resnet8_vanilla' / 'ckpt_epoch_240.pth', 'resnet8', seed=3, acc=70.5),
            'wrn_16_1': rd_checkpoint(src / 'wrn_16_1_vanilla' / 'ckpt_epoch_240.pth', 'wrn_16_1', seed=4, acc=66.0)}
    rd_checkpoint(src / 'resnet8_vanilla' / 'ckpt_epoch_200.pth', 'resnet8', seed=5, epoch=200)  # not the final one
    tar = tmp_path / 'cifar_teachers.tar'
    with tarfile.open(tar, 'w') as tf:
        tf.add(src, arcname='cifar_teachers')
        tf.add(src / 'wrn_16_1_vanilla' / 'ckpt_epoch_240.pth', arcname='../../escape/x_vanilla/ckpt_epoch_240.pth')

    assert convert_main([str(tar), '--out', str(tmp_path / 'out_tar'), '--org', 'kdtar', '--push']) == 1  # the x_ entry
    assert not (tmp_path / 'escape').exists() and not (tmp_path.parent / 'escape').exists()
    for arch, ref in refs.items():
        repo = f'kdtar/{arch}.cifar100'
        assert 'model.safetensors' in hf.files(repo)
        loaded = timm.create_model(f'local-dir:{tmp_path / "out_tar" / f"{arch}.cifar100"}', pretrained=True)
        assert _same_weights(loaded, ref)
    card = hf.files('kdtar/resnet8.cifar100')['README.md'].decode()
    assert 'cifar_teachers.tar:cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth' in card and '70.50' in card

    # the extracted folder gives the same result, without pushing
    assert convert_main([str(src), '--out', str(tmp_path / 'out_dir'), '--dry-run', '--push']) == 0
    assert _visible(tmp_path / 'out_dir') == ['resnet8.cifar100', 'wrn_16_1.cifar100']
    st = lambda p: (p / 'model.safetensors').read_bytes()  # noqa: E731
    assert st(tmp_path / 'out_dir' / 'resnet8.cifar100') == st(tmp_path / 'out_tar' / 'resnet8.cifar100')


def test_convert_tinyimagenet_teacher_keeps_its_preprocessing(tmp_path):
    ref = rd_checkpoint(tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth')
    res = hub.convert_teacher(tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth', tmp_path / 'out',
                              dataset='tinyimagenet', num_classes=100, org='kd')
    cfg = json.loads((res['folder'] / 'config.json').read_text())
    assert res['repo_id'] == 'kd/resnet8.tinyimagenet'
    assert cfg['pretrained_cfg']['input_size'] == [3, 64, 64] and cfg['pretrained_cfg']['mean'] == [0.485, 0.456, 0.406]
    assert _same_weights(timm.create_model(f'local-dir:{res["folder"]}', pretrained=True), ref)


def test_create_teacher_checkpoint_formats_and_mismatches(tmp_path):
    ref = rd_checkpoint(tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth')
    rd = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    gda = tmp_path / 'resnet8_best.pth'  # Good-DA: DataParallel 'module.' prefix
    torch.save({'epoch': 1, 'model': {f'module.{k}': v for k, v in ref.state_dict().items()}, 'accuracy': 70.0}, gda)
    timm_ckpt = tmp_path / 'model_best.pth.tar'
    torch.save({'arch': 'resnet8', 'epoch': 1, 'state_dict': ref.state_dict()}, timm_ckpt)
    for ckpt in (rd, gda, timm_ckpt):
        t = hub.create_teacher('resnet8', checkpoint=ckpt, num_classes=100)
        assert _same_weights(t, ref) and not t.training and not any(p.requires_grad for p in t.parameters())
    assert hub.create_teacher('resnet8', checkpoint=rd).kd_teacher_info['accuracy'] == pytest.approx(71.25)

    with pytest.raises(hub.TeacherLoadError, match=r"does not fit 'resnet20'.*missing keys"):
        hub.create_teacher('resnet20', checkpoint=rd)
    with pytest.raises(hub.TeacherLoadError, match='predicts 100 classes but the student has 10'):
        hub.create_teacher('resnet8', checkpoint=rd, num_classes=10)
    with pytest.raises(hub.TeacherLoadError, match='does not exist'):
        hub.create_teacher('resnet8', checkpoint=tmp_path / 'nope.pth')
    with pytest.raises(hub.TeacherLoadError, match="Unknown teacher model 'resnet9000'"):
        hub.create_teacher('resnet9000')
    with pytest.raises(hub.TeacherLoadError, match="'coatnet_0_224' has no pretrained weights registered"):
        hub.create_teacher('coatnet_0_224')  # a timm model without weights: never a random teacher
    # a 10-class checkpoint builds a 10-class teacher, not a 100-class one with a random head
    small = random_model('resnet8', 7, num_classes=10)
    torch.save({'model': small.state_dict()}, tmp_path / 'c10.pth')
    t10 = hub.create_teacher('resnet8', checkpoint=tmp_path / 'c10.pth', num_classes=10)
    assert t10.num_classes == 10 and _same_weights(t10, small)


def test_teacher_errors_are_one_clear_sentence(hf, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    # repo missing
    with pytest.raises(hub.TeacherLoadError) as e:
        hub.create_teacher('hf-hub:kdnone/resnet8.cifar100')
    msg = str(e.value)
    assert "'kdnone/resnet8.cifar100'" in msg and 'does not exist' in msg
    assert 'timm-kd-convert' in msg and '--teacher-checkpoint' in msg and '\n' not in msg
    # repo exists but holds no weights
    HfApi().create_repo('kdempty/resnet8.cifar100')
    with pytest.raises(hub.TeacherLoadError, match='does not contain the expected file'):
        hub.create_teacher('hf-hub:kdempty/resnet8.cifar100')
    # checkpoint file missing from a repo
    with pytest.raises(hub.TeacherLoadError, match="'nope.pth' from the Hub repo 'kdempty/resnet8.cifar100'"):
        hub.create_teacher('resnet8', checkpoint='hf-hub:kdempty/resnet8.cifar100/nope.pth')
    # server error: reported at once (no minute of retries), with the status
    hf.add_fault('HEAD', r'/resolve/', 503)
    with pytest.raises(hub.TeacherLoadError, match='HTTP 503'):
        hub.create_teacher('hf-hub:kdempty/resnet8.cifar100')
    hf.clear_faults()
    # server down, registered name: says which repo and where the org comes from
    down = f'http://127.0.0.1:{_free_port()}'
    _point_client(monkeypatch, down, tmp_path / 'empty_cache')
    with pytest.raises(hub.TeacherLoadError) as e:
        hub.create_teacher('resnet8')
    msg = str(e.value)
    assert f"'{timm_kd.models.hub_org()}/resnet8.cifar100'" in msg and 'TIMM_KD_HUB_ORG' in msg
    assert 'could not be reached' in msg and '--teacher-checkpoint' in msg


_CHILD = r'''
import json, sys, torch, timm, timm_kd
from timm_kd import hub
out = {'hf_hub_id': timm.models.get_pretrained_cfg('resnet8').hf_hub_id}
ref = timm.create_model('resnet8')
timm_kd.load_kd_checkpoint(ref, sys.argv[1])
ref.eval()
x = torch.randn(2, 3, 32, 32)
t = hub.create_teacher('resnet8', num_classes=100)
plain = timm.create_model('resnet8', pretrained=True).eval()
with torch.no_grad():
    out['same'] = bool(torch.equal(t(x), ref(x)) and torch.equal(plain(x), ref(x)))
try:
    hub.create_teacher('resnet20')
    out['missing'] = None
except hub.TeacherLoadError as e:
    out['missing'] = str(e)
print('RESULT ' + json.dumps(out))
'''


def _child_env(**env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING', 'TIMM_KD'))}
    return dict(base, OMP_NUM_THREADS='1', HF_HUB_DISABLE_XET='1', HF_HUB_DISABLE_TELEMETRY='1', **env)


def test_registered_name_resolves_org_from_env(hf, tmp_path):
    # TIMM_KD_HUB_ORG and HF_ENDPOINT are read at import: a fresh interpreter with environment variables
    ckpt = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    rd_checkpoint(ckpt, seed=11)
    res = hub.convert_teacher(ckpt, tmp_path / 'out', org='kdorg')
    hub.push_folder(res['folder'], res['repo_id'])
    script = tmp_path / 'child.py'
    script.write_text(_CHILD)
    env = _child_env(HF_ENDPOINT=hf.endpoint, HF_HUB_CACHE=str(tmp_path / 'cache'), HF_HOME=str(tmp_path / 'home'),
                     TIMM_KD_HUB_ORG='kdorg')
    p = subprocess.run([sys.executable, str(script), str(ckpt)], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split('RESULT ', 1)[1])
    assert out['hf_hub_id'] == 'kdorg/resnet8.cifar100' and out['same']
    assert "'kdorg/resnet20.cifar100'" in out['missing'] and 'does not exist' in out['missing']
    assert 'TIMM_KD_HUB_ORG' in out['missing'] and '--teacher-checkpoint' in out['missing']


def test_offline_mode_loads_from_cache_or_explains(hf, tmp_path, monkeypatch):
    ckpt = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    ref = rd_checkpoint(ckpt, seed=12)
    res = hub.convert_teacher(ckpt, tmp_path / 'out', org='kdoff')
    hub.push_folder(res['folder'], res['repo_id'])
    overlay = dict(hf_hub_id='kdoff/resnet8.cifar100')  # the registered-name path, org given explicitly
    hub.create_teacher('hf-hub:kdoff/resnet8.cifar100')  # online: fills the cache
    hub.create_teacher('resnet8', pretrained_cfg_overlay=overlay)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)  # what HF_HUB_OFFLINE=1 sets at import
    n_requests = len(hf.log)
    assert _same_weights(hub.create_teacher('hf-hub:kdoff/resnet8.cifar100'), ref)
    assert _same_weights(hub.create_teacher('resnet8', pretrained_cfg_overlay=overlay), ref)
    with pytest.raises(hub.TeacherLoadError, match=r'HF_HUB_OFFLINE=1 is set and the files are not in the local cache'):
        hub.create_teacher('resnet20', pretrained_cfg_overlay=dict(hf_hub_id='kdoff/resnet20.cifar100'))
    assert len(hf.log) == n_requests  # offline means no request at all


# ---------------------------------------------------------------------------------------------------------
# students out
# ---------------------------------------------------------------------------------------------------------

def test_publish_student_roundtrip_and_republish_updates(hf, tmp_path, monkeypatch, capsys):
    run = tmp_path / 'output' / 'train' / 'kd-run'
    models = fake_run(run)
    before = tree_digest(run)
    repo = 'kduser/resnet8.tlcutmix_pick_test'

    url = hub.publish_student(run, repo)
    assert url == f'{hf.endpoint}/{repo}'
    files = hf.files(repo)
    assert {'config.json', 'model.safetensors', 'README.md', 'training/args.yaml', 'training/summary.csv',
            'training/results.json'} <= set(files)
    for name, data in files.items():  # the token is used for the upload but written nowhere; no local paths
        assert TOKEN.encode() not in data and str(tmp_path).encode() not in data, name
    assert 'push_to_hub' not in yaml.safe_load(files['training/args.yaml'])  # a rerun from it must not push here
    assert '(weights: `resnet32x4.pth`)' in files['README.md'].decode()
    assert TOKEN not in ''.join(capsys.readouterr())
    assert any(auth for m, p, auth in hf.log if p.endswith(f'{repo}/commit/main'))
    card = files['README.md'].decode()
    assert card.split('```python\n', 1)[1].startswith('import timm_kd')
    meta = yaml.safe_load(card.split('---\n')[1])
    assert 'transformers' not in meta['tags'] and meta['library_name'] == 'timm' and meta['datasets'] == ['uoft-cs/cifar100']
    metrics = {m['name']: m['value'] for m in meta['model-index'][0]['results'][0]['metrics']}
    assert metrics['Top-1 accuracy (best epoch)'] == 55.5 and metrics['Top-1 accuracy (last epoch)'] == 54.25
    assert metrics['Top-5 accuracy (best epoch)'] == 80.125
    for text in ('resnet32x4', '79.42', 'best epoch (epoch 3)', 'kd_temperature', 'tl_cutmix'):
        assert text in card, text
    cfg = json.loads(files['config.json'])
    assert cfg['architecture'] == 'resnet8' and cfg['timm_kd']['teacher'] == 'resnet32x4'
    assert cfg['pretrained_cfg']['mean'] == [0.5, 0.5, 0.5]  # the normalisation the run trained with

    _fresh_cache(monkeypatch, tmp_path / 'fresh1')
    loaded = timm.create_model(f'hf-hub:{repo}', pretrained=True)
    assert _same_weights(loaded, models['model_best.pth.tar']) and _same_logits(loaded, models['model_best.pth.tar'])

    # re-publish (last weights): the same repo gets one more commit, nothing is duplicated
    n_repos, n_commits = len(hf.repos), hf.n_commits(repo)
    hub.publish_student(run, repo, which='last')
    assert len(hf.repos) == n_repos and hf.n_commits(repo) == n_commits + 1
    _fresh_cache(monkeypatch, tmp_path / 'fresh2')
    assert _same_weights(timm.create_model(f'hf-hub:{repo}', pretrained=True), models['last.pth.tar'])
    assert 'last epoch (epoch 4)' in hf.files(repo)['README.md'].decode()  # the card is updated too
    # an identical re-publish changes nothing
    hub.publish_student(run, repo, which='last')
    assert hf.n_commits(repo) == n_commits + 1
    # the run's own files were never touched (the export lives in <run>/hub/)
    after = tree_digest(run)
    assert {k: v for k, v in after.items() if not k.startswith('hub/')} == before


def test_publish_ema_run_publishes_the_evaluated_ema_weights(tmp_path):
    run = tmp_path / 'run'
    fake_run(run)
    args = yaml.safe_load((run / 'args.yaml').read_text())
    args['model_ema'] = True
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    ck = torch.load(run / 'model_best.pth.tar', weights_only=True)
    ema = random_model('resnet8', 21)
    ck['state_dict_ema'] = ema.state_dict()
    torch.save(ck, run / 'model_best.pth.tar')
    folder = hub.publish_student(run, 'kduser/ema', dry_run=True)
    assert _same_weights(timm.create_model(f'local-dir:{folder}', pretrained=True), ema)
    assert 'moving average (EMA)' in (folder / 'README.md').read_text()


def test_publish_cli_dry_run_private_and_bad_input(hf, tmp_path, capsys):
    run = tmp_path / 'run'
    models = fake_run(run)
    n = len(hf.log)
    assert publish_main([str(run), '--repo-id', 'kduser/dry', '--dry-run', '--which', 'last',
                     '--out', str(tmp_path / 'export')]) == 0
    assert len(hf.log) == n  # a dry run never talks to the Hub
    out = tmp_path / 'export'
    assert _visible(out) == ['README.md', 'config.json', 'model.safetensors', 'training']
    assert _same_weights(timm.create_model(f'local-dir:{out}', pretrained=True), models['last.pth.tar'])
    assert 'last epoch (epoch 4)' in (out / 'README.md').read_text()

    assert publish_main([str(run), '--repo-id', 'kduser/private-one', '--private']) == 0
    assert hf.repos['kduser/private-one'].private

    assert publish_main([str(tmp_path / 'missing'), '--repo-id', 'kduser/x']) == 2
    (run / 'model_best.pth.tar').unlink()
    assert publish_main([str(run), '--repo-id', 'kduser/x']) == 2
    err = capsys.readouterr().err
    assert 'does not exist' in err and 'try --which last' in err and 'Traceback' not in err


@pytest.mark.parametrize('fault', ['create-500', 'commit-500', 'create-403', 'commit-404'])
def test_publish_hub_faults_leave_local_files_and_rerun_works(hf, tmp_path, fault, capsys):
    run = tmp_path / 'run'
    fake_run(run)
    before = tree_digest(run)
    repo = f'kdfault/{fault}'
    where, status = fault.split('-')
    hf.add_fault('POST', '/api/repos/create' if where == 'create' else r'/commit/main$', int(status))
    assert publish_main([str(run), '--repo-id', repo]) == 1
    hf.clear_faults()
    err = capsys.readouterr().err
    assert err.count('error:') == 1 and 'nothing local was changed' in err and TOKEN not in err
    assert {'500': 'server error (HTTP 500)', '403': 'refused the write (HTTP 403)',
            '404': 'answered 404'}[status] in err
    after = tree_digest(run)
    assert {k: v for k, v in after.items() if not k.startswith('hub/')} == before
    assert (run / 'hub' / fault / 'model.safetensors').is_file()  # the export is kept for the rerun
    # rerun once the Hub is back: one repo, with the model
    assert publish_main([str(run), '--repo-id', repo]) == 0
    assert 'model.safetensors' in hf.files(repo) and sum(r == repo for r in hf.repos) == 1


def test_publish_cli_server_down_exits_nonzero(tmp_path, monkeypatch, capsys):
    run = tmp_path / 'run'
    fake_run(run)
    before = tree_digest(run)
    _point_client(monkeypatch, f'http://127.0.0.1:{_free_port()}', tmp_path / 'cache')
    monkeypatch.setattr(hub_io, 'RETRY_WAIT', 0.05)
    assert publish_main([str(run), '--repo-id', 'kd/down']) == 1
    out, err = capsys.readouterr()
    assert err.count('error:') == 1 and 'could not be reached' in err and TOKEN not in out + err
    assert {k: v for k, v in tree_digest(run).items() if not k.startswith('hub/')} == before


def test_hub_server_stops_by_itself():
    srv = HubServer(lifetime=0.3).start()
    port = srv.server_address[1]
    assert srv.closed.wait(timeout=10)
    srv._thread.join(timeout=10)
    assert not srv._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', port), timeout=2).close()


def test_a_new_family_is_picked_up_by_the_name_table(monkeypatch):
    """map_arch reads ORIGINAL_NAMES of every module that registers models in timm: a family file is enough."""
    import types
    from timm_kd.models import _names
    family = types.ModuleType('timm_kd.models.cifar_toynet')
    family.ORIGINAL_NAMES = {'ToyNet': 'toynet_cifar'}

    def toynet_cifar(pretrained: bool = False, **kwargs):
        return timm.create_model('resnet8', **kwargs)
    toynet_cifar.__module__ = family.__name__
    # what @register_model in a new family file does, seen through the two registry calls the table uses
    monkeypatch.setitem(sys.modules, family.__name__, family)
    real_list, real_entry = timm.list_models, _names.model_entrypoint
    monkeypatch.setattr(timm, 'list_models', lambda *a, **kw: real_list(*a, **kw) + ['toynet_cifar'])
    monkeypatch.setattr(_names, 'model_entrypoint', lambda n: toynet_cifar if n == 'toynet_cifar' else real_entry(n))
    assert hub.map_arch('ToyNet') == hub.map_arch('toynet') == 'toynet_cifar'
    assert hub.arch_from_path('teachers/ToyNet_vanilla/ckpt_epoch_240.pth') == 'ToyNet'
    assert hub.arch_from_path('weights/toynet_cifar_best.pth') == 'toynet_cifar'


def test_console_scripts_and_hfhub_wrappers_call_the_package_mains(monkeypatch, capsys):
    import tomllib
    scripts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
    assert scripts['timm-kd-publish'] == 'timm_kd.hub.cli:publish_main'
    assert scripts['timm-kd-convert'] == 'timm_kd.hub.cli:convert_main'
    for script, main in (('publish.py', 'publish_main'), ('convert_teachers.py', 'convert_main')):
        text = (ROOT / 'hfhub' / script).read_text()
        assert f'from timm_kd.hub.cli import {main}' in text and 'sys.path' not in text
        monkeypatch.setattr(sys, 'argv', [script, '--help'])  # the script as `python hfhub/<script> --help` runs it
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / 'hfhub' / script), run_name='__main__')
        assert e.value.code == 0 and '--timeout' in capsys.readouterr().out
