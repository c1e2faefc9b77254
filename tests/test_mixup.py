"""DistillMixup semantics, checked against the definitions (not against the implementation)."""
import math

import numpy as np
import pytest
import torch

from timm_kd import DistillMixup
from timm_kd.data.mixup import MixedViews

COVERS = ('DistillMixup.mixup_alpha', 'DistillMixup.cutmix_alpha', 'DistillMixup.cutmix_minmax', 'DistillMixup.prob',
          'DistillMixup.switch_prob', 'DistillMixup.mode', 'DistillMixup.correct_lam',
          'DistillMixup.label_smoothing', 'DistillMixup.num_classes', 'DistillMixup.pairing',
          'DistillMixup.label_mode', 'DistillMixup.cutout', 'DistillMixup.mix_fraction', 'DistillMixup.n_candidates',
          'DistillMixup.pick', 'DistillMixup.pick_ratio', 'DistillMixup.seed')

pytestmark = pytest.mark.usefixtures('one_torch_thread')



def _batch(b=8, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # every pixel of every image differs from every other image's: the mixed regions are visible
    return torch.randn(b, c, h, w, generator=g), torch.randint(0, 10, (b,), generator=g)


def _changed(a, b):
    """(H, W) bool: pixels where any channel differs."""
    return (a != b).any(0)


def _assert_rectangle(mask):
    """The True pixels of a (H, W) mask form one filled axis-aligned rectangle; returns it."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    yl, yh, xl, xh = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    box = torch.zeros_like(mask)
    box[yl:yh, xl:xh] = True
    assert torch.equal(mask, box), 'changed pixels are not a rectangle'
    return yl, yh, xl, xh


@pytest.mark.parametrize('mode', ['batch', 'elem', 'pair'])
@pytest.mark.parametrize('hw', [(8, 8), (7, 11), (32, 32)])
def test_cutmix_box_area_and_partner(mode, hw):
    x, y = _batch(h=hw[0], w=hw[1])
    x0 = x.clone()
    boxes = set()
    n_boxed = 0
    for seed in range(6):
        v = DistillMixup(cutmix_alpha=1.0, mode=mode, seed=seed)(x, y)
        assert torch.equal(x, x0)
        for i in range(len(x)):
            j = v.partner[i].item()
            assert v.source[i].item() == i and j != i
            changed = _changed(v.x_mix[i], x[i])
            area = changed.float().mean().item()
            assert math.isclose(area, 1 - v.lam[i].item(), abs_tol=1e-6), 'box area != 1 - lambda'
            if changed.any():
                n_boxed += 1
                yl, yh, xl, xh = _assert_rectangle(changed)
                assert torch.equal(v.x_mix[i][:, yl:yh, xl:xh], x[j][:, yl:yh, xl:xh]), 'box not from partner'
                if mode == 'batch':
                    boxes.add((seed, yl, yh, xl, xh))
            keep = ~changed
            assert torch.equal(v.x_mix[i][:, keep], x[i][:, keep])
        if mode == 'batch':
            assert len(torch.unique(v.lam)) == 1
    assert n_boxed > 0
    if mode == 'batch':  # one box per batch
        assert len({b[0] for b in boxes}) == len(boxes)


def test_cutmix_pair_mode_swaps_the_same_box():
    x, y = _batch()
    v = DistillMixup(cutmix_alpha=1.0, mode='pair', seed=1)(x, y)
    p = v.partner
    assert torch.equal(p[p], torch.arange(len(x))) and (p != torch.arange(len(x))).all()
    for i in range(len(x)):
        j = p[i].item()
        assert v.lam[i] == v.lam[j]
        assert torch.equal(_changed(v.x_mix[i], x[i]), _changed(v.x_mix[j], x[j]))


@pytest.mark.parametrize('mode', ['batch', 'elem', 'pair'])
def test_mixup_is_the_convex_combination(mode):
    x, y = _batch()
    v = DistillMixup(mixup_alpha=1.0, cutmix_alpha=0., mode=mode, seed=3)(x, y)
    lam = v.lam.view(-1, 1, 1, 1)
    assert ((v.lam > 0) & (v.lam < 1)).all()
    expect = lam * x[v.source] + (1 - lam) * x[v.partner]
    torch.testing.assert_close(v.x_mix, expect, rtol=1e-6, atol=1e-6)
    if mode == 'batch':
        assert len(torch.unique(v.lam)) == 1
    else:
        assert len(torch.unique(v.lam)) > 1


def test_switch_between_mixup_and_cutmix():
    x, y = _batch()
    kinds = set()
    for seed in range(20):
        v = DistillMixup(mixup_alpha=1.0, cutmix_alpha=1.0, seed=seed)(x, y)
        changed = _changed(v.x_mix[0], x[0])
        kinds.add('mixup' if changed.all() else 'cutmix')
    assert kinds == {'mixup', 'cutmix'}


@pytest.mark.parametrize('b', [2, 3, 5, 8])
def test_derangement_pairs_no_image_with_itself(b):
    x, y = _batch(b=b)
    seen = set()
    for seed in range(30):
        v = DistillMixup(seed=seed)(x, y)
        p = v.partner.tolist()
        assert sorted(p) == list(range(b)) and all(p[i] != i for i in range(b))
        seen.update((i, j) for i, j in enumerate(p))
    assert seen == {(i, j) for i in range(b) for j in range(b) if i != j}


def test_flip_and_random_pairing():
    x, y = _batch()
    v = DistillMixup(pairing='flip', seed=0)(x, y)
    assert v.partner.tolist() == list(range(7, -1, -1))
    fixed = 0
    for seed in range(30):
        p = DistillMixup(mixup_alpha=1., pairing='random', seed=seed)(x, y).partner
        fixed += (p == torch.arange(8)).sum().item()
    assert fixed > 0  # a plain permutation may keep an image with itself (the authors' mixup)


def test_pool_of_candidates():
    x, y = _batch(b=4)
    v = DistillMixup(n_candidates=3, seed=0)(x, y)
    assert v.x_mix.shape == (12,) + x.shape[1:] and v.pool_size == 12
    assert v.source.tolist() == [0, 1, 2, 3] * 3
    assert len(set(v.lam.tolist())) == 3  # each candidate set draws its own lambda and box
    assert v.num_pick is None
    vp = DistillMixup(pick='kld', seed=0)(x, y)
    assert vp.pool_size == 8 and vp.num_pick == 4 and vp.pick == 'kld'
    assert DistillMixup(pick='kld', pick_ratio=0.3, n_candidates=5).num_pick(64) == 96


def test_random_pick_index():
    x, y = _batch(b=6)
    v = DistillMixup(pick='random', n_candidates=3, pick_ratio=0.5, seed=0)(x, y)
    idx = v.pick_index.tolist()
    assert len(idx) == 9 and len(set(idx)) == 9 and all(0 <= i < 18 for i in idx)


@pytest.mark.parametrize('mode', ['batch', 'elem', 'pair'])
@pytest.mark.parametrize('frac', [0.1, 0.5])
def test_partial_mixup_exact_fraction_without_replacement(mode, frac):
    b = 10
    x, y = _batch(b=b)
    counts = torch.zeros(b)
    for seed in range(20):
        v = DistillMixup(mixup_alpha=1., cutmix_alpha=0., mix_fraction=frac, mode=mode, seed=seed)(x, y)
        mixed = v.mixed
        if mode == 'pair':
            assert mixed.sum().item() == 2 * max(1, round(frac * b / 2))
            assert torch.equal(mixed, mixed[v.partner])
        else:
            assert mixed.sum().item() == max(1, round(frac * b))
        for i in range(b):
            same = torch.equal(v.x_mix[i], x[i])
            assert same == (not mixed[i].item())
            assert (v.lam[i] == 1).item() == (not mixed[i].item())
        counts += mixed.float()
    assert (counts > 0).sum() >= 3  # different rows get mixed from batch to batch


def test_full_mixup_mixes_every_row():
    x, y = _batch()
    v = DistillMixup(mixup_alpha=1., cutmix_alpha=0., seed=0)(x, y)
    assert v.mixed.all()


def test_prob_zero_mixes_nothing():
    x, y = _batch()
    v = DistillMixup(prob=0., seed=0)(x, y)
    assert torch.equal(v.x_mix, x) and not v.mixed.any() and (v.lam == 1).all()


@pytest.mark.parametrize('hw,side', [((32, 32), 8), ((64, 64), 16), ((8, 8), 2)])
def test_cutout_default_hole(hw, side):
    x, y = _batch(h=hw[0], w=hw[1])
    full = 0
    for seed in range(10):
        v = DistillMixup(cutout=True, seed=seed)(x, y)
        assert torch.equal(v.partner, v.source)
        holes = [_changed(v.x_mix[i], x[i]) for i in range(len(x))]
        assert all(torch.equal(h_, holes[0]) for h_ in holes)  # the same hole for the whole batch
        yl, yh, xl, xh = _assert_rectangle(holes[0])
        assert yh - yl <= side and xh - xl <= side
        full += (yh - yl == side and xh - xl == side)
        assert (v.x_mix[:, :, yl:yh, xl:xh] == 0).all()
        assert math.isclose(v.lam[0].item(), 1 - holes[0].float().mean().item(), abs_tol=1e-6)
    assert full > 0


def test_cutout_side_and_elem():
    x, y = _batch(h=16, w=16)
    v = DistillMixup(cutout=5, mode='elem', seed=0)(x, y)
    holes = [_changed(v.x_mix[i], x[i]) for i in range(len(x))]
    for h_ in holes:
        yl, yh, xl, xh = _assert_rectangle(h_)
        assert yh - yl <= 5 and xh - xl <= 5
    assert len({tuple(h_.flatten().tolist()) for h_ in holes}) > 1  # per-element holes


@pytest.mark.parametrize('smoothing', [0., 0.1])
def test_hard_label_soft_targets(smoothing):
    x, y = _batch()
    v = DistillMixup(label_mode='hard', num_classes=10, label_smoothing=smoothing, seed=0)(x, y)
    off = smoothing / 10
    for i in range(len(x)):
        q = torch.full((10,), off)
        q[y[i]] += (1 - smoothing) * v.lam[i]
        q[y[v.partner[i]]] += (1 - smoothing) * (1 - v.lam[i])
        torch.testing.assert_close(v.soft_target[i], q)
    torch.testing.assert_close(v.soft_target.sum(1), torch.ones(len(x)))


def test_major_target():
    x, y = _batch()
    v = DistillMixup(seed=0, mode='elem')(x, y)
    for i in range(len(x)):
        expect = y[i] if v.lam[i] >= 0.5 else y[v.partner[i]]
        assert v.major_target()[i] == expect


def test_cutmix_minmax_box_inside_image():
    x, y = _batch(h=16, w=16)
    for seed in range(5):
        v = DistillMixup(cutmix_minmax=(0.25, 0.75), seed=seed)(x, y)
        changed = _changed(v.x_mix[0], x[0])
        yl, yh, xl, xh = _assert_rectangle(changed)
        assert 4 <= yh - yl < 12 and 4 <= xh - xl < 12
        assert math.isclose(v.lam[0].item(), 1 - changed.float().mean().item(), abs_tol=1e-6)


@pytest.mark.parametrize('kw', [
    dict(), dict(mixup_alpha=1.), dict(mode='elem', mixup_alpha=1., cutmix_alpha=1.), dict(mode='pair'),
    dict(cutout=True), dict(mix_fraction=0.5), dict(pick='kld'), dict(label_mode='hard', num_classes=10),
])
def test_input_never_mutated_and_reproducible(kw):
    x, y = _batch()
    x0, y0 = x.clone(), y.clone()
    a = DistillMixup(seed=7, **kw)(x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0) and a.x is x
    b = DistillMixup(seed=7, **kw)(x, y)
    for f in ('x_mix', 'partner', 'lam', 'mixed'):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    c = DistillMixup(seed=8, **kw)(x, y)
    assert not torch.equal(a.x_mix, c.x_mix)


def test_global_rng_by_default():
    x, y = _batch()
    mix = DistillMixup()
    np.random.seed(11)
    a = mix(x, y)
    np.random.seed(11)
    b = mix(x, y)
    assert torch.equal(a.x_mix, b.x_mix) and torch.equal(a.partner, b.partner)


def test_seeded_state_dict_round_trip():
    x, y = _batch()
    mix = DistillMixup(seed=1)
    mix(x, y)
    state = mix.state_dict()
    a = mix(x, y)
    mix2 = DistillMixup(seed=99)
    mix2.load_state_dict(state)
    assert torch.equal(mix2(x, y).x_mix, a.x_mix)


def test_disabled_returns_none():
    x, y = _batch()
    mix = DistillMixup()
    mix.mixup_enabled = False
    assert mix(x, y) is None


@pytest.mark.parametrize('kw', [dict(), dict(mixup_alpha=1.), dict(mix_fraction=0.5), dict(mode='elem')])
def test_channels_last_kept(kw):
    x, y = _batch()
    x = x.contiguous(memory_format=torch.channels_last)
    v = DistillMixup(seed=0, **kw)(x, y)
    if kw.get('mode') != 'elem':
        assert v.x_mix.is_contiguous(memory_format=torch.channels_last)
    ref = DistillMixup(seed=0, **kw)(x.contiguous(), y)
    assert torch.equal(v.x_mix, ref.x_mix)


def test_returns_views_container():
    x, y = _batch()
    v = DistillMixup(seed=0)(x, y)
    assert isinstance(v, MixedViews)
    assert v.partner.dtype == torch.int64 and v.lam.dtype == torch.float32 and v.mixed.dtype == torch.bool


@pytest.mark.parametrize('kw,match', [
    (dict(cutmix_alpha=0., pick='kld'), 'pick'),
    (dict(cutmix_alpha=0.), 'no view'),
    (dict(pick='kld', pick_ratio=0.), 'pick_ratio'),
    (dict(pick='kld', pick_ratio=1.5), 'pick_ratio'),
    (dict(pick='best'), 'pick criterion'),
    (dict(mix_fraction=0.), 'mix_fraction'),
    (dict(mix_fraction=1.2), 'mix_fraction'),
    (dict(cutout=True, mixup_alpha=1.), 'cutout'),
    (dict(cutout=-2), 'cutout'),
    (dict(mode='pair', pairing='random'), 'pair'),
    (dict(mode='pair', cutout=True), 'pair'),
    (dict(mode='rows'), 'mode'),
    (dict(pairing='roll'), 'pairing'),
    (dict(label_mode='hard', pick='kld'), 'hard'),
    (dict(label_mode='hard', num_classes=None), 'num_classes'),
    (dict(label_mode='soft'), 'label_mode'),
    (dict(prob=1.5), 'prob'),
    (dict(n_candidates=0), 'n_candidates'),
    (dict(cutmix_minmax=(0.8, 0.2)), 'cutmix_minmax'),
])
def test_invalid_options_raise_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        DistillMixup(**kw)


@pytest.mark.parametrize('kw,b,match', [
    (dict(pairing='flip'), 7, 'even batch'),
    (dict(mode='pair'), 5, 'even batch'),
    (dict(), 1, 'at least 2'),
    (dict(label_mode='hard', num_classes=10), 4, 'class-index'),
])
def test_batch_problems_raise_at_call(kw, b, match):
    x, _ = _batch(b=b)
    y = None if 'label_mode' in kw else torch.zeros(b, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        DistillMixup(**kw)(x, y)


def test_odd_batch_and_cutout_single_image_work():
    x, y = _batch(b=5)
    assert DistillMixup(seed=0)(x, y).x_mix.shape[0] == 5
    assert DistillMixup(mode='elem', seed=0)(x, y).x_mix.shape[0] == 5
    x1, y1 = _batch(b=1)
    assert DistillMixup(cutout=True, seed=0)(x1, y1).x_mix.shape[0] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_matches_cpu():
    x, y = _batch()
    for kw in (dict(), dict(mode='elem'), dict(mix_fraction=0.5), dict(pick='random')):
        a = DistillMixup(seed=0, **kw)(x, y)
        b = DistillMixup(seed=0, **kw)(x.cuda(), y.cuda())
        assert b.x_mix.is_cuda and torch.equal(a.x_mix, b.x_mix.cpu())


# ---- options whose effect is only visible in a distribution or in a corner of the box geometry ----

def _chi_square(counts, categories):
    expected = sum(counts.values()) / len(categories)
    return sum((counts.get(c, 0) - expected) ** 2 / expected for c in categories)


def test_derangement_is_uniform_over_all_derangements():
    """B=4 has 9 derangements: each must come up about equally often (a random cyclic shift gives only 3)."""
    import itertools
    b = 4
    x, y = _batch(b=b)
    derangements = [p for p in itertools.permutations(range(b)) if all(p[i] != i for i in range(b))]
    assert len(derangements) == 9
    counts = {}
    for seed in range(720):
        p = tuple(DistillMixup(seed=seed)(x, y).partner.tolist())
        counts[p] = counts.get(p, 0) + 1
    assert set(counts) == set(derangements)
    assert _chi_square(counts, derangements) < 31.8  # chi-square, 8 degrees of freedom, p = 1e-4


def test_pair_mode_matching_is_uniform_over_perfect_matchings():
    """mode='pair' pairs the batch by a random perfect matching: B=6 has 15, all about equally likely."""
    b = 6
    x, y = _batch(b=b)
    counts = {}
    for seed in range(450):
        p = DistillMixup(mode='pair', seed=seed)(x, y).partner.tolist()
        assert all(p[p[i]] == i != p[i] for i in range(b))
        m = frozenset(frozenset((i, p[i])) for i in range(b))
        counts[m] = counts.get(m, 0) + 1
    assert len(counts) == 15
    assert _chi_square(counts, list(counts)) < 42.6  # 14 degrees of freedom, p = 1e-4


@pytest.mark.parametrize('mode', ['batch', 'elem', 'pair'])
def test_correct_lam_false_keeps_the_drawn_lambda(mode):
    """correct_lam=False: lambda stays the Beta draw, so a box clipped at the border leaves lambda below the kept
    area (timm's meaning); True resets it to the kept area."""
    x, y = _batch(h=8, w=8)
    below = 0
    for seed in range(10):
        v = DistillMixup(cutmix_alpha=1.0, mode=mode, correct_lam=False, seed=seed)(x, y)
        for i in range(len(x)):
            kept = 1 - _changed(v.x_mix[i], x[i]).float().mean().item()
            # the uncut box side is int(H * sqrt(1 - lam)) <= H * sqrt(1 - lam), and clipping only shrinks it
            assert v.lam[i].item() <= kept + 1e-6
            below += v.lam[i].item() < kept - 1e-3
        corrected = DistillMixup(cutmix_alpha=1.0, mode=mode, seed=seed)(x, y)
        assert torch.equal(corrected.x_mix, v.x_mix)  # the same draws, only lambda differs
        for i in range(len(x)):
            kept = 1 - _changed(v.x_mix[i], x[i]).float().mean().item()
            assert math.isclose(corrected.lam[i].item(), kept, abs_tol=1e-6)
    assert below >= 5


def _authors_rand_bbox(size, lam):
    """The CutMix box of the authors' code (and the CutMix paper's): [c - cut // 2, c + cut // 2) clipped, centre
    uniform; written out here as the reference. timm's rand_bbox gives an odd side its full length instead."""
    h, w = size[2], size[3]
    cut_h, cut_w = int(h * np.sqrt(1. - lam)), int(w * np.sqrt(1. - lam))
    cy, cx = np.random.randint(h), np.random.randint(w)
    return (np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h),
            np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w))


@pytest.mark.parametrize('hw', [(32, 32), (7, 9)])
def test_cutmix_box_is_the_authors_rand_bbox(hw):
    """For the same lambda and centre draws, a CutMix set pastes the authors' box (odd sides included)."""
    h, w = hw
    x = torch.arange(4 * h * w, dtype=torch.float32).view(4, 1, h, w)
    odd = 0
    for seed in range(40):
        np.random.seed(seed)
        views = DistillMixup(cutmix_alpha=1.0, correct_lam=False)(x)  # the global numpy RNG, as timm
        np.random.seed(seed)  # replay: the pairing, the mixing probability, lambda, then the centre
        DistillMixup(cutmix_alpha=1.0)._partners(4)
        np.random.rand()
        lam = np.random.beta(1.0, 1.0)
        yl, yh, xl, xh = _authors_rand_bbox(x.shape, lam)
        expected = x.clone()
        expected[:, :, yl:yh, xl:xh] = x[views.partner][:, :, yl:yh, xl:xh]
        assert torch.equal(views.x_mix, expected)
        assert views.lam[0].item() == pytest.approx(lam)
        odd += int(h * math.sqrt(1 - lam)) % 2
    assert odd >= 5  # odd box sides were drawn


@pytest.mark.parametrize('mode', ['batch', 'elem'])
@pytest.mark.parametrize('switch_prob', [0.2, 0.8])
def test_switch_prob_is_the_share_of_cutmix(mode, switch_prob):
    x, y = _batch(b=8)
    n_cutmix = n = 0
    for seed in range(60):
        v = DistillMixup(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=switch_prob, mode=mode, seed=seed)(x, y)
        rows = range(len(x)) if mode == 'elem' else range(1)
        for i in rows:
            n += 1
            n_cutmix += not _changed(v.x_mix[i], x[i]).all().item()  # mixup changes every pixel
    # binomial standard deviation <= sqrt(0.25 / n): 4.5 sd for batch mode (n = 60), more for elem (n = 480)
    assert abs(n_cutmix / n - switch_prob) < 4.5 * math.sqrt(0.25 / n)


def test_pair_mode_with_flip_pairing_swaps_the_same_box_with_the_mirror_image():
    x, y = _batch(b=8)
    for seed in range(5):
        v = DistillMixup(cutmix_alpha=1.0, mode='pair', pairing='flip', seed=seed)(x, y)
        assert v.partner.tolist() == list(range(7, -1, -1))
        for i in range(8):
            j = 7 - i
            assert v.lam[i] == v.lam[j]
            changed = _changed(v.x_mix[i], x[i])
            assert torch.equal(changed, _changed(v.x_mix[j], x[j]))
            assert torch.equal(v.x_mix[i][:, changed], x[j][:, changed])
        assert len(set(v.lam.tolist())) > 1  # one lambda per pair, not per batch


@pytest.mark.parametrize('mode', ['elem', 'pair'])
def test_cutmix_minmax_per_element_and_per_pair(mode):
    """Boxes of side in [min, max) x image side, fully inside the image, lambda = kept area."""
    x, y = _batch(b=8, h=16, w=16)
    sides = set()
    for seed in range(5):
        v = DistillMixup(cutmix_minmax=(0.25, 0.75), mode=mode, seed=seed)(x, y)
        for i in range(8):
            changed = _changed(v.x_mix[i], x[i])
            yl, yh, xl, xh = _assert_rectangle(changed)
            assert 4 <= yh - yl < 12 and 4 <= xh - xl < 12
            assert torch.equal(v.x_mix[i][:, changed], x[v.partner[i]][:, changed])
            assert math.isclose(v.lam[i].item(), 1 - changed.float().mean().item(), abs_tol=1e-6)
            sides.add((yh - yl, xh - xl))
            if mode == 'pair':
                assert torch.equal(changed, _changed(v.x_mix[v.partner[i]], x[v.partner[i]]))
    assert len(sides) > 3  # drawn per element / pair


@pytest.mark.parametrize('mode', ['batch', 'elem'])
def test_partial_cutout_holes_exactly_the_chosen_rows(mode):
    x, y = _batch(b=10, h=16, w=16)
    rows_seen = set()
    for seed in range(6):
        v = DistillMixup(cutout=4, mix_fraction=0.3, mode=mode, seed=seed)(x, y)
        assert v.mixed.sum().item() == 3
        for i in range(10):
            hole = _changed(v.x_mix[i], x[i])
            if v.mixed[i]:
                yl, yh, xl, xh = _assert_rectangle(hole)
                assert yh - yl <= 4 and xh - xl <= 4 and (v.x_mix[i][:, hole] == 0).all()
                assert math.isclose(v.lam[i].item(), 1 - hole.float().mean().item(), abs_tol=1e-6)
                rows_seen.add(i)
            else:
                assert not hole.any() and v.lam[i] == 1
    assert len(rows_seen) > 3
