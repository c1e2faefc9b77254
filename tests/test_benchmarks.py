"""Smoke tests of the speed benchmarks (benchmarks/) and the on-device augmentation they measure.

Minimal settings (tiny models, tiny batches, one repeat): they check that every benchmark path runs,
that the JSON has the documented schema and that the hand-written reference loop computes the same
math as the library. No timed assertions.
"""
import json
import math
import os
import sys

import pytest
import torch
import torch.nn as nn
import torchvision.transforms as T
import torchvision.transforms.functional as TF

import timm
import timm_kd
from timm_kd.distill import entropy, per_sample_kl

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks')
sys.path.insert(0, BENCH_DIR)
import bench_crd  # noqa: E402
import bench_data  # noqa: E402
from gpu_aug import DeviceAugment, pad_crop_flip, random_pad_crop_flip  # noqa: E402
import bench_step  # noqa: E402

TINY = ['--model', 'resnet8', '--teacher', 'resnet14', '-b', '4', '--img-size', '16', '--repeats', '1',
        '--steps', '1', '--warmup', '0', '--quiet']


def _pair(seed=0):
    torch.manual_seed(seed)
    teacher = timm.create_model('resnet14', num_classes=10).eval().requires_grad_(False)
    student = timm.create_model('resnet8', num_classes=10).train()
    return student, teacher


# ---- the reference loop is the library's math ----

def test_flop_model_matches_design():
    c = 3.0
    assert bench_step.flop_model('kd', c) == 3 + c
    assert bench_step.flop_model('tlcutmix', c) == 6 + 2 * c
    assert bench_step.flop_model('tlmixup', c) == 6 + 2 * c
    assert bench_step.flop_model('pick-kld', c) == 8 + 3 * c  # docs/design.md, speed goals
    assert bench_step.flop_model('pick-s_ent', c) == 8 + 3 * c
    assert bench_step.flop_model('pick-t_ent', c) == 6 + 3 * c  # no student scoring pass
    assert bench_step.flop_model('pick-random', c) == 6 + 2 * c  # nothing to score


def test_hand_kd_step_equals_task_loss():
    student, teacher = _pair()
    twin = timm.create_model('resnet8', num_classes=10).train()
    twin.load_state_dict(student.state_dict())
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    task = timm_kd.DistillationTask(student, teacher, temperature=4.0, task_loss_weight=0.1, distill_loss_weight=0.9)
    ours = task(x, y)['loss']
    opt = torch.optim.SGD(twin.parameters(), lr=0.0)
    hand = bench_step.HandStep(twin, teacher, opt, 'kd')(x, y)
    torch.testing.assert_close(hand, ours.detach(), rtol=1e-5, atol=1e-6)


def test_hand_pick_scores_and_bn_guard():
    student, teacher = _pair(1)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    pool = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        t_pool = teacher(pool)
    bn = [m for m in student.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn]
    step = bench_step.HandStep(student, teacher, opt, 'pick-kld')
    kld = step._score(pool, t_pool)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn))  # scoring leaves BN stats alone
    with torch.no_grad():
        s_pool = student(pool)  # train-mode BN, same batch statistics as the scoring pass
    torch.testing.assert_close(kld, per_sample_kl(s_pool, t_pool, 4.0))
    t_ent = bench_step.HandStep(student, teacher, opt, 'pick-t_ent')._score(pool, t_pool)
    torch.testing.assert_close(t_ent, entropy(t_pool))


def test_hand_views_are_mixes_of_other_images():
    student, teacher = _pair()
    step = bench_step.HandStep(student, teacher, torch.optim.SGD(student.parameters(), lr=0.), 'tlcutmix', seed=3)
    for n in (2, 5, 64):
        perm = step._perm(n, torch.device('cpu'))
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == torch.arange(n)).any()
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 8, 8).contiguous()
    for _ in range(5):
        out = step._cutmix(x)
        for i in range(6):
            vals = set(out[i].unique().tolist())
            assert float(i) in vals or len(vals) == 1  # the box may cover the whole image
            assert len(vals) <= 2
        mix = step._mixup(x)
        assert mix.shape == x.shape


def test_sync_probe_counts_host_syncs():
    t = torch.ones(3)
    with bench_step.count_host_syncs() as counts:
        t.sum().item()
        bool(t.sum() > 0)
        torch.equal(t, t)
    assert counts == {'item': 1, '__bool__': 1, 'equal': 1}
    assert 'item' not in vars(torch.Tensor)  # patches removed again


# ---- the benchmarks run and write the documented JSON ----

def test_bench_step_smoke_all_variants(tmp_path):
    out = tmp_path / 'step.json'
    res = bench_step.main(TINY + ['--no-memory', '--json', str(out)])
    saved = json.loads(out.read_text())
    assert saved['benchmark'] == 'step' and saved['schema_version'] == bench_step.SCHEMA_VERSION
    assert set(saved['variants']) == set(bench_step.ALL_VARIANTS)
    for v, vo in saved['variants'].items():
        assert vo['flop_model_units'] > 0
        for impl in ('ours', 'hand'):
            st = vo[impl]['sec_per_step']
            assert st['n'] == 1 and st['median'] > 0 and vo[impl]['images_per_s'] > 0
            assert vo[impl]['cpu_sec_per_step']['median'] > 0
            assert vo[impl]['host_sync_calls'] == {}, (v, impl, vo[impl]['host_sync_calls'])
        assert vo['ours_over_hand']['median'] > 0 and vo['ours_over_hand']['ratio_of_min'] > 0
        assert ('mixup' in vo) == (v != 'kd')
    for v in ('pick-kld', 'pick-t_ent', 'pick-s_ent', 'pick-random'):
        e = saved['ratios'][f'{v}_over_tlcutmix']
        assert set(e) == {'flop_model', 'ours', 'hand', 'ours_over_model', 'hand_over_model', 'ours_cpu_time',
                          'hand_cpu_time'}
    assert set(saved['goals']) == {'kd_ours_over_hand', 'tlcutmix_ours_over_hand', 'tlcutmix_mixup_share',
                                   'pick-kld_over_tlcutmix', 'pick-t_ent_over_tlcutmix', 'pick-s_ent_over_tlcutmix',
                                   'pick-random_over_tlcutmix'}
    assert all(isinstance(g['met'], bool) for g in saved['goals'].values())
    assert all(saved['finite_loss'].values())
    assert saved['flops']['c'] > 1  # resnet14 costs more than resnet8
    assert res['config']['batch_size'] == 4


def test_bench_step_memory_probe(tmp_path):
    # 64 images of 32 px: the step's saved activations alone outgrow anything freed before it
    res = bench_step.main(TINY + ['--variants', 'tlcutmix', '--impls', 'hand', '--no-sync-probe', '-b', '64',
                                  '--img-size', '32'])
    mem = res['variants']['tlcutmix']['hand']['memory']
    assert 'error' not in mem, mem
    # lower bound: the mixed copy of the batch the step makes (64 x 3 x 32 x 32 float32)
    assert mem['kind'] == 'cpu_rss_growth' and mem['peak_bytes'] > 64 * 3 * 32 * 32 * 4
    assert 'ours_over_hand' not in res['variants']['tlcutmix']


def test_bench_step_goals_run_reports_cpu_and_wall_ratios_at_1_and_2_threads(tmp_path):
    res = bench_step.main(TINY + ['--goals', '--no-sync-probe'])
    assert set(res['goals_run']) == {'threads_1', 'threads_2'}
    for run in res['goals_run'].values():
        assert set(run['variants']) == set(bench_step.GOAL_VARIANTS)
        for v in run['variants'].values():
            assert v['finite_loss'] and {'median', 'min', 'max'} <= set(v['cpu']) and 'median' in v['wall']
    # the goal is CPU time at 1 thread, wall time at 2 threads, for every goal variant
    assert set(res['goals']) == {f'{v}_{m}' for v in bench_step.GOAL_VARIANTS for m in ('cpu_1t', 'wall_2t')}


def test_bench_step_distill_methods_against_kd(tmp_path):
    from timm_kd.distill import METHODS
    res = bench_step.main(TINY + ['--distill', 'all', '--no-sync-probe', '--variants', 'kd'])
    assert set(res['methods']) == set(METHODS) - {'token'}  # all that can train a CNN (token: a distilled ViT)
    kd = res['methods']['kd']
    assert kd['predicted_over_kd'] == pytest.approx(1.0) and kd['predicted_flops_over_kd'] == 1.0
    assert kd['over_kd']['median'] == 1.0 and kd['extra_memory_bytes'] == 0
    model = res['cost_model']
    assert model['copy_bandwidth_bytes_per_s'] > 0 and model['kd_sec_per_step'] > 0
    for name, m in res['methods'].items():
        assert m['finite_loss'] and m['step_gflops'] > 0 and m['step_mib_moved'] > 0
        if METHODS[name].logit_method:  # loss arithmetic on the logits only: the same FLOPs as KD
            assert m['predicted_flops_over_kd'] == pytest.approx(1.0, abs=1e-6)
        if name in ('crd', 'vid'):  # memory-bound extra work: more bytes moved than KD's step
            assert m['step_mib_moved'] > kd['step_mib_moved']
    assert set(res['goals']) == {f'{n}_vs_prediction' for n in res['methods'] if n != 'kd'}


def test_bench_step_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        bench_step.parse_args(['--variants', 'kd,nope'])
    with pytest.raises(SystemExit):
        bench_step.parse_args(['--model', 'resnet8', '--distill', 'token'])
    assert 'needs a student with a distillation token' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_step.parse_args(['-b', '3'])


def test_bench_data_smoke(tmp_path):
    out = tmp_path / 'data.json'
    res = bench_data.main([
        '--num-samples', '48', '-b', '8', '--workers', '1', '--workers-list', '0', '--batches', '2',
        '--warmup-batches', '0', '--repeats', '1', '--model', 'resnet8', '--teacher', 'resnet8',
        '--step-repeats', '1', '--e2e-steps', '1', '--quiet', '--json', str(out)])
    saved = json.loads(out.read_text())
    assert saved['benchmark'] == 'data' and saved['config']['worker_counts'] == [1, 0]
    assert set(saved['sources']) == {'train_kd/w1', 'train_kd/w0', 'train_kd_view/w1', 'train_kd_view/w0', 'plain/w1',
                                     'plain/w0', 'device_aug'}
    for name, o in saved['sources'].items():
        assert o['images_per_s'] > 0 and o['over_step']['kd'] > 0
        assert o['e2e_kd_step']['images_per_s'] > 0
    assert saved['step']['source'].startswith('measured')
    g = saved['goals']['loader_over_kd_step']
    assert g['loader'] == 'train_kd/w1' and isinstance(g['met'], bool)
    g = saved['goals']['loader_with_view_over_kd_step']  # two images per sample: original + RandAugment view
    assert g['loader'] == 'train_kd_view/w1' and g['view'] == 'rand-m9-mstd0.5' and isinstance(g['met'], bool)
    assert res['step']['images_per_s']['kd'] > 0
    assert set(saved['per_sample_us']) == {'transform', 'seeded_transform', 'seeding_overhead'}
    assert saved['per_sample_us']['transform'] > 0


def test_bench_data_step_rate_from_json(tmp_path):
    step_json = tmp_path / 'step.json'
    step_json.write_text(json.dumps({'variants': {'kd': {'ours': {'images_per_s': 10.0}},
                                                  'tlcutmix': {'ours': {'images_per_s': 5.0}}}}))
    res = bench_data.main(['--num-samples', '32', '-b', '8', '--workers', '0', '--sources', 'plain,device_aug',
                           '--batches', '1', '--warmup-batches', '0', '--repeats', '1', '--no-e2e', '--quiet',
                           '--step-json', str(step_json)])
    o = res['sources']['device_aug']
    assert set(o['over_step']) == {'kd', 'tlcutmix'}
    assert math.isclose(o['over_step']['kd'] * 10.0, o['images_per_s'])
    assert res['goals'] == {}  # the train_kd loader was not measured


def test_bench_data_imagenet_recipe_smoke(tmp_path):
    """--recipe: ImageNet-sized JPEGs through train_kd's 224 px loader, per worker; the step of small stand-ins."""
    res = bench_data.main([
        '--recipe', os.path.join(os.path.dirname(BENCH_DIR), 'configs', 'imagenet', 'resnet34__resnet18.yaml'),
        '--num-samples', '12', '-b', '4', '--workers', '1', '--batches', '1',
        '--warmup-batches', '0', '--repeats', '1', '--step-repeats', '1', '--step-batch', '2', '--model', 'test_resnet',
        '--teacher', 'test_resnet', '--threads', '1', '--quiet', '--json', str(tmp_path / 'data.json')])
    saved = json.loads((tmp_path / 'data.json').read_text())
    assert saved['config']['recipe'].endswith('resnet34__resnet18.yaml') and 'RandomResizedCrop' in saved['transform']
    assert set(saved['sources']) == {'train_kd/w1'}
    assert saved['per_worker_images_per_s'] == saved['sources']['train_kd/w1']['images_per_s'] > 0
    assert {'transform', 'seeded_transform', 'seeding_in_worker', 'jpeg_decode'} <= set(saved['per_sample_us'])
    for variant in ('kd', 'pick-kld'):
        assert res['step'][variant]['images_per_s'] > 0 and res['step'][variant]['gflops_per_image'] > 0
        assert res['workers_to_feed_step'][variant] == pytest.approx(
            res['step'][variant]['images_per_s'] / saved['per_worker_images_per_s'])


def test_bench_crd_smoke():
    """Every path at a small size, in this process (main() gives each a fresh one): memory and seconds a step."""
    args = bench_crd.parse_args(['--rows', '4000', '--classes', '10', '-b', '8', '--nce-k', '64', '--steps', '2'])
    for path in bench_crd.PATHS:
        res = bench_crd.measure(args, path)
        assert isinstance(res['extra_bytes'], int) and res['sec_per_step']['median'] > 0 and res['first_step_s'] > 0, path
    with pytest.raises(SystemExit):
        bench_crd.parse_args(['--paths', 'drawn,nope'])


def test_default_workers_is_train_kd_default():
    from timm_kd.train.args import build_parser
    assert bench_data.default_workers() == build_parser().get_default('workers')


# ---- on-device augmentation ----

@pytest.mark.parametrize('channels_last', [False, True])
def test_pad_crop_flip_equals_torchvision(channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    oy, ox = torch.randint(0, 7, (2, 16), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    out = pad_crop_flip(x, oy, ox, flip, padding=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(16):
        ref = TF.crop(TF.pad(x[i], 3), int(oy[i]), int(ox[i]), 12, 12)
        if flip[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref), i
    assert torch.equal(pad_crop_flip(x, torch.full((16,), 3), torch.full((16,), 3), None, 3), x)


def test_device_augment_equals_recipe_transform():
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (32, 8, 8, 3), dtype=torch.uint8, generator=g)  # numpy CIFAR layout
    aug = DeviceAugment(mean, std, padding=2)
    out = aug(imgs, generator=torch.Generator().manual_seed(5))
    assert out.shape == (32, 3, 8, 8) and out.dtype == torch.float32
    g2 = torch.Generator().manual_seed(5)  # replay the draws: offsets (2, B), then flips
    off = torch.randint(0, 5, (2, 32), generator=g2)
    flips = torch.rand(32, generator=g2) < 0.5
    norm = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    for i in range(32):
        pil = TF.to_pil_image(imgs[i].numpy())
        ref = TF.crop(TF.pad(pil, 2), int(off[0, i]), int(off[1, i]), 8, 8)
        if flips[i]:
            ref = TF.hflip(ref)
        torch.testing.assert_close(out[i], norm(ref), rtol=0, atol=1e-5)
    assert len({tuple(o) for o in off.t().tolist()}) > 1  # per-sample offsets, not one per batch
    aug.eval()
    torch.testing.assert_close(aug(imgs), torch.stack([norm(TF.to_pil_image(im.numpy())) for im in imgs]),
                               rtol=0, atol=1e-5)


def test_random_pad_crop_flip_draws_per_sample():
    x = torch.arange(64 * 10 * 10, dtype=torch.float32).view(64, 1, 10, 10)
    out = random_pad_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 5, 3] > out[:, 0, 5, 6]).sum().item()  # mirrored rows decrease left to right
    assert 10 < flipped < 54
    assert out.shape == x.shape
