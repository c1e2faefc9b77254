"""train_kd.py options, each run and checked against its definition (not only that the run finishes).

Everything goes through ``train_kd.main(argv)`` (or ``accelerate launch``) and is observed in what a user
sees: checkpoints, summary.csv, results.json, the exit code. Where an option only configures another
object (a DistillMixup, timm's Mixup, a DataLoader, a timm model) the test records the arguments that
object is built with, and the object's own tests check what the argument does.

Runs are tiny: resnet8 on 8x8 synthetic images, batch 4, 3 steps per epoch.
"""
import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

import timm_kd
from timm_kd.train.args import parse_args
from timm_kd.train.schedule import create_kd_scheduler

BASE = ['--model', 'resnet8', '--dataset', 'synthetic/10x8', '--train-num-samples', '12', '--val-num-samples', '8',
        '-b', '4', '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--log-interval', '1', '--seed', '3']
STEPS = 3  # updates per epoch: 12 samples / batch 4

COVERS = (
    # resume, checkpoints, process count
    '--resume', '--no-resume-opt', '--model-ema', '--model-ema-decay', '--model-ema-warmup', '--sched-on-updates',
    '--checkpoint-every', '--checkpoint-hist', '--eval-metric', '--amp', '--amp-dtype', '--no-ddp-bb',
    # the step
    '--clip-grad', '--clip-mode', '--channels-last', '--torchcompile', '--grad-checkpointing', '--initial-checkpoint',
    '--pretrained', '--model', '--drop', '--drop-path', '--gp', '--model-kwargs', '--seed', '--smoothing',
    # optimizer and lr
    '--opt', '--opt-eps', '--opt-betas', '--momentum', '--layer-decay', '--opt-kwargs', '--lr',
    '--lr-base', '--lr-base-size', '--lr-base-scale', '--epochs', '--epoch-scale',
    # schedule (checked lr by lr against timm's scheduler classes)
    '--sched', '--lr-noise', '--lr-noise-pct', '--lr-noise-std', '--lr-cycle-mul', '--lr-cycle-decay',
    '--lr-cycle-limit', '--lr-k-decay', '--warmup-lr', '--min-lr', '--decay-epochs', '--decay-milestones',
    '--warmup-epochs', '--warmup-prefix', '--cooldown-epochs', '--patience-epochs', '--decay-rate',
    # mixing
    '--mixup', '--cutmix', '--cutmix-minmax', '--mixup-prob', '--mixup-switch-prob', '--mixup-mode',
    '--mixup-off-epoch', '--tl-mixup', '--tl-cutmix', '--cutmix-hard', '--cutout', '--pick', '--pick-candidates',
    '--pick-ratio', '--mix-pairing', '--mix-fraction', '--teacher', '--teacher-checkpoint', '--kd-temperature',
    '--kd-alpha', '--distill-loss-weight', '--task-loss-weight', '--mixed-kd-weight',
    # data and loaders
    '--dataset', '--data-dir', '--train-split', '--val-split', '--dataset-download', '--class-map', '--input-key',
    '--target-key', '--num-classes', '--train-num-samples', '--val-num-samples', '--batch-size',
    '--validation-batch-size', '--pin-mem', '--img-size', '--in-chans', '--input-size', '--mean', '--std',
    '--interpolation', '--crop-pct', '--std-aug', '--crop-padding', '--no-aug', '--scale', '--ratio', '--hflip',
    '--vflip', '--color-jitter', '--aa', '--reprob', '--remode', '--recount', '--train-interpolation',
    # output
    '--log-interval', '--output', '--experiment', '--config',
)

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _kd(teacher_ckpt):
    return ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt]


def _ck(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _rows(run_dir):
    with open(Path(run_dir) / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def _run(train_kd, tmp_path, name, *argv):
    res = train_kd.main([*argv, '--output', str(tmp_path), '--experiment', name])
    assert res['finished']
    return tmp_path / name


def _params(state_dict, model='resnet8'):
    names = {n for n, _ in timm.create_model(model, num_classes=10).named_parameters()}
    return {k: v for k, v in state_dict.items() if k in names}


def _assert_equal_state(a, b, what):
    """Nested checkpoint entries (dicts, lists, tensors, numbers) are identical."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _assert_equal_state(a[k], b[k], f'{what}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_state(x, y, f'{what}[{i}]')
    elif torch.is_tensor(a):
        assert torch.equal(a, b), what
    else:
        assert a == b, what


class Spy:
    """Records the keyword arguments a class is constructed with (then constructs it as usual)."""

    def __init__(self, monkeypatch, cls):
        self.calls = []
        init = cls.__init__

        def record(obj, *args, **kwargs):
            self.calls.append(kwargs)
            init(obj, *args, **kwargs)
        monkeypatch.setattr(cls, '__init__', record)


# ------------------------------------------------------------------------------------------------ exact resume
RESUME_CASES = {
    # EMA state, per-update schedule position inside the epoch, Adam moments, norm clipping
    'ema-updates-adamw-clipnorm': ['--model-ema', '--model-ema-decay', '0.8', '--sched-on-updates', '--opt', 'adamw',
                                   '--clip-grad', '0.5', '--tl-cutmix'],
    # KD on timm's soft-target batch mixing (2-D targets into the task), bf16 autocast, channels_last, value clipping
    'timm-mixup-kd-bf16-channels-last': ['--mixup', '0.4', '--cutmix', '1.0', '--mixup-mode', 'elem', '--amp',
                                         '--amp-dtype', 'bfloat16', '--channels-last', '--clip-grad', '0.05',
                                         '--clip-mode', 'value'],
    # per-pair CutMix with flip pairing and minmax boxes, adaptive clipping, EMA with warmup
    'pair-flip-minmax-agc': ['--tl-cutmix', '--mixup-mode', 'pair', '--mix-pairing', 'flip', '--cutmix-minmax',
                             '0.25', '0.75', '--clip-grad', '0.02', '--clip-mode', 'agc', '--model-ema',
                             '--model-ema-warmup'],
}


@pytest.mark.parametrize('case', list(RESUME_CASES))
def test_resume_mid_epoch_is_bit_exact_with_options(tmp_path, train_kd, teacher_ckpt, case):
    """Interrupted inside epoch 1 and resumed: weights, EMA, optimizer, schedule and the epoch's numbers equal
    the uninterrupted run's."""
    argv = BASE + _kd(teacher_ckpt) + RESUME_CASES[case] + ['--epochs', '2', '--checkpoint-every', '2']
    ref = _run(train_kd, tmp_path, 'ref', *argv)
    rec = _ck(ref / 'recovery.pth.tar')
    assert (rec['next_epoch'], rec['next_step']) == (1, 2)
    src = tmp_path / 'src'
    src.mkdir()
    shutil.copy(ref / 'recovery.pth.tar', src / 'recovery.pth.tar')
    resumed = _run(train_kd, tmp_path, 'resumed', *argv, '--resume', str(src / 'recovery.pth.tar'))
    a, b = _ck(ref / 'last.pth.tar'), _ck(resumed / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema', 'optimizer', 'scheduler', 'scaler'):
        _assert_equal_state(a.get(key), b.get(key), key)
    assert (a.get('state_dict_ema') is not None) == ('--model-ema' in argv)
    assert _rows(resumed)[-1] == _rows(ref)[-1]  # every column, the lr of a per-update schedule included
    if '--channels-last' in argv:  # the student trained in channels_last (saved tensors keep their strides)
        w = a['state_dict']['conv1.weight']
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    if '--amp' in argv:  # bf16 autocast is really on: the weights differ from an fp32 run of the same flags
        fp32 = _run(train_kd, tmp_path, 'fp32', *[x for x in argv if x not in ('--amp',)])
        fp32_weights = _ck(fp32 / 'last.pth.tar')['state_dict']
        assert not torch.equal(fp32_weights['conv1.weight'], a['state_dict']['conv1.weight'])
        assert json.loads((ref / 'results.json').read_text())['recipe']['mixed_precision'] == 'bf16'
        assert a['scaler'] is None  # accelerate makes a GradScaler only for fp16 on a GPU


def test_amp_float16_on_a_cpu_is_refused_before_training(tmp_path, train_kd, monkeypatch, capsys):
    """accelerate runs no float16 autocast on a CPU: such a run would train in float32 while args.yaml and
    results.json say fp16. It is refused in one sentence that names the CPU's mixed-precision type."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for amp in (['--amp'], ['--amp', '--amp-dtype', 'float16']):
        with pytest.raises(SystemExit) as e:
            train_kd.main(BASE + ['--epochs', '1', '--output', str(tmp_path / 'out'), *amp])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and '--amp-dtype bfloat16' in err[0], err
    assert not (tmp_path / 'out').exists()
    _run(train_kd, tmp_path, 'fp32', *BASE, '--epochs', '1', '--amp-dtype', 'float16')  # without --amp: no effect, runs


def test_resume_from_a_run_dir_takes_the_most_advanced_checkpoint(tmp_path, train_kd):
    """A run folder with recovery.pth.tar and last.pth.tar resumes from whichever is further along. The two
    files come from runs with different seeds, so the final weights tell which one was taken."""
    argv = BASE + ['--epochs', '2', '--checkpoint-every', '2']
    a = _run(train_kd, tmp_path, 'a', *argv)
    b = _run(train_kd, tmp_path, 'b', *argv, '--seed', '4')
    final_a = _ck(a / 'last.pth.tar')['state_dict']
    # recovery (1, 2) from run a is ahead of last (1, 0) from run b
    d1 = tmp_path / 'd1'
    d1.mkdir()
    shutil.copy(a / 'recovery.pth.tar', d1 / 'recovery.pth.tar')
    shutil.copy(b / 'checkpoint-0.pth.tar', d1 / 'last.pth.tar')
    # last (1, 0) from run a is ahead of a stale recovery (0, 2) from run b (one epoch only)
    b1 = _run(train_kd, tmp_path, 'b1', *BASE, '--epochs', '1', '--checkpoint-every', '2', '--seed', '4')
    d2 = tmp_path / 'd2'
    d2.mkdir()
    shutil.copy(b1 / 'recovery.pth.tar', d2 / 'recovery.pth.tar')
    shutil.copy(a / 'checkpoint-0.pth.tar', d2 / 'last.pth.tar')
    assert (_ck(d2 / 'recovery.pth.tar')['next_epoch'], _ck(d2 / 'recovery.pth.tar')['next_step']) == (0, 2)
    for d in (d1, d2):
        out = _run(train_kd, tmp_path, f'from-{d.name}', *argv, '--resume', str(d))
        _assert_equal_state(final_a, _ck(out / 'last.pth.tar')['state_dict'], d.name)


def test_resume_errors_are_one_sentence(tmp_path, train_kd, capsys):
    """Every way a checkpoint can be unusable is refused before training, naming the reason."""
    good = _ck(_run(train_kd, tmp_path, 'good', *BASE, '--epochs', '1') / 'last.pth.tar')
    empty = tmp_path / 'empty'
    empty.mkdir()
    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'last.pth.tar').write_bytes(b'not a checkpoint')
    (tmp_path / 'broken.pth.tar').write_bytes(b'\x80\x04truncated')
    torch.save({'epoch': 3}, tmp_path / 'foreign.pth.tar')
    damaged = dict(good, state_dict={k: v + 1 if v.is_floating_point() else v for k, v in good['state_dict'].items()})
    torch.save(damaged, tmp_path / 'damaged.pth.tar')  # content changed, checksum not
    torch.save(dict(good, version=99), tmp_path / 'future.pth.tar')
    cases = ((empty, 'holds no intact checkpoint'), (junk, 'cannot be read as a checkpoint'),
             (tmp_path / 'broken.pth.tar', 'cannot be read as a checkpoint'),
             (tmp_path / 'foreign.pth.tar', 'not a train_kd checkpoint'),
             (tmp_path / 'damaged.pth.tar', 'fails its checksum'), (tmp_path / 'future.pth.tar', 'version 99'))
    for path, phrase in cases:
        with pytest.raises(SystemExit) as e:
            train_kd.main(BASE + ['--epochs', '1', '--resume', str(path), '--output', str(tmp_path / 'out')])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and phrase in err[0], (path, err)
        assert not (tmp_path / 'out').exists()


def test_no_resume_opt_starts_a_fresh_optimizer(tmp_path, train_kd):
    argv = BASE + ['--epochs', '2', '--opt', 'adamw']
    ref = _run(train_kd, tmp_path, 'ref', *argv)
    steps = {int(s['step']) for s in _ck(ref / 'last.pth.tar')['optimizer']['state'].values()}
    assert steps == {2 * STEPS}  # Adam counts every update
    for extra, expect in (([], 2 * STEPS), (['--no-resume-opt'], STEPS)):
        out = _run(train_kd, tmp_path, f'r{len(extra)}', *argv, '--resume', str(ref / 'checkpoint-0.pth.tar'), *extra)
        opt = _ck(out / 'last.pth.tar')['optimizer']
        assert {int(s['step']) for s in opt['state'].values()} == {expect}


# ------------------------------------------------------------------------------------------------ the step
@pytest.mark.parametrize('mode', ['norm', 'value', 'agc'])
def test_clip_grad_bounds_the_first_update(tmp_path, train_kd, init_ckpt, mode):
    """Plain SGD (no momentum, no decay) from known weights: the first update is lr x clipped gradient, so its
    size is bounded by the clip definition; without clipping it is larger."""
    lr, clip = 1.0, {'norm': 0.01, 'value': 1e-3, 'agc': 1e-3}[mode]
    argv = BASE + ['--epochs', '1', '--train-num-samples', '4', '--initial-checkpoint', init_ckpt, '--opt', 'momentum',
                   '--momentum', '0', '--weight-decay', '0', '--lr', str(lr), '--smoothing', '0']
    w0 = _params(torch.load(init_ckpt, weights_only=True))
    deltas = {}
    for name, extra in (('clip', ['--clip-grad', str(clip), '--clip-mode', mode]), ('free', [])):
        w1 = _params(_ck(_run(train_kd, tmp_path, f'{mode}-{name}', *argv, *extra) / 'last.pth.tar')['state_dict'])
        deltas[name] = {k: (w1[k] - w0[k]).double() for k in w0}
    d, free = deltas['clip'], deltas['free']
    if mode == 'norm':
        total = torch.sqrt(sum((v ** 2).sum() for v in d.values()))
        assert total <= lr * clip * (1 + 1e-4)
        assert torch.sqrt(sum((v ** 2).sum() for v in free.values())) > 2 * lr * clip
    elif mode == 'value':
        assert max(v.abs().max() for v in d.values()) <= lr * clip + 1e-7  # + float32 rounding of w0 - step
        assert max(v.abs().max() for v in free.values()) > 2 * lr * clip
    else:  # timm AGC: per output unit ||g|| <= clip * max(||w||, 1e-3); the classifier (last 2 params) is exempt
        keys = list(w0)
        body = [k for k in keys[:-2] if w0[k].ndim > 1]
        for k in body:
            unit = lambda t: t.reshape(t.shape[0], -1).norm(dim=1)  # noqa: E731
            assert (unit(d[k]) <= lr * clip * unit(w0[k].double()).clamp(min=1e-3) * (1 + 1e-4) + 1e-12).all(), k
        assert torch.equal(d[keys[-1]], free[keys[-1]])  # the head is not clipped
        assert any(not torch.equal(d[k], free[k]) for k in body)


def test_model_ema_decay_and_warmup_follow_the_ema_definition(tmp_path, train_kd, init_ckpt):
    """timm's EMA with update counts: after update 1 the EMA is the weights; after update 2 it is
    d * ema_1 + (1 - d) * w_2 with d = --model-ema-decay, or with --model-ema-warmup
    d = min(decay, 1 - (1 + 1) ** (-2/3))."""
    argv = BASE + ['--epochs', '1', '--train-num-samples', '8', '--initial-checkpoint', init_ckpt,
                   '--checkpoint-every', '1', '--model-ema', '--model-ema-decay', '0.9']
    for extra, decay in (([], 0.9), (['--model-ema-warmup'], 1 - 2 ** (-2 / 3))):
        run = _run(train_kd, tmp_path, f'ema{len(extra)}', *argv, *extra)
        one, two = _ck(run / 'recovery.pth.tar'), _ck(run / 'last.pth.tar')
        assert (one['next_epoch'], one['next_step']) == (0, 1)
        for k, w2 in _params(two['state_dict']).items():
            assert torch.equal(one['state_dict_ema'][k], one['state_dict'][k]), k
            expect = decay * one['state_dict_ema'][k].double() + (1 - decay) * w2.double()
            torch.testing.assert_close(two['state_dict_ema'][k].double(), expect, rtol=1e-5, atol=1e-7)


def test_initial_checkpoint_and_pretrained_local_folder_are_the_starting_weights(tmp_path, train_kd, init_ckpt):
    """lr 0: the parameters stay what the run started from."""
    from timm.models import save_for_hf
    argv = BASE + ['--epochs', '1', '--train-num-samples', '4', '--lr', '0']
    w0 = _params(torch.load(init_ckpt, weights_only=True))
    got = _params(_ck(_run(train_kd, tmp_path, 'init', *argv, '--initial-checkpoint', init_ckpt) / 'last.pth.tar')
                  ['state_dict'])
    _assert_equal_state(w0, got, 'initial-checkpoint')
    model = timm.create_model('resnet8', num_classes=10)
    model.load_state_dict(torch.load(init_ckpt, weights_only=True))
    save_for_hf(model, tmp_path / 'folder', safe_serialization=True)
    local = ['--model', f'local-dir:{tmp_path / "folder"}']
    got = _ck(_run(train_kd, tmp_path, 'pre', *argv, *local, '--pretrained') / 'last.pth.tar')['state_dict']
    _assert_equal_state(w0, _params(got), 'pretrained')
    scratch = _ck(_run(train_kd, tmp_path, 'scratch', *argv, *local) / 'last.pth.tar')['state_dict']
    assert not torch.equal(_params(scratch)['conv1.weight'], w0['conv1.weight'])


def _final(train_kd, tmp_path, name, *argv):
    return _ck(_run(train_kd, tmp_path, name, *BASE, '--epochs', '1', *argv) / 'last.pth.tar')


DIFFERENT_RUNS = {  # each changes the training, so the final weights must differ from the base run's
    'drop': ['--drop', '0.5'],
    'gp': ['--gp', 'max'],
    'momentum': ['--momentum', '0.5'],
    'opt-eps': ['--opt', 'adamw', '--opt-eps', '0.1'],
    'opt-betas': ['--opt', 'adamw', '--opt-betas', '0.5', '0.9'],
    'opt-kwargs': ['--opt', 'momentum', '--opt-kwargs', 'dampening=0.5'],
    'seed': ['--seed', '4'],
    'smoothing': ['--smoothing', '0.4'],
}
BASELINES = {'opt-eps': ['--opt', 'adamw'], 'opt-betas': ['--opt', 'adamw'], 'opt-kwargs': ['--opt', 'momentum']}


def test_options_that_change_training_change_the_weights(tmp_path, train_kd):
    base = {}
    for name, argv in DIFFERENT_RUNS.items():
        key = tuple(BASELINES.get(name, []))
        if key not in base:
            base[key] = _final(train_kd, tmp_path, f'base{len(base)}', *key)['state_dict']
        got = _final(train_kd, tmp_path, name, *argv)['state_dict']
        assert not torch.equal(got['fc.weight'], base[key]['fc.weight']), f'{argv} did not change the training'


def test_options_with_an_equivalent_spelling_give_identical_weights(tmp_path, train_kd):
    """lr from --lr-base (timm: lr_base x global batch / lr_base_size, sqrt for ada*/lamb or --lr-base-scale),
    --model-kwargs drop_rate=x == --drop x, --no-aug == --std-aug none, --epoch-scale 2 == twice the epochs."""
    no_lr = [a for i, a in enumerate(BASE) if a != '--lr' and BASE[i - 1] != '--lr']
    pairs = [
        (['--lr-base', '0.2'], ['--lr', str(0.2 * 4 / 256)]),
        (['--lr-base', '0.2', '--lr-base-size', '8'], ['--lr', str(0.2 * 4 / 8)]),
        (['--lr-base', '0.2', '--lr-base-size', '8', '--lr-base-scale', 'sqrt'], ['--lr', str(0.2 * (4 / 8) ** 0.5)]),
        (['--opt', 'adamw', '--lr-base', '0.2', '--lr-base-size', '8'],
         ['--opt', 'adamw', '--lr', str(0.2 * (4 / 8) ** 0.5)]),  # adaptive optimizers: sqrt scaling
        (['--lr', '0.05', '--model-kwargs', 'drop_rate=0.5'], ['--lr', '0.05', '--drop', '0.5']),
        (['--lr', '0.05', '--no-aug'], ['--lr', '0.05', '--std-aug', 'none']),
        (['--lr', '0.05', '--epoch-scale', '2'], ['--lr', '0.05', '--epochs', '2']),
    ]
    for i, (a, b) in enumerate(pairs):
        ra = _ck(_run(train_kd, tmp_path, f'a{i}', *no_lr, '--epochs', '1', *a) / 'last.pth.tar')
        rb = _ck(_run(train_kd, tmp_path, f'b{i}', *no_lr, '--epochs', '1', *b) / 'last.pth.tar')
        _assert_equal_state(ra['state_dict'], rb['state_dict'], f'{a} vs {b}')


def test_drop_path_and_layer_decay_on_a_timm_model(tmp_path, train_kd):
    """Options our CIFAR models do not take, on timm's tiny test_resnet: drop path changes the training;
    layer decay gives each layer group lr x decay ** depth-from-the-head."""
    argv = ['--model', 'test_resnet', *BASE[2:], '--epochs', '1']
    base = _ck(_run(train_kd, tmp_path, 'base', *argv) / 'last.pth.tar')
    dp = _ck(_run(train_kd, tmp_path, 'dp', *argv, '--drop-path', '0.5') / 'last.pth.tar')
    assert not torch.equal(base['state_dict']['fc.weight'], dp['state_dict']['fc.weight'])
    ld = _ck(_run(train_kd, tmp_path, 'ld', *argv, '--layer-decay', '0.5') / 'last.pth.tar')
    scales = sorted({g['lr_scale'] for g in ld['optimizer']['param_groups']})
    assert scales[-1] == 1.0 and len(scales) > 2
    assert all(math.isclose(s, 0.5 ** round(math.log(s, 0.5))) for s in scales)
    assert all('lr_scale' not in g or g['lr_scale'] == 1 for g in base['optimizer']['param_groups'])


def test_eval_metric_picks_model_best_and_checkpoint_hist_keeps_the_best_epochs(tmp_path, train_kd):
    for metric, pick in (('loss', min), ('top1', max), ('top5', max)):
        run = _run(train_kd, tmp_path, metric, *BASE, '--epochs', '3', '--eval-metric', metric,
                   '--checkpoint-hist', '2', '--lr', '0.2')
        rows = _rows(run)
        values = [float(r[f'eval_{metric}']) for r in rows]
        best = values.index(pick(values))  # first epoch reaching the best value
        res = json.loads((run / 'results.json').read_text())
        assert res['best_epoch'] == best and math.isclose(res['best_top1'], float(rows[best]['eval_top1']))
        assert math.isclose(res['last_top1'], float(rows[-1]['eval_top1']))
        _assert_equal_state(_ck(run / 'model_best.pth.tar')['state_dict'],
                            _ck(run / f'checkpoint-{best}.pth.tar')['state_dict'], metric)
        order = sorted(range(3), key=lambda e: values[e], reverse=pick is max)  # stable: earlier epoch first
        kept = sorted(int(p.name.split('-')[1].split('.')[0]) for p in run.glob('checkpoint-*.pth.tar'))
        assert kept == sorted(order[:2])


def test_log_interval_sets_the_progress_lines(tmp_path, train_kd):
    run = _run(train_kd, tmp_path, 'log', *BASE, '--epochs', '1', '--train-num-samples', '20', '--log-interval', '2')
    lines = [ln for ln in (run / 'log.txt').read_text().splitlines() if 'Train: 0 [' in ln]
    assert len(lines) == 3  # steps 2, 4 and the last (5) of 5


def test_sample_counts_and_grad_checkpointing(tmp_path, train_kd, monkeypatch):
    """--train/val-num-samples size the run; --grad-checkpointing recomputes the checkpointed blocks in the backward
    pass (BatchNorm runs more often), with the same gradients."""
    calls = []
    forward = torch.nn.BatchNorm2d.forward

    def counting(self, x):
        calls.append(1)
        return forward(self, x)
    monkeypatch.setattr(torch.nn.BatchNorm2d, 'forward', counting)
    counts, weights = [], []
    for extra in ([], ['--grad-checkpointing']):
        calls.clear()
        run = _run(train_kd, tmp_path, f'gc{len(extra)}', *BASE, '--epochs', '1', '--val-num-samples', '5', *extra)
        res = json.loads((run / 'results.json').read_text())
        assert (res['train_images'], res['eval_images']) == (12, 5)
        counts.append(len(calls))
        weights.append(_ck(run / 'last.pth.tar')['state_dict'])
    assert counts[1] > counts[0]
    # the same gradients, so the same parameters. Known gap: the recomputation also updates the BatchNorm
    # running statistics a second time, so buffers differ (timm's checkpoint_seq does not guard against it)
    _assert_equal_state(_params(weights[0]), _params(weights[1]), 'grad checkpointing')


def test_no_ddp_bb_reaches_ddp(tmp_path, train_kd, monkeypatch):
    """DDP's buffer broadcast is what --no-ddp-bb turns off (its effect over 2 processes is in test_train_kd)."""
    from accelerate.utils import DistributedDataParallelKwargs
    ddp = Spy(monkeypatch, DistributedDataParallelKwargs)
    for extra, broadcast in (([], True), (['--no-ddp-bb'], False)):
        _run(train_kd, tmp_path, f'bb{len(extra)}', *BASE, '--epochs', '1', '--train-num-samples', '4', *extra)
        assert ddp.calls[-1]['broadcast_buffers'] is broadcast


def test_torchcompile_checkpoints_resume_both_ways_and_a_bad_backend_is_a_usage_error(tmp_path, train_kd, monkeypatch,
                                                                                      capsys):
    """A compiled run trains the same weights and writes the same checkpoint keys as a plain one (no torch.compile
    '_orig_mod.' prefix, EMA included); its mid-epoch checkpoint resumes with and without --torchcompile to the
    uninterrupted run's weights."""
    backends = []
    real = torch.compile

    def spy(model=None, *args, **kwargs):
        backends.append(kwargs.get('backend'))
        return real(model, *args, **kwargs)
    monkeypatch.setattr(torch, 'compile', spy)
    argv = BASE + ['--epochs', '2', '--model-ema', '--checkpoint-every', '2']
    plain = _ck(_run(train_kd, tmp_path, 'plain', *argv) / 'last.pth.tar')
    compiled_run = _run(train_kd, tmp_path, 'eager', *argv, '--torchcompile', 'eager')
    assert backends and set(backends) == {'eager'}
    compiled = _ck(compiled_run / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema'):  # the eager backend runs the same kernels: identical weights
        _assert_equal_state(plain[key], compiled[key], f'eager backend {key}')
    src = tmp_path / 'src'
    src.mkdir()
    shutil.copy(compiled_run / 'recovery.pth.tar', src / 'recovery.pth.tar')
    assert list(_ck(src / 'recovery.pth.tar')['state_dict']) == list(plain['state_dict'])
    # a checkpoint of a compiled run written by an earlier timm-kd, its keys prefixed, resumes too
    from timm_kd.train.state import TrainState
    old = TrainState.from_dict(_ck(src / 'recovery.pth.tar'))
    old.state_dict = {f'_orig_mod.{k}': v for k, v in old.state_dict.items()}
    old_src = tmp_path / 'old'
    old_src.mkdir()
    torch.save(old.to_dict(), old_src / 'recovery.pth.tar')
    for source, extra in ((src, []), (src, ['--torchcompile', 'eager']), (old_src, [])):
        resumed = _run(train_kd, tmp_path, f'{source.name}{len(extra)}', *argv, *extra, '--resume', str(source))
        for key in ('state_dict', 'state_dict_ema'):
            _assert_equal_state(compiled[key], _ck(resumed / 'last.pth.tar')[key], f'{source.name} {extra} {key}')
    with pytest.raises(SystemExit) as e:
        train_kd.main(argv + ['--torchcompile', 'no_such_backend', '--output', str(tmp_path / 'bad')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and 'no_such_backend' in err[0], err
    assert not (tmp_path / 'bad').exists()


# ------------------------------------------------------------------------------------------------ mixing
def test_mixup_off_epoch_stops_timm_mixing_and_teacher_labelled_views(tmp_path, train_kd, teacher_ckpt, monkeypatch):
    from timm.data import Mixup
    mixed = []
    call = Mixup.__call__

    def spy(self, x, target):
        before = x.clone()
        out = call(self, x, target)
        mixed.append(not torch.equal(out[0], before))
        assert out[1].ndim == 2  # soft targets into the task
        return out
    monkeypatch.setattr(Mixup, '__call__', spy)
    argv = BASE + _kd(teacher_ckpt) + ['--epochs', '2', '--mixup-off-epoch', '1']
    _run(train_kd, tmp_path, 'timm', *argv, '--mixup', '1.0')
    assert mixed == [True] * STEPS + [False] * STEPS
    rows = _rows(_run(train_kd, tmp_path, 'tl', *argv, '--tl-cutmix'))
    assert float(rows[0]['train_mixed_loss']) > 0 and float(rows[1]['train_mixed_loss']) == 0


def test_mixing_flags_reach_the_mixers(tmp_path, train_kd, teacher_ckpt, monkeypatch):
    """Each flag arrives as the documented constructor argument (the mixers' own tests check the arguments)."""
    from timm.data import Mixup
    dm, tm, task = (Spy(monkeypatch, c) for c in (timm_kd.DistillMixup, Mixup, timm_kd.DistillationTask))
    kd = BASE + _kd(teacher_ckpt) + ['--epochs', '1', '--train-num-samples', '8']
    _run(train_kd, tmp_path, 'tl', *kd, '--tl-mixup', '0.3', '--tl-cutmix', '0.7', '--cutmix-minmax', '0.2', '0.6',
         '--mixup-prob', '0.6', '--mixup-switch-prob', '0.3', '--mixup-mode', 'elem', '--mix-pairing', 'random',
         '--mix-fraction', '0.5', '--pick', 's_ent', '--pick-candidates', '3', '--pick-ratio', '0.25',
         '--kd-temperature', '2', '--kd-alpha', '0.7', '--mixed-kd-weight', '0.5')
    want = dict(mixup_alpha=0.3, cutmix_alpha=0.7, cutmix_minmax=[0.2, 0.6], prob=0.6, switch_prob=0.3, mode='elem',
                pairing='random', mix_fraction=0.5, pick='s_ent', n_candidates=3, pick_ratio=0.25, label_mode='teacher',
                num_classes=10)
    assert {k: dm.calls[-1][k] for k in want} == want
    weights = ('temperature', 'task_loss_weight', 'distill_loss_weight', 'mixed_kd_weight')
    assert {k: task.calls[-1][k] for k in weights} == dict(
        temperature=2.0, task_loss_weight=pytest.approx(0.3), distill_loss_weight=0.7, mixed_kd_weight=0.5)
    _run(train_kd, tmp_path, 'hard', *kd, '--cutmix-hard', '0.5', '--smoothing', '0.2')
    assert {k: dm.calls[-1][k] for k in ('cutmix_alpha', 'label_mode', 'label_smoothing')} == dict(
        cutmix_alpha=0.5, label_mode='hard', label_smoothing=0.2)
    _run(train_kd, tmp_path, 'cutout', *kd, '--cutout', '3')
    assert dm.calls[-1]['cutout'] == 3
    _run(train_kd, tmp_path, 'cutout-default', *kd, '--cutout')
    assert dm.calls[-1]['cutout'] is True
    n = len(dm.calls)
    _run(train_kd, tmp_path, 'timm', *kd, '--mixup', '0.3', '--cutmix', '0.7', '--cutmix-minmax', '0.2', '0.6',
         '--mixup-prob', '0.6', '--mixup-switch-prob', '0.3', '--mixup-mode', 'pair', '--smoothing', '0.2')
    assert len(dm.calls) == n  # timm's --mixup mixes the batch itself, no teacher-labelled view
    want = dict(mixup_alpha=0.3, cutmix_alpha=0.7, cutmix_minmax=[0.2, 0.6], prob=0.6, switch_prob=0.3, mode='pair',
                label_smoothing=0.2, num_classes=10)
    assert {k: tm.calls[-1][k] for k in want} == want
    _run(train_kd, tmp_path, 'weights', *kd, '--distill-loss-weight', '0.4', '--task-loss-weight', '0.8')
    assert (task.calls[-1]['distill_loss_weight'], task.calls[-1]['task_loss_weight']) == (0.4, 0.8)


# ------------------------------------------------------------------------------------------------ schedule
def _lrs(argv, updates=4, metric=None):
    """lr before each update, stepped as train_kd's loop does (step_update per update, step per epoch)."""
    args, _ = parse_args(['--model', 'resnet8', '--lr', '0.1', *argv])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    return _lr_trace(opt, *create_kd_scheduler(opt, args, updates), updates, metric)


def _lr_trace(opt, sched, epochs, updates, metric):
    out = []
    for e in range(epochs):
        for u in range(updates):
            out.append(opt.param_groups[0]['lr'])
            if sched is not None:
                sched.step_update(e * updates + u + 1)
        if sched is not None:
            sched.step(e + 1, metric(e) if metric else None)
    return out


def _timm_lrs(updates=4, metric=None, **kw):
    """The same loop over timm's create_scheduler_v2 called with hand-written keyword arguments."""
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return _lr_trace(opt, *create_scheduler_v2(opt, updates_per_epoch=updates, **kw), updates, metric)


def test_schedule_flags_give_timms_schedules():
    """Each flag arrives as its create_scheduler_v2 argument: the lr before every update equals timm's schedule
    built from the written-out arguments, and differs from the schedule without the flag."""
    common = ['--epochs', '6', '--warmup-epochs', '1', '--warmup-lr', '0.01', '--min-lr', '0.001']
    kw = dict(num_epochs=6, warmup_epochs=1, warmup_lr=0.01, min_lr=0.001)
    cases = [
        (['--sched', 'cosine'], dict(sched='cosine')),
        (['--sched', 'cosine', '--lr-cycle-mul', '2', '--lr-cycle-decay', '0.3', '--lr-cycle-limit', '2',
          '--lr-k-decay', '2'], dict(sched='cosine', cycle_mul=2., cycle_decay=0.3, cycle_limit=2, k_decay=2.)),
        (['--sched', 'cosine', '--lr-noise', '0.3', '0.8', '--lr-noise-pct', '0.2', '--lr-noise-std', '0.5'],
         dict(sched='cosine', noise=[0.3, 0.8], noise_pct=0.2, noise_std=0.5, noise_seed=42)),
        (['--sched', 'cosine', '--warmup-prefix'], dict(sched='cosine', warmup_prefix=True)),
        (['--sched', 'cosine', '--cooldown-epochs', '2'], dict(sched='cosine', cooldown_epochs=2)),
        (['--sched', 'tanh'], dict(sched='tanh')),
        (['--sched', 'step', '--decay-epochs', '2', '--decay-rate', '0.5'], dict(sched='step', decay_epochs=2,
                                                                                decay_rate=0.5)),
        (['--sched', 'multistep', '--decay-milestones', '2', '4', '--decay-rate', '0.5'],
         dict(sched='multistep', decay_milestones=[2, 4], decay_rate=0.5)),
        (['--sched', 'poly', '--decay-rate', '2'], dict(sched='poly', decay_rate=2.)),
        (['--sched', 'wsd', '--decay-epochs', '2'], dict(sched='wsd', decay_epochs=2)),
        (['--sched', 'rsqrt', '--decay-epochs', '2'], dict(sched='rsqrt', decay_epochs=2)),
        (['--sched', 'constant'], dict(sched='constant')),
        (['--sched', 'cosine', '--sched-on-updates'], dict(sched='cosine', step_on_epochs=False)),
        (['--sched', 'cosine', '--epoch-scale', '2'], dict(sched='cosine', num_epochs=12)),
    ]
    seen = set()
    for argv, ref in cases:
        ours = _lrs(common + argv)
        assert ours == pytest.approx(_timm_lrs(**dict(kw, **ref)), rel=1e-12), argv
        seen.add(tuple(ours))
    assert len(seen) == len(cases)  # every flag changed the lrs
    assert _lrs(['--sched', 'none', '--epochs', '2']) == [0.1] * 8
    assert _lrs(['--sched', 'multistep_torch', '--epochs', '4', '--warmup-epochs', '0', '--decay-milestones', '2'],
                updates=1) == pytest.approx([0.1, 0.1, 0.01, 0.01])
    # plateau: lr x decay-rate once the metric has not improved for --patience-epochs epochs
    for patience in (1, 3):
        argv = ['--sched', 'plateau', '--epochs', '6', '--warmup-epochs', '0', '--patience-epochs', str(patience),
                '--decay-rate', '0.5']
        ours = _lrs(argv, updates=1, metric=lambda e: 50.)
        ref = _timm_lrs(updates=1, metric=lambda e: 50., sched='plateau', num_epochs=6, warmup_epochs=0,
                        patience_epochs=patience, decay_rate=0.5, plateau_mode='max')
        assert ours == pytest.approx(ref) and ours[-1] < 0.1
    assert _lrs(argv, updates=1, metric=lambda e: 50.) != _lrs(argv[:-4] + argv[-2:], updates=1, metric=lambda e: 50.)


# ------------------------------------------------------------------------------------------------ data
def test_data_flags_reach_the_dataset_reader_and_the_loaders(tmp_path, train_kd, monkeypatch):
    """hfds/ (its reader needs the `datasets` package) and torch/ downloads: the flags arrive at timm's
    create_dataset; the batch sizes and pinning at the DataLoaders."""
    import timm.data
    from timm.data.readers.class_map import load_class_map
    from torch.utils.data import DataLoader
    from timm_kd.data.datasets import SyntheticDataset
    calls = []

    def fake_create_dataset(name, root=None, split='train', is_training=False, download=False, **kwargs):
        calls.append(dict(name=name, root=root, split=split, download=download, **kwargs))
        ds = SyntheticDataset(10, 8, split='train' if is_training else 'validation',
                              transform=kwargs.get('transform'), num_samples=10)
        ds.reader = SimpleNamespace(class_to_idx=load_class_map(kwargs['class_map']))  # as timm's hfds reader
        return ds
    monkeypatch.setattr(timm.data, 'create_dataset', fake_create_dataset)
    loaders = Spy(monkeypatch, DataLoader)
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('\n'.join(f'c{i}' for i in range(10)))
    argv = ['--model', 'resnet8', '--dataset', 'hfds/someone/toy', '--data-dir', str(tmp_path), '--num-classes', '10',
            '--img-size', '8', '--input-key', 'img', '--target-key', 'fine_label', '--class-map', str(class_map),
            '--train-split', 'train[:8]', '--val-split', 'test[:8]', '--dataset-download', '-b', '4', '-vb', '3',
            '--pin-mem', '--epochs', '1', '--workers', '0', '--lr', '0.01']
    _run(train_kd, tmp_path, 'hfds', *argv)
    assert [(c['name'], c['split'], c['download'], c['input_key'], c['target_key'], c['class_map']) for c in calls] \
        == [('hfds/someone/toy', s, True, 'img', 'fine_label', load_class_map(str(class_map)))
            for s in ('train[:8]', 'test[:8]')]
    sizes = {c.get('batch_size') or c['batch_sampler'].batch_size for c in loaders.calls}
    assert sizes == {3, 4} and all(c['pin_memory'] for c in loaders.calls)


def test_small_and_large_input_data_flags_build_the_transforms(tmp_path):
    """The recipe flags reach the transforms (timm's ImageNet ones above 128 px)."""
    from torchvision import transforms as T
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from timm_kd.train.args import validate_args
    from timm_kd.train.build import create_datasets, data_config

    def datasets(*argv):
        args, explicit = parse_args(['--model', 'resnet8', '--train-num-samples', '2', '--val-num-samples', '2', *argv])
        validate_args(args, explicit)
        dc = data_config(args, explicit)
        return dc, [getattr(ds, 'dataset', ds).transform for ds in create_datasets(args, dc)]

    dc, (train, ev) = datasets('--dataset', 'synthetic/10x16', '--in-chans', '1', '--mean', '0.3', '--std', '0.2',
                               '--crop-padding', '3', '--std-aug', 'crop')
    kinds = [type(t) for t in train.transforms]
    assert T.RandomHorizontalFlip not in kinds and T.RandomCrop in kinds
    assert train.transforms[kinds.index(T.RandomCrop)].padding == 3
    norm = train.transforms[-1]
    assert (dc.in_chans, list(norm.mean), list(norm.std)) == (1, [0.3], [0.2])
    dc, _ = datasets('--dataset', 'synthetic/10x16', '--input-size', '2', '12', '12', '--mean', '0.5', '--std', '0.2')
    assert (dc.in_chans, dc.size) == (2, 12)

    dc, (train, ev) = datasets(
        '--dataset', 'synthetic/10x128', '--img-size', '128', '--scale', '0.5', '0.9', '--ratio', '0.8', '1.25',
        '--hflip', '0.3', '--vflip', '0.4', '--color-jitter', '0.2', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.5',
        '--remode', 'const', '--recount', '2', '--train-interpolation', 'bicubic', '--interpolation', 'bicubic',
        '--crop-pct', '0.8')
    by_type = {type(t): t for t in train.transforms}
    rrc = by_type[RandomResizedCropAndInterpolation]
    assert rrc.scale == (0.5, 0.9) and rrc.ratio == (0.8, 1.25) and rrc.interpolation == T.InterpolationMode.BICUBIC
    assert by_type[T.RandomHorizontalFlip].p == 0.3 and by_type[T.RandomVerticalFlip].p == 0.4
    assert 'RandAugment' in str(train)
    erase = by_type[RandomErasing]
    assert (erase.probability, erase.mode, erase.max_count) == (0.5, 'const', 2)
    resize = next(t for t in ev.transforms if isinstance(t, T.Resize))
    assert resize.size == int(math.floor(128 / 0.8)) and resize.interpolation == T.InterpolationMode.BICUBIC
    jitter = datasets('--dataset', 'synthetic/10x128', '--img-size', '128', '--color-jitter', '0.2')[1][0]
    assert next(t for t in jitter.transforms if isinstance(t, T.ColorJitter)).brightness == (0.8, 1.2)
    off = datasets('--dataset', 'synthetic/10x128', '--img-size', '128', '--color-jitter', '0')[1][0]
    assert not any(isinstance(t, T.ColorJitter) for t in off.transforms)  # 0 is off, not a jitter that does nothing


def test_val_split_and_class_map_choose_the_image_folders(tmp_path, train_kd, capsys):
    """train/ and val/ have classes a, b, c; test/ only a, b. The default eval folder val/ fits, --val-split test
    does not (refused); --class-map c, b, a relabels the classes, which changes the training; a map of c and a
    trains a 2-class model on those folders only (timm's meaning); a map naming a missing class, and a map for a
    dataset that would ignore it, are refused."""
    from PIL import Image
    for split, classes in (('train', 'abc'), ('val', 'abc'), ('test', 'ab')):
        for c in classes:
            d = tmp_path / 'data' / split / c
            d.mkdir(parents=True)
            for i in range(4 if split == 'train' else 2):
                Image.new('RGB', (8, 8), (40 * i, 100 * 'abc'.index(c), 0)).save(d / f'{i}.png')
    (tmp_path / 'map.txt').write_text('c\nb\na\n')
    argv = ['--model', 'resnet8', '--data-dir', str(tmp_path / 'data'), '--img-size', '8', '-b', '4', '--epochs', '1',
            '--workers', '0', '--lr', '0.1', '--output', str(tmp_path)]
    for extra, phrase in ((['--val-split', 'test'], "'test' split"), (['--train-split', 'nosuch'], 'nosuch')):
        with pytest.raises(SystemExit) as e:
            train_kd.main(argv + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and phrase in err[0], err
    weights = []
    for extra in ([], ['--class-map', str(tmp_path / 'map.txt')]):
        res = train_kd.main(argv + extra)
        assert res['finished'] and res['num_classes'] == 3
        weights.append(_ck(Path(res['run_dir']) / 'last.pth.tar')['state_dict']['fc.weight'])
    assert not torch.equal(*weights)

    (tmp_path / 'data' / 'subset.txt').write_text('c\na\n')
    for class_map in (str(tmp_path / 'data' / 'subset.txt'), 'subset.txt'):  # a bare name: found in --data-dir, as timm
        res = train_kd.main(argv + ['--class-map', class_map])
        assert res['finished'] and res['num_classes'] == 2
        assert (res['train_images'], res['eval_images']) == (2 * 4, 2 * 2)  # the images of b are left out
        assert _ck(Path(res['run_dir']) / 'last.pth.tar')['state_dict']['fc.weight'].shape[0] == 2
    (tmp_path / 'typo.txt').write_text('a\nB\nc\n')
    for extra, phrase in ((['--class-map', str(tmp_path / 'typo.txt')], "classes without images in the 'train' split "
                                                                        "('B')"),
                          (['--class-map', 'subset.txt', '--num-classes', '3'], 'does not match'),
                          (['--class-map', 'nosuch.txt'], "is not a file (nor is it one in --data-dir"),
                          (BASE[:4] + ['--class-map', str(tmp_path / 'data' / 'subset.txt')], 'does not apply --class-map')):
        with pytest.raises(SystemExit) as e:
            train_kd.main(argv + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and phrase in err[0], (extra, err)


def test_config_file_values_reach_the_run(tmp_path, train_kd):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('epochs: 1\nsmoothing: 0.3\nlr: 0.5\nmodel_ema: true\n')
    run = _run(train_kd, tmp_path, 'cfg', *BASE, '--config', str(cfg))  # BASE has --lr 0.05: the command line wins
    recipe = json.loads((run / 'results.json').read_text())['recipe']
    assert (recipe['epochs'], recipe['smoothing'], recipe['lr']) == (1, 0.3, 0.05)
    assert 'state_dict_ema' in _ck(run / 'last.pth.tar')
