"""Distillation losses and DistillationTask: hand-computed values and independently computed picks."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.task import LogitDistillationTask

from timm_kd import DistillMixup, DistillationTask
from timm_kd.data.mixup import MixedViews
from timm_kd.distill import entropy, frozen_bn_stats, kd_loss, per_sample_kl


COVERS = ('DistillationTask.student', 'DistillationTask.teacher', 'DistillationTask.mixup',
          'DistillationTask.temperature', 'DistillationTask.task_loss_weight',
          'DistillationTask.distill_loss_weight', 'DistillationTask.mixed_kd_weight',
          'DistillationTask.teacher_pretrained_path', 'DistillationTask.diagnostics')

pytestmark = pytest.mark.usefixtures('one_torch_thread')



def tiny_net(width=8, num_classes=5, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    net.num_classes = num_classes
    return net


class Recorder:
    """Forward hook that records every input batch a module sees."""

    def __init__(self, module):
        self.inputs = []
        module.register_forward_hook(lambda m, i, o: self.inputs.append(i[0].detach().clone()))


def _data(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 5, (b,), generator=g)


def _row_ids(rows, pool):
    """Index in pool of each row (rows are exact copies of pool rows)."""
    ids = []
    for r in rows:
        match = [i for i in range(len(pool)) if torch.equal(pool[i], r)]
        assert len(match) == 1
        ids.append(match[0])
    return ids


# ---------------- losses ----------------

def test_losses_hand_computed():
    # teacher p = softmax((2 ln 3, 0) / 2) = (3/4, 1/4); student (0, 0) -> (1/2, 1/2); T = 2
    t = torch.tensor([[2 * math.log(3), 0.], [1., 1.]])
    s = torch.tensor([[0., 0.], [0., 0.]])
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    torch.testing.assert_close(per_sample_kl(s, t, 2.), torch.tensor([kl0, 0.]))
    torch.testing.assert_close(kd_loss(s, t, 2.), torch.tensor(4 * (kl0 + 0.) / 2))
    torch.testing.assert_close(
        entropy(t[:1], 2.), torch.tensor([-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]))
    torch.testing.assert_close(entropy(s), torch.tensor([math.log(2)] * 2))


def test_kd_loss_is_timm_batchmean_t2():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    ref = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction='sum') * 16 / 6
    torch.testing.assert_close(kd_loss(s, t, 4.), ref)
    torch.testing.assert_close(per_sample_kl(s, t, 4.).mean() * 16, ref)
    assert kd_loss(s.bfloat16(), t.bfloat16(), 4.).dtype == torch.float32


# ---------------- the task: exact values ----------------

class Lin(nn.Module):
    """logits = W · flatten(x): hand-computable."""

    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
        self.num_classes = weight.shape[0]

    def forward(self, x):
        return self.fc(x.flatten(1))


def _softmax(z, temp):
    e = [math.exp(v / temp) for v in z]
    return [v / sum(e) for v in e]


def _kl(zs, zt, temp):
    ps, pt = _softmax(zs, temp), _softmax(zt, temp)
    return sum(b * math.log(b / a) for a, b in zip(ps, pt))


def _ce(z, y):
    return -math.log(_softmax(z, 1.)[y])


def test_task_loss_hand_computed():
    # images (1, 1, 2) -> student logits = pixels, teacher logits = 2 * pixels
    student, teacher = Lin(torch.eye(2)), Lin(2 * torch.eye(2))
    x = torch.tensor([[[[1., 0.]]], [[[0., 2.]]]])
    y = torch.tensor([0, 0])
    x_mix = torch.tensor([[[[1., 2.]]], [[[0.5, 1.]]]])  # any view: the loss only sees pixels
    views = MixedViews(
        x=x, target=y, x_mix=x_mix, source=torch.tensor([0, 1]), partner=torch.tensor([1, 0]),
        lam=torch.tensor([0.5, 0.5]), mixed=torch.tensor([True, True]))
    temp, g, a, w = 2., 0.1, 0.9, 0.5
    task = DistillationTask(student, teacher, temperature=temp, task_loss_weight=g, distill_loss_weight=a,
                            mixed_kd_weight=w)
    out = task(x, y, views=views)
    px = [[1., 0.], [0., 2.]]
    pm = [[1., 2.], [0.5, 1.]]
    ce = (_ce(px[0], 0) + _ce(px[1], 0)) / 2
    kd = temp ** 2 * sum(_kl(p, [2 * v for v in p], temp) for p in px) / 2
    mixed = temp ** 2 * sum(_kl(p, [2 * v for v in p], temp) for p in pm) / 2
    assert math.isclose(out['task_loss'].item(), ce, rel_tol=1e-5)
    assert math.isclose(out['kd_loss'].item(), kd, rel_tol=1e-5)
    assert math.isclose(out['mixed_loss'].item(), mixed, rel_tol=1e-5)
    assert math.isclose(out['loss'].item(), g * ce + a * kd + a * w * mixed, rel_tol=1e-5)
    # teacher argmax of the views: [1, 1]; larger-area source label (lam 0.5 -> source): [0, 0]
    assert out['label_disagreement'].item() == 1.0


def test_hard_label_baseline_hand_computed():
    student, teacher = Lin(torch.eye(3)), Lin(torch.eye(3))
    x = torch.zeros(2, 1, 1, 3)
    y = torch.tensor([0, 2])
    x_mix = torch.tensor([[[[1., 0., 0.]]], [[[0., 3., 1.]]]])
    lam = torch.tensor([0.75, 0.25])
    partner = torch.tensor([1, 0])
    soft = torch.zeros(2, 3)
    soft[0, 0], soft[0, 2], soft[1, 2], soft[1, 0] = 0.75, 0.25, 0.25, 0.75
    views = MixedViews(x=x, target=y, x_mix=x_mix, source=torch.arange(2), partner=partner, lam=lam,
                       mixed=torch.ones(2, dtype=torch.bool), soft_target=soft)
    out = DistillationTask(student, teacher)(x, y, views=views)
    z = [[1., 0., 0.], [0., 3., 1.]]
    expect = (0.75 * _ce(z[0], 0) + 0.25 * _ce(z[0], 2) + 0.25 * _ce(z[1], 2) + 0.75 * _ce(z[1], 0)) / 2
    assert math.isclose(out['mixed_loss'].item(), expect, rel_tol=1e-5)
    assert math.isclose(out['loss'].item(), 0.1 * out['task_loss'].item() + 0.9 * out['kd_loss'].item()
                        + 0.9 * expect, rel_tol=1e-5)
    assert 'label_disagreement' not in out


def test_plain_kd_equals_timm_logit_distillation():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    for m in (student, teacher):
        m.pretrained_cfg = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        m.in_chans = 3
    x, y = _data()
    ours = DistillationTask(student, teacher)
    ref = LogitDistillationTask(copy.deepcopy(student), copy.deepcopy(teacher), task_loss_weight=0.1,
                                distill_loss_weight=0.9, temperature=4.0, verbose=False)
    a, b = ours(x, y), ref(x, y)
    for k in ('loss', 'task_loss', 'kd_loss', 'output'):
        torch.testing.assert_close(a[k], b[k])
    assert a['mixed_loss'].item() == 0
    assert isinstance(ours, LogitDistillationTask)


# ---------------- the task: views, picks, BatchNorm, teacher ----------------

def test_both_views_reach_the_loss():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    s_rec, t_rec = Recorder(student), Recorder(teacher)
    x, y = _data()
    mix = DistillMixup(seed=0)
    task = DistillationTask(student, teacher, mixup=mix)
    out = task(x, y)
    views = DistillMixup(seed=0)(x, y)
    assert len(s_rec.inputs) == 2
    assert torch.equal(s_rec.inputs[0], x) and torch.equal(s_rec.inputs[1], views.x_mix)
    assert len(t_rec.inputs) == 1 and torch.equal(t_rec.inputs[0], torch.cat([x, views.x_mix]))
    assert out['mixed_loss'].item() > 0
    # the mixed term is additive with weight alpha * w, and it carries gradient to the student
    task0 = DistillationTask(student, teacher, mixup=DistillMixup(seed=0), mixed_kd_weight=0.)
    out0 = task0(x, y)
    torch.testing.assert_close(out['loss'] - out0['loss'], 0.9 * out['mixed_loss'])
    student.zero_grad()
    (out['loss'] - out0['loss'].detach()).backward()
    g_mix = student[0].weight.grad.clone()
    student.zero_grad()
    task0(x, y)['loss'].backward()
    assert not torch.allclose(g_mix, student[0].weight.grad)


@pytest.mark.parametrize('crit', ['kld', 't_ent', 's_ent'])
def test_picked_rows_are_topk_of_independent_score(crit):
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    x, y = _data()
    ref_student = copy.deepcopy(student).train()
    views = DistillMixup(pick=crit, n_candidates=3, pick_ratio=0.25, seed=0)(x, y)
    pool = views.x_mix
    k = views.num_pick
    assert k == 6
    with torch.no_grad():
        t = teacher.eval()(pool)
        s = ref_student(pool)  # train-mode BN: batch statistics, as the authors score
    lt, ls = F.log_softmax(t / 4, -1), F.log_softmax(s / 4, -1)
    d = (lt.exp() * (lt - ls)).sum(-1)
    if crit == 'kld':
        score = d
    else:
        p = F.softmax(t if crit == 't_ent' else s, -1)
        score = -(p * p.log()).sum(-1)
    expect = set(torch.argsort(score, descending=True)[:k].tolist())

    rec = Recorder(student)
    task = DistillationTask(student, teacher)
    out = task(x, y, views=views)
    n_student = 3 if crit in ('kld', 's_ent') else 2
    assert len(rec.inputs) == n_student
    picked = rec.inputs[-1]
    assert picked.shape[0] == k
    assert set(_row_ids(picked, pool)) == expect
    assert out['picked_share'].item() == pytest.approx(k / pool.shape[0])
    if crit in ('kld', 's_ent'):
        ids = sorted(expect)
        assert out['kl_ratio'].item() == pytest.approx((d[ids].mean() / d.mean()).item(), rel=1e-3)
        if crit == 'kld':
            assert out['kl_ratio'].item() >= 1
    else:
        assert 'kl_ratio' not in out
    covered = {i % 8 for i in expect}
    assert out['pick_coverage'].item() == pytest.approx(len(covered) / 8)


def test_random_pick_uses_the_drawn_rows_and_reuses_teacher_logits():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    x, y = _data()
    views = DistillMixup(pick='random', seed=0)(x, y)
    s_rec, t_rec = Recorder(student), Recorder(teacher)
    DistillationTask(student, teacher)(x, y, views=views)
    assert len(t_rec.inputs) == 1 and t_rec.inputs[0].shape[0] == 8 + 8
    assert torch.equal(s_rec.inputs[-1], views.x_mix[views.pick_index])


def test_pick_teacher_runs_once_and_logits_are_reused():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    x, y = _data()
    t_rec, s_rec = Recorder(teacher), Recorder(student)
    out = DistillationTask(student, teacher, mixup=DistillMixup(pick='kld', seed=0))(x, y)
    assert len(t_rec.inputs) == 1 and t_rec.inputs[0].shape[0] == 8 + 16  # x and the pool, nothing more
    # the reused logits give the same loss as a fresh teacher pass on the picked rows
    picked = s_rec.inputs[-1]
    with torch.no_grad():
        expect = kd_loss(student(picked), teacher(picked), 4.)
    torch.testing.assert_close(out['mixed_loss'], expect)


def test_scoring_pass_leaves_batchnorm_running_stats_unchanged():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    x, y = _data()
    ref = copy.deepcopy(student).train()
    student.train()
    rec = Recorder(student)
    DistillationTask(student, teacher, mixup=DistillMixup(pick='kld', seed=0))(x, y)
    assert len(rec.inputs) == 3  # x, pool (scoring), picked
    # reference: only the two grad forwards (x, picked) update the statistics, in this order
    with torch.no_grad():
        ref(rec.inputs[0])
        ref(rec.inputs[2])
    for (name, a), b in zip(student.named_buffers(), ref.buffers()):
        assert torch.equal(a, b), name
    assert student[1].num_batches_tracked.item() == 2


def test_frozen_bn_stats_restores_on_error():
    net = tiny_net()
    bns = [net[1], net[4]]
    with pytest.raises(RuntimeError):
        with frozen_bn_stats(bns):
            assert not net[1].track_running_stats
            raise RuntimeError('boom')
    assert all(m.track_running_stats for m in bns)


def test_teacher_frozen_eval_and_not_trainable():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    t_state = copy.deepcopy(teacher.state_dict())
    task = DistillationTask(student, teacher, mixup=DistillMixup(pick='kld', seed=0))
    task.train()
    assert not teacher.training and task.trainable_module is student
    teacher.train()  # a careless user
    x, y = _data()
    task(x, y)['loss'].backward()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_state[k]), k
    ids = {id(p) for p in task.get_trainable_module().parameters()}
    assert not ids & {id(p) for p in teacher.parameters()}
    assert set(task.get_checkpoint_state()['state_dict']) == set(student.state_dict())


def test_label_disagreement_independent():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    x, y = _data(b=16)
    views = DistillMixup(mode='elem', mix_fraction=0.5, seed=2)(x, y)
    out = DistillationTask(student, teacher)(x, y, views=views)
    with torch.no_grad():
        t = teacher.eval()(views.x_mix).argmax(-1)
    n = d = 0
    for i in range(16):
        if views.mixed[i]:
            major = y[i] if views.lam[i] >= 0.5 else y[views.partner[i]]
            n += 1
            d += int(t[i] != major)
    assert n == 8
    assert out['label_disagreement'].item() == pytest.approx(d / n)


def test_teacher_renormalized_only_when_mean_std_differ():
    x, y = _data()
    for t_mean, renorm in (((0.5, 0.5, 0.5), False), ((0.4, 0.3, 0.2), True)):
        student, teacher = tiny_net(), tiny_net(16, seed=1)
        student.pretrained_cfg = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        teacher.pretrained_cfg = dict(mean=t_mean, std=(0.2, 0.2, 0.2) if renorm else (0.25,) * 3)
        rec = Recorder(teacher)
        DistillationTask(student, teacher)(x, y)
        if renorm:
            m, s = torch.tensor(t_mean).view(1, 3, 1, 1), 0.2
            torch.testing.assert_close(rec.inputs[0], (x * 0.25 + 0.5 - m) / s)
        else:
            assert torch.equal(rec.inputs[0], x)
    # no cfg on one side: no re-normalization (plain modules carry no mean/std)
    rec = Recorder(teacher := tiny_net(16, seed=1))
    DistillationTask(tiny_net(), teacher)(x, y)
    assert torch.equal(rec.inputs[0], x)


def test_diagnostics_are_tensors_without_grad():
    x, y = _data()
    out = DistillationTask(tiny_net(), tiny_net(16, seed=1), mixup=DistillMixup(pick='kld', seed=0))(x, y)
    assert set(out) == {'loss', 'output', 'task_loss', 'kd_loss', 'mixed_loss', 'kl_ratio', 'picked_share',
                        'pick_coverage', 'label_disagreement', 'teacher_output', 'teacher_view_output'}
    for k, v in out.items():
        assert isinstance(v, torch.Tensor), k
    for k in ('kl_ratio', 'picked_share', 'pick_coverage', 'label_disagreement', 'teacher_output',
              'teacher_view_output'):
        assert not out[k].requires_grad


def test_diagnostics_off_same_loss():
    x, y = _data()
    outs = [DistillationTask(tiny_net(), tiny_net(16, seed=1), mixup=DistillMixup(pick='kld', seed=0),
                             diagnostics=d)(x, y) for d in (True, False)]
    assert set(outs[1]) == {'loss', 'output', 'task_loss', 'kd_loss', 'mixed_loss', 'teacher_output',
                            'teacher_view_output'}
    assert torch.equal(outs[0]['loss'], outs[1]['loss'])


def test_seeded_task_step_reproducible():
    x, y = _data()
    losses = []
    for _ in range(2):
        task = DistillationTask(tiny_net(), tiny_net(16, seed=1), mixup=DistillMixup(pick='kld', seed=5))
        losses.append(task(x, y)['loss'].item())
    assert losses[0] == losses[1]


def test_task_construction_errors():
    with pytest.raises(ValueError, match='classes'):
        DistillationTask(tiny_net(num_classes=5), tiny_net(num_classes=7))
    with pytest.raises(TypeError, match='DistillMixup'):
        DistillationTask(tiny_net(), tiny_net(), mixup=object())
    with pytest.raises(ValueError, match='num_classes=5'):
        DistillationTask(tiny_net(), tiny_net(), mixup=DistillMixup(label_mode='hard', num_classes=100))
    with pytest.raises(ValueError, match='temperature'):
        DistillationTask(tiny_net(), tiny_net(), temperature=0)


def test_compiled_student_scoring_pass_keeps_running_stats():
    # dynamo must not reuse the stats-updating graph for the scoring pass
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    ref = copy.deepcopy(student).train()
    x, y = _data()
    task = DistillationTask(student, teacher, mixup=DistillMixup(pick='kld', seed=0))
    task.compile(backend='eager')  # dynamo's guards are what matter here
    task.train()
    rec = Recorder(student)
    task(x, y)['loss'].backward()
    assert student[1].num_batches_tracked.item() == 2
    with torch.no_grad():
        ref(rec.inputs[0])
        ref(rec.inputs[2])
    torch.testing.assert_close(student[1].running_mean, ref[1].running_mean)
    torch.testing.assert_close(student[4].running_var, ref[4].running_var)


def test_teacher_by_name_uses_timm_distillation_teacher(tmp_path):
    import timm
    teacher = timm.create_model('resnet8', num_classes=10)
    path = tmp_path / 'teacher.pth'
    torch.save(teacher.state_dict(), path)
    task = DistillationTask(timm.create_model('resnet8', num_classes=10), 'resnet8', teacher_pretrained_path=str(path))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(task.teacher_logits(x), teacher.eval()(x))
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())


# ---------------------------------------------------------------- order of the passes, outputs, extras

def _old_order_step(student, teacher, x, y, views, temp=4.0, g=0.1, a=0.9, w=1.0):
    """The step as it was before the teacher moved first: student on x, then the teacher, then the views."""
    output = student(x)
    loss = g * F.cross_entropy(output, y)
    if views is None:
        with torch.no_grad():
            t_x = teacher(x)
        return loss + a * kd_loss(output, t_x, temp)
    with torch.no_grad():
        t_all = teacher(torch.cat([x, views.x_mix]))
    t_x, t_view = t_all[:x.shape[0]], t_all[x.shape[0]:]
    x_view = views.x_mix
    if views.pick is not None:
        with torch.no_grad(), frozen_bn_stats([m for m in student.modules() if isinstance(m, nn.BatchNorm2d)]):
            s_pool = student(views.x_mix)
        rows = torch.topk(per_sample_kl(s_pool, t_view, temp), views.num_pick, sorted=False).indices
        x_view, t_view = x_view[rows], t_view[rows]
    return loss + a * kd_loss(output, t_x, temp) + a * w * kd_loss(student(x_view), t_view, temp)


@pytest.mark.parametrize('mix', [None, dict(), dict(pick='kld')])
def test_teacher_first_leaves_loss_gradients_and_bn_stats_unchanged(mix):
    x, y = _data()
    views = DistillMixup(seed=0, **mix)(x, y) if mix is not None else None
    ours, old = tiny_net(), tiny_net()
    teacher = tiny_net(16, seed=1).eval()
    t_rec = Recorder(teacher)
    s_rec = Recorder(ours)
    task = DistillationTask(ours, teacher)
    task.train()
    order = []
    teacher.register_forward_pre_hook(lambda m, i: order.append('teacher'))
    ours.register_forward_pre_hook(lambda m, i: order.append('student'))
    loss = task(x, y, views=views)['loss']
    assert order[0] == 'teacher' and order.count('teacher') == 1 and len(t_rec.inputs) == 1
    assert torch.equal(s_rec.inputs[0], x)
    ref = _old_order_step(old.train(), teacher, x, y, views)
    assert torch.equal(loss, ref)
    loss.backward()
    ref.backward()
    for (name, p), q in zip(ours.named_parameters(), old.parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(ours.named_buffers(), old.buffers()):
        assert torch.equal(b, c), name


def test_teacher_outputs_and_view_input_as_a_pool_of_views():
    student, teacher = tiny_net(), tiny_net(16, seed=1)
    x, y = _data()
    x2 = torch.flip(x, dims=(3,))  # a per-sample augmented second view
    rec = Recorder(student)
    out = DistillationTask(student, teacher)(x, y, view_input=x2)
    with torch.no_grad():
        t_x, t_2 = teacher.eval()(x), teacher(x2)
    torch.testing.assert_close(out['teacher_output'], t_x)
    torch.testing.assert_close(out['teacher_view_output'], t_2)
    assert torch.equal(rec.inputs[-1], x2)
    torch.testing.assert_close(out['mixed_loss'], kd_loss(student(x2), t_2, 4.))
    assert out['label_disagreement'].item() == 0  # nothing mixed
    # with a mixer, the second view is what gets mixed (and picked)
    mixed = DistillationTask(student, teacher, mixup=DistillMixup(pick='kld', seed=4))(x, y, view_input=x2)
    pool = DistillMixup(pick='kld', seed=4)(x2, y).x_mix
    assert set(_row_ids(rec.inputs[-1], pool)) and mixed['teacher_view_output'].shape[0] == 8


def test_method_sees_both_models_index_and_epoch():
    from timm_kd.distill import Distiller

    class Probe(Distiller):
        def forward(self, student, teacher, target, index=None):
            self.seen = (student.logits, teacher.logits, target, index)
            return {'probe_loss': student.logits.sum() * 0 + 1.5}

    student, teacher = tiny_net(), tiny_net(16, seed=1)
    probe = Probe(student, teacher, num_classes=5, temperature=4.)
    task = DistillationTask(student, teacher, method=probe)
    x, y = _data()
    index = torch.arange(8) + 100
    task.set_epoch(3)
    out = task(x, y, index=index)
    assert probe.epoch == 3 and task.distiller is probe
    s, t, tgt, idx = probe.seen
    assert torch.equal(s, out['output']) and torch.equal(t, out['teacher_output'])
    assert torch.equal(tgt, y) and torch.equal(idx, index)
    assert out['probe_loss'].item() == 1.5
    base = DistillationTask(student, teacher)(x, y)
    torch.testing.assert_close(out['loss'], base['loss'] + 1.5)
