"""DistillationTask constructor options not exercised elsewhere, each against an independent computation:
the loss on the original batch (criterion, criterion_kwargs incl. timm's soft targets), a teacher by name
with its device, dtype and pretrained-cfg overlay, and the verbose log line."""
import logging

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_kd import DistillationTask
from timm_kd.distill import kd_loss

COVERS = ('DistillationTask.student', 'DistillationTask.teacher', 'DistillationTask.temperature',
          'DistillationTask.task_loss_weight', 'DistillationTask.distill_loss_weight', 'DistillationTask.criterion',
          'DistillationTask.criterion_kwargs', 'DistillationTask.teacher_pretrained_cfg_overlay',
          'DistillationTask.device', 'DistillationTask.dtype', 'DistillationTask.verbose')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _net(seed: int, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, num_classes))
    net.num_classes = num_classes
    return net


def _batch(b: int = 6, num_classes: int = 5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, num_classes, (b,), generator=g)


def test_criterion_and_criterion_kwargs_define_the_task_loss():
    x, y = _batch()
    student, teacher = _net(0), _net(1)
    with torch.no_grad():
        s, t = student(x), teacher.eval()(x)

    class MeanMargin(nn.Module):  # any loss module: the task must use it as given
        def forward(self, logits, target):
            return (logits.logsumexp(-1) - logits.gather(1, target[:, None]).squeeze(1)).pow(2).mean()
    out = DistillationTask(student, teacher, criterion=MeanMargin(), task_loss_weight=0.3, distill_loss_weight=0.6,
                           temperature=2.)(x, y)
    task_ref = (s.logsumexp(-1) - s.gather(1, y[:, None]).squeeze(1)).pow(2).mean()
    torch.testing.assert_close(out['task_loss'], task_ref)
    torch.testing.assert_close(out['loss'], 0.3 * task_ref + 0.6 * kd_loss(s, t, 2.))

    out = DistillationTask(student, teacher, criterion_kwargs=dict(smoothing=0.2))(x, y)
    torch.testing.assert_close(out['task_loss'], F.cross_entropy(s, y, label_smoothing=0.2))

    # timm's --mixup / --cutmix hand the task 2-D soft targets; the task loss is the soft-target cross-entropy
    soft = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), -1)
    out = DistillationTask(student, teacher, criterion_kwargs=dict(soft_targets=True))(x, soft)
    torch.testing.assert_close(out['task_loss'], -(soft * F.log_softmax(s, -1)).sum(-1).mean())


def test_device_dtype_and_cfg_overlay_of_a_teacher_by_name(tmp_path):
    """A teacher given by name is built by timm with the task's device / dtype and the pretrained-cfg overlay
    (here: weights file and normalisation)."""
    ref = timm.create_model('resnet8', num_classes=10).eval()
    path = tmp_path / 'weights.pth'
    torch.save(ref.state_dict(), path)
    overlay = dict(file=str(path), num_classes=10, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    task = DistillationTask(timm.create_model('resnet8', num_classes=10), 'resnet8', dtype=torch.float64,
                            teacher_pretrained_cfg_overlay=overlay)
    assert all(p.dtype == torch.float64 for p in task.teacher.parameters())
    assert task.teacher.mean_kd.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert task.teacher.std_kd.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    sd = task.teacher.model.state_dict()
    assert all(torch.equal(sd[k], v.to(sd[k].dtype)) for k, v in ref.state_dict().items())
    meta = DistillationTask(_net(0), _net(1), device=torch.device('meta'))
    assert meta.teacher.mean_kd.device.type == 'meta' and meta.device.type == 'meta'
    assert DistillationTask(_net(0), _net(1)).teacher.mean_kd.device.type == 'cpu'


def test_verbose_logs_the_configuration(caplog):
    with caplog.at_level(logging.INFO, logger='timm_kd'):
        DistillationTask(_net(0), _net(1), temperature=3., verbose=True)
    assert any('DistillationTask:' in r.getMessage() and 'temperature=3.0' in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='timm_kd'):
        DistillationTask(_net(0), _net(1), temperature=3.)
    assert not any('DistillationTask:' in r.getMessage() for r in caplog.records)
