""" Feature and relation distillation methods (FitNet, AT, SP, CC, VID, PKT, CRD) and timm_kd.distill.features

Every loss is checked against a reference written here from the method's paper equations (loops and
closed forms, not our code), to 1e-5; the feature extraction against the models' plain forward.
"""
import itertools
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_kd  # noqa: F401  (registers the CIFAR models)
from timm_kd import DistillationTask, DistillMixup
from timm_kd.distill.features import forward_with_features, matched_level, matched_stages
from timm_kd.distill.methods import METHODS, ModelOutputs, create_method
from timm_kd.distill.methods.crd import draw_on_device, draw_on_host, sort_by_class
from timm_kd.train import build
from timm_kd.train.args import UsageError, parse_args, resolve_loss_weights, validate_args
from test_faults import _run_killed_at
from test_train_kd import BASE, _rows, _state

COVERS = (
    '--distill', '--fitnet-beta', '--hint-layer', '--at-beta', '--at-p', '--sp-beta', '--cc-beta', '--cc-feat-dim',
    '--vid-beta', '--pkt-beta', '--crd-beta', '--crd-feat-dim', '--nce-k', '--nce-t', '--nce-m',
    'DistillationTask.method', 'DistillationTask.method_kwargs',
)
FEATURE_METHODS = ('fitnet', 'at', 'sp', 'cc', 'vid', 'pkt', 'crd')
NUM_CLASSES, BATCH, NUM_SAMPLES = 10, 6, 40


def _build(name, student, teacher, **kwargs):
    if name == 'crd':
        kwargs = dict(num_samples=NUM_SAMPLES, nce_k=12, **kwargs)
    return create_method(name, student, teacher, num_classes=NUM_CLASSES, temperature=4.0, **kwargs)


def _outputs(method, student, teacher, x):
    s_out = ModelOutputs(*forward_with_features(student, x, method.student_levels, method.needs_pre_logits))
    with torch.no_grad():
        t_out = ModelOutputs(*forward_with_features(teacher, x, method.teacher_levels, method.needs_pre_logits))
    return s_out, t_out


@pytest.fixture(scope='module')
def cifar_pair():
    torch.manual_seed(0)
    return timm.create_model('resnet8', num_classes=NUM_CLASSES), timm.create_model('resnet14', num_classes=NUM_CLASSES).eval()


# ---------------------------------------------------------------------------------------------------------
# features.py


@pytest.mark.parametrize('name,size,kwargs', [
    ('resnet8', 16, {}),
    ('vgg8_cifar', 32, {}),
    ('wrn_16_1', 16, {}),
    ('mobilenetv2_cifar', 32, {}),
    ('resnet18', 64, {}),
    ('mobilenetv3_small_050', 64, {}),  # head conv after the pooling: pre-logits are not the pooled map
    ('vit_tiny_patch16_224', 32, dict(img_size=32)),
])
def test_one_forward_gives_the_plain_logits_and_the_levels(name, size, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    levels = list(range(len(model.feature_info)))
    with torch.no_grad():
        logits, features, pre_logits = forward_with_features(model, x, levels[::-1], pre_logits=True)
        ref_logits = model(x)
        ref_levels = model.forward_intermediates(x, indices=levels, intermediates_only=True)
        ref_pre = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pre_logits, ref_pre)
    assert [f.shape for f in features] == [f.shape for f in ref_levels[::-1]]  # in the order asked for
    for got, ref in zip(features, ref_levels[::-1]):
        torch.testing.assert_close(got, ref)
    assert [f.shape[1] for f in ref_levels] == [info['num_chs'] for info in model.feature_info]


def test_stage_matching_rules():
    make = lambda name: timm.create_model(name, num_classes=NUM_CLASSES)
    # RepDistiller pairs: every stage after the stem (feat[1:-1])
    assert matched_stages(make('resnet8'), make('resnet14')) == ([1, 2, 3], [1, 2, 3])
    assert matched_stages(make('vgg8_cifar'), make('vgg8_cifar')) == ([1, 2, 3, 4], [1, 2, 3, 4])
    # different depths: the deepest stages, paired from the end
    assert matched_stages(make('resnet8'), make('vgg8_cifar')) == ([1, 2, 3], [2, 3, 4])
    assert matched_stages(make('resnet10t'), make('resnet8')) == ([2, 3, 4], [1, 2, 3])
    assert matched_level(make('resnet8'), make('vgg8_cifar'), 2) == 3
    with pytest.raises(ValueError, match='does not exist in both models'):
        matched_level(make('vgg8_cifar'), make('resnet8'), 0)


def test_a_model_without_intermediates_is_refused_in_one_sentence():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES))
    teacher = timm.create_model('resnet8', num_classes=NUM_CLASSES)
    for name in FEATURE_METHODS:
        with pytest.raises(ValueError, match=rf"'{name}' needs intermediate features, but the student Sequential has no "
                                             r'forward_intermediates'):
            _build(name, plain, teacher)


# ---------------------------------------------------------------------------------------------------------
# each loss against its paper's equation, written independently


def _conv1x1(x, conv):
    out = torch.einsum('bchw,oc->bohw', x, conv.weight[:, :, 0, 0])
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def _pool_to_smaller(a, b):
    if a.shape[-1] > b.shape[-1]:
        k = a.shape[-1] // b.shape[-1]
        return F.avg_pool2d(a, k), b
    if b.shape[-1] > a.shape[-1]:
        k = b.shape[-1] // a.shape[-1]
        return a, F.avg_pool2d(b, k)
    return a, b


def ref_fitnet(method, f_s, f_t):
    """Romero et al. Eq. 3 with a 1x1 conv + BatchNorm (batch statistics) + ReLU regressor, mean over elements."""
    conv, bn = method.regressor[0], method.regressor[1]
    f_s, f_t = _pool_to_smaller(f_s, f_t)
    z = _conv1x1(f_s, conv)
    mean, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
    z = (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return method.beta * ((z.clamp(min=0) - f_t) ** 2).sum() / f_t.numel()


def ref_at(method, fs, ft):
    """Zagoruyko & Komodakis: Q = Σ_c |F_c|², normalized per sample; mean squared difference per stage, summed."""
    total = 0.
    for f_s, f_t in zip(fs, ft):
        f_s, f_t = _pool_to_smaller(f_s, f_t)
        for b in range(f_s.shape[0]):
            q_s, q_t = (f_s[b] ** 2).sum(0).flatten(), (f_t[b] ** 2).sum(0).flatten()
            total = total + ((q_s / q_s.norm() - q_t / q_t.norm()) ** 2).sum() / f_s[0, 0].numel() / f_s.shape[0]
    return method.beta * total


def ref_sp(method, f_s, f_t):
    """Tung & Mori Eq. 2-4: G = Q Qᵀ, row-normalized, squared Frobenius distance / b²."""
    b = f_s.shape[0]
    total = 0.
    for i in range(b):
        g_s = torch.stack([torch.dot(f_s[i].flatten(), f_s[j].flatten()) for j in range(b)])
        g_t = torch.stack([torch.dot(f_t[i].flatten(), f_t[j].flatten()) for j in range(b)])
        total = total + ((g_t / g_t.norm() - g_s / g_s.norm()) ** 2).sum()
    return method.beta * total / b ** 2


def ref_cc(method, p_s, p_t):
    """RepDistiller's CC: Δ_i = |e_s − e_t|, mean over consecutive pairs of Σ_k Δ_i Δ_{i+1}."""
    e_s = p_s @ method.embed_s.weight.t() + method.embed_s.bias
    e_t = p_t @ method.embed_t.weight.t() + method.embed_t.bias
    deltas = [(e_s[i] - e_t[i]).abs() for i in range(len(e_s))]
    return method.beta * sum((deltas[i] * deltas[i + 1]).sum() for i in range(len(deltas) - 1)) / (len(deltas) - 1)


def ref_vid(method, fs, ft):
    """Ahn et al. Eq. 5: −log N(t | μ(s), σ²) averaged over elements, without the constant ½·log 2π."""
    total = 0.
    for regressor, f_s, f_t in zip(method.regressors, fs, ft):
        f_s, f_t = _pool_to_smaller(f_s, f_t)
        c1, c2, c3 = regressor.mean[0], regressor.mean[2], regressor.mean[4]
        mu = _conv1x1(_conv1x1(_conv1x1(f_s, c1).relu(), c2).relu(), c3)
        sigma = torch.sqrt(torch.log1p(torch.exp(regressor.log_scale)) + 1e-5).view(1, -1, 1, 1)
        nll = -torch.distributions.Normal(mu, sigma.expand_as(mu)).log_prob(f_t) - 0.5 * math.log(2 * math.pi)
        total = total + nll.mean()
    return method.beta * total


def ref_pkt(method, p_s, p_t, eps=1e-7):
    """Passalis & Tefas Eq. 9-11: cosine kernel scaled to [0, 1], row-normalized, KL(p_t || p_s) (mean over pairs)."""
    def cond(p):
        b = p.shape[0]
        k = torch.stack([torch.stack([
            (torch.dot(p[i], p[j]) / ((p[i].norm() + eps) * (p[j].norm() + eps)) + 1) / 2 for j in range(b)])
            for i in range(b)])
        return k / k.sum(1, keepdim=True)
    q_s, q_t = cond(p_s.double()), cond(p_t.double())  # float64: the truth for a KL of near-equal rows
    return method.beta * (q_t * torch.log((q_t + eps) / (q_s + eps))).mean()


def ref_crd(method, p_s, p_t, index, rows, bank_s, bank_t, z=None):
    """Tian et al. Eq. 18 (NCE, noise P_n = 1/n) in both directions; Z (a constant) given, or from this first batch."""
    n, k, tau = method.num_samples, rows.shape[1] - 1, method.nce_t
    v_s = F.normalize(p_s @ method.embed_s.weight.t() + method.embed_s.bias, dim=1)
    v_t = F.normalize(p_t @ method.embed_t.weight.t() + method.embed_t.bias, dim=1)
    total = 0.
    for direction, (anchor, bank) in enumerate(((v_s, bank_t), (v_t, bank_s))):
        h = torch.stack([torch.stack([torch.exp(torch.dot(bank[r], anchor[i]) / tau) for r in rows[i]])
                         for i in range(len(anchor))])
        h = h / (h.mean().detach() * n if z is None else z[direction])
        m_pn = k / n
        pos = torch.log(h[:, 0] / (h[:, 0] + m_pn + 1e-7)).sum()
        neg = torch.log(m_pn / (h[:, 1:] + m_pn + 1e-7)).sum()
        total = total - (pos + neg) / len(anchor)
    return method.beta * total, v_s, v_t


@pytest.mark.parametrize('teacher_name,size', [('resnet14', 16), ('vgg8_cifar', 32)])
@pytest.mark.parametrize('name', FEATURE_METHODS)
def test_loss_equals_the_paper_equation(name, teacher_name, size):
    torch.manual_seed(1)
    student = timm.create_model('resnet8', num_classes=NUM_CLASSES)
    teacher = timm.create_model(teacher_name, num_classes=NUM_CLASSES).eval()
    method = _build(name, student, teacher)
    x, target = torch.randn(BATCH, 3, size, size), torch.randint(0, NUM_CLASSES, (BATCH,))
    index = torch.randperm(NUM_SAMPLES)[:BATCH]
    s_out, t_out = _outputs(method, student, teacher, x)
    if name == 'crd':
        bank_s, bank_t = method.memory_s.clone(), method.memory_t.clone()
    terms = method(s_out, t_out, target, index=index)
    assert list(terms) == [f'{name}_loss']
    got = terms[f'{name}_loss']
    fs, ft, ps, pt = s_out.features, t_out.features, s_out.pre_logits, t_out.pre_logits
    with torch.no_grad():
        if name == 'fitnet':
            ref = ref_fitnet(method, fs[0], ft[0])
        elif name == 'at':
            ref = ref_at(method, fs, ft)
        elif name == 'sp':
            ref = ref_sp(method, fs[0], ft[0])
        elif name == 'cc':
            ref = ref_cc(method, ps, pt)
        elif name == 'vid':
            ref = ref_vid(method, fs, ft)
        elif name == 'pkt':
            ref = ref_pkt(method, ps, pt)
        else:
            # the negatives the method drew: replay its generator (function of seed and step 0)
            method.step = 0
            rows = method.sample_negatives(index, target)
            labels = method.labels
            assert (rows[:, 0] == index).all()
            for i in range(BATCH):  # negatives: other classes only, no repeats
                assert (labels[rows[i, 1:]] != target[i]).all() and len(set(rows[i].tolist())) == rows.shape[1]
            ref, v_s, v_t = ref_crd(method, ps, pt, index, rows, bank_s, bank_t)
            for bank, old, v in ((method.memory_s, bank_s, v_s), (method.memory_t, bank_t, v_t)):
                new = old.clone()
                new[index] = F.normalize(0.5 * old[index] + 0.5 * v, dim=1)
                torch.testing.assert_close(bank, new)  # momentum update of the visited rows only
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-7)


def test_crd_gradients_equal_autograd_through_the_paper_equation():
    """CRD takes its gradient in the embeddings while the banks are as the scores saw them (then updates the banks
    in place): the gradients of the pre-logits and of both heads equal autograd through the reference loss."""
    torch.manual_seed(2)
    student = timm.create_model('resnet8', num_classes=NUM_CLASSES)
    teacher = timm.create_model('resnet14', num_classes=NUM_CLASSES).eval()
    method = _build('crd', student, teacher)
    for step in range(2):  # step 0 fixes Z; step 1 reads banks that step 0 updated
        x, target = torch.randn(BATCH, 3, 16, 16), torch.randint(0, NUM_CLASSES, (BATCH,))
        index = torch.randperm(NUM_SAMPLES)[:BATCH]
        s_out, t_out = _outputs(method, student, teacher, x)
        p_s = s_out.pre_logits.detach().requires_grad_()
        banks = method.memory_s.clone(), method.memory_t.clone()
        method.zero_grad()
        method(ModelOutputs(s_out.logits, pre_logits=p_s), t_out, target, index=index)['crd_loss'].backward()
        got = [p_s.grad] + [p.grad.clone() for p in method.parameters()]
        method.step -= 1  # replay the same negatives
        rows = method.sample_negatives(index, target)
        method.step += 1
        p_ref = p_s.detach().requires_grad_()
        method.zero_grad()
        ref, _, _ = ref_crd(method, p_ref, t_out.pre_logits, index, rows, *banks, z=method.z)
        ref.backward()
        for a, b in zip(got, [p_ref.grad] + [p.grad for p in method.parameters()]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_defaults_are_repdistillers(cifar_pair):
    student, teacher = cifar_pair
    betas = {'fitnet': 100., 'at': 1000., 'sp': 3000., 'cc': 0.02, 'vid': 1., 'pkt': 30000., 'crd': 0.8}
    for name, beta in betas.items():
        method = create_method(name, student, teacher, num_classes=NUM_CLASSES, temperature=4.0,
                               **(dict(num_samples=20000) if name == 'crd' else {}))
        assert method.beta == beta and METHODS[name].loss_weights == (1.0, 0.0)  # -r 1 -a 0
    crd = create_method('crd', student, teacher, num_classes=NUM_CLASSES, temperature=4.0, num_samples=20000)
    assert (crd.nce_k, crd.nce_t, crd.nce_m, crd.memory_s.shape) == (16384, 0.07, 0.5, (20000, 128))
    assert create_method('fitnet', student, teacher, num_classes=NUM_CLASSES, temperature=4.0).student_levels == [2]
    assert create_method('at', student, teacher, num_classes=NUM_CLASSES, temperature=4.0).p == 2.0
    vid = create_method('vid', student, teacher, num_classes=NUM_CLASSES, temperature=4.0)
    torch.testing.assert_close(F.softplus(vid.regressors[0].log_scale) + 1e-5, torch.full((16,), 5.0))
    with pytest.raises(ValueError, match='nce_k must be between 1 and 19'):
        create_method('crd', student, teacher, num_classes=NUM_CLASSES, temperature=4.0, num_samples=20, nce_k=20)


def test_crd_negatives_are_reproducible_from_seed_and_step(cifar_pair):
    student, teacher = cifar_pair
    a, b = _build('crd', student, teacher, seed=5), _build('crd', student, teacher, seed=5)
    index, target = torch.arange(BATCH), torch.arange(BATCH) % 3
    assert torch.equal(a.sample_negatives(index, target), b.sample_negatives(index, target))
    b.step = 1
    assert not torch.equal(a.sample_negatives(index, target), b.sample_negatives(index, target))
    state = a.state_dict()
    assert state['_extra_state'].item() == 0 and all(torch.is_tensor(v) for v in state.values())
    a.step = 7
    b.load_state_dict(a.state_dict())
    assert b.step == 7



def _draw(kind, labels, target, num, seed):
    if kind == 'host':
        return draw_on_host(sort_by_class(labels), torch.arange(len(target)), target, num, (seed, 0, 0))[:, 1:]
    return draw_on_device(labels, torch.arange(len(target)), target, num, torch.Generator().manual_seed(seed))[:, 1:]


@pytest.mark.parametrize('kind', ['host', 'device'])
def test_crd_draw_is_uniform_over_the_other_classes_subsets(kind):
    """Class 0 has 3 of 10 bank rows (two not seen yet, label -1, count as another class): every one of the
    C(7, 3) = 35 sets of 3 other rows must come up about equally often, for every row of a batch alike."""
    labels = torch.tensor([0, 2, 0, 1, -1, 1, 0, 2, 2, -1])
    others = [i for i in range(10) if labels[i] != 0]
    subsets = [frozenset(c) for c in itertools.combinations(others, 3)]
    rows = _draw(kind, labels, torch.zeros(3500, dtype=torch.long), 3, seed=3)
    counts = {}
    for r in rows.tolist():
        assert len(set(r)) == 3 and all(labels[j] != 0 for j in r)
        counts[frozenset(r)] = counts.get(frozenset(r), 0) + 1
    assert set(counts) == set(subsets)
    expected = len(rows) / len(subsets)
    assert sum((c - expected) ** 2 / expected for c in counts.values()) < 73.5  # 34 dof, p = 1e-4
    # the first and the second half of the batch are not the same draws
    assert not torch.equal(rows[:1750].sort(1).values, rows[1750:].sort(1).values)


@pytest.mark.parametrize('kind', ['host', 'device'])
def test_crd_draw_fills_up_with_same_class_rows_and_follows_the_seed(kind):
    labels = torch.tensor([1, 0, 1, 1, 0, 1])  # 2 rows of class 0, 4 of class 1
    target = torch.tensor([0, 1] * 50)
    rows = _draw(kind, labels, target, 5, seed=1)
    for t, r in zip(target.tolist(), rows.tolist()):
        assert len(set(r)) == 5  # no repeats
        assert {j for j in range(6) if labels[j] != t} <= set(r)  # every other-class row, the rest same-class
    assert torch.equal(rows, _draw(kind, labels, target, 5, seed=1))
    assert not torch.equal(rows, _draw(kind, labels, target, 5, seed=2))


def test_crd_draws_follow_the_labels_after_they_change(cifar_pair):
    """The class order behind the host draw is kept between steps: new labels, loaded ones and a moved bank must
    still be followed (negatives never of the anchor's class)."""
    student, teacher = cifar_pair
    method = _build('crd', student, teacher)
    index, target = torch.arange(BATCH), torch.zeros(BATCH, dtype=torch.long)

    def check():
        rows = method.sample_negatives(index, target)
        assert (method.labels[rows[:, 1:]] != 0).all()

    method.labels.copy_(torch.arange(NUM_SAMPLES) % 2)
    check()
    state = method.state_dict()
    state['labels'] = (torch.arange(NUM_SAMPLES) + 1) % 2  # the other half is class 0 now
    method.load_state_dict(state)
    check()
    method.labels[:3] = 0  # a first sight of three samples, in place
    check()
    method.labels = method.labels.clone().roll(1)  # replaced, as .to() does
    check()


def _crd_step_in_process(rank, world, init_file, out_dir):
    """One CRD step of one process on its half of a batch (models in eval mode: features per sample)."""
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        student, teacher, method, x, target, index = _crd_setup()
        half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        method(*_outputs(method, student, teacher, x[half]), target[half], index=index[half])
        torch.save(method.state_dict(), f'{out_dir}/rank{rank}.pth')
    finally:
        dist.destroy_process_group()


def _crd_setup():
    torch.manual_seed(0)
    student = timm.create_model('resnet8', num_classes=NUM_CLASSES).eval()
    teacher = timm.create_model('resnet14', num_classes=NUM_CLASSES).eval()
    method = _build('crd', student, teacher)
    x, target = torch.randn(BATCH, 3, 16, 16), torch.randint(0, NUM_CLASSES, (BATCH,))
    return student, teacher, method, x, target, torch.randperm(NUM_SAMPLES)[:BATCH]


def test_crd_processes_keep_the_one_process_bank(tmp_path):
    """Two processes, each with half the batch: both end with one state (Z included), and with the bank of one
    process given all of it (Z itself depends on the negatives drawn, which differ)."""
    torch.multiprocessing.spawn(_crd_step_in_process, args=(2, str(tmp_path / 'pg'), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    student, teacher, method, x, target, index = _crd_setup()
    method(*_outputs(method, student, teacher, x), target, index=index)
    for key in ('memory_s', 'memory_t', 'labels'):
        torch.testing.assert_close(states[0][key], method.state_dict()[key])

# ---------------------------------------------------------------------------------------------------------
# inside DistillationTask: gradients, training with every teacher-labelled view


VIEWS = {
    'none': None,
    'tlmixup': dict(mixup_alpha=1.0, cutmix_alpha=0.0),
    'tlcutmix': dict(cutmix_alpha=1.0),
    'tlcutmix_pick': dict(cutmix_alpha=1.0, pick='kld'),
}


def _task(name, student, teacher, view=None, **method_kwargs):
    if name == 'crd':
        method_kwargs = dict(num_samples=16, nce_k=8, **method_kwargs)
    mixup = DistillMixup(num_classes=NUM_CLASSES, seed=0, **VIEWS[view]) if VIEWS.get(view) else None
    return DistillationTask(student, teacher, mixup=mixup, method=name, method_kwargs=method_kwargs,
                            task_loss_weight=0.1, distill_loss_weight=0.9)


@pytest.mark.parametrize('name', FEATURE_METHODS)
def test_gradients_reach_exactly_the_student_and_the_methods_parts(name):
    torch.manual_seed(0)
    student = timm.create_model('resnet8', num_classes=NUM_CLASSES)
    teacher = timm.create_model('resnet14', num_classes=NUM_CLASSES)
    task = _task(name, student, teacher, 'tlcutmix').train()
    teacher.requires_grad_(True)  # the task must not build a graph through the teacher even so
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, NUM_CLASSES, (8,))
    out = task(x, y, index=torch.arange(8))
    out['loss'].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    own = list(task.distiller.parameters())
    assert (len(own) > 0) == (name in ('fitnet', 'cc', 'vid', 'crd'))
    for p in own:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # the method's term alone reaches the student and its own parts, nothing else
    student.zero_grad(set_to_none=True)
    task.distiller.zero_grad(set_to_none=True)
    out = task(x, y, index=torch.arange(8))
    term = out['loss'] - 0.1 * out['task_loss'] - 0.9 * out['kd_loss'] - 0.9 * out['mixed_loss']
    term.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in own)
    # the student's exported weights hold none of the method's parts
    assert not set(task.distiller.state_dict()) & set(student.state_dict())


@pytest.mark.parametrize('view', list(VIEWS))
@pytest.mark.parametrize('name', FEATURE_METHODS)
def test_every_method_with_every_view_trains(name, view):
    torch.manual_seed(0)
    student = timm.create_model('resnet8', num_classes=NUM_CLASSES)
    teacher = timm.create_model('resnet14', num_classes=NUM_CLASSES)
    # CRD's bank held (momentum 1): a moving bank with Z fixed from the random first one makes the first
    # steps' loss rise or fall with the seed (measured: 0.6-2.4x over 8-30 steps); held, it is one objective
    task = _task(name, student, teacher, view, **(dict(nce_m=1.0) if name == 'crd' else {})).train()
    params = list(student.parameters()) + list(task.distiller.parameters())
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, NUM_CLASSES, (8,))
    losses = []
    for _ in range(8):
        out = task(x, y, index=torch.arange(8))
        assert f'{name}_loss' in out and ('teacher_view_output' in out) == (view != 'none')
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        losses.append(out['loss'].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < losses[0], losses


@pytest.mark.parametrize('name', ['vid', 'crd'])
def test_a_timm_imagenet_pair(name):
    torch.manual_seed(0)
    student = timm.create_model('resnet18', num_classes=NUM_CLASSES)
    teacher = timm.create_model('resnet34', num_classes=NUM_CLASSES)
    task = _task(name, student, teacher, 'tlcutmix').train()
    assert list(task.distiller.student_levels) == ([1, 2, 3, 4] if name == 'vid' else [])
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, NUM_CLASSES, (4,))
    out = task(x, y, index=torch.arange(4))
    out['loss'].backward()
    assert torch.isfinite(out['loss']) and all(p.grad is not None for p in task.distiller.parameters())


# ---------------------------------------------------------------------------------------------------------
# train_kd.py --distill crd: end to end, exact resume with the memory bank


@pytest.mark.usefixtures('one_torch_thread')  # it forks: a child of a parent with an OpenMP pool hangs
def test_crd_tlcutmix_pick_trains_end_to_end_and_resumes_bit_identically(tmp_path, train_kd, teacher_ckpt):
    common = BASE + ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt, '--distill', 'crd', '--nce-k', '32',
                     '--tl-cutmix', '--pick', 'kld', '--epochs', '2', '--checkpoint-every', '4',
                     '--output', str(tmp_path)]
    res = train_kd.main(common + ['--experiment', 'ref'])
    assert res['finished'] and res['distill']['method'] == 'crd' and res['distill']['nce_k'] == 32
    ref = tmp_path / 'ref'
    rows = _rows(ref)
    assert all(float(r['train_crd_loss']) > 0 for r in rows)
    last = _state(ref / 'last.pth.tar')
    bank = last['distiller']
    assert bank['memory_s'].shape == (96, 128) and (bank['labels'] >= 0).all()  # every sample seen, its class kept
    assert not set(bank) & set(last['state_dict'])  # the method's parts are not the student's weights
    # a process killed at its 9th fsync (2 each: the run id, args.yaml, the recovery checkpoints of the start and of
    # step 4; then inside the next write)
    assert _run_killed_at(common + ['--experiment', 'killed'], 9)
    rec = _state(tmp_path / 'killed' / 'recovery.pth.tar')
    assert (rec['next_epoch'], rec['next_step']) == (0, 4)  # killed after 4 of the 6 steps of the first epoch
    assert train_kd.main(['--resume', str(tmp_path / 'killed')])['finished']
    resumed = _state(tmp_path / 'killed' / 'last.pth.tar')
    for key in ('state_dict', 'distiller'):
        assert resumed[key].keys() == last[key].keys()
        assert all(torch.equal(resumed[key][k], last[key][k]) for k in last[key]), key
    assert _rows(tmp_path / 'killed') == rows


def test_crd_bank_size_a_stream_and_an_unknown_method_are_usage_errors(tmp_path, train_kd, teacher_ckpt, capsys):
    args = BASE + ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt, '--epochs', '1',
                   '--output', str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        train_kd.main(args + ['--distill', 'crd', '--nce-k', '500'])
    assert e.value.code == 2 and 'nce_k must be between 1 and 95' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train_kd.main(args + ['--distill', 'nope'])
    assert e.value.code == 2

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 16, 16), 0
    parsed, _ = parse_args(args + ['--distill', 'crd'])
    with pytest.raises(UsageError, match='needs sample indices, which the stream'):
        build._method_kwargs(build.distill_setup(parsed), parsed.dataset, Stream())


def test_features_of_a_ddp_student_go_through_ddp_so_gradients_are_reduced(tmp_path):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = timm.create_model('resnet8', num_classes=NUM_CLASSES)
        ddp = nn.parallel.DistributedDataParallel(model)
        reduced = []

        def hook(state, bucket):
            reduced.append(bucket.buffer().numel())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut
        ddp.register_comm_hook(None, hook)
        x = torch.randn(4, 3, 16, 16)
        logits, features, pre = forward_with_features(ddp, x, [1, 3], pre_logits=True)
        (logits.sum() + features[0].mean() + pre.sum()).backward()
        assert sum(reduced) == sum(p.numel() for p in model.parameters())  # every gradient went through DDP
        assert 'forward' not in model.__dict__  # the module's own forward is back
        model.eval()
        torch.testing.assert_close(forward_with_features(ddp, x, [1], pre_logits=True)[0], model(x))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('name,flags,expect', [
    ('fitnet', ['--fitnet-beta', '7', '--hint-layer', '1'], dict(beta=7.0, student_levels=[1])),
    ('at', ['--at-beta', '7', '--at-p', '4'], dict(beta=7.0, p=4.0)),
    ('sp', ['--sp-beta', '7'], dict(beta=7.0)),
    ('cc', ['--cc-beta', '7', '--cc-feat-dim', '16'], dict(beta=7.0)),
    ('vid', ['--vid-beta', '7'], dict(beta=7.0)),
    ('pkt', ['--pkt-beta', '7'], dict(beta=7.0)),
    ('crd', ['--crd-beta', '7', '--crd-feat-dim', '16', '--nce-k', '5', '--nce-t', '0.5', '--nce-m', '0.9',
             '--seed', '11'], dict(beta=7.0, nce_k=5, nce_t=0.5, nce_m=0.9, seed=11)),
])
def test_method_flags_reach_the_method(cifar_pair, name, flags, expect):
    args, explicit = parse_args(['--model', 'resnet8', '--teacher', 'resnet14', '--distill', name, *flags])
    validate_args(args, explicit)
    assert resolve_loss_weights(args) == (1.0, 0.0)  # RepDistiller's -r 1 -a 0 unless a weight flag is given
    method = _build(name, *cifar_pair, **METHODS[name].kwargs_from_args(args)) if name != 'crd' else \
        create_method(name, *cifar_pair, num_classes=NUM_CLASSES, temperature=4.0, num_samples=NUM_SAMPLES,
                      **METHODS[name].kwargs_from_args(args))
    for key, value in expect.items():
        assert (list(getattr(method, key)) if key.endswith('levels') else getattr(method, key)) == value, key
    if name in ('cc', 'crd'):
        assert method.embed_s.out_features == 16
    if name == 'crd':
        assert method.memory_s.shape == (NUM_SAMPLES, 16)
