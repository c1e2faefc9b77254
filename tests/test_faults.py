"""Fault injection for train_kd: kills at any point (also inside checkpoint writes), full and read-only disks,
damaged and non-finite checkpoints, malicious pickles at every checkpoint load path, planted symlinks and stale
temp files, flags given with --resume, bad values, and a failing rank of a 2-process run.

Every case asserts the exact outcome: one sentence and exit code 2 (or 1 for a non-finite loss), or a resume
that ends bit-identical to an uninterrupted run, and no user file changed. Runs are resnet8 on 16x16
synthetic images, 6 steps an epoch. Kills use a forked copy of the test process (no interpreter start) whose
``os.fsync`` sends it SIGKILL at a chosen call: every atomic write fsyncs its temp file before the rename and
the folder after it, so the chosen call is a point inside or just after a write. Full and read-only disks are
real tmpfs mounts when the tests run as root; otherwise a read-only folder (chmod) stands for both.
"""
import contextlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from test_convert import _Evil
from test_train_kd import BASE, SCRIPT, _env, _rows, _state
from timm_kd.train.main import main
from timm_kd.train.state import TrainState, content_sha256
from timm_kd.utils.files import LOCK_NAME, TEMP_PREFIX

COVERS = ('--resume', '--checkpoint-every', '--checkpoint-hist', '--train-num-samples', '--val-num-samples',
          '--output', '--experiment', '--class-map', '--torchcompile', '--kd-alpha', '--mixed-kd-weight',
          '--kd-temperature', '--img-size', '--num-classes', '--initial-checkpoint', '--teacher-checkpoint',
          '--epochs', '--lr', '--batch-size')

pytestmark = pytest.mark.usefixtures('one_torch_thread')
RUN = BASE + ['--epochs', '2', '--checkpoint-every', '4', '--checkpoint-hist', '2']


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """An uninterrupted run: recovery (epoch 1, step 4), last (2, 0), checkpoint-0 / -1, model_best."""
    out = tmp_path_factory.mktemp('ref')
    assert main(RUN + ['--output', str(out), '--experiment', 'ref'])['finished']
    return out / 'ref'


def _same_weights(a, b) -> bool:
    sa, sb = _state(a)['state_dict'], _state(b)['state_dict']
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _fail(argv, capsys, code=2):
    """Run main(argv) expecting SystemExit(code); returns the one stderr line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and len(err) == 1 and err[0].startswith('train_kd.py: error: '), (code, e.value, err)
    return err[0]


def _tree(folder: Path):
    """The files of a folder and their bytes, but the lock file (a process that takes the lock records itself)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK_NAME}


def _data_offset(path, largest=True) -> int:
    """File offset of the bytes of the largest tensor in a torch.save zip."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if '/data/' in i.filename), key=lambda i: i.file_size)
    with open(path, 'rb') as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack('<HH', header[26:30])
    return info.header_offset + 30 + name_len + extra_len


# ------------------------------------------------------------------------------------------------ kills
def _run_killed_at(argv, fsync_call: int) -> bool:
    """main(argv) in a forked child that SIGKILLs itself at its fsync_call-th os.fsync; True if it was killed."""
    # a child forked from a parent whose OpenMP pool has threads hangs in its first parallel op
    assert torch.get_num_threads() == 1, 'fork from a one-thread parent (the one_torch_thread fixture)'
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            calls, real = [0], os.fsync

            def fsync(fd):
                calls[0] += 1
                if calls[0] == fsync_call:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(fd)
            os.fsync = fsync
            sys.stdout = sys.stderr = open(os.devnull, 'w')
            main(argv)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_kills_at_random_points_and_inside_writes_resume_bit_identically(tmp_path, reference):
    """Two kills in a row (seeded random fsync calls, one of them with the temp file written but not yet renamed),
    then a resume: the same weights and summary as the uninterrupted run, no temp file left."""
    rng = random.Random(20261130)
    run = tmp_path / 'k'
    # fsync 1-2: the run id, 3-4: args.yaml, 5-6: the recovery checkpoint of the start, 7-8: the first one after
    # steps; an odd call is inside a write (before its rename)
    first = rng.randrange(7, 22, 2)
    assert _run_killed_at(RUN + ['--output', str(tmp_path), '--experiment', 'k'], first)
    assert any(p.name.startswith(TEMP_PREFIX) for p in run.iterdir()), 'the kill inside a write left no temp file'
    assert _run_killed_at(['--resume', str(run)], rng.randrange(3, 12))
    assert main(['--resume', str(run)])['finished']
    assert _same_weights(reference / 'last.pth.tar', run / 'last.pth.tar')
    assert _rows(run) == _rows(reference)
    assert not [p.name for p in run.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert json.loads((run / 'results.json').read_text())['finished']


# ------------------------------------------------------------------------------------------------ damaged files
def _copy_as(src: Path, folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    shutil.copy(src, folder / name)
    return folder / name


def _flip_bit(path: Path) -> None:
    off = _data_offset(path) + 100
    with open(path, 'r+b') as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x10]))


def _overwrite_random(path: Path) -> None:
    with open(path, 'r+b') as f:
        f.seek(_data_offset(path) + 8)
        f.write(random.Random(1).randbytes(64))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _inf_weights(path: Path) -> None:
    d = _state(path)
    k = next(k for k, v in d['state_dict'].items() if v.is_floating_point())
    d['state_dict'][k] = torch.full_like(d['state_dict'][k], float('inf'))
    d['content_sha256'] = content_sha256(d)  # a well-formed checkpoint of diverged weights
    torch.save(d, path)


@pytest.mark.parametrize('damage,reason', [
    (_flip_bit, 'fails its checksum'), (_overwrite_random, 'fails its checksum'), (_truncate, 'cannot be read'),
    (_inf_weights, 'non-finite weights')])
def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(tmp_path, reference, capsys, damage, reason):
    """recovery.pth.tar (the most advanced) damaged: --resume RUN_DIR takes last.pth.tar (an epoch-0 checkpoint
    here), says which file it skipped and why, and ends bit-identical to the uninterrupted run."""
    src = tmp_path / 'src'
    damage(_copy_as(reference / 'recovery.pth.tar', src, 'recovery.pth.tar'))
    _copy_as(reference / 'checkpoint-0.pth.tar', src, 'last.pth.tar')
    shutil.copy(reference / 'args.yaml', src / 'args.yaml')
    res = main(['--resume', str(src), '--output', str(tmp_path), '--experiment', 'r'])
    out = capsys.readouterr().out
    skip = [line for line in out.splitlines() if '--resume: skipped' in line]
    assert len(skip) == 1 and 'recovery.pth.tar' in skip[0] and reason in skip[0], out[-2000:]
    assert 'resuming from last.pth.tar' in skip[0]
    assert res['finished'] and _same_weights(reference / 'last.pth.tar', tmp_path / 'r' / 'last.pth.tar')
    # the damaged file named directly is refused, with the reason, instead of being trained on
    err = _fail(['--resume', str(src / 'recovery.pth.tar'), '--output', str(tmp_path / 'o')], capsys)
    assert reason in err


def test_a_run_folder_with_only_damaged_checkpoints_is_refused_without_blaming_the_lr(tmp_path, reference, capsys):
    src = tmp_path / 'src'
    _inf_weights(_copy_as(reference / 'last.pth.tar', src, 'last.pth.tar'))
    _flip_bit(_copy_as(reference / 'recovery.pth.tar', src, 'recovery.pth.tar'))
    before = _tree(src)
    err = _fail(['--resume', str(src)], capsys)
    assert 'no intact checkpoint' in err and 'last.pth.tar (non-finite weights' in err and 'checksum' in err
    assert '--lr' not in err and _tree(src) == before


def test_checkpoints_are_separate_files(reference):
    inodes = {(reference / n).stat().st_ino for n in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-1.pth.tar')}
    assert len(inodes) == 3 and all((reference / n).stat().st_nlink == 1 for n in os.listdir(reference))


def test_checkpoint_format_version_and_checksum_are_checked(tmp_path, reference, capsys):
    d = _state(reference / 'last.pth.tar')
    assert d['version'] == 3 and d['content_sha256'] == content_sha256(d)
    TrainState.from_dict(d)  # round trip: every field present
    d['version'] = 99
    d['content_sha256'] = content_sha256(d)
    torch.save(d, tmp_path / 'future.pth.tar')
    err = _fail(['--resume', str(tmp_path / 'future.pth.tar'), '--output', str(tmp_path / 'o')], capsys)
    assert 'format version 99' in err


def test_nonfinite_weights_are_never_written(tmp_path, capsys):
    """A weight decay of 1e38 overflows float32: the first update makes the weights infinite while that step's loss
    was finite. The recovery checkpoint due after it must not be written (it would hold inf weights): the one of the
    run's start stays, and the message says to continue from it."""
    with pytest.raises(SystemExit) as e:
        main(BASE + ['--lr', '100', '--weight-decay', '1e38', '--wd-all-params', '--epochs', '1',
                     '--checkpoint-every', '1', '--output', str(tmp_path), '--experiment', 'nan'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1, err
    assert 'student weights became non-finite' in err[0] and 'no checkpoint was written' in err[0], err
    assert 'recovery.pth.tar (epoch 0 step 0)' in err[0], err
    assert [p.name for p in (tmp_path / 'nan').glob('*.pth.tar')] == ['recovery.pth.tar']
    assert TrainState.from_dict(_state(tmp_path / 'nan' / 'recovery.pth.tar')).problem() is None


# ------------------------------------------------------------------------------------------------ pickles, links
def test_malicious_pickles_are_refused_at_every_checkpoint_load_path(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth.tar'
    torch.save({'state_dict': {}, 'x': _Evil(marker)}, evil)  # unpickling it would run `touch marker`
    run = tmp_path / 'run'
    run.mkdir()
    shutil.copy(evil, run / 'last.pth.tar')
    yaml_evil = tmp_path / 'evil.yaml'
    yaml_evil.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    for extra in (['--resume', str(evil)], ['--resume', str(run)], ['--initial-checkpoint', str(evil)],
                  ['--teacher', 'resnet8', '--teacher-checkpoint', str(evil)], ['--config', str(yaml_evil)]):
        _fail(BASE + ['--epochs', '1', '--output', str(tmp_path / 'out')] + extra, capsys)
        assert not marker.exists(), extra
    assert not (tmp_path / 'out').exists()


def test_planted_symlinks_and_stale_temp_files(tmp_path, reference, capsys):
    """A symlink planted as a run file the run reads is refused in one sentence, never read or written through; one
    planted where the run only writes (results.json) is replaced; stale temp files of ours are removed, temp-named
    symlinks too (not their targets); other files stay."""
    victim = tmp_path / 'victim.txt'
    victim.write_text('not yours')
    run = tmp_path / 'run'
    _copy_as(reference / 'recovery.pth.tar', run, 'recovery.pth.tar')
    shutil.copy(reference / 'args.yaml', run / 'args.yaml')
    (run / 'summary.csv').symlink_to(victim)
    assert 'summary.csv is a symbolic link' in _fail(['--resume', str(run)], capsys)
    (run / 'summary.csv').unlink()
    (run / 'results.json').symlink_to(victim)
    (run / f'{TEMP_PREFIX}stale').write_bytes(b'x' * 100)
    (run / f'{TEMP_PREFIX}link').symlink_to(victim)
    (run / 'notes.txt').write_text('mine')
    assert main(['--resume', str(run)])['finished']
    assert victim.read_text() == 'not yours' and not (run / 'results.json').is_symlink()
    assert not [p for p in os.listdir(run) if p.startswith(TEMP_PREFIX)] and (run / 'notes.txt').read_text() == 'mine'
    assert _same_weights(reference / 'last.pth.tar', run / 'last.pth.tar')


# ------------------------------------------------------------------------------------------------ disks
@contextlib.contextmanager
def _mounted_tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    ok = os.geteuid() == 0 and subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                                              capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(['umount', '-l', str(path)], check=False)


def test_full_disk_mid_run_is_one_sentence_and_keeps_the_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'full'
    with _mounted_tmpfs(out, 'size=64k') as mounted:
        if not mounted:  # not root: the same OSError, raised by the writer's torch.save (an in-process stand-in)
            import timm_kd.utils.files as files

            def no_space(obj, f):
                raise OSError(28, 'No space left on device')
            monkeypatch.setattr(files.torch, 'save', no_space)
        (out / 'keep.txt').write_text('user file')
        err = _fail(RUN + ['--output', str(out), '--experiment', 'e'], capsys)
        assert 'No space left on device (ENOSPC)' in err and 'recovery.pth.tar' in err
        assert (out / 'keep.txt').read_text() == 'user file'
        assert not [p for p in (out / 'e').iterdir() if p.name.startswith(TEMP_PREFIX) or p.suffix == '.tar']


def test_read_only_output_is_one_sentence(tmp_path, capsys, reference):
    out = tmp_path / 'ro'
    out.mkdir()
    (out / 'keep.txt').write_text('user file')
    with _mounted_tmpfs(tmp_path / 'rofs', 'ro,size=64k') as mounted:
        if not mounted and os.geteuid() == 0:
            pytest.skip('root without mount rights: no way to make a read-only folder here')
        target = tmp_path / 'rofs' if mounted else out
        if not mounted:
            out.chmod(0o555)
        try:
            err = _fail(RUN + ['--output', str(target), '--experiment', 'e'], capsys)
        finally:
            out.chmod(0o755)
    assert 'Cannot write' in err and ('EROFS' in err or 'EACCES' in err)
    assert _tree(out) == {'keep.txt': b'user file'}
    # resuming a run whose folder became read-only (with a stale temp file of a killed run in it)
    run = tmp_path / 'rorun'
    with _mounted_tmpfs(run, 'size=4m') as mounted:
        shutil.copytree(reference, run, dirs_exist_ok=True)
        (run / f'{TEMP_PREFIX}stale').write_bytes(b'x')
        before = _tree(run)
        if mounted:
            subprocess.run(['mount', '-o', 'remount,ro', str(run)], check=True)
        else:
            run.chmod(0o555)
        try:
            err = _fail(['--resume', str(run), '--epochs', '3'], capsys)
        finally:
            if not mounted:
                run.chmod(0o755)
        # the first write of a resume is its lock (taken before anything is read or written)
        assert f'Cannot write {run / LOCK_NAME}: ' in err and _tree(run) == before


# ------------------------------------------------------------------------------------------------ flags
def test_flags_with_resume_apply_or_are_refused(tmp_path, capsys):
    run = tmp_path / 'a'
    main(BASE + ['--epochs', '1', '--output', str(tmp_path), '--experiment', 'a'])
    before = _tree(run)
    for extra, phrase in ((['--batch-size', '8'], '--batch-size 8 (run: 16)'),
                          (['--model', 'resnet14', '--seed', '4'],
                           '--model resnet14 (run: resnet8), --seed 4 (run: 3)'),
                          (['--epochs', '0'], '--epochs must be >= 1')):
        err = _fail(['--resume', str(run)] + extra, capsys)
        assert phrase in err, err
    assert _tree(run) == before  # refused: nothing written
    # schedule flags apply from the resumed position on, and the records say so
    res = main(['--resume', str(run), '--epochs', '2', '--lr', '0.02'])
    assert res['finished'] and res['last_epoch'] == 1 and res['recipe']['epochs'] == 2 and res['recipe']['lr'] == 0.02
    # timm cosine over 2 epochs from 0.02 (min lr 0): epoch 1 runs at 0.02 * (1 + cos(pi / 2)) / 2
    assert float(_rows(run)[1]['lr']) == pytest.approx(0.01, rel=1e-9)
    assert yaml.safe_load((run / 'args.yaml').read_text())['epochs'] == 2
    assert 'applied --epochs 2 (was 1), --lr 0.02 (was 0.05)' in (run / 'log.txt').read_text()
    # a schedule that ends before the checkpoint's position is refused
    assert 'before the checkpoint' in _fail(['--resume', str(run), '--epochs', '1'], capsys)


def test_bad_values_fail_fast_with_one_sentence(tmp_path, capsys):
    afile = tmp_path / 'afile'
    afile.write_text('x')
    t = ['--teacher', 'resnet8']
    table = [
        (t + ['--kd-alpha', '5'], '--kd-alpha 5 gives the cross-entropy term the weight -4'),
        (t + ['--task-loss-weight', '1.5'], '--task-loss-weight 1.5 gives the distillation term the weight -0.5'),
        (t + ['--kd-alpha', '-0.1'], '--kd-alpha must be >= 0, got -0.1'),
        (t + ['--mixed-kd-weight', 'nan'], '--mixed-kd-weight must be >= 0, got nan'),
        (t + ['--kd-temperature', 'inf'], '--kd-temperature must be > 0, got inf'),
        (['--img-size', '1'], '--img-size must be >= 8, got 1'),
        (['--num-classes', '0'], '--num-classes must be >= 2, got 0'),
        (['--lr', 'inf'], '--lr must be >= 0, got inf'),
        (['--momentum', 'nan'], '--momentum must be in [0, 1], got nan'),
        (['--mean', 'nan', '0', '0'], '--mean must be a finite number, got nan'),
        (['--workers', '-1'], '--workers must be >= 0, got -1'),
        (['--drop', '1'], '--drop must be in [0, 1), got 1'),
        (['--sched', 'nope'], "invalid choice: 'nope'"),
        (['--output', str(afile)], 'is a file, not a folder'),
        (['--experiment', '../escape'], '--experiment must be a plain folder name'),
        (['--experiment', 'x' * 300], 'at most 200 bytes, got 300 bytes'),
        (['--class-map', str(tmp_path / 'missing.txt')], '--class-map'),
        (['--class-map', str(afile)], 'cannot be read (Unsupported class map file extension'),
        (['--torchcompile', 'no_such_backend'], 'is not a torch.compile backend'),
    ]
    for extra, phrase in table:
        err = _fail(BASE + ['--epochs', '1', '--output', str(tmp_path / 'out')] + extra, capsys)
        assert phrase in err, (extra, err)
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'escape').exists()


# ------------------------------------------------------------------------------------------------ subsets
def test_num_samples_on_an_image_folder_is_a_seeded_stratified_subset(tmp_path):
    from PIL import Image
    from timm_kd.train.args import parse_args
    from timm_kd.train.build import create_datasets, data_config
    sizes = {'a': 12, 'b': 6, 'c': 3}  # class order puts 12 'a' images first
    for split in ('train', 'validation'):
        for c, n in sizes.items():
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new('RGB', (8, 8), (i, 0, 0)).save(tmp_path / split / c / f'{i}.png')

    def subset(seed, num):
        args, explicit = parse_args(['--data-dir', str(tmp_path), '--train-num-samples', str(num), '--img-size', '8',
                                     '--val-num-samples', '3', '--seed', str(seed)])
        train, val = create_datasets(args, data_config(args, explicit))
        return list(train.indices), [train.dataset.reader.samples[i][1] for i in train.indices], list(val.indices)

    idx, labels, val = subset(0, 7)
    assert sorted(labels) == [0, 0, 0, 0, 1, 1, 2]  # 7 x (12, 6, 3) / 21: every class, in proportion
    assert sorted(val) == val and len(val) == 3 and len(set(val)) == 3
    assert subset(0, 7)[0] == idx  # the same on every process and every resume: a function of the seed
    assert subset(1, 7)[0] != idx and sorted(subset(1, 7)[1]) == sorted(labels)
    assert idx != list(range(7))  # not the first N files
    assert sorted(subset(0, 2)[1]) == [0, 1]  # fewer samples than classes: one from each of the largest classes


# ------------------------------------------------------------------------------------------------ 2 processes
LAUNCH = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines',
          '1', '--main_process_port', '0', '--mixed_precision', 'no', '--dynamo_backend', 'no', str(SCRIPT)]


def _our_tracebacks(stderr: str) -> int:
    """Traceback blocks raised in our code (the launcher adds its own report about the failed child)."""
    return sum('timm_kd' in block or 'train_kd.py", line' in block for block in stderr.split('Traceback')[1:])


def test_a_peer_process_reports_a_user_error_only_after_giving_the_main_process_time(monkeypatch, capsys):
    """A launched run's processes meet a bad flag together: the main one prints at once, another waits
    PEER_REPORT_DELAY first (the launcher ends it when the main one exits), and prints if it is still alive."""
    from timm_kd.train import parser as parser_module
    waits = []
    monkeypatch.setattr(parser_module.time, 'sleep', waits.append)
    for rank, expected_waits in (('0', []), ('1', [parser_module.PEER_REPORT_DELAY])):
        monkeypatch.setenv('RANK', rank)
        waits.clear()
        assert _fail(BASE + ['--kd-alpha', '5', '--teacher', 'resnet8'], capsys).startswith(
            'train_kd.py: error: --kd-alpha 5 gives')
        assert waits == expected_waits
        waits.clear()
        _fail(BASE + ['--no-such-flag'], capsys)  # argparse's errors alike
        assert waits == expected_waits


def test_two_processes_bad_flag_and_a_failing_rank_end_fast_with_one_sentence(tmp_path):
    r = subprocess.run(LAUNCH + BASE + ['--kd-alpha', '5', '--teacher', 'resnet8'], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.count('train_kd.py: error: --kd-alpha 5 gives') == 1, r.stderr
    assert _our_tracebacks(r.stderr) == 0, r.stderr
    # rank 0 cannot write its checkpoint mid-run while rank 1 waits in the next collective
    out = tmp_path / 'out'
    argv = RUN + ['--train-num-samples', '192', '--output', str(out), '--experiment', 'e']
    with _mounted_tmpfs(out, 'size=64k') as mounted:
        p = subprocess.Popen(LAUNCH + argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not mounted:  # read-only once the run folder is there (before the first checkpoint at step 4)
            while not (out / 'e' / 'args.yaml').exists() and p.poll() is None:
                time.sleep(0.01)
            (out / 'e').chmod(0o555)
        try:
            _, stderr = p.communicate(timeout=300)  # a hang would wait for the 30-minute collective timeout
        finally:
            p.kill()
            if (out / 'e').exists():
                (out / 'e').chmod(0o755)
    assert p.returncode != 0 and stderr.count('train_kd.py: error: Cannot write') == 1, stderr[-3000:]
    assert _our_tracebacks(stderr) == 0, stderr[-3000:]
