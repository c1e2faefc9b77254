"""Hub tools under faults and bad input: every case ends in an exact outcome (an exit code and one sentence, or
a bounded failure) and changes no user file.

Servers: the loopback Hub of tests/hub_server.py (a failing one: every request answered HTTP 500) and a
silent one that accepts connections but never answers. Timeouts are shortened through the same module
defaults (``timm_kd.hub.io.DEFAULT_TIMEOUT`` / ``RETRY_WAIT``) and flag (``--timeout``) users have.
"""
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from timm_kd.hub import io as hub_io
from timm_kd.hub.cli import convert_main, publish_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer, point_client  # noqa: E402
from hub_runs import TOKEN, fake_run, rd_checkpoint, tree_digest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COVERS = ('publish.py --timeout', 'publish.py --out', 'publish.py --repo-id', 'publish.py --dataset-id',
          'convert_teachers.py --timeout', 'convert_teachers.py --push', '--push-to-hub')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte: a Hub that hangs."""

    def __init__(self):
        self.sock = socket.create_server(('127.0.0.1', 0))
        self.endpoint = f'http://127.0.0.1:{self.sock.getsockname()[1]}'
        self.connections = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while True:
            try:
                self.connections.append(self.sock.accept()[0])
            except OSError:  # closed
                return

    def __enter__(self) -> 'SilentServer':
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for c in self.connections:
            c.close()


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(hub_io, 'RETRY_WAIT', 0.05)


def _untouched(run: Path, before: dict) -> bool:
    """The run's own files are as they were (an export under hub/ may have been written)."""
    return {k: v for k, v in tree_digest(run).items() if not k.startswith('hub/')} == before


def _one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err and TOKEN not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# servers that hang or fail
# ---------------------------------------------------------------------------------------------------------

def test_silent_server_publish_fails_in_bounded_time(tmp_path, monkeypatch, capsys, quick_retries):
    run = tmp_path / 'run'
    fake_run(run)
    before = tree_digest(run)
    with SilentServer() as silent:
        point_client(monkeypatch, silent.endpoint, tmp_path / 'cache', TOKEN)
        start = time.monotonic()
        assert publish_main([str(run), '--repo-id', 'kd/silent', '--timeout', '0.5']) == 1
        elapsed = time.monotonic() - start
    assert elapsed < 20, elapsed  # 2 attempts x 0.5 s, plus the export; never a hang
    line = _one_error(capsys.readouterr().err)
    assert silent.endpoint in line and 'did not answer in time' in line
    assert '(2 attempts, 0.5 s timeout each)' in line and 'run the same command again' in line
    assert _untouched(run, before) and (run / 'hub' / 'silent' / 'model.safetensors').is_file()


def test_silent_server_at_the_end_of_training_keeps_the_results(tmp_path, monkeypatch, caplog, quick_retries):
    spec = importlib.util.spec_from_file_location('train_kd', ROOT / 'train_kd.py')
    train_kd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_kd)
    monkeypatch.setattr(hub_io, 'DEFAULT_TIMEOUT', 0.5)  # the default --push-to-hub uses
    argv = ['--model', 'resnet8', '--dataset', 'synthetic/4x16', '--train-num-samples', '16', '--val-num-samples', '8',
            '-b', '8', '--workers', '0', '--epochs', '1', '--warmup-epochs', '0', '--output', str(tmp_path),
            '--experiment', 'push', '--push-to-hub', 'kduser/resnet8.silent']
    with SilentServer() as silent:
        point_client(monkeypatch, silent.endpoint, tmp_path / 'cache', TOKEN)
        start = time.monotonic()
        res = train_kd.main(argv)
        elapsed = time.monotonic() - start
    assert elapsed < 120, elapsed
    run = tmp_path / 'push'
    on_disk = json.loads((run / 'results.json').read_text())
    assert on_disk['finished'] and on_disk['hub_url'] is None and silent.endpoint in on_disk['hub_error']
    assert res['hub_error'] == on_disk['hub_error'] and on_disk['best_top1'] is not None
    assert {'last.pth.tar', 'model_best.pth.tar', 'summary.csv', 'args.yaml'} <= {p.name for p in run.iterdir()}
    retry = [line for line in (run / 'log.txt').read_text().splitlines() if 'retry with' in line]
    assert len(retry) == 1 and f'timm-kd-publish {run} --repo-id kduser/resnet8.silent' in retry[0]


def test_silent_server_teacher_download_fails_in_bounded_time(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from timm_kd.distill.teacher import TeacherLoadError, create_teacher
    with SilentServer() as silent:
        point_client(monkeypatch, silent.endpoint, tmp_path / 'cache', TOKEN)
        monkeypatch.setattr(constants, 'HF_HUB_ETAG_TIMEOUT', 0.5)  # what HF_HUB_ETAG_TIMEOUT=0.5 sets at import
        start = time.monotonic()
        with pytest.raises(TeacherLoadError) as e:
            create_teacher('hf-hub:kd/resnet8.silent')
        assert time.monotonic() - start < 10
    assert silent.endpoint in str(e.value) and 'did not answer in time' in str(e.value) and '\n' not in str(e.value)


def test_failing_server_is_retried_a_bounded_number_of_times(tmp_path, monkeypatch, capsys, quick_retries):
    run = tmp_path / 'run'
    fake_run(run)
    before = tree_digest(run)
    with HubServer(lifetime=120) as srv:
        point_client(monkeypatch, srv.endpoint, tmp_path / 'cache', TOKEN)
        srv.add_fault('*', '.*', 500)  # every request
        assert publish_main([str(run), '--repo-id', 'kd/failing']) == 1
        creates = [p for m, p, _ in srv.log if p == '/api/repos/create']
    line = _one_error(capsys.readouterr().err)
    assert len(creates) == hub_io.DEFAULT_ATTEMPTS == 2
    assert srv.endpoint in line and 'server error (HTTP 500)' in line and '(2 attempts' in line
    assert _untouched(run, before)


def test_convert_push_to_a_silent_server_stops_after_the_first_teacher(tmp_path, monkeypatch, capsys, quick_retries):
    src = tmp_path / 'teachers'
    rd_checkpoint(src / 'resnet8_vanilla' / 'ckpt_epoch_240.pth', seed=1)
    rd_checkpoint(src / 'wrn_16_1_vanilla' / 'ckpt_epoch_240.pth', 'wrn_16_1', seed=2)
    with SilentServer() as silent:
        point_client(monkeypatch, silent.endpoint, tmp_path / 'cache', TOKEN)
        start = time.monotonic()
        assert convert_main([str(src), '--out', str(tmp_path / 'out'), '--push', '--timeout', '0.5']) == 1
        assert time.monotonic() - start < 30
    out, err = capsys.readouterr()
    assert out.count('converted ') == 2 and err.count('error:') == 1 and 'did not answer in time' in err


# ---------------------------------------------------------------------------------------------------------
# --out never removes what it did not write
# ---------------------------------------------------------------------------------------------------------

def test_dry_run_out_never_deletes_a_user_folder(tmp_path, capsys):
    run = tmp_path / 'output' / 'train' / 'run'
    fake_run(run)
    before = tree_digest(run)
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('my notes')
    a_file = tmp_path / 'a_file'
    a_file.write_text('data')
    link = tmp_path / 'link'
    link.symlink_to(mine, target_is_directory=True)
    refused = {str(mine): 'holds files timm-kd did not write', str(run): 'is (or contains) the run folder',
               str(run.parent): 'is (or contains) the run folder', str(a_file): 'is not a folder',
               str(link): 'is not a folder'}
    for out, phrase in refused.items():
        assert publish_main([str(run), '--repo-id', 'kd/x', '--dry-run', '--out', out]) == 2, out
        line = _one_error(capsys.readouterr().err)
        assert phrase in line and 'nothing was changed' in line, (out, line)
    assert (mine / 'notes.txt').read_text() == 'my notes' and sorted(p.name for p in mine.iterdir()) == ['notes.txt']
    assert a_file.read_text() == 'data' and link.is_symlink() and tree_digest(run) == before
    assert not [p for p in tmp_path.rglob('.*') if p.name.startswith(('.mine', '.run', '.a_file', '.link'))]

    # an empty folder is used; a second export to the same place replaces the first (it is ours)
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert publish_main([str(run), '--repo-id', 'kd/x', '--dry-run', '--out', str(empty)]) == 0
    first = (empty / 'README.md').read_text()
    assert publish_main([str(run), '--repo-id', 'kd/x', '--dry-run', '--which', 'last', '--out', str(empty)]) == 0
    assert (empty / 'README.md').read_text() != first and (empty / hub_io.EXPORT_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'empty', 'link', 'mine', 'output']


# ---------------------------------------------------------------------------------------------------------
# bad input: one sentence, exit 2, before any network request
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubServer(lifetime=120) as srv:
        point_client(monkeypatch, srv.endpoint, tmp_path / 'cache', TOKEN)
        yield srv


class _Payload:
    """Unpickling this runs a shell command: a checkpoint must never be read that way."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('argv,phrase', [
    (['--repo-id', 'noslash'], '--repo-id needs a Hub id "owner/name"'),
    (['--repo-id', 'a/b/c'], '--repo-id needs a Hub id "owner/name"'),
    (['--repo-id', 'kd/x', '--dataset-id', 'not an id'], '--dataset-id needs a Hub id'),
])
def test_bad_repo_ids_exit_2_before_any_request(hub, tmp_path, capsys, argv, phrase):
    run = tmp_path / 'run'
    fake_run(run)
    assert publish_main([str(run), *argv]) == 2
    assert phrase in _one_error(capsys.readouterr().err)
    assert hub.log == [] and not (run / 'hub').exists()


def test_bad_timeout_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        publish_main(['run', '--repo-id', 'kd/x', '--timeout', '0'])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "timm-kd-publish: error: argument --timeout: must be > 0, got 0"


@pytest.mark.parametrize('case', ['yaml-syntax', 'yaml-python-tag', 'yaml-list', 'results-json', 'pickle', 'garbage'])
def test_bad_run_records_exit_2_with_one_sentence(hub, tmp_path, capsys, case):
    run = tmp_path / 'run'
    fake_run(run)
    marker = tmp_path / 'pwned'
    if case == 'yaml-syntax':
        (run / 'args.yaml').write_text('model: resnet8\nlr: [0.1\n')
    elif case == 'yaml-python-tag':
        (run / 'args.yaml').write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    elif case == 'yaml-list':
        (run / 'args.yaml').write_text('- model\n- resnet8\n')
    elif case == 'results-json':
        (run / 'results.json').write_text('{"best_top1": 5')
    elif case == 'pickle':
        torch.save({'arch': 'resnet8', 'state_dict': {'w': _Payload(marker)}}, run / 'model_best.pth.tar')
    else:
        (run / 'model_best.pth.tar').write_bytes(os.urandom(4096))
    before = tree_digest(run)
    assert publish_main([str(run), '--repo-id', 'kd/bad']) == 2
    line = _one_error(capsys.readouterr().err)
    expected = {'yaml-syntax': 'args.yaml', 'yaml-python-tag': 'args.yaml', 'yaml-list': 'expected a dict',
                'results-json': 'results.json', 'pickle': 'refusing to load', 'garbage': 'model_best.pth.tar'}[case]
    assert line.startswith('timm-kd-publish: error: cannot publish') and expected in line, line
    assert not marker.exists() and tree_digest(run) == before and hub.log == []


def test_convert_refuses_a_malicious_pickle(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'resnet8_vanilla' / 'ckpt_epoch_240.pth'
    evil.parent.mkdir()
    torch.save({'epoch': 240, 'model': {'w': _Payload(marker)}}, evil)
    assert convert_main([str(evil), '--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert _one_error(err).count('refusing to load') == 1 and 'system' in err
    assert not marker.exists() and not (tmp_path / 'out' / 'resnet8.cifar100').exists()


@pytest.mark.parametrize('argv,phrase', [
    (['--push-to-hub', 'noslash'], '--push-to-hub needs a Hub id "owner/name"'),
    (['--push-to-hub', 'me/bad name'], '--push-to-hub needs a Hub id "owner/name"'),
    (['--dataset-id', 'me/bad name'], '--dataset-id needs a Hub id "owner/name" or "name"'),
])
def test_train_kd_hub_ids_are_checked_before_training(argv, phrase):
    from timm_kd.train.args import UsageError, parse_args, validate_args
    args, explicit = parse_args(['--model', 'resnet8', '--dataset', 'synthetic/4x16', *argv])
    with pytest.raises(UsageError, match=phrase.replace('"', '.')):
        validate_args(args, explicit)


def test_the_next_export_removes_what_a_killed_export_left(tmp_path):
    import socket
    import subprocess
    run = tmp_path / 'run'
    fake_run(run)
    finished = subprocess.Popen(['true'])
    finished.wait()  # a process id that no longer runs
    left = {}
    for name, pid, marked in (('.x.k1ll3d', finished.pid, True), ('.x.old-b2sy', os.getpid(), True),
                              ('.x.mine', finished.pid, False)):
        left[name] = run / 'hub' / name
        left[name].mkdir(parents=True)
        (left[name] / 'model.safetensors').write_bytes(b'half a model')
        if marked:
            (left[name] / hub_io.EXPORT_MARKER).write_text(json.dumps({'host': socket.gethostname(), 'pid': pid}))
    assert publish_main([str(run), '--repo-id', 'kd/x', '--dry-run']) == 0
    assert not left['.x.k1ll3d'].exists()  # ours, its writer is gone
    assert left['.x.old-b2sy'].exists() and left['.x.mine'].exists()  # a running writer's; not ours
    assert sorted(p.name for p in (run / 'hub').iterdir()) == ['.x.mine', '.x.old-b2sy', 'x']
