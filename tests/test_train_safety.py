"""train_kd against the users' mistakes and the surprises of issue 21: per-method values and view policy strings out
of range, class folders and class maps that would train silently wrong, data that cannot be read; checkpoints that
are finite but exploded, of another run, or with a changed format version; a diverged run resumed as its message
says; a full disk during a resume that extends the run; two processes in one run folder; links and FIFOs where run
files or a --config should be.

Every refusal is one sentence and exit code 2 before any long work (no run folder); every resume ends as its
message promised. Runs are resnet8 on 16x16 synthetic images, 6 steps an epoch (tests/test_train_kd.py's BASE).
"""
import contextlib
import os
import random
import shutil
import signal
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from test_faults import RUN, _fail, _same_weights, _tree, reference  # noqa: F401 - reference: a fixture
from test_train_kd import BASE, _rows, _state
from timm_kd.train.main import main
from timm_kd.train.state import CHECKPOINT_VERSION, EXPLOSION_FACTOR, content_sha256, weight_norm
from timm_kd.utils.files import folder_lock_holder

COVERS = ('--distill', '--nce-t', '--nce-m', '--nce-k', '--crd-feat-dim', '--at-p', '--cc-feat-dim', '--sp-beta',
          '--dkd-beta', '--dist-gamma', '--tl-aug', '--class-map', '--dataset', '--teacher-checkpoint', '--resume',
          '--checkpoint-every', '--config', '--epochs', '--lr')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


# ------------------------------------------------------------------------------------------------ value rules
@pytest.mark.parametrize('flags, phrase', [
    (['--distill', 'crd', '--nce-t', '0'], '--nce-t must be > 0, got 0'),
    (['--distill', 'crd', '--nce-t', '-0.07'], '--nce-t must be > 0, got -0.07'),
    (['--distill', 'crd', '--nce-m', '5'], '--nce-m must be in [0, 1), got 5'),
    (['--distill', 'crd', '--crd-feat-dim', '0'], '--crd-feat-dim must be >= 1, got 0'),
    (['--distill', 'crd', '--nce-k', '0'], '--nce-k must be >= 1, got 0'),
    (['--distill', 'at', '--at-p', '0'], '--at-p must be > 0, got 0'),
    (['--distill', 'at', '--at-p', '-2'], '--at-p must be > 0, got -2'),
    (['--distill', 'cc', '--cc-feat-dim', '0'], '--cc-feat-dim must be >= 1, got 0'),
    (['--distill', 'sp', '--sp-beta', '-3000'], '--sp-beta must be >= 0, got -3000'),
    (['--distill', 'dkd', '--dkd-beta', '-1'], '--dkd-beta must be >= 0, got -1'),
    (['--distill', 'dist', '--dist-gamma', '-2'], '--dist-gamma must be >= 0, got -2'),
])
def test_method_values_out_of_range_are_one_sentence_naming_the_flag(tmp_path, capsys, flags, phrase):
    err = _fail(BASE + ['--teacher', 'resnet8', '--epochs', '1', '--output', str(tmp_path / 'out')] + flags, capsys)
    assert phrase in err and '--lr' not in err, err
    assert not (tmp_path / 'out').exists()


def test_every_method_declares_the_range_of_each_numeric_flag():
    """A method's numeric flag without a declared range would fall back to 'any finite number' (floats): each one
    is declared next to its add_args."""
    import argparse
    from timm_kd.distill.methods import METHODS
    for name, cls in METHODS.items():
        group = argparse.ArgumentParser().add_argument_group()
        cls.add_args(group)
        numeric = {a.dest for a in group._group_actions if a.type in (int, float)}
        assert numeric <= set(cls.arg_ranges()), (name, numeric - set(cls.arg_ranges()))


@pytest.mark.parametrize('policy, phrase', [
    ('augmix-m3-w0', "'w0'"), ('rand-mnan', "'mnan'"), ('rand-m11', "'m11'"), ('rand-m9-p1.5', "'p1.5'"),
    ('augmix-a0', "'a0'"), ('rand-m9-tnope', "'tnope'"), ('rand-m9.5', "'m9.5'"), ('augmix-m12', "'m12'"),
    ('rand-m12-mmax20-n0', "'n0'"), ('augmix-d0', "'d0'"),
])
def test_view_policy_strings_out_of_range_are_refused_not_changed(policy, phrase):
    from timm_kd.data.views import resolve_view
    with pytest.raises(ValueError, match=phrase):
        resolve_view(policy)


@pytest.mark.parametrize('policy', ['rand-m9-mstd0.5', 'rand-m12-mmax20', 'rand-m9-n3-p0.7-inc1', 'rand-mstd101',
                                    'rand-m7-tweights', 'augmix-m3-w3', 'augmix-m5-w4-d2-a0.5-b1', 'augmix-mstd0.3'])
def test_view_policy_strings_timm_documents_still_resolve(policy):
    from timm_kd.data.views import resolve_view
    assert resolve_view(policy)[1] == policy


def test_tl_aug_policy_out_of_range_is_one_sentence(tmp_path, capsys):
    err = _fail(BASE + ['--teacher', 'resnet8', '--tl-aug', 'augmix-m3-w0', '--epochs', '1', '--output',
                        str(tmp_path / 'out')], capsys)
    assert '--tl-aug' in err and "'w0'" in err and not (tmp_path / 'out').exists()


# ------------------------------------------------------------------------------------------------ data rules
def _folders(root, layout, size=8):
    """Image folders: layout = {split: class names}, two images a class."""
    from PIL import Image
    for split, classes in layout.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new('RGB', (size, size), (40 * i, 20 * ord(c) % 255, 0)).save(root / split / c / f'{i}.png')
    return root


def _folder_argv(root, tmp_path):
    return ['--model', 'resnet8', '--data-dir', str(root), '--img-size', '8', '-b', '2', '--epochs', '1',
            '--workers', '0', '--lr', '0.1', '--output', str(tmp_path / 'out')]


def test_train_and_validation_class_folders_that_differ_are_refused(tmp_path, capsys):
    """a, b, c against a, b, d: timm numbers each split's folders on its own, so 'd' images would be scored as 'c'."""
    root = _folders(tmp_path / 'data', {'train': 'abc', 'val': 'abd'})
    err = _fail(_folder_argv(root, tmp_path), capsys)
    assert "'d'" in err and "'c'" in err and 'class folders' in err, err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('content, phrase', [
    ('a\nb\na\n', "names 'a' twice"), ('a\n', 'at least 2 classes'), ('a\n\nb\n', 'line 2 is empty')])
def test_degenerate_class_maps_are_refused(tmp_path, capsys, content, phrase):
    root = _folders(tmp_path / 'data', {'train': 'abc', 'val': 'abc'})
    (tmp_path / 'map.txt').write_text(content)
    err = _fail(_folder_argv(root, tmp_path) + ['--class-map', str(tmp_path / 'map.txt')], capsys)
    assert phrase in err, err


def test_a_pickled_class_map_must_number_the_classes_once_each(tmp_path, capsys):
    import pickle
    root = _folders(tmp_path / 'data', {'train': 'abc', 'val': 'abc'})
    for mapping, phrase in (({'a': 0, 'b': 0, 'c': 1}, "gives 'a' and 'b' the same index 0"),
                            ({'a': 0, 'c': -1}, 'whole-number indices'), ({'a': 0}, 'at least 2 classes')):
        (tmp_path / 'map.pkl').write_bytes(pickle.dumps(mapping))
        err = _fail(_folder_argv(root, tmp_path) + ['--class-map', str(tmp_path / 'map.pkl')], capsys)
        assert phrase in err, (mapping, err)


def test_a_corrupt_first_image_of_a_class_folder_is_one_sentence(tmp_path, capsys):
    root = _folders(tmp_path / 'data', {'train': 'ab', 'val': 'ab'})
    (root / 'train' / 'a' / '0.png').write_bytes(b'not a png')
    argv = _folder_argv(root, tmp_path)
    del argv[argv.index('--img-size'):argv.index('--img-size') + 2]  # the image size is read from the first image
    err = _fail(argv, capsys)
    assert '0.png' in err and 'cannot be read as an image' in err, err


@pytest.mark.parametrize('dataset, phrase', [
    ('synthetic/0x32', 'at least 2 classes'), ('synthetic/1x16', 'at least 2 classes'),
    ('synthetic/10x0', 'at least 8 px')])
def test_degenerate_synthetic_datasets_are_one_sentence(tmp_path, capsys, dataset, phrase):
    err = _fail(['--model', 'resnet8', '--dataset', dataset, '--num-classes', '4', '--train-num-samples', '32', '-b',
                 '8', '--epochs', '1', '--output', str(tmp_path / 'out')], capsys)
    assert phrase in err, err


def test_hfds_without_the_datasets_package_is_one_sentence(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'datasets', None)  # `import datasets` fails as when it is not installed
    monkeypatch.delitem(sys.modules, 'timm.data.readers.reader_hfds', raising=False)
    err = _fail(['--model', 'resnet8', '--dataset', 'hfds/me/flowers', '--num-classes', '4', '--epochs', '1',
                 '--output', str(tmp_path / 'out')], capsys)
    assert "needs the Python package 'datasets'" in err and 'pip install datasets' in err, err


# None: an empty file; a seed: 4096 random bytes the unpickler trips over (IndexError, KeyError, UnicodeDecodeError)
@pytest.mark.parametrize('seed', [None, 2, 20, 195])
def test_an_empty_or_garbage_teacher_file_is_one_sentence(tmp_path, capsys, seed):
    (tmp_path / 't.pth').write_bytes(b'' if seed is None else random.Random(seed).randbytes(4096))
    phrase = 'is empty (0 bytes)' if seed is None else 'is not a checkpoint: torch cannot unpickle it'
    err = _fail(BASE + ['--teacher', 'resnet8', '--teacher-checkpoint', str(tmp_path / 't.pth'), '--epochs', '1',
                        '--output', str(tmp_path / 'out')], capsys)
    assert phrase in err and 'EOFError' not in err, err


# ------------------------------------------------------------------------------------------------ checkpoints
def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_one_byte_changed_in_the_version_key_fails_the_checksum(tmp_path, reference, capsys):
    """The format version is part of the checksummed content: version 2 -> 1 (one pickled byte) must not pass as a
    file of the first format, which had no checksum."""
    data = zipfile.ZipFile(reference / 'last.pth.tar').read('archive/data.pkl')  # the pickled dict, stored uncompressed
    key = b'X\x0e\x00\x00\x00content_sha256'  # the entry after 'version': the value's BININT1 opcode is just before
    i = data.index(key)
    assert data[i - 2:i] == b'K' + bytes([CHECKPOINT_VERSION])
    raw = (reference / 'last.pth.tar').read_bytes()
    j = raw.index(data[i - 40:i + len(key)]) + 40 - 1
    bad = tmp_path / 'v1.pth.tar'
    bad.write_bytes(raw[:j] + b'\x01' + raw[j + 1:])
    assert torch.load(bad, weights_only=True)['version'] == 1  # torch reads it: only our checksum can tell
    err = _fail(['--resume', str(bad), '--output', str(tmp_path / 'o')], capsys)
    assert 'fails its checksum' in err, err


def _scaled(path: Path, factor: float) -> None:
    """The checkpoint's weights multiplied by ``factor``, checksum renewed: finite but exploded, well-formed."""
    d = _state(path)
    d['state_dict'] = {k: v * factor if v.is_floating_point() else v for k, v in d['state_dict'].items()}
    d['content_sha256'] = content_sha256(d)
    torch.save(d, path)


def test_an_exploded_checkpoint_is_skipped_on_resume_and_refused_when_named(tmp_path, reference, capsys):
    run = _copy_run(reference, tmp_path / 'run')
    _scaled(run / 'recovery.pth.tar', 1e8)
    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-1.pth.tar'):
        (run / name).unlink()
    res = main(['--resume', str(run)])
    skip = [line for line in capsys.readouterr().out.splitlines() if '--resume: skipped' in line]
    assert res['finished'] and len(skip) == 1 and 'recovery.pth.tar (exploded weights' in skip[0], skip
    bad = tmp_path / 'bad.pth.tar'
    shutil.copy(reference / 'recovery.pth.tar', bad)
    _scaled(bad, 1e8)
    err = _fail(['--resume', str(bad), '--output', str(tmp_path / 'o')], capsys)
    assert 'exploded' in err and 'norm' in err, err


def _health(path: Path):
    """(weight norm, reference norm) of a checkpoint as the health rule sees them."""
    d = _state(path)
    return weight_norm(d['state_dict']), d['reference_norm']


def test_a_diverged_run_resumes_with_a_lower_lr_as_its_message_says(tmp_path, capsys):
    """--lr 1e6 makes the weights explode at the first update (finite: |w| ~ 1e10 and more), a few steps before they
    become non-finite. No exploded state is written as a recovery point, the message names the healthy point and the
    command, and that command continues the run to its end."""
    run = tmp_path / 'div'
    with pytest.raises(SystemExit) as e:
        main(BASE + ['--lr', '1e6', '--epochs', '2', '--checkpoint-every', '1', '--output', str(tmp_path),
                     '--experiment', 'div'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1, err
    assert f'--resume {run} --lr' in err[0] and 'epoch 0 step 0' in err[0], err
    for p in run.glob('*.pth.tar'):
        norm, reference = _health(p)
        assert norm <= EXPLOSION_FACTOR * max(reference, 1.0), (p.name, norm, reference)
    res = main(['--resume', str(run), '--lr', '0.05'])
    assert res['finished'] and res['last_epoch'] == 1 and res['recipe']['lr'] == 0.05
    assert [r['epoch'] for r in _rows(run)] == ['0', '1']


def test_a_checkpoint_of_another_run_is_never_adopted(tmp_path, reference, capsys):
    """Run b (another model) and a twin of run a (the same flags, another run) are ahead of run a: their last
    checkpoint dropped into a's folder is skipped (folder) or refused (named), and a's summary never gets their rows."""
    b = tmp_path / 'b'
    main(BASE + ['--model', 'resnet14', '--epochs', '3', '--output', str(tmp_path), '--experiment', 'b'])
    twin = tmp_path / 'twin'  # the same flags as run a: a different run all the same
    main(RUN + ['--epochs', '3', '--output', str(tmp_path), '--experiment', 'twin'])
    for other in (b, twin):
        run = _copy_run(reference, tmp_path / f'a-{other.name}')
        shutil.copy(other / 'last.pth.tar', run / 'recovery.pth.tar')  # (3, 0): further than a's last (2, 0)
        rows = _rows(run)
        assert main(['--resume', str(run), '--epochs', '3'])['finished']
        out = capsys.readouterr().out
        skip = [line for line in out.splitlines() if '--resume: skipped' in line]
        assert len(skip) == 1 and 'recovery.pth.tar (a checkpoint of another run' in skip[0], (other, skip)
        assert _rows(run)[:2] == rows and len(_rows(run)) == 3
        shutil.copy(other / 'last.pth.tar', run / 'foreign.pth.tar')
        err = _fail(['--resume', str(run / 'foreign.pth.tar')], capsys)
        assert 'another run' in err and '--experiment' in err, err


def test_a_full_disk_during_a_resume_keeps_the_epochs_extension_and_no_unseen_summary_row(tmp_path, reference, capsys,
                                                                                         monkeypatch):
    """A run of 2 epochs resumed with --epochs 4 meets a full disk at its first checkpoint (after epoch 2's summary
    row was written). Resumed with --epochs 2, nothing is left to train and summary.csv holds only the rows its
    checkpoint saw; resumed without flags, it trains to epoch 4 as asked before the disk filled up, ending as the
    same resume without the failure."""
    ref = _copy_run(reference, tmp_path / 'ref')
    assert main(['--resume', str(ref), '--epochs', '4', '--checkpoint-every', '0'])['finished']
    run = _copy_run(reference, tmp_path / 'run')
    real_save = torch.save
    monkeypatch.setattr(torch, 'save', lambda obj, f, *a, **kw: (_ for _ in ()).throw(OSError(28, 'No space left')))
    err = _fail(['--resume', str(run), '--epochs', '4', '--checkpoint-every', '0'], capsys)
    assert 'ENOSPC' in err and len(_rows(run)) == 3  # epoch 2's row, which no checkpoint saw
    monkeypatch.setattr(torch, 'save', real_save)
    stopped = _copy_run(run, tmp_path / 'stopped')
    assert main(['--resume', str(stopped), '--epochs', '2'])['finished']
    assert [r['epoch'] for r in _rows(stopped)] == ['0', '1']
    res = main(['--resume', str(run)])
    assert res['finished'] and res['last_epoch'] == 3 and 'applied --epochs 4 (was 2)' in capsys.readouterr().out
    assert _rows(run) == _rows(ref) and _same_weights(ref / 'last.pth.tar', run / 'last.pth.tar')


# ------------------------------------------------------------------------------------------------ the lock
def test_a_run_folder_is_locked_while_a_process_trains_in_it(tmp_path, reference, capsys):
    """A child process trains in the folder (stopped inside its first checkpoint write); a second train_kd is refused
    in one sentence and changes nothing; once the child is killed, its lock is gone and the run resumes."""
    run = _copy_run(reference, tmp_path / 'run')
    assert folder_lock_holder(str(run)) is None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: hold the folder, tell the parent, wait to be killed
        try:
            def fsync(fd):
                os.write(w, b'x')
                time.sleep(600)
            os.fsync = fsync
            sys.stdout = sys.stderr = open(os.devnull, 'w')
            main(['--resume', str(run), '--epochs', '3'])
        finally:
            os._exit(0)
    try:
        os.read(r, 1)  # the child is inside its first write, the lock taken
        assert folder_lock_holder(str(run))['pid'] == pid
        before = _tree(run)
        err = _fail(['--resume', str(run), '--epochs', '3'], capsys)
        assert 'in use' in err and str(run) in err, err
        assert _tree(run) == before
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert folder_lock_holder(str(run)) is None
    assert main(['--resume', str(run), '--epochs', '3'])['finished']


# ------------------------------------------------------------------------------------------------ links and FIFOs
@contextlib.contextmanager
def _no_hang(seconds: int = 60):
    """Fail instead of blocking forever (a FIFO opened for reading waits for a writer)."""
    def hang(signum, frame):
        raise AssertionError(f'blocked for {seconds} s')
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_fifo_as_config_resume_or_args_yaml_is_one_sentence_not_a_hang(tmp_path, reference, capsys):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    run = _copy_run(reference, tmp_path / 'run')
    (run / 'args.yaml').unlink()
    os.mkfifo(run / 'args.yaml')
    for argv in (BASE + ['--config', str(fifo), '--output', str(tmp_path / 'o')], ['--resume', str(fifo)],
                 ['--resume', str(run)]):
        with _no_hang():
            err = _fail(argv, capsys)
        assert 'named pipe (FIFO), not a regular file' in err, (argv, err)
    assert not (tmp_path / 'o').exists()


def test_run_files_are_never_read_or_written_through_a_link(tmp_path, reference, capsys):
    """log.txt, summary.csv or args.yaml of a resumed run planted as a link to a file elsewhere: refused in one
    sentence, the file elsewhere unchanged and nothing of it copied into the run; a checkpoint planted as a link is
    skipped, saying why."""
    victim = tmp_path / 'victim.txt'
    for name in ('log.txt', 'summary.csv', 'args.yaml'):
        victim.write_text('epoch\nnot yours\n')
        run = _copy_run(reference, tmp_path / name)
        (run / name).unlink()
        (run / name).symlink_to(victim)
        err = _fail(['--resume', str(run), '--epochs', '3'], capsys)
        assert f'{run / name} is a symbolic link' in err, (name, err)
        assert victim.read_text() == 'epoch\nnot yours\n'
        assert all(b'not yours' not in p.read_bytes() for p in run.iterdir() if p.is_file() and not p.is_symlink())
    run = _copy_run(reference, tmp_path / 'ckpt')
    (run / 'recovery.pth.tar').unlink()
    (run / 'recovery.pth.tar').symlink_to(reference / 'recovery.pth.tar')
    assert main(['--resume', str(run), '--epochs', '3'])['finished']
    skip = [line for line in capsys.readouterr().out.splitlines() if '--resume: skipped' in line]
    assert len(skip) == 1 and 'recovery.pth.tar (' in skip[0] and 'symbolic link' in skip[0], skip
