"""Logit distillation methods (KD, logit standardization, DKD, DIST), the methods / pick-criteria tables
and their use from train_kd.py.

Every loss is checked against a reference written here from the paper's equations (probabilities, not
log space; float64), its gradients against the student / teacher split, and each method with every
teacher-labelled view trains a tiny pair until its loss falls.
"""
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_kd import DistillMixup, DistillationTask
from timm_kd.distill import METHODS, PICK_CRITERIA, Distiller, create_method
from test_distill_train import data, teacher, tiny_net, train_steps  # noqa: F401  (tiny pair, data: fixtures)
from timm_kd.train.args import PICK_CHOICES, UsageError, build_parser, parse_args, resolve_loss_weights, validate_args

COVERS = ('--distill', '--view-loss', '--logit-std', '--logit-std-temp', '--dkd-alpha', '--dkd-beta', '--dkd-warmup',
          '--dist-beta', '--dist-gamma', 'DistillationTask.method', 'DistillationTask.method_kwargs',
          'DistillationTask.view_loss')
# token distillation needs a student with a distillation token: tests/test_timm_distill.py trains it with the views
LOGIT_METHODS = sorted(n for n, c in METHODS.items() if c.logit_method and n != 'token')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _logits(b=6, c=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, c, generator=g, dtype=torch.float64),
            scale * torch.randn(b, c, generator=g, dtype=torch.float64),
            torch.randint(0, c, (b,), generator=g))


def _kl(p, q):
    """KL(p || q) of probability rows."""
    return (p * (p / q).log()).sum(-1)


# ---------------------------------------------------------------- references from the papers' equations

def ref_kd(s, t, temp):
    return temp ** 2 * _kl(torch.softmax(t / temp, -1), torch.softmax(s / temp, -1)).mean()


def ref_zscore(z):
    mean = z.mean(-1, keepdim=True)
    std = ((z - mean) ** 2).sum(-1, keepdim=True).div(z.shape[-1] - 1).sqrt()  # sample std (Bessel)
    return (z - mean) / (std + 1e-7)


def ref_dkd(s, t, y, alpha, beta, temp):
    """Zhao et al. Eq. (1)-(6): b = [p_t, 1 − p_t], p̂ = p over the other classes / (1 − p_t)."""
    ps, pt = torch.softmax(s / temp, -1), torch.softmax(t / temp, -1)
    total = 0.
    for i in range(s.shape[0]):
        g = int(y[i])
        others = [c for c in range(s.shape[1]) if c != g]
        bs = torch.stack([ps[i, g], 1 - ps[i, g]])
        bt = torch.stack([pt[i, g], 1 - pt[i, g]])
        qs, qt = ps[i, others] / (1 - ps[i, g]), pt[i, others] / (1 - pt[i, g])
        total = total + alpha * _kl(bt, bs) + beta * _kl(qt, qs)
    return temp ** 2 * total / s.shape[0]


def ref_dist(s, t, beta, gamma, temp):
    """Huang et al. Eq. (9)-(11): 1 − Pearson correlation over classes (per sample) and over samples."""
    ys, yt = torch.softmax(s / temp, -1), torch.softmax(t / temp, -1)

    def pearson(a, b):
        return torch.corrcoef(torch.stack([a, b]))[0, 1]
    inter = 1 - torch.stack([pearson(ys[i], yt[i]) for i in range(ys.shape[0])]).mean()
    intra = 1 - torch.stack([pearson(ys[:, c], yt[:, c]) for c in range(ys.shape[1])]).mean()
    return temp ** 2 * (beta * inter + gamma * intra)


def close(got, expect):
    """The losses compute in float32 (logits may come from autocast): compare to 1e-5."""
    torch.testing.assert_close(got.double(), expect.double(), rtol=1e-5, atol=1e-6)


def _method(name, **kw):
    return create_method(name, nn.Identity(), nn.Identity(), num_classes=7, temperature=kw.pop('temperature', 4.0),
                         **kw)


@pytest.mark.parametrize('temp', [1.0, 4.0])
def test_kd_and_logit_standardization_equal_references(temp):
    s, t, y = _logits()
    close(_method('kd', temperature=temp).logit_loss(s, t, y), ref_kd(s, t, temp))
    m = _method('kd', temperature=temp, logit_std=True, logit_std_temperature=2.0)
    close(m.logit_loss(s, t, y), ref_kd(ref_zscore(s), ref_zscore(t), 2.0))
    # standardization makes the loss blind to a per-sample shift and scale of either side
    close(m.logit_loss(3 * s + 5, t, y), m.logit_loss(s, t, y))


@pytest.mark.parametrize('alpha,beta,temp', [(1.0, 8.0, 4.0), (0.5, 0.5, 1.0), (2.0, 0.0, 2.0)])
def test_dkd_equals_reference(alpha, beta, temp):
    s, t, y = _logits(scale=4.0)
    m = _method('dkd', temperature=temp, alpha=alpha, beta=beta, warmup_epochs=0)
    close(m.logit_loss(s, t, y), ref_dkd(s, t, y, alpha, beta, temp))
    m_std = _method('dkd', temperature=temp, alpha=alpha, beta=beta, warmup_epochs=0, logit_std=True)
    close(m_std.logit_loss(s, t, y), ref_dkd(ref_zscore(s), ref_zscore(t), y, alpha, beta, 2.0))


def test_dkd_with_alpha_equal_beta_is_kd_minus_the_reweighting():
    # Zhao et al. Eq. (5): KD = TCKD + (1 − p_t^T) NCKD; with one class the decomposition is exact per sample
    s, t, y = _logits(b=1)
    kd = ref_kd(s, t, 3.0)
    tckd = ref_dkd(s, t, y, 1.0, 0.0, 3.0)
    nckd = ref_dkd(s, t, y, 0.0, 1.0, 3.0)
    pt = torch.softmax(t / 3.0, -1)[0, int(y[0])]
    torch.testing.assert_close(kd, tckd + (1 - pt) * nckd)


def test_dkd_warmup_is_linear_from_the_first_epoch():
    s, t, y = _logits()
    m = _method('dkd', warmup_epochs=20)
    full = ref_dkd(s, t, y, 1.0, 8.0, 4.0)
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)):
        m.set_epoch(epoch)
        close(m.logit_loss(s, t, y), factor * full)
    for bad in (F.one_hot(y, 7).double(), None):
        with pytest.raises(ValueError, match='class-index'):
            m.logit_loss(s, t, bad)


@pytest.mark.parametrize('beta,gamma,temp', [(2.0, 2.0, 4.0), (1.0, 1.0, 1.0), (0.0, 3.0, 2.0)])
def test_dist_equals_reference(beta, gamma, temp):
    s, t, _ = _logits(b=8, c=5)
    got = _method('dist', temperature=temp, beta=beta, gamma=gamma).logit_loss(s, t, None)
    close(got, ref_dist(s, t, beta, gamma, temp))


def test_method_errors():
    with pytest.raises(ValueError, match='Unknown distillation method'):
        _method('nope')
    with pytest.raises(TypeError, match='alpha'):
        _method('dist', alpha=1.0)
    with pytest.raises(ValueError):
        _method('dkd', beta=-1.0)
    with pytest.raises(ValueError, match='logit_std_temperature'):
        _method('kd', logit_std=True, logit_std_temperature=0.)


# ---------------------------------------------------------------- the task: gradients, views, training

VIEWS = {
    'none': None,
    'tl_mixup': dict(mixup_alpha=1.0, cutmix_alpha=0.),
    'tl_cutmix': dict(cutmix_alpha=1.0),
    'tl_cutmix_pick': dict(pick='kld'),
}


@pytest.mark.parametrize('name', LOGIT_METHODS)
def test_gradients_reach_the_student_only(name, data, teacher):
    teacher.zero_grad(set_to_none=True)  # the fixture trained it
    student = tiny_net(8, seed=2)
    x, y = data[0]
    task = DistillationTask(student, teacher, mixup=DistillMixup(pick='kld', seed=0), method=name,
                            view_loss='method')
    task.train()
    out = task(x, y)
    params = list(student.parameters())
    for term in ('kd_loss', 'mixed_loss'):  # the method on x and on the picked views: both reach every weight
        grads = torch.autograd.grad(out[term], params, retain_graph=True, allow_unused=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads), term
    out['loss'].backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(True for _ in task.distiller.parameters())  # logit methods train nothing of their own
    for k in ('teacher_output', 'teacher_view_output'):
        assert not out[k].requires_grad
    torch.testing.assert_close(out['teacher_output'], teacher(x))


@pytest.mark.parametrize('view', list(VIEWS))
@pytest.mark.parametrize('name', LOGIT_METHODS)
def test_every_logit_method_with_every_view_trains(name, view, data, teacher):
    kw = VIEWS[view]
    mix = DistillMixup(seed=0, **kw) if kw is not None else None
    method_kwargs = {'warmup_epochs': 1} if name == 'dkd' else None
    task = DistillationTask(tiny_net(8, seed=2), teacher, mixup=mix, method=name, method_kwargs=method_kwargs,
                            view_loss='method' if view == 'tl_cutmix_pick' else 'kl')
    outs = train_steps(task, data, 24, lr=0.02)
    assert all((out['mixed_loss'].item() > 0) == (kw is not None) for out in outs)
    losses = [out['loss'].item() for out in outs]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-6:]) < 0.8 * sum(losses[:6]), (name, view, losses)


def test_view_loss_method_applies_the_method_to_the_trained_views(data, teacher):
    x, y = data[0]
    views = DistillMixup(pick='kld', seed=3)(x, y)
    task = DistillationTask(tiny_net(8, seed=2), teacher, method='dkd', method_kwargs=dict(warmup_epochs=0),
                            view_loss='method')
    picked = []
    task.trainable_module.register_forward_hook(lambda m, i, o: picked.append((i[0], o)))
    out = task(x, y, views=views)
    x_view, s_view = picked[-1]
    rows = [next(j for j in range(views.pool_size) if torch.equal(views.x_mix[j], r)) for r in x_view]
    major = torch.stack([y[views.source[j]] if views.lam[j] >= 0.5 else y[views.partner[j]] for j in rows])
    expect = ref_dkd(s_view.double(), teacher(x_view).double(), major, 1.0, 8.0, 4.0)
    close(out['mixed_loss'], expect)
    torch.testing.assert_close(out['teacher_view_output'], teacher(x_view))


def test_task_rejects_view_loss_method_for_a_non_logit_method(teacher):
    class Relation(Distiller):
        pass
    with pytest.raises(ValueError, match='not a logit method'):
        DistillationTask(tiny_net(8, seed=2), teacher, method=Relation(None, None, num_classes=5, temperature=4.),
                         view_loss='method')
    with pytest.raises(ValueError, match='view_loss'):
        DistillationTask(tiny_net(8, seed=2), teacher, view_loss='ce')
    with pytest.raises(ValueError, match='method_kwargs'):
        DistillationTask(tiny_net(8, seed=2), teacher, method=_method('kd'), method_kwargs={'logit_std': True})


# ---------------------------------------------------------------- the tables and train_kd.py

def test_every_registered_method_and_pick_criterion_is_usable_from_train_kd_and_vice_versa():
    actions = {a.dest: a for a in build_parser()._actions}
    assert set(actions['distill'].choices) == set(METHODS)
    assert set(PICK_CHOICES) == set(PICK_CRITERIA) | {'none'} and set(actions['pick'].choices) == set(PICK_CHOICES)
    base = ['--model', 'resnet8', '--teacher', 'resnet8', '--dataset', 'synthetic/10x16']
    for name, cls in METHODS.items():
        args, explicit = parse_args(base + ['--distill', name])
        validate_args(args, explicit)
        gamma, alpha = resolve_loss_weights(args)
        assert (gamma, alpha) == cls.loss_weights
        # feature methods need models with intermediates (timm's API), CRD the size of its training set, token
        # distillation a student with a distillation token
        student, teacher = (timm.create_model('resnet8', num_classes=5), timm.create_model('resnet8', num_classes=5)) \
            if cls.needs_features else (tiny_net(8, seed=2), tiny_net(8, seed=1))
        if name == 'token':
            student = timm.create_model('deit_tiny_distilled_patch16_224', num_classes=5, img_size=8, patch_size=4,
                                        depth=1, embed_dim=8, num_heads=1)
        kwargs = dict(cls.kwargs_from_args(args), **(dict(num_samples=100, nce_k=10) if cls.needs_index else {}))
        task = DistillationTask(student, teacher, method=name, method_kwargs=kwargs)
        assert type(task.distiller) is cls
    for crit in PICK_CRITERIA:
        args, explicit = parse_args(base + ['--tl-cutmix', '--pick', crit])
        validate_args(args, explicit)
        assert DistillMixup(pick=crit).pick == crit


@pytest.mark.parametrize('argv,match', [
    (['--distill', 'kd', '--dkd-beta', '2'], 'flag of --distill dkd'),
    (['--distill', 'dist', '--logit-std'], '--logit-std works with'),
    (['--distill', 'dist', '--view-loss', 'method'], 'needs teacher-labelled views'),
    (['--distill', 'dkd', '--mixup', '0.2'], 'class labels'),
    (['--distill', 'dkd', '--logit-std-temp', '0'], 'must be > 0'),
])
def test_method_flag_mistakes_are_one_sentence(argv, match):
    args, explicit = parse_args(['--model', 'resnet8', '--teacher', 'resnet8'] + argv)
    with pytest.raises(UsageError, match=match):
        validate_args(args, explicit)


def test_weights_follow_the_method():
    def weights(*argv):
        args, _ = parse_args(['--model', 'resnet8', '--teacher', 'resnet8', *argv])
        return resolve_loss_weights(args)
    assert weights() == (0.1, 0.9)
    assert weights('--kd-alpha', '0.5') == (0.5, 0.5)
    assert weights('--logit-std') == (0.1, 9.0)
    assert weights('--distill', 'dkd') == (1.0, 1.0)
    assert weights('--distill', 'dkd', '--kd-alpha', '9') == (1.0, 9.0)
    assert weights('--distill', 'dist', '--task-loss-weight', '0.5') == (0.5, 1.0)


def test_unknown_method_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(['--model', 'resnet8', '--distill', 'nope'])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_train_kd_distill_dkd_end_to_end(tmp_path, monkeypatch):
    from timm_kd.distill.methods.dkd import DKD
    from timm_kd.train.main import main  # what train_kd.py and timm-kd-train run
    epochs = []  # the loop tells the method every epoch (DKD's warm-up)
    monkeypatch.setattr(DKD, 'set_epoch', lambda self, e: (epochs.append(e), Distiller.set_epoch(self, e)))
    torch.manual_seed(0)
    ckpt = tmp_path / 'teacher.pth'
    torch.save(timm.create_model('resnet8', num_classes=10).state_dict(), ckpt)
    res = main([
        '--model', 'resnet8', '--teacher', 'resnet8', '--teacher-checkpoint', str(ckpt), '--dataset', 'synthetic/10x16',
        '--train-num-samples', '32', '--val-num-samples', '16', '-b', '16', '--workers', '0', '--epochs', '2',
        '--warmup-epochs', '0', '--distill', 'dkd', '--dkd-beta', '2', '--dkd-warmup', '2', '--tl-cutmix',
        '--view-loss', 'method', '--output', str(tmp_path), '--experiment', 'dkd'])
    assert res['finished'] and epochs == [0, 1]
    run = Path(res['run_dir'])
    saved = json.loads((run / 'results.json').read_text())['distill']
    assert saved['method'] == 'dkd' and saved['beta'] == 2.0 and saved['warmup_epochs'] == 2
    assert saved['view_loss'] == 'method' and saved['task_loss_weight'] == 1.0
    args = (run / 'args.yaml').read_text()
    assert 'distill: dkd' in args and 'dkd_beta: 2.0' in args
