"""Done-criterion of the distillation step: a tiny student trained for a few dozen steps on synthetic data
with every mode runs on CPU and its loss goes down."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_kd import DistillMixup, DistillationTask


pytestmark = pytest.mark.usefixtures('one_torch_thread')


NUM_CLASSES, BATCH, STEPS = 5, 16, 40


def tiny_net(width, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, NUM_CLASSES))
    net.num_classes = NUM_CLASSES
    return net


@pytest.fixture(scope='module')
def data():
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(NUM_CLASSES, 3, 8, 8, generator=g)
    y = torch.randint(0, NUM_CLASSES, (4 * BATCH,), generator=g)
    x = protos[y] + 0.8 * torch.randn(len(y), 3, 8, 8, generator=g)
    return list(zip(x.split(BATCH), y.split(BATCH)))


@pytest.fixture(scope='module')
def teacher(data):
    net = tiny_net(16, seed=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for step in range(60):
        x, y = data[step % len(data)]
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def train_steps(task, data, steps, lr=0.05):
    """Train ``task``'s student with SGD for ``steps`` batches of ``data``; the task's outputs of every step."""
    task.train()
    opt = torch.optim.SGD(task.trainable_module.parameters(), lr=lr, momentum=0.9)
    outs = []
    for step in range(steps):
        x, y = data[step % len(data)]
        out = task(x, y)
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        outs.append(out)
    return outs


MODES = {
    'kd': None,
    'tl_mixup': dict(mixup_alpha=1.0, cutmix_alpha=0.),
    'tl_cutmix': dict(cutmix_alpha=1.0),
    'tl_cutmix_pick_kld': dict(pick='kld'),
    'tl_cutmix_pick_t_ent': dict(pick='t_ent'),
    'tl_cutmix_pick_s_ent': dict(pick='s_ent'),
    'tl_cutmix_pick_random': dict(pick='random'),
    'kd_cutmix_hard': dict(label_mode='hard', num_classes=NUM_CLASSES),
    'cutout': dict(cutout=True),
    'pmu_10': dict(mixup_alpha=1.0, cutmix_alpha=0., mix_fraction=0.1),
    'pmu_50': dict(mixup_alpha=1.0, cutmix_alpha=0., mix_fraction=0.5),
}


@pytest.mark.parametrize('mode', list(MODES))
def test_loss_goes_down(mode, data, teacher):
    kw = MODES[mode]
    mix = DistillMixup(seed=0, **kw) if kw is not None else None
    student = tiny_net(8, seed=2)
    task = DistillationTask(student, teacher, mixup=mix)
    outs = train_steps(task, data, STEPS)
    losses = [out['loss'].item() for out in outs]
    if kw is not None:
        assert all(out['mixed_loss'].item() > 0 for out in outs)
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first, (mode, first, last)
