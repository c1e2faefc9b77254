"""train_kd against the users' mistakes and the surprises of issue 21: per-method values and view policy strings out
of range, class folders and class maps that would train silently wrong, data that cannot be read; checkpoints that
are finite but exploded, of another run, or with a changed format version; a diverged run resumed as its message
says; a full disk during a resume that extends the run; two processes in one run folder; links and FIFOs where run
files or a --config should be.

Every refusal is one sentence and exit code 2 before any long work (no run folder); every resume ends as its
message promised. Runs are resnet8 on 16x16 synthetic images, 6 steps an epoch (tests/test_train_kd.py's BASE).
"""
import pytest

from test_faults import _fail
from test_train_kd import BASE

COVERS = ('--distill', '--nce-t', '--nce-m', '--nce-k', '--crd-feat-dim', '--at-p', '--cc-feat-dim', '--sp-beta',
          '--dkd-beta', '--dist-gamma', '--tl-aug', '--class-map', '--dataset', '--teacher-checkpoint')

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
                            ({'a': 0, 'c': 2}, 'index 1 has no class'), ({'a': 0}, 'at least 2 classes')):
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


def test_an_empty_teacher_file_is_one_sentence(tmp_path, capsys):
    (tmp_path / 'empty.pth').write_bytes(b'')
    err = _fail(BASE + ['--teacher', 'resnet8', '--teacher-checkpoint', str(tmp_path / 'empty.pth'), '--epochs', '1',
                        '--output', str(tmp_path / 'out')], capsys)
    assert 'is empty' in err and 'EOFError' not in err, err
