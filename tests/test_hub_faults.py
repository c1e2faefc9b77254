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
    import shutil
    import subprocess
    run = tmp_path / 'run'
    fake_run(run)
    kill_inside = ('import os, signal, timm.models\n'
                   'from timm_kd.hub.cli import publish_main\n'
                   'timm.models.save_for_hf = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n'
                   f'publish_main([{str(run)!r}, "--repo-id", "kd/x", "--dry-run"])\n')
    res = subprocess.run([sys.executable, '-c', kill_inside], capture_output=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == -9, res.stderr
    killed, = (run / 'hub').iterdir()  # the killed export's temporary folder
    shutil.copytree(killed, run / 'hub' / '.x.copy')  # a user's copy: its marker names another path
    running = run / 'hub' / '.x.old-b2sy'
    running.mkdir()
    hub_io._mark(running)  # a temporary folder of a process that still runs (this one)
    mine = run / 'hub' / '.x.mine'
    mine.mkdir()
    (mine / 'model.safetensors').write_bytes(b'half a model')
    assert publish_main([str(run), '--repo-id', 'kd/x', '--dry-run']) == 0
    assert not killed.exists()  # ours, its writer is gone
    assert sorted(p.name for p in (run / 'hub').iterdir()) == ['.x.copy', '.x.mine', '.x.old-b2sy', 'x']


# ---------------------------------------------------------------------------------------------------------
# links, secrets and local paths: nothing private leaves the machine
# ---------------------------------------------------------------------------------------------------------

PRIVATE = b'-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjEAAAAA\n'


def _exported_bytes(tmp_path: Path, skip: Path) -> bytes:
    """Every byte below tmp_path except in ``skip`` (the private file itself)."""
    return b''.join(p.read_bytes() for p in sorted(tmp_path.rglob('*')) if p.is_file() and not p.is_symlink()
                    and p != skip)


@pytest.mark.timeout(60)  # a guard: a FIFO opened for reading would block forever
@pytest.mark.parametrize('record', ['summary.csv', 'results.json', 'args.yaml', 'model_best.pth.tar', 'fifo', 'hub'])
def test_a_linked_or_special_record_is_refused_and_never_exported(tmp_path, capsys, record):
    """Issue 21: a summary.csv that links to an SSH key was copied into the export (which is public by default)."""
    run = tmp_path / 'run'
    fake_run(run)
    private = tmp_path / 'id_ed25519'
    private.write_bytes(PRIVATE)
    if record == 'fifo':
        (run / 'summary.csv').unlink()
        os.mkfifo(run / 'summary.csv')
        record, phrase = 'summary.csv', 'is a named pipe (FIFO), not a regular file'
    elif record == 'hub':  # the default destination, RUN/hub/<name>, through a link to elsewhere
        (tmp_path / 'elsewhere').mkdir()
        (run / 'hub').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
        assert publish_main([str(run), '--repo-id', 'me/x', '--dry-run']) == 2
        assert f'{run / "hub"} is a symbolic link' in _one_error(capsys.readouterr().err)
        assert list((tmp_path / 'elsewhere').iterdir()) == []
        return
    else:
        (run / record).unlink()
        (run / record).symlink_to(private)
        phrase = 'is a symbolic link'
    out = tmp_path / 'OUT'
    assert publish_main([str(run), '--repo-id', 'me/x', '--dry-run', '--out', str(out)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f'{run / record} {phrase}' in line, line
    assert not out.exists() and not [p for p in tmp_path.rglob('.OUT*')]
    assert PRIVATE[:30] not in _exported_bytes(tmp_path, private) and private.read_bytes() == PRIVATE


def test_secrets_and_local_paths_are_never_published(tmp_path):
    """Issue 21: a token inside a flag value, a secret-named key of results.json and the local paths of
    --class-map / --initial-checkpoint reached the card and training/args.yaml."""
    import yaml
    run = tmp_path / 'run'
    fake_run(run)
    home = '/home/alice/projects'
    token, org_token = 'hf_' + 'aB3' * 12, 'api_org_' + 'Zq9' * 10
    args = yaml.safe_load((run / 'args.yaml').read_text())
    args.update(class_map=f'{home}/flowers/class_map.txt', initial_checkpoint=f'{home}/init/resnet8.pth',
                dataset_name=f'flowers {token}', model_kwargs={'note': f'from {home}/notes.txt', 'key': org_token},
                wandb_project=f'https://bob:pa55word@example.com/p?sig={token}', tags=[f'token={token}', 'ok'])
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    results = json.loads((run / 'results.json').read_text())
    results.update(api_token='s3cr3t-api-value', Password='hunter2-hunter2', dataset_name=args['dataset_name'],
                   nested={'aws_secret_access_key': 'wJalrXUtnFEMI', 'log': f'loaded {home}/init/resnet8.pth'},
                   teacher_source=f'{home}/teachers/resnet32x4.pth')
    (run / 'results.json').write_text(json.dumps(results))
    with open(run / 'summary.csv', 'a') as f:
        f.write(f'5,1,1,1,{token}\n')
    out = tmp_path / 'OUT'
    assert publish_main([str(run), '--repo-id', 'me/x', '--dry-run', '--out', str(out)]) == 0
    published = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob('*') if p.is_file()
                 and p.suffix != '.safetensors'}
    for name, text in published.items():
        for private in (token, org_token, 's3cr3t', 'hunter2', 'wJalrXUtnFEMI', 'pa55word', home, TOKEN):
            assert private not in text, (name, private)
    published_args = yaml.safe_load(published['training/args.yaml'])
    assert published_args['class_map'] == 'class_map.txt' and published_args['initial_checkpoint'] == 'resnet8.pth'
    assert published_args['model_kwargs'] == {'note': 'from notes.txt', 'key': '<redacted>'}
    assert published_args['tags'] == ['token=<redacted>', 'ok'] and 'flowers <redacted>' in published['README.md']
    assert published_args['wandb_project'] == 'https://example.com/p'
    public = json.loads(published['training/results.json'])
    assert 'api_token' not in public and 'Password' not in public and public['nested'] == {'log': 'loaded resnet8.pth'}
    assert public['teacher_source'] == 'resnet32x4.pth' and '`resnet32x4.pth`' in published['README.md']


# ---------------------------------------------------------------------------------------------------------
# an export removes or replaces only what it wrote itself
# ---------------------------------------------------------------------------------------------------------

def test_a_users_hidden_copy_beside_out_is_kept(tmp_path):
    """Issue 21: a user's `.NAME.*` beside --out (here a backup of an earlier export, marker and all) was removed as
    a stale temporary of a killed export."""
    import shutil
    import subprocess
    run = tmp_path / 'run'
    fake_run(run)
    out = tmp_path / 'x'
    subprocess.run([sys.executable, str(ROOT / 'hfhub' / 'publish.py'), str(run), '--repo-id', 'me/x', '--dry-run',
                    '--out', str(out)], check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    shutil.copytree(out, tmp_path / '.x.bak')  # its marker names a process of this host that has ended
    (tmp_path / '.x.notes').write_text('mine')
    assert publish_main([str(run), '--repo-id', 'me/x', '--dry-run', '--which', 'last', '--out', str(out)]) == 0
    assert tree_digest(tmp_path / '.x.bak') and (tmp_path / '.x.notes').read_text() == 'mine'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.x.bak', '.x.notes', 'run', 'x']


@pytest.mark.parametrize('change', ['added', 'edited', 'link'])
def test_republishing_never_removes_what_a_user_added_to_an_export(tmp_path, capsys, change):
    """Issue 21: republishing replaced an earlier export as a whole, deleting the files a user had added."""
    run = tmp_path / 'run'
    fake_run(run)
    out = tmp_path / 'x'
    assert publish_main([str(run), '--repo-id', 'me/x', '--dry-run', '--out', str(out)]) == 0
    user_file = {'added': out / 'training' / 'eval_notes.md', 'edited': out / 'README.md',
                 'link': out / 'extra.md'}[change]
    if change == 'link':
        user_file.symlink_to(run / 'args.yaml')
    else:
        user_file.write_text('my own words')
    before = tree_digest(out)
    assert publish_main([str(run), '--repo-id', 'me/x', '--dry-run', '--which', 'last', '--out', str(out)]) == 2
    line = _one_error(capsys.readouterr().err)
    relative = user_file.relative_to(out).as_posix()
    assert f'{out} holds files timm-kd did not write ({relative})' in line and 'nothing was changed' in line, line
    assert tree_digest(out) == before and (user_file.is_symlink() or user_file.read_text() == 'my own words')
    user_file.unlink()  # once the user's file is gone, the export is replaced as before
    if change == 'edited':
        return  # README.md is gone too: the rest is still timm-kd's
    assert publish_main([str(run), '--repo-id', 'me/x', '--dry-run', '--which', 'last', '--out', str(out)]) == 0
