"""The teacher-only augmentation score: the statistic, its behaviour on a trained teacher, the CLI.

The statistic is checked against a computation written here with numpy on fixed probabilities (the
authors' rule: blocks of rows, a kept mean vector every ``chunk`` blocks, unbiased standard deviation
across kept vectors per class, averaged over classes). On a small CNN trained here on the digits
(a few seconds): a copy of the batch (``identity``) scores exactly what no view scores, and a
label-destroying view (``patch_shuffle``) raises the teacher's entropy and *lowers* T. stddev: its
teacher outputs are less correlated with the originals', which is all the statistic measures.
"""
import json
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import timm_kd  # noqa: F401 (registers the CIFAR models)
from timm_kd.da_score import TeacherProbStats, main, score_view
from timm_kd.data.datasets import DIGITS_MEAN, DIGITS_STD, create_kd_dataset
from timm_kd.data.transforms import create_kd_transform
from timm_kd.data.views import ImageSpec, PairedTransform, create_view_transform
from timm_kd.train.data import create_train_loader

COVERS = ('--tl-aug',)

# one thread: the teacher trained below is then the same on every machine (thread count changes float sums)
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _reference(blocks_per_batch, labels, chunk):
    """T. stddev / entropy / disagreement of a list of batches, each a list of (n, C) probability arrays."""
    kept, rows, count = [], [], 0
    for batch in blocks_per_batch:
        rows += batch
        count += len(batch)
        if count >= (chunk or (5 if len(batch) == 1 else 10)):
            kept.append(np.concatenate(rows).mean(0))
            rows, count = [], 0
    all_rows = np.concatenate([b for batch in blocks_per_batch for b in batch])
    entropy = float(np.mean([-sum(p * math.log(p) for p in row if p > 0) for row in all_rows]))
    wrong = np.concatenate([batch[0].argmax(1) != y for batch, y in zip(blocks_per_batch, labels)])
    return float(np.std(np.stack(kept), axis=0, ddof=1).mean()), entropy, float(wrong.mean()), len(kept)


@pytest.mark.parametrize('with_view,chunk', [(False, None), (True, None), (True, 3), (False, 2)])
def test_statistic_equals_an_independent_computation(with_view, chunk):
    rng = np.random.RandomState(0)
    batches, labels = [], []
    for _ in range(23):
        logits = [rng.randn(6, 5) * 3 for _ in range(2 if with_view else 1)]
        logits[0][0, :] = [50, 0, 0, 0, 0]  # a one-hot row: 0 * log 0 counts as 0
        batches.append(logits)
        labels.append(rng.randint(0, 5, 6))
    stats = TeacherProbStats(chunk)
    probs = []
    for logits, y in zip(batches, labels):
        t = [torch.tensor(b, dtype=torch.float64) for b in logits]
        stats.update(t[0], t[1] if with_view else None, torch.tensor(y))
        probs.append([np.exp(b) / np.exp(b).sum(1, keepdims=True) for b in logits])
    want_std, want_ent, want_wrong, want_kept = _reference(probs, labels, chunk)
    got = stats.summary()
    assert len(stats.kept) == want_kept >= 3
    assert got['stddev'] == pytest.approx(want_std, rel=1e-5)
    assert got['entropy'] == pytest.approx(want_ent, rel=1e-5)
    assert got['disagreement'] == pytest.approx(want_wrong)


def test_state_dict_round_trip_continues_exactly():
    torch.manual_seed(0)
    logits = [torch.randn(4, 3) for _ in range(13)]
    ref = TeacherProbStats()
    for t in logits:
        ref.update(t, t * 2)
    half = TeacherProbStats()
    for t in logits[:7]:
        half.update(t, t * 2)
    resumed = TeacherProbStats()
    resumed.load_state_dict(half.state_dict(), torch.device('cpu'))
    for t in logits[7:]:
        resumed.update(t, t * 2)
    assert resumed.summary() == ref.summary()
    assert TeacherProbStats().summary() == {}


@pytest.fixture(scope='module')
def digits_teacher():
    """A small CNN trained on the 8 px digits for three epochs (train loss about 0.1)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    base = create_kd_transform(8, True, DIGITS_MEAN, DIGITS_STD, std_aug='none')
    loader = create_train_loader(create_kd_dataset('sklearn/digits', transform=base), 64, 0, 0, 1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for epoch in range(3):
        loader.batch_sampler.sampler.set_epoch(epoch)
        for x, y in loader:
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval(), base


def _score(teacher, base, view, chunk=None):
    tf = base if view == 'none' else PairedTransform(base, *create_view_transform(view, ImageSpec(
        8, DIGITS_MEAN, DIGITS_STD, 1)))
    ds = create_kd_dataset('sklearn/digits', transform=tf)
    loader = create_train_loader(ds, 32, 0, 0, 1, extras=() if view == 'none' else ('view_input',))
    return score_view(teacher, loader, None, 24, chunk)


def test_copy_scores_like_no_view_and_a_label_destroying_view_lowers_stddev(digits_teacher):
    teacher, base = digits_teacher
    none, same = _score(teacher, base, 'none'), _score(teacher, base, 'identity')
    assert none['disagreement'] < 0.1  # the teacher is trained
    assert same['stddev'] == pytest.approx(none['stddev'], rel=1e-5)  # copies add no new draws
    assert same['entropy'] == pytest.approx(none['entropy'], rel=1e-5)
    same, shuffled = _score(teacher, base, 'identity', chunk=2), _score(teacher, base, 'patch_shuffle', chunk=2)
    assert same['kept'] == shuffled['kept'] == 24
    assert shuffled['entropy'] > 1.5 * same['entropy']  # the teacher is lost on shuffled patches ...
    assert shuffled['stddev'] < 0.85 * same['stddev']  # ... and the statistic rewards it (docs/views.md)


# ------------------------------------------------------------------------------------------------ the CLI
def _random_teacher(path, num_classes=10) -> str:
    """A randomly initialised resnet8 checkpoint (the CLI's plumbing does not need a trained teacher)."""
    torch.manual_seed(0)
    torch.save(timm.create_model('resnet8', num_classes=num_classes).state_dict(), path)
    return str(path)


def _cli(teacher_ckpt, *extra):
    return ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt, '--dataset', 'synthetic/10x16',
            '--train-num-samples', '64', '-b', '16', *extra]


def test_cli_ranks_views_and_writes_json_csv_plot(tmp_path):
    teacher_ckpt = _random_teacher(tmp_path / 'teacher.pth')
    out = tmp_path / 'score'
    res = main(_cli(teacher_ckpt, '--views', 'none,flip,cutmix_pick_tent', '--seeds', '0,1',
                    '--batches', '6', '--chunk', '2', '--output', str(out)))
    assert [r['rank'] for r in res['ranking']] == [1, 2, 3]
    means = [r['stddev_mean'] for r in res['ranking']]
    assert means == sorted(means) and all(m > 0 for m in means)
    assert {r['view'] for r in res['ranking']} == {'none', 'flip', 'cutmix_pick_tent'}
    assert len(res['per_seed']) == 6 and all(r['batches'] == 6 for r in res['per_seed'])
    for r in res['ranking']:
        seeds = [q['stddev'] for q in res['per_seed'] if q['view'] == r['view']]
        assert r['stddev_mean'] == pytest.approx(np.mean(seeds)) and r['stddev_sd'] == pytest.approx(np.std(seeds, ddof=1))
    assert json.loads((out / 'scores.json').read_text())['ranking'][0]['view'] == res['ranking'][0]['view']
    assert (out / 'scores.csv').read_text().splitlines()[0].startswith('rank,view,kind')
    assert (out / 'scores.png').stat().st_size > 1000 and (out / 'scores.svg').read_text().lstrip().startswith('<?xml')


def test_cli_mistakes_exit_2_with_one_sentence(tmp_path, capsys):
    teacher_ckpt, other = _random_teacher(tmp_path / 'ten.pth'), _random_teacher(tmp_path / 'five.pth', 5)
    for argv, phrase in (
            (_cli(teacher_ckpt, '--views', 'flip,warp'), "Unknown view 'warp'"),
            (_cli(teacher_ckpt, '--views', 'none,rand-m9-zz'), "unknown section 'zz'"),
            (_cli(teacher_ckpt, '--views', 'cutmix_pick_kld'), 'picks with the student: add --student'),
            (_cli(other, '--views', 'none'), 'predicts 5 classes'),
            (_cli(teacher_ckpt, '--views', 'none', '--seeds', 'a'), '--seeds must be'),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv + ['--output', str(tmp_path / 'never')])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and phrase in err and err.count('\n') == 0, err
    assert not (tmp_path / 'never').exists()


def test_output_that_is_a_file_and_a_budget_too_small_are_one_sentence(tmp_path, capsys):
    """Issue 21: --output naming a file was a traceback; a budget too small for two chunk means gave a NaN T. stddev
    that was ranked without a word. Both are refused before any scoring."""
    teacher_ckpt = _random_teacher(tmp_path / 'teacher.pth')
    a_file = tmp_path / 'scores'
    a_file.write_text('my notes')
    for argv, phrase in (
            (_cli(teacher_ckpt, '--views', 'none', '--output', str(a_file)),
             f'--output {a_file} is a file, not a folder'),
            (_cli(teacher_ckpt, '--views', 'flip,none', '--batches', '3', '--chunk', '2', '--output',
                  str(tmp_path / 'never')),
             "view 'none': 3 batches give 1 mean of 2 blocks (1 block per batch), and T. stddev needs at least 2: "
             "pass --batches 4 or more, or a smaller --chunk"),
            (_cli(teacher_ckpt, '--views', 'cutmix', '--output', str(tmp_path / 'never')),  # one epoch: 4 batches
             "view 'cutmix': 4 batches give 0 means of 10 blocks (2 blocks per batch), and T. stddev needs at least 2: "
             "pass --batches 10 or more, or a smaller --chunk")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and phrase in err and err.count('\n') == 0, err
    assert a_file.read_text() == 'my notes' and not (tmp_path / 'never').exists()


def test_a_nan_score_is_flagged_and_ranked_last(tmp_path, capsys, monkeypatch):
    """Should a view's T. stddev still be NaN for a seed (e.g. a teacher whose outputs are not finite), the view is
    ranked last with no mean over the other seeds, and a warning says so."""
    import timm_kd.experiments.da_score as da
    scored = da.score_view

    def nan_for_flip_seed_1(*args, **kwargs):
        res = scored(*args, **kwargs)
        return dict(res, stddev=math.nan) if nan_for_flip_seed_1.calls.pop(0) == ('flip', 1) else res
    nan_for_flip_seed_1.calls = [('flip', 0), ('flip', 1), ('none', 0), ('none', 1)]
    monkeypatch.setattr(da, 'score_view', nan_for_flip_seed_1)
    res = main(_cli(_random_teacher(tmp_path / 't.pth'), '--views', 'flip,none', '--seeds', '0,1', '--batches', '4',
                    '--chunk', '2', '--no-plot', '--output', str(tmp_path / 'out')))
    assert [r['view'] for r in res['ranking']] == ['none', 'flip'] and math.isnan(res['ranking'][1]['stddev_mean'])
    assert res['ranking'][1]['note'] == 'no T. stddev for seed 1' and res['ranking'][0]['note'] == ''
    assert "da_score: warning: view 'flip' has no T. stddev for seed 1; it is ranked last." in capsys.readouterr().err
