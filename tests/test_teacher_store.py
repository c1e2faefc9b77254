"""The released teachers by name: ``timm-kd-convert --download SOURCE`` into the local teacher store, and the names
that find them (``timm.create_model(..., pretrained=True)``, ``create_teacher``, ``train_kd.py --teacher``).

Archives with each source's layout (mdistiller's ``cifar_teachers.tar``: ``cifar_teachers/<arch>_vanilla/
ckpt_epoch_240.pth``; Good-DA's ``teachers_cifar100.zip``: ``models/<arch>_vanilla/ckpt_epoch_240.pth``; RepDistiller
checkpoint dicts) hold random weights, mostly of resnet8 / wrn_16_1 (the layout allows any architecture) and of a
resnet32x4 for the design card's command. A GitHub-like release server on 127.0.0.1 serves them
(tests/release_server.py: redirects, Range, interrupted transfers); the Hub is a closed port or tests/hub_server.py.
"""
import dataclasses
import hashlib
import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants

import timm_kd
from timm_kd.distill.teacher import TeacherLoadError, create_teacher
from timm_kd.hub import archive as archive_lib
from timm_kd.hub import download as download_lib
from timm_kd.hub.cli import convert_main
from timm_kd.models import TEACHER_SOURCES, list_teachers, store_dir
from timm_kd.utils.files import LOCK_NAME, lock_folder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_runs import TOKEN, random_model, tree_digest  # noqa: E402
from hub_server import HubServer, point_client  # noqa: E402
from release_server import ReleaseServer  # noqa: E402
from test_convert import _Evil  # noqa: E402  (unpickling it runs `touch PATH`)

ROOT = Path(__file__).resolve().parents[1]
MD_PATH = '/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar'
GDA_PATH = '/MingSun-Tse/Good-DA-in-KD/releases/download/v0.1/teachers_cifar100.zip'
COVERS = ('convert_teachers.py --download', 'convert_teachers.py --list', 'convert_teachers.py --url')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ckpt(arch: str, seed: int, acc: float) -> bytes:
    """A RepDistiller / CRD teacher file as these archives hold them: {'epoch', 'model', 'accuracy', 'optimizer'},
    the accuracy a numpy scalar."""
    buf = io.BytesIO()
    torch.save({'epoch': 240, 'model': random_model(arch, seed).state_dict(), 'accuracy': np.float64(acc),
                'optimizer': {'state': {}, 'param_groups': []}}, buf)
    return buf.getvalue()


def _tar(members) -> bytes:
    """mdistiller's layout: folder entries, then cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        for name, data in members:
            for folder in ('cifar_teachers', str(Path(name).parent)):
                if folder not in tf.getnames():
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tf.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope='module')
def refs():
    """The weights inside the archives, to compare the converted teachers with."""
    return {'resnet8': random_model('resnet8', 31), 'wrn_16_1': random_model('wrn_16_1', 32),
            'resnet32x4': random_model('resnet32x4', 33)}


@pytest.fixture(scope='module')
def archives():
    md = _tar([('cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth', _ckpt('resnet8', 31, 70.5)),
               ('cifar_teachers/wrn_16_1_vanilla/ckpt_epoch_240.pth', _ckpt('wrn_16_1', 32, 66.0))])
    gda = _zip([('models/', b''), ('models/resnet8_vanilla/', b''),
                ('models/resnet8_vanilla/ckpt_epoch_240.pth', _ckpt('resnet8', 31, 70.5)),
                ('__MACOSX/models/resnet8_vanilla/._ckpt_epoch_240.pth', b'\0\5\26\7 resource fork')])
    big = _tar([('cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth', _ckpt('resnet32x4', 33, 79.42))])
    return {'mdistiller': md, 'good-da': gda, 'resnet32x4': big}


@pytest.fixture(scope='module')
def releases():
    with ReleaseServer(lifetime=600) as srv:
        yield srv


@pytest.fixture
def env(releases, archives, tmp_path, monkeypatch):
    """A fresh assets cache (the store), the Hub a closed port, the two sources served by the release server."""
    point_client(monkeypatch, f'http://127.0.0.1:{_free_port()}', tmp_path / 'hub', TOKEN)
    monkeypatch.setattr(download_lib, 'RETRY_WAIT', 0.0)
    releases.clear()
    for name, path in (('mdistiller', MD_PATH), ('good-da', GDA_PATH)):
        url = releases.publish(path, archives[name])
        monkeypatch.setitem(TEACHER_SOURCES, name, dataclasses.replace(TEACHER_SOURCES[name], url=url))
    return releases


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def _record(name: str) -> dict:
    return json.loads((store_dir().parent / 'downloads' / name / 'sha256.json').read_text())


# ---------------------------------------------------------------------------------------------------------
# download, store, names
# ---------------------------------------------------------------------------------------------------------

def test_download_converts_into_the_store_and_names_find_it(env, archives, refs, capsys, caplog):
    assert convert_main(['--download', 'mdistiller']) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256(archives['mdistiller']).hexdigest()
    assert f'sha256 {digest} (no digest is published, so it is recorded now' in out
    assert _record('mdistiller')['sha256'] == digest
    assert [p for p, _ in env.log] == [MD_PATH, '/objects/0']  # GitHub's redirect to the asset host, followed
    assert '2 teachers of mdistiller now in the local teacher store' in out
    downloads = store_dir().parent / 'downloads' / 'mdistiller'  # unpacked beside the archive, then removed
    assert sorted(p.name for p in downloads.iterdir()) == [LOCK_NAME, 'cifar_teachers.tar', 'sha256.json']

    rows = {r['name']: r for r in timm_kd.list_teachers()}
    assert set(rows) == {'resnet8.cifar100', 'wrn_16_1.cifar100'}
    assert rows['resnet8.cifar100']['reported_top1'] == 70.5 and rows['wrn_16_1.cifar100']['reported_top1'] == 66.0
    assert rows['resnet8.cifar100']['source'] == 'cifar_teachers.tar:cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth'
    assert 'mdistiller' in rows['resnet8.cifar100']['origin'] and rows['resnet8.cifar100']['archive_sha256'] == digest
    assert convert_main(['--list']) == 0
    listed = capsys.readouterr().out
    assert str(store_dir()) in listed and 'resnet8.cifar100' in listed and '70.50' in listed
    assert f'archive sha256 {digest}: mdistiller release' in listed

    # a registered name without Hub weights (the Hub is a closed port) loads the store's teacher, and says so
    with caplog.at_level(logging.INFO):
        teacher = create_teacher('resnet8', num_classes=100)
    stored = store_dir() / 'resnet8.cifar100' / 'model.safetensors'
    assert _same_weights(teacher, refs['resnet8']) and not teacher.training
    assert teacher.kd_teacher_info['source'] == f'local-dir:{stored.parent}'
    assert teacher.kd_teacher_info['accuracy'] == 70.5
    assert str(stored) in caplog.text and 'could not be reached' in caplog.text
    model = timm.create_model('wrn_16_1', pretrained=True)
    assert _same_weights(model, refs['wrn_16_1']) and model.pretrained_cfg['file'] == str(
        store_dir() / 'wrn_16_1.cifar100' / 'model.safetensors')

    # running it again checks the kept archive and converts again, without a request
    env.log.clear()
    assert convert_main(['--download', 'mdistiller']) == 0
    assert 'it matches the digest recorded at the first download' in capsys.readouterr().out and env.log == []


def test_the_hub_comes_first_when_it_has_the_weights(env, refs, tmp_path, monkeypatch):
    assert convert_main(['--download', 'mdistiller']) == 0
    published, assets = random_model('resnet8', 77), hf_constants.HF_ASSETS_CACHE
    with HubServer(lifetime=120) as hub:
        point_client(monkeypatch, hub.endpoint, tmp_path / 'hub2', TOKEN)
        monkeypatch.setattr(hf_constants, 'HF_ASSETS_CACHE', assets)  # the same store
        res = timm_kd.hub.convert_teacher(_write(tmp_path / 'pub' / 'resnet8_vanilla' / 'ckpt_epoch_240.pth',
                                                 published), tmp_path / 'pub_out')
        timm_kd.hub.push_folder(res['folder'], res['repo_id'])  # <default org>/resnet8.cifar100
        assert _same_weights(timm.create_model('resnet8', pretrained=True), published)
        assert create_teacher('resnet8').kd_teacher_info['source'] == f'hf-hub:{res["repo_id"]}'
        assert _same_weights(create_teacher('wrn_16_1'), refs['wrn_16_1'])  # not on that Hub: the store's


def _write(path: Path, model) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'epoch': 240, 'model': model.state_dict(), 'accuracy': 71.0}, path)
    return path


def test_good_da_zip_layout(env, refs, capsys):
    assert convert_main(['--download', 'good-da']) == 0
    (row,) = list_teachers()
    assert row['name'] == 'resnet8.cifar100' and row['reported_top1'] == 70.5
    assert row['source'] == 'teachers_cifar100.zip:models/resnet8_vanilla/ckpt_epoch_240.pth'
    assert 'Good-DA-in-KD release v0.1' in row['origin']
    assert _same_weights(create_teacher('resnet8'), refs['resnet8'])  # the macOS resource fork was skipped


def test_the_design_card_command_finds_the_downloaded_teacher(env, refs, archives, train_kd, tmp_path, caplog):
    env.publish(MD_PATH, archives['resnet32x4'])
    assert convert_main(['--download', 'mdistiller']) == 0
    argv = ['--model', 'resnet8x4', '--teacher', 'resnet32x4', '--tl-cutmix', '--pick', 'kld',
            '--dataset', 'synthetic/100x16', '--train-num-samples', '8', '--val-num-samples', '4', '-b', '4',
            '--epochs', '1', '--workers', '0', '--output', str(tmp_path), '--experiment', 'card']
    with caplog.at_level(logging.INFO):
        res = train_kd.main(argv)
    assert res['finished'] and res['teacher'] == 'resnet32x4'
    assert res['teacher_source'] == 'local-dir:resnet32x4.cifar100' and res['teacher_checkpoint_accuracy'] == 79.42
    assert str(store_dir() / 'resnet32x4.cifar100' / 'model.safetensors') in caplog.text


# ---------------------------------------------------------------------------------------------------------
# interrupted transfers, checksums
# ---------------------------------------------------------------------------------------------------------

def test_an_interrupted_transfer_resumes(env, archives, capsys):
    data = archives['mdistiller']
    env.cut(MD_PATH, 100_000, count=1)  # the first answer hangs up after 100 kB; the retry asks for the rest
    assert convert_main(['--download', 'mdistiller']) == 0
    assert [r for p, r in env.log if p.startswith('/objects/')] == [None, 'bytes=100000-']
    assert _record('mdistiller')['sha256'] == hashlib.sha256(data).hexdigest()

    # every attempt cut short: the command fails in one sentence and keeps what it received ...
    (store_dir().parent / 'downloads' / 'mdistiller' / 'cifar_teachers.tar').unlink()
    env.log.clear()
    env.cut(MD_PATH, 50_000, count=-1)
    assert convert_main(['--download', 'mdistiller']) == 1
    err = _one_error(capsys.readouterr().err)
    part = store_dir().parent / 'downloads' / 'mdistiller' / 'cifar_teachers.tar.part'
    assert 'run the same command again to resume' in err and '150000 bytes are kept' in err
    assert part.stat().st_size == 150_000 and part.read_bytes() == data[:150_000]
    # ... and the next run goes on from there
    env.clear()
    assert convert_main(['--download', 'mdistiller']) == 0
    assert [r for p, r in env.log if p.startswith('/objects/')] == ['bytes=150000-'] and not part.exists()


def test_a_server_without_resume_sends_it_all_again(env, archives):
    part = store_dir().parent / 'downloads' / 'mdistiller' / 'cifar_teachers.tar.part'
    part.parent.mkdir(parents=True)
    part.write_bytes(archives['mdistiller'][:1000])
    env.ignore_range = True
    assert convert_main(['--download', 'mdistiller']) == 0
    assert _record('mdistiller')['sha256'] == hashlib.sha256(archives['mdistiller']).hexdigest()


def test_a_file_that_fails_its_checksum_is_refused_deleted_and_never_converted(env, archives, capsys, monkeypatch):
    assert convert_main(['--download', 'mdistiller']) == 0
    record = _record('mdistiller')
    downloads = store_dir().parent / 'downloads' / 'mdistiller'
    before = tree_digest(store_dir())
    tampered = bytearray(archives['mdistiller'])
    tampered[-5000] ^= 1  # one bit inside the last checkpoint
    # the release changed after the first download: refused against the recorded digest
    env.publish(MD_PATH, bytes(tampered))
    (downloads / 'cifar_teachers.tar').unlink()
    capsys.readouterr()
    assert convert_main(['--download', 'mdistiller']) == 1
    err = _one_error(capsys.readouterr().err)
    assert 'does not match the sha256 recorded at its first download' in err and 'nothing was converted' in err
    assert hashlib.sha256(tampered).hexdigest() in err and record['sha256'] in err
    assert not (downloads / 'cifar_teachers.tar').exists() and not (downloads / 'cifar_teachers.tar.part').exists()
    assert _record('mdistiller') == record and tree_digest(store_dir()) == before
    # the archive kept on disk was changed: refused and deleted too
    env.publish(MD_PATH, archives['mdistiller'])
    assert convert_main(['--download', 'mdistiller']) == 0
    (downloads / 'cifar_teachers.tar').write_bytes(bytes(tampered))
    assert convert_main(['--download', 'mdistiller']) == 1
    assert 'does not match' in _one_error(capsys.readouterr().err)
    assert not (downloads / 'cifar_teachers.tar').exists()
    # a pinned (published) digest: the first download itself must match it
    monkeypatch.setitem(TEACHER_SOURCES, 'good-da', dataclasses.replace(TEACHER_SOURCES['good-da'], sha256='0' * 64))
    assert convert_main(['--download', 'good-da']) == 1
    assert 'does not match the sha256 its publisher gives' in _one_error(capsys.readouterr().err)
    gda = store_dir().parent / 'downloads' / 'good-da'
    assert not (gda / 'teachers_cifar100.zip').exists() and not (gda / 'sha256.json').exists()
    assert all(r['origin'] and 'Good-DA' not in r['origin'] for r in list_teachers())


def test_a_mirror_must_serve_the_same_file(env, archives, capsys):
    assert convert_main(['--download', 'mdistiller']) == 0
    (store_dir().parent / 'downloads' / 'mdistiller' / 'cifar_teachers.tar').unlink()
    mirror = env.publish('/mirror/cifar_teachers.tar', archives['mdistiller'][:-1] + b'\1')
    assert convert_main(['--download', 'mdistiller', '--url', mirror]) == 1
    assert 'does not match the sha256 recorded' in _one_error(capsys.readouterr().err)
    mirror = env.publish('/mirror/cifar_teachers.tar', archives['mdistiller'])
    assert convert_main(['--download', 'mdistiller', '--url', mirror]) == 0
    assert ('/mirror/cifar_teachers.tar', None) in env.log
    assert convert_main(['--url', mirror]) == 2 and convert_main(['--list', 'x.tar']) == 2
    assert convert_main(['x.tar', '--download', 'mdistiller']) == 2


def test_a_download_in_progress_elsewhere_is_one_sentence_and_left_alone(env, capsys):
    """Another command holds the archive's folder (its lock): this one refuses in one sentence, requests nothing
    and writes nothing; once the lock is free the same command downloads."""
    folder = store_dir().parent / 'downloads' / 'mdistiller'
    folder.mkdir(parents=True)
    with lock_folder(str(folder)):
        assert convert_main(['--download', 'mdistiller']) == 1
        err = _one_error(capsys.readouterr().err)
        assert 'Another command is fetching cifar_teachers.tar' in err and str(folder) in err, err
        assert env.log == [] and sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]
    assert convert_main(['--download', 'mdistiller']) == 0


def test_http_errors_and_oversized_files_are_one_sentence(env, capsys, monkeypatch):
    env.status(MD_PATH, 404)
    assert convert_main(['--download', 'mdistiller']) == 1
    err = _one_error(capsys.readouterr().err)
    assert 'answered HTTP 404' in err and MD_PATH in err
    env.status(MD_PATH, 503, count=-1)
    assert convert_main(['--download', 'mdistiller']) == 1
    assert 'HTTP 503 (3 attempts' in _one_error(capsys.readouterr().err)
    env.clear()
    monkeypatch.setattr(download_lib, 'MAX_DOWNLOAD_BYTES', 1000)
    assert convert_main(['--download', 'mdistiller']) == 1
    assert 'more than any teacher archive (1000 at most)' in _one_error(capsys.readouterr().err)
    assert not any((store_dir().parent / 'downloads' / 'mdistiller').glob('cifar_teachers.tar*'))


# ---------------------------------------------------------------------------------------------------------
# archives are untrusted input
# ---------------------------------------------------------------------------------------------------------

def test_archive_members_never_escape_and_never_run_code(tmp_path, capsys):
    good = _ckpt('resnet8', 31, 70.5)
    evil = io.BytesIO()
    torch.save({'epoch': 240, 'model': {'w': _Evil(tmp_path / 'pwned')}}, evil)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        def add(name, data=b'', **attrs):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in attrs.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if data else None)
        add('cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth', good)
        add('cifar_teachers/wrn_16_1_vanilla/ckpt_epoch_240.pth', evil.getvalue())
        add('../../escape/resnet8_vanilla/ckpt_epoch_240.pth', good)
        add('/tmp/timm_kd_abs_vanilla/ckpt_epoch_240.pth', good)
        add('cifar_teachers/link_vanilla/ckpt_epoch_240.pth', type=tarfile.SYMTYPE, linkname='/etc/passwd')
        add('cifar_teachers/hard_vanilla/ckpt_epoch_240.pth', type=tarfile.LNKTYPE,
            linkname='cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth')
        add('cifar_teachers/dev_vanilla/ckpt_epoch_240.pth', type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add('cifar_teachers/fifo_vanilla/ckpt_epoch_240.pth', type=tarfile.FIFOTYPE)
    tar = tmp_path / 'in' / 'cifar_teachers.tar'
    tar.parent.mkdir()
    tar.write_bytes(buf.getvalue())
    dest = tmp_path / 'x'
    dest.mkdir()
    got = archive_lib.extract_checkpoints(tar, dest)
    assert sorted(name for _, name in got) == sorted([
        'cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth', 'cifar_teachers/wrn_16_1_vanilla/ckpt_epoch_240.pth',
        '../../escape/resnet8_vanilla/ckpt_epoch_240.pth', '/tmp/timm_kd_abs_vanilla/ckpt_epoch_240.pth'])
    assert all(p.parent == dest and p.is_file() and not p.is_symlink() for p, _ in got)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p, _ in got)
    assert not (tmp_path / 'escape').exists() and not Path('/tmp/timm_kd_abs_vanilla').exists()

    # converting it: the good teachers are converted, the one that would run code is refused, nothing escapes
    assert convert_main([str(tar), '--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert 'refusing to load' in err and not (tmp_path / 'pwned').exists()
    assert sorted(p.name for p in (tmp_path / 'out').iterdir() if not p.name.startswith('.')) == ['resnet8.cifar100']

    # zip: traversal names and a symlink entry
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, 'w') as zf:
        zf.writestr('models/resnet8_vanilla/ckpt_epoch_240.pth', good)
        zf.writestr('../../zescape/resnet8_vanilla/ckpt_epoch_240.pth', good)
        link = zipfile.ZipInfo('models/link_vanilla/ckpt_epoch_240.pth')
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, '/etc/passwd')
    zpath = tmp_path / 'in' / 'teachers_cifar100.zip'
    zpath.write_bytes(zbuf.getvalue())
    zdest = tmp_path / 'z'
    zdest.mkdir()
    got = archive_lib.extract_checkpoints(zpath, zdest)
    assert [name for _, name in got] == ['../../zescape/resnet8_vanilla/ckpt_epoch_240.pth',
                                         'models/resnet8_vanilla/ckpt_epoch_240.pth']
    assert all(p.parent == zdest and p.read_bytes() == good for p, _ in got)
    assert not (tmp_path / 'zescape').exists() and not (tmp_path.parent / 'zescape').exists()


def test_archive_sizes_are_bounded(tmp_path, monkeypatch):
    data = _ckpt('resnet8', 31, 70.5)
    tar = tmp_path / 'cifar_teachers.tar'
    tar.write_bytes(_tar([('cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth', data)]))
    monkeypatch.setattr(archive_lib, 'MAX_MEMBER_BYTES', len(data) - 1)
    with pytest.raises(ValueError, match='declares .* bytes, more than any teacher checkpoint'):
        archive_lib.extract_checkpoints(tar, tmp_path)
    # a member whose stream runs past its declared size (a lying header) is cut off, not trusted
    monkeypatch.setattr(archive_lib, 'MAX_MEMBER_BYTES', 1 << 30)
    with pytest.raises(ValueError, match='more data than its declared 10 bytes'):
        archive_lib._copy_bounded(io.BytesIO(b'x' * 11), tmp_path / 'out.pth', 10)
    assert not archive_lib.is_archive(tmp_path / 'missing.tar')
    torch.save({'model': {}}, tmp_path / 'student_best')  # a torch.save zip without a suffix is a checkpoint
    assert not archive_lib.is_archive(tmp_path / 'student_best') and archive_lib.is_archive(tar)


# ---------------------------------------------------------------------------------------------------------
# neither on the Hub nor in the store
# ---------------------------------------------------------------------------------------------------------

def test_no_network_and_no_store_fail_in_one_sentence_before_any_data(tmp_path, monkeypatch):
    data = tmp_path / 'data'
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING', 'TIMM_KD'))}
    env.update(HF_HOME=str(tmp_path / 'hf'), HF_ENDPOINT=f'http://127.0.0.1:{_free_port()}', OMP_NUM_THREADS='1',
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / 'train_kd.py'), '--model', 'resnet8x4', '--teacher', 'resnet32x4',
           '--tl-cutmix', '--pick', 'kld', '--dataset', 'torch/cifar100', '--data-dir', str(data), '--dataset-download']
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    err = _one_error(p.stderr)
    assert err.startswith("train_kd.py: error: No trained weights for 'resnet32x4'") and err.endswith('.')
    assert 'get it with `timm-kd-convert --download mdistiller`' in err and 'could not be reached' in err
    assert not any(data.iterdir())  # CIFAR-100 was neither read nor downloaded

    # the same in this process, offline: create_teacher and timm.create_model name the command too
    point_client(monkeypatch, env['HF_ENDPOINT'], tmp_path / 'hub', TOKEN)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(TeacherLoadError, match=r'HF_HUB_OFFLINE=1 is set.*`timm-kd-convert --download mdistiller`'):
        create_teacher('resnet32x4')
    with pytest.raises(RuntimeError, match='local teacher store .* get it with `timm-kd-convert --download mdistiller`'):
        timm.create_model('vgg13_cifar', pretrained=True)
