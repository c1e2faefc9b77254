"""timm's distillation interface: ``--kd-model-name``, ``--kd-distill-type {logit,feature,token}`` and their flags.

* The three distillation types of timm against timm's own tasks (``LogitDistillationTask``,
  ``FeatureDistillationTask``, ``TokenDistillationTask``): the same short training gives the same losses and weights.
* train_kd.py spelt with timm's flags and with ours: the same run, row for row, with ``--tl-cutmix`` (and pick), so
  the feature and token types train with our views; each learns on a tiny problem.
* Every bad combination is one sentence and exit code 2 before any training.
"""
import copy
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask

import timm_kd  # noqa: F401  (registers the CIFAR models)
from timm_kd import DistillMixup, DistillationTask
from timm_kd.train.args import TIMM_DISTILL_TYPES, build_parser, parse_args, resolve_loss_weights
from timm_kd.train.main import main
from test_distill_train import data, teacher, tiny_net  # noqa: F401  (tiny pair, data: fixtures)
from test_train_kd import _rows

COVERS = ('--kd-model-name', '--kd-distill-type', '--kd-loss-type', '--kd-student-feature-dim',
          '--kd-teacher-feature-dim', '--kd-token-distill-type')

pytestmark = pytest.mark.usefixtures('one_torch_thread')

# a distilled ViT (class + distillation token) small enough for the tests: 16 px, 4 px patches, one block
DEIT = 'deit_tiny_distilled_patch16_224'
DEIT_KWARGS = dict(img_size=16, patch_size=4, depth=1, embed_dim=16, num_heads=2)


def _deit(num_classes, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(DEIT, num_classes=num_classes, **dict(DEIT_KWARGS, **kwargs))


# ------------------------------------------------------------------------------------- timm's tasks, ours

def _batches(num_classes, size=16, steps=3, batch=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, num_classes, (batch,), generator=g))
            for _ in range(steps)]


def _run(task, params, batches, keys):
    opt = torch.optim.SGD(params, lr=0.1)
    task.train()
    seen = []
    for x, y in batches:
        out = task(x, y)
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        seen += [out[k].item() for k in keys]
    return seen


@pytest.mark.parametrize('kind', ['logit', 'feature', 'token-soft', 'token-hard'])
def test_each_type_trains_as_timms_own_task(kind):
    """The same three SGD steps through timm's task and ours: the same losses at every step, the same weights."""
    classes, weights = 5, dict(task_loss_weight=0.3, distill_loss_weight=2.0)
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=classes, img_size=16, patch_size=8, depth=1,
                            embed_dim=24, num_heads=2).eval()  # pre-logits 24 wide, ImageNet-style mean/std
    student = _deit(classes) if kind.startswith('token') else timm.create_model('resnet8', num_classes=classes)
    theirs, ours = copy.deepcopy(student), student
    ce = nn.CrossEntropyLoss()
    if kind == 'logit':
        timm_task = LogitDistillationTask(theirs, vit, criterion=ce, temperature=3.0, verbose=False, **weights)
        task = DistillationTask(ours, vit, method='kd', temperature=3.0, criterion=ce, **weights)
    elif kind == 'feature':  # resnet8's 64-wide pre-logits onto the teacher's 24: a learned projection
        timm_task = FeatureDistillationTask(theirs, vit, criterion=ce, verbose=False, **weights)
        task = DistillationTask(ours, vit, method='feature', criterion=ce, **weights)
        task.distiller.projection.load_state_dict(timm_task.trainable_module.projection.state_dict())
    else:
        distill_type = kind.split('-')[1]
        timm_task = TokenDistillationTask(theirs, vit, criterion=ce, distill_type=distill_type, temperature=3.0,
                                          verbose=False, **weights)
        task = DistillationTask(ours, vit, method='token', method_kwargs=dict(distill_type=distill_type),
                                temperature=3.0, criterion=ce, **weights)
    assert timm_task.teacher.normalize_input(torch.ones(1, 3, 1, 1), timm_task.student_mean, timm_task.student_std
                                             ).ne(1).all() and task._renormalize  # both re-normalize for the teacher
    timm_keys = ['loss', 'task_loss', 'distill_loss' if kind.startswith('token') else 'kd_loss']
    batches = _batches(classes)
    expect = _run(timm_task, timm_task.trainable_module.parameters(), batches, timm_keys)
    got = _run(task, list(ours.parameters()) + list(task.distiller.parameters()), batches,
               ['loss', 'task_loss', 'kd_loss'])
    assert got == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert expect[0] != pytest.approx(expect[-3])  # the steps changed the student (first vs last loss)
    for (name, p), q in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def _learns(task, batches, adam: bool, steps=30):
    params = list(task.trainable_module.parameters()) + list(task.distiller.parameters())
    # the ViT student learns with Adam, as DeiT's recipe (with SGD it barely moves in 30 steps)
    opt = torch.optim.Adam(params, lr=0.01) if adam else torch.optim.SGD(params, lr=0.05, momentum=0.9)
    task.train()
    losses = []
    for step in range(steps):
        out = task(*batches[step % len(batches)])
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        losses.append(out['loss'].item())
        assert out['mixed_loss'].item() > 0
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-6:]) < 0.8 * sum(losses[:6]), losses


@pytest.mark.parametrize('method, view', [('feature', dict(cutmix_alpha=1.0)), ('feature', dict(pick='kld')),
                                          ('token', dict(cutmix_alpha=1.0)), ('token', dict(pick='t_ent'))])
def test_feature_and_token_learn_with_teacher_labelled_views(method, view, data, teacher):
    student = _deit(5, img_size=8, patch_size=2) if method == 'token' else tiny_net(8, seed=2)
    if method == 'feature':  # the tiny net is a plain nn.Sequential: give it timm's head API
        student, teacher = _Headed(student), _Headed(teacher)
    task = DistillationTask(student, teacher, mixup=DistillMixup(seed=0, **view), method=method,
                            task_loss_weight=1.0, distill_loss_weight=1.0)
    _learns(task, data, adam=method == 'token')


class _Headed(nn.Module):
    """A tiny_net with timm's forward_features / forward_head (what feature distillation reads)."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.body, self.fc = net[:-1], net[-1]
        self.num_classes, self.num_features = net.num_classes, self.fc.in_features

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, x, pre_logits: bool = False):
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_single_weight_flags_follow_timms_rule():
    def weights(*argv):
        args, _ = parse_args(['--model', 'resnet8', '--kd-model-name', 'resnet8', *argv])
        return resolve_loss_weights(args)
    for kind in ('feature', 'token'):
        assert weights('--kd-distill-type', kind) == (1.0, 1.0)  # timm's defaults
        assert weights('--kd-distill-type', kind, '--task-loss-weight', '0.25') == (0.25, 0.75)  # complementary
        assert weights('--kd-distill-type', kind, '--distill-loss-weight', '3') == (1.0, 3.0)  # independent
    assert weights('--kd-distill-type', 'logit', '--task-loss-weight', '0.25') == (0.25, 0.75)
    assert weights('--kd-distill-type', 'logit') == (0.1, 0.9)  # our KD's published weights (timm: 1, 1)


# ------------------------------------------------------------------------------------- train_kd.py, both spellings

RUN = ['--dataset', 'synthetic/10x16', '--train-num-samples', '48', '--val-num-samples', '16', '-b', '8',
       '--workers', '0', '--epochs', '2', '--lr', '0.05', '--warmup-epochs', '0', '--seed', '5', '--log-interval', '3']
# (timm's spelling, ours) of one run: the same teacher, method and weights; our views added to both
SPELLINGS = {
    'logit': (['--kd-distill-type', 'logit', '--task-loss-weight', '0.1', '--distill-loss-weight', '0.9',
               '--kd-temperature', '4', '--kd-loss-type', 'kl'],
              ['--kd-alpha', '0.9']),
    'feature': (['--kd-distill-type', 'feature', '--task-loss-weight', '0.5', '--kd-student-feature-dim', '64',
                 '--kd-teacher-feature-dim', '64'],
                ['--distill', 'feature', '--kd-alpha', '0.5']),
    'token': (['--kd-distill-type', 'token', '--kd-token-distill-type', 'hard', '--task-loss-weight', '0.5'],
              ['--distill', 'token', '--kd-token-distill-type', 'hard', '--kd-alpha', '0.5']),
}
VIEWS = {'logit': ['--tl-cutmix', '--pick', 'kld'], 'feature': ['--tl-cutmix'],
         'token': ['--tl-cutmix', '--pick', 'kld']}


@pytest.mark.parametrize('kind', list(SPELLINGS))
def test_timms_flags_and_ours_make_the_same_run(kind, tmp_path, teacher_ckpt):
    student = ['--model', DEIT, '--model-kwargs', *(f'{k}={v}' for k, v in DEIT_KWARGS.items())] \
        if kind == 'token' else ['--model', 'resnet8']
    timm_flags, our_flags = SPELLINGS[kind]
    runs = {}
    for name, teacher_flag, flags in (('timm', '--kd-model-name', timm_flags), ('ours', '--teacher', our_flags)):
        res = main(RUN + student + [teacher_flag, 'resnet8', '--teacher-checkpoint', teacher_ckpt, *flags, *VIEWS[kind],
                                    '--output', str(tmp_path), '--experiment', name])
        assert res['finished']
        runs[name] = (res, _rows(res['run_dir']), Path(res['run_dir']))
    (res_t, rows_t, dir_t), (res_o, rows_o, dir_o) = runs['timm'], runs['ours']
    assert rows_t == rows_o  # every loss and metric, every epoch
    assert all(float(r['train_mixed_loss']) > 0 and math.isfinite(float(r['train_loss'])) for r in rows_t)
    method = TIMM_DISTILL_TYPES[kind]
    for res, run_dir in ((res_t, dir_t), (res_o, dir_o)):
        assert res['distill']['method'] == method and res['teacher'] == 'resnet8'
        args = (run_dir / 'args.yaml').read_text()  # one setting, both spellings recorded
        assert f'kd_distill_type: {kind}' in args and f'distill: {method}' in args and 'kd_model_name: resnet8' in args
    widths = {k: res_t['distill'].pop(k) for k in ('student_feature_dim', 'teacher_feature_dim')
              if k in res_o['distill']}
    assert all(res_o['distill'].pop(k) is None and v == 64 for k, v in widths.items())  # given in timm's spelling only
    for k, v in res_t['distill'].items():  # --kd-alpha 0.9 leaves the CE 1 - 0.9, not quite 0.1
        assert v == (pytest.approx(res_o['distill'][k]) if isinstance(v, float) else res_o['distill'][k]), k
    sd_t = torch.load(dir_t / 'last.pth.tar', weights_only=True)
    sd_o = torch.load(dir_o / 'last.pth.tar', weights_only=True)
    for k, v in sd_t['state_dict'].items():
        assert torch.equal(v, sd_o['state_dict'][k]), k


def test_help_shows_both_spellings():
    text = ' '.join(build_parser().format_help().split()) + ' '  # argparse wraps lines at any width
    for flag in ('--kd-model-name', '--teacher', '--kd-distill-type', '--distill', '--kd-temperature',
                 '--distill-loss-weight', '--task-loss-weight', '--kd-student-feature-dim', '--kd-teacher-feature-dim',
                 '--kd-token-distill-type', '--kd-loss-type', '--teacher-input-size'):
        assert f' {flag} ' in text, flag
    assert "timm's name for --teacher" in text and 'logit = --distill kd, feature = --distill feature' in text


# ------------------------------------------------------------------------------------- mistakes

@pytest.mark.parametrize('argv, phrase', [
    (['--kd-distill-type', 'token'], 'needs a student with a distillation token'),
    (['--teacher', 'resnet14'], '--kd-model-name resnet8 (timm\'s name for --teacher resnet8) and --teacher resnet14 '
                                'name two different teachers'),
    (['--kd-distill-type', 'logit', '--distill', 'dkd'], 'name two different methods'),
    (['--kd-distill-type', 'feature', '--kd-student-feature-dim', '32'],
     "--kd-student-feature-dim) 32 does not match the student's pre-logits width 64"),
    (['--kd-distill-type', 'feature', '--kd-teacher-feature-dim', '0'], '--kd-teacher-feature-dim must be >= 1'),
    (['--kd-distill-type', 'feature', '--tl-cutmix', '--view-loss', 'method'], 'is not a logit method'),
    (['--kd-token-distill-type', 'hard'], '--kd-token-distill-type is a flag of --distill token'),
    (['--teacher-input-size', '4'], '--teacher-input-size must be an image size of at least 8 px'),
    (['--teacher-input-size', '3', '32', '32'], '--teacher-input-size takes N or H W'),
    (['--kd-loss-type', 'mse'], "invalid choice: 'mse'"),
])
def test_bad_combinations_are_one_sentence_before_training(argv, phrase, tmp_path, teacher_ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        main(RUN + ['--model', 'resnet8', '--kd-model-name', 'resnet8', '--teacher-checkpoint', teacher_ckpt, *argv,
                    '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and phrase in err and err.count('\n') == 0, err
    assert not (tmp_path / 'out').exists()  # no run folder: nothing trained


def test_timm_names_without_a_teacher_are_refused(capsys):
    for argv, phrase in ((['--kd-distill-type', 'feature'], '--distill feature needs a teacher'),
                         (['--teacher-input-size', '32'], '--teacher-input-size needs a teacher')):
        with pytest.raises(SystemExit) as e:
            main(RUN + ['--model', 'resnet8', *argv])
        assert e.value.code == 2 and phrase in capsys.readouterr().err


def test_the_spelling_given_on_resume_is_the_runs_own(tmp_path, teacher_ckpt):
    """A run started with --teacher resumes with --kd-model-name naming the same teacher (one setting)."""
    first = main(RUN + ['--model', 'resnet8', '--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt,
                        '--epochs', '1', '--output', str(tmp_path), '--experiment', 'run'])
    res = main(['--resume', first['run_dir'], '--kd-model-name', 'resnet8', '--epochs', '2'])
    assert res['finished'] and res['last_epoch'] == 1
    assert json.loads((Path(res['run_dir']) / 'results.json').read_text())['teacher'] == 'resnet8'
