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
