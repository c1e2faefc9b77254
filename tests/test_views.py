"""Teacher-labelled views: the VIEWS table, per-sample views made in the loader, the registry contract.

Every per-sample policy yields a second view of each sample, made from that sample (under its own
seed), beside an original that is bit-identical to the one-view loader's; labels stay aligned; a loader
started k batches into an epoch gives the same views as the full epoch (resume), with or without
workers. Every VIEWS entry is usable from train_kd.py (``--tl-aug`` or its mixing flags) and from
da_score, and every view flag of train_kd.py has a VIEWS entry.
"""
import dataclasses
import random

import numpy as np
import pytest
import torch

from timm_kd.data.datasets import create_kd_dataset
from timm_kd.data.transforms import create_kd_transform
from timm_kd.data.views import (
    VIEWS, ImageSpec, PairedTransform, PatchShuffle, create_view_transform, images_per_step, mix_view_names,
    resolve_view, sample_view_names)
from timm_kd.train.args import PICK_CHOICES, UsageError, kd_view_modes, parse_args, validate_args
from timm_kd.train.build import create_datasets, create_mixer, data_config
from timm_kd.train.data import SeededSamples, create_train_loader

COVERS = ('--tl-aug',)

SIZE, PAD = 16, 2
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SPEC = ImageSpec(SIZE, MEAN, STD, PAD)
POLICIES = sample_view_names() + ['rand-m7-n3-mstd0.5', 'augmix-m5-w4-d2']
TIMM_AA_NAMES = ('rand-m9-mstd0.5', 'rand-m9-mstd0.5-inc1', 'augmix-m3-w3', 'original', 'originalr', 'v0', 'v0r', '3a')


def _dataset(policy=None, n=24):
    base = create_kd_transform(SIZE, True, MEAN, STD, crop_padding=PAD, std_aug='crop_flip')
    tf = base if policy is None else PairedTransform(base, *create_view_transform(policy, SPEC))
    return create_kd_dataset('synthetic/10x16', split='train', transform=tf, num_samples=n)


def _batches(loader, epoch=0, start=0):
    loader.batch_sampler.sampler.set_epoch(epoch, start=start)
    return list(loader)


@pytest.mark.parametrize('policy', POLICIES)
def test_view_is_a_seeded_augmentation_of_its_own_sample(policy):
    plain = _batches(create_train_loader(_dataset(), 8, seed=5, rank=0, world_size=1))
    loader = create_train_loader(_dataset(policy), 8, seed=5, rank=0, world_size=1, extras=('view_input',))
    paired = _batches(loader)
    keys = list(loader.batch_sampler.sampler)
    raw = create_kd_dataset('synthetic/10x16', split='train', transform=None, num_samples=24)
    pair_tf = loader.dataset.dataset.transform
    changed = 0
    for b, ((x0, y0), (x, y, extras)) in enumerate(zip(plain, paired)):
        view = extras['view_input']
        assert torch.equal(x, x0) and torch.equal(y, y0)  # the original and its labels: as without a view
        assert view.shape == x.shape and view.dtype == x.dtype
        for row in range(x.shape[0]):  # row k is made from sample k, under sample k's seed
            index, seed = keys[b * 8 + row]
            img, target = raw[index]
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            want_x, want_view = pair_tf(img)
            assert int(y[row]) == target
            assert torch.equal(x[row], want_x) and torch.equal(view[row], want_view)
        changed += int((view != x).flatten(1).any(1).sum())
    if policy == 'identity':
        assert changed == 0
    else:
        assert changed >= 4, f'{policy}: only {changed} of 24 views differ from their original'


@pytest.mark.parametrize('workers', [0, 2])
def test_views_resume_mid_epoch_and_match_across_workers(workers):
    full = create_train_loader(_dataset('rand-m9-mstd0.5'), 4, seed=1, rank=0, world_size=1,
                               extras=('view_input', 'index'))
    ref = _batches(full, epoch=2)
    loader = create_train_loader(_dataset('rand-m9-mstd0.5'), 4, seed=1, rank=0, world_size=1, workers=workers,
                                 extras=('view_input', 'index'))
    tail = _batches(loader, epoch=2, start=3 * 4)
    assert len(tail) == len(ref) - 3
    for (x, y, e), (xr, yr, er) in zip(tail, ref[3:]):
        assert torch.equal(x, xr) and torch.equal(y, yr)
        assert torch.equal(e['view_input'], er['view_input']) and torch.equal(e['index'], er['index'])
        assert e['index'].dtype == torch.int64


def _seed_all(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _draws():
    return torch.rand(3), random.random(), float(np.random.rand())


def test_main_process_rng_is_untouched_by_views():
    loader = create_train_loader(_dataset('augmix'), 8, seed=0, rank=0, world_size=1, extras=('view_input',))
    _seed_all(11)
    _batches(loader)
    after = _draws()
    _seed_all(11)
    ref = _draws()
    assert torch.equal(after[0], ref[0]) and after[1:] == ref[1:]


def test_patch_shuffle_keeps_pixels_and_moves_tiles():
    x = torch.arange(3 * 9 * 10, dtype=torch.float32).view(3, 9, 10)
    torch.manual_seed(0)
    y = PatchShuffle(grid=4)(x)
    assert torch.equal(y[:, 8:], x[:, 8:]) and torch.equal(y[:, :, 8:], x[:, :, 8:])  # the remainder stays
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert not torch.equal(y, x)


def test_names_resolve_and_mistakes_are_one_sentence():
    for name in TIMM_AA_NAMES:
        view, config = resolve_view(name)
        assert view.kind == 'sample' and config == name
    assert resolve_view('rand')[1] == VIEWS['rand'].default_config
    for bad, phrase in (('foo', 'Unknown view'), ('rand-zz9', "unknown section 'zz9'"), ('augmix-q1', 'unknown section')):
        with pytest.raises(ValueError, match=phrase):
            resolve_view(bad)
    with pytest.raises(ValueError, match='not a per-sample view: train_kd.py makes it with --tl-cutmix'):
        create_view_transform('cutmix', SPEC)
    with pytest.raises(ValueError, match='cannot apply to 3 px images'):
        create_view_transform('patch_shuffle', ImageSpec(3, MEAN, STD))


# ------------------------------------------------------------------ the registry: VIEWS <-> train_kd.py <-> da_score
_BASE = ['--dataset', 'synthetic/10x16', '--model', 'resnet8', '--teacher', 'resnet8', '--train-num-samples', '32',
         '-b', '8']


def _train_setup(extra):
    args, explicit = parse_args(_BASE + extra)
    validate_args(args, explicit)
    return args, data_config(args, explicit)


@pytest.mark.parametrize('name', list(VIEWS))
def test_every_view_is_usable_from_train_kd(name):
    view, config = resolve_view(name)
    args, dc = _train_setup(view.flags(config) if view.kind != 'none' else [])
    train_ds, _ = create_datasets(args, dc)
    mixer = create_mixer(args, dc)
    x, y, *extras = SeededSamples(train_ds, dc.rngs, dc.loader_extras)[(0, 7)]
    if view.kind == 'sample':
        assert mixer is None and extras[0]['view_input'].shape == x.shape
    elif view.kind == 'mix':
        assert mixer is not None and not extras
        assert mixer.pick == view.train_flags[-1] if '--pick' in view.train_flags else mixer.pick is None
    else:
        assert mixer is None and not extras


def test_every_train_kd_view_flag_has_a_views_entry():
    flags = {f for v in VIEWS.values() for f in v.train_flags}
    args, _ = parse_args(['--tl-mixup', '--tl-cutmix', '--cutmix-hard', '--cutout', '3'])
    assert set(kd_view_modes(args)) <= flags  # every mixing flag of train_kd.py
    picks = {v.train_flags[v.train_flags.index('--pick') + 1] for v in VIEWS.values() if '--pick' in v.train_flags}
    assert picks == set(PICK_CHOICES) - {'none'}  # every pick criterion
    assert '--mix-fraction' in flags  # PMU
    for name in TIMM_AA_NAMES:  # timm's --aa names work as --tl-aug
        validate_args(*parse_args(_BASE + ['--tl-aug', name]))


def test_tl_aug_mistakes_fail_with_one_sentence(tmp_path):
    for extra, phrase in ((['--tl-aug', 'nope'], 'Unknown view'),
                          (['--tl-aug', 'cutmix'], 'is a mixing view, made with --tl-cutmix'),
                          (['--tl-aug', 'flip', '--mixup', '0.2'], 'use one or the other')):
        with pytest.raises(UsageError, match=phrase):
            _train_setup(extra)
    args, explicit = parse_args(['--dataset', 'synthetic/10x16', '--model', 'resnet8', '--tl-aug', 'flip'])
    with pytest.raises(UsageError, match='--tl-aug needs a teacher'):
        validate_args(args, explicit)
    args, dc = _train_setup(['--tl-aug', 'patch_shuffle'])
    with pytest.raises(UsageError, match='cannot apply to 3 px'):  # train_kd takes >= 8 px: a 3 px data config
        create_datasets(args, dataclasses.replace(dc, size=3))


def test_images_per_step_counts_what_the_task_runs():
    from timm_kd.data.mixup import DistillMixup
    assert images_per_step(8, False) == dict(student=8, teacher=8)
    assert images_per_step(8, True) == dict(student=16, teacher=16)
    assert images_per_step(8, True, DistillMixup(cutmix_alpha=1.0)) == dict(student=16, teacher=16)
    assert images_per_step(8, False, DistillMixup(cutmix_alpha=1.0, pick='kld')) == dict(student=16, teacher=24)
    assert images_per_step(8, False, DistillMixup(cutmix_alpha=1.0, pick='random')) == dict(student=16, teacher=16)
    assert images_per_step(8, False, DistillMixup(cutmix_alpha=1.0, label_mode='hard', num_classes=10)) == \
        dict(student=16, teacher=8)
    assert set(mix_view_names()) >= {'mixup', 'cutmix', 'cutout', 'pmu', 'cutmix_hard', 'cutmix_pick_kld'}


def test_docs_list_every_view():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / 'docs' / 'views.md').read_text()
    missing = [n for n in VIEWS if f'`{n}`' not in text and not n.startswith('cutmix_pick_')]
    assert not missing and '`cutmix_pick_kld`' in text, missing


def test_loader_gives_sample_indices_to_methods_that_need_them():
    args, dc = _train_setup(['--distill', 'crd', '--tl-aug', 'flip'])
    assert dc.loader_extras == ('view_input', 'index')
    train_ds, _ = create_datasets(args, dc)
    x, y, extras = SeededSamples(train_ds, dc.rngs, dc.loader_extras)[(5, 9)]
    assert extras['index'] == 5 and extras['view_input'].shape == x.shape
    assert _train_setup([])[1].loader_extras == ()


@pytest.mark.parametrize('mixing,per_step', [([], dict(student=32, teacher=32)),
                                             (['--tl-cutmix', '--pick', 'kld'], dict(student=32, teacher=48))])
def test_train_kd_trains_on_a_per_sample_view_and_logs_the_teacher_score(tmp_path, mixing, per_step):
    import csv
    import timm
    from timm_kd.train.main import main
    torch.manual_seed(0)
    torch.save(timm.create_model('resnet8', num_classes=10).state_dict(), tmp_path / 't.pth')
    res = main(['--dataset', 'synthetic/10x16', '--model', 'resnet8', '--teacher', 'resnet8', '--teacher-checkpoint',
                str(tmp_path / 't.pth'), '--tl-aug', 'rand-m9-mstd0.5', '--train-num-samples', '160', '-b', '16',
                '--val-num-samples', '16', '--epochs', '1', '--workers', '0', '--output', str(tmp_path),
                '--experiment', 'run', '--mixed-kd-weight', '0.5', *mixing])
    assert res['views']['sample_view'] == 'rand-m9-mstd0.5'
    assert res['views']['images_per_step'] == per_step  # with --pick: CutMix of the view batch, half of 2 x 16
    assert (res['views']['mix_view'] is None) == (not mixing)
    assert res['views']['loss_weights'] == dict(task=pytest.approx(0.1), kd=0.9, views=0.45)
    with open(tmp_path / 'run' / 'summary.csv', newline='') as f:
        row = list(csv.DictReader(f))[-1]
    assert float(row['train_t_stddev']) > 0 and float(row['train_t_entropy']) > 0  # 10 steps: 2 chunks of 5
    assert 0 <= float(row['train_t_disagreement']) <= 1 and float(row['train_mixed_loss']) > 0
