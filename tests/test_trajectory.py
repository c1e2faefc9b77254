"""Whole runs of ``train_kd.py`` with TLCutMix+pick against an independent hand loop, step by step.

A single step equal to a reference says little about a run: what the trainer puts around the step (loader
and per-sample seeding, the mixer's random stream, optimizer groups, schedule, BatchNorm handling across
passes, evaluation, mid-epoch recovery checkpoints) only shows over many steps. Each test trains a few
epochs through ``train_kd.main`` with its real loader (0 or 2 workers), schedule, optimizer, evaluation and
``--checkpoint-every``, and records what the step was given: the loader batch, the candidate pool the mixer
built, and for ``random`` / CRD the rows drawn at random. The hand loop below is written from the paper
(Wang et al., TLCutMix+pick) and the authors' loop, not from timm_kd: it checks that every candidate set of
the pool is one CutMix of the batch (one box, a derangement of partners), runs its own teacher and student
passes (scoring in train-mode BatchNorm with the running statistics saved and put back by hand), picks,
takes its own SGD step (its own momentum) under torch's MultiStepLR, evaluates its own student every epoch
and, for CRD, computes its own NCE loss, Z and bank update. After every update the weights, BatchNorm buffers
(and CRD's embeddings and banks) must equal train_kd's at the next step, the final ones its last checkpoint,
and every epoch's evaluation summary.csv, to float32 tolerance (rtol 1e-5, atol 1e-6).
"""
import csv
from typing import Any, Dict, List

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms

from timm_kd.data.datasets import create_kd_dataset
from timm_kd.data.mixup import DistillMixup
from timm_kd.distill.methods.crd import CRD
from timm_kd.distill.task import DistillationTask

pytestmark = pytest.mark.usefixtures('one_torch_thread')

T, GAMMA, ALPHA, LR, WD, BATCH, EPOCHS, MILESTONES = 4.0, 0.1, 0.9, 0.05, 5e-4, 16, 3, (1, 2)
DATA = ['--dataset', 'synthetic/10x16', '--train-num-samples', '96', '-b', str(BATCH)]
RECIPE = ['--opt', 'momentum', '--momentum', '0.9', '--weight-decay', str(WD), '--wd-all-params', '--lr', str(LR),
          '--sched', 'multistep_torch', '--epochs', str(EPOCHS), '--decay-milestones', *map(str, MILESTONES),
          '--warmup-epochs', '0', '--smoothing', '0', '--kd-temperature', str(T), '--kd-alpha', str(ALPHA),
          '--checkpoint-every', '2', '--log-interval', '2', '--seed', '5']
CRD_FLAGS = ['--distill', 'crd', '--nce-k', '16', '--crd-feat-dim', '8']
CRD_BETA, CRD_TAU, CRD_MOMENTUM = 0.8, 0.07, 0.5


# ------------------------------------------------------------------------------------------------ recording
class Recorder:
    """What ``train_kd`` gave each step: the batch, the pool and the mixer's input, the random rows, and the
    student (and CRD) state at the start of the step."""

    def __init__(self, monkeypatch):
        self.steps: List[Dict[str, Any]] = []
        task_forward, mixer_call, crd_draw = DistillationTask.forward, DistillMixup.__call__, CRD.sample_negatives
        recorder = self

        def forward(task, input, target, **extras):
            state = {k: v.detach().clone() for k, v in timm.utils.unwrap_model(task.trainable_module).state_dict().items()}
            distiller = {k: v.detach().clone() for k, v in task.distiller.state_dict().items()
                         if torch.is_tensor(v)}
            recorder.steps.append(dict(x=input.detach().clone(), y=target.clone(), state=state, distiller=distiller,
                                       extras={k: v.clone() for k, v in extras.items()}))
            return task_forward(task, input, target, **extras)

        def mix(mixer, x, target=None):
            views = mixer_call(mixer, x, target)
            step = recorder.steps[-1]
            step['mixer_input'], step['pool'] = x.detach().clone(), views.x_mix.detach().clone()
            step['n_sets'], step['drawn'], step['partner'] = mixer.n_candidates, views.pick_index, views.partner
            return views

        def draw(crd, index, target, rank=0, world=1):
            rows = crd_draw(crd, index, target, rank, world)
            recorder.steps[-1]['negatives'] = rows.clone()
            return rows

        monkeypatch.setattr(DistillationTask, 'forward', forward)
        monkeypatch.setattr(DistillMixup, '__call__', mix)
        monkeypatch.setattr(CRD, 'sample_negatives', draw)


def run_train_kd(train_kd, tmp_path, monkeypatch, argv):
    rec = Recorder(monkeypatch)
    res = train_kd.main(argv + ['--output', str(tmp_path), '--experiment', 'run'])
    monkeypatch.undo()
    assert res['finished']
    with open(tmp_path / 'run' / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    return rec.steps, rows, res


# ------------------------------------------------------------------------------------------------ the hand loop
def assert_cutmix_pool(pool: torch.Tensor, src: torch.Tensor, partner: torch.Tensor, n_sets: int) -> None:
    """Each candidate set is one CutMix of ``src``: every row equals its own image outside one box shared by the
    set and its partner's inside it; the partners (as the mixer reports them) are a permutation without fixed
    points, drawn anew for each set."""
    b = src.shape[0]
    assert pool.shape[0] == n_sets * b and partner.shape == (n_sets * b,)
    for c in range(n_sets):
        views, part = pool[c * b:(c + 1) * b], partner[c * b:(c + 1) * b]
        assert sorted(part.tolist()) == list(range(b)), f'set {c}: the partners are not a permutation'
        assert bool((part != torch.arange(b)).all()), f'set {c}: an image is mixed with itself'
        box = torch.zeros(src.shape[2:], dtype=torch.bool)
        for y0 in range(box.shape[0]):  # the box: where the pasted partner differs from the image, as a rectangle
            for x0 in range(box.shape[1]):
                box[y0, x0] = bool((views[:, :, y0, x0] != src[:, :, y0, x0]).any())
        if box.any():
            ys, xs = box.nonzero(as_tuple=True)
            box[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1] = True
        expected = torch.where(box, src[part], src)
        assert torch.equal(views, expected), f'set {c}: not one CutMix box of the partners'
    if n_sets > 1:
        assert not torch.equal(partner[:b], partner[b:2 * b]), 'two candidate sets share their pairing'


def kl_rows(s_logits: torch.Tensor, t_logits: torch.Tensor, temp: float) -> torch.Tensor:
    p_t = F.softmax(t_logits / temp, dim=1)
    return (p_t * (F.log_softmax(t_logits / temp, dim=1) - F.log_softmax(s_logits / temp, dim=1))).sum(1)


def kd_term(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    return kl_rows(s_logits, t_logits, T).mean() * T * T  # paper Eq. 1: T^2 * KL, averaged over the batch


def entropy_rows(logits: torch.Tensor) -> torch.Tensor:
    p = F.softmax(logits, dim=1)
    return -(p * F.log_softmax(logits, dim=1)).sum(1)


class HandCRD(nn.Module):
    """CRD (Tian et al.) as in the authors' code: linear + L2-norm embeddings, two momentum memory banks, NCE
    with Z fixed from the first batch; negatives are the rows train_kd drew."""

    def __init__(self, state: Dict[str, torch.Tensor]):
        super().__init__()
        d, n = state['embed_s.weight'].shape[0], state['memory_s'].shape[0]
        self.embed_s = nn.Linear(state['embed_s.weight'].shape[1], d)
        self.embed_t = nn.Linear(state['embed_t.weight'].shape[1], d)
        self.load_state_dict({k: state[k] for k in ('embed_s.weight', 'embed_s.bias', 'embed_t.weight',
                                                     'embed_t.bias')}, strict=False)
        self.memory_s, self.memory_t = state['memory_s'].clone(), state['memory_t'].clone()
        self.num_data, self.z = n, None

    def forward(self, f_s, f_t, index, rows):
        v_s, v_t = F.normalize(self.embed_s(f_s), dim=1), F.normalize(self.embed_t(f_t), dim=1)
        h = []
        for v, bank in ((v_s, self.memory_t), (v_t, self.memory_s)):
            h.append(torch.exp(torch.bmm(bank[rows], v[:, :, None]).squeeze(2) / CRD_TAU))
        if self.z is None:
            self.z = [float(x.detach().mean()) * self.num_data for x in h]
        loss = 0
        for x, z in zip(h, self.z):
            x = x / z
            k = rows.shape[1] - 1
            noise = k / self.num_data
            pos = torch.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
            neg = torch.log(noise / (x[:, 1:] + noise + 1e-7)).sum(1)
            loss = loss - (pos + neg).mean()
        with torch.no_grad():
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                bank[index] = F.normalize(bank[index] * CRD_MOMENTUM + v * (1 - CRD_MOMENTUM), dim=1)
        return CRD_BETA * loss


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def scoring_pass(student: nn.Module, pool: torch.Tensor) -> torch.Tensor:
    """The student on the pool without gradient, BatchNorm on the pool's own statistics, running statistics
    saved and put back by hand (train_kd must not move them)."""
    buffers = {k: v.clone() for k, v in student.named_buffers()}
    with torch.no_grad():
        logits = student(pool)
    with torch.no_grad():
        for k, v in student.named_buffers():
            v.copy_(buffers[k])
    return logits


def picked_views(step, pick: str, student: nn.Module, teacher: nn.Module):
    """(the views trained, the teacher's logits on them) of a step: its pool checked as CutMix of the batch (or of
    the second view), then the whole pool ('none'), the rows drawn up front ('random') or the top half by the
    criterion, scored without gradient in train-mode BatchNorm."""
    src = step['extras'].get('view_input', step['x'])
    assert torch.equal(step['mixer_input'], src), 'the pool is not made from the batch (or its second view)'
    assert_cutmix_pool(step['pool'], src, step['partner'], step['n_sets'])
    pool = step['pool']
    with torch.no_grad():
        t_pool = teacher(pool)
    num_pick = pool.shape[0] // 2
    if pick == 'none':  # TLCutMix: one candidate set, all of it trained
        assert step['n_sets'] == 1
        rows = torch.arange(pool.shape[0])
    elif pick == 'random':
        rows = step['drawn']
        assert rows.shape == (num_pick,) and len(set(rows.tolist())) == num_pick
    else:
        if pick == 't_ent':
            score = entropy_rows(t_pool)
        else:
            s_pool = scoring_pass(student, pool)
            score = kl_rows(s_pool, t_pool, T) if pick == 'kld' else entropy_rows(s_pool)
        rows = score.topk(num_pick).indices
    return pool[rows], t_pool[rows]


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    model.eval()
    with torch.no_grad():
        logits = model(images)
    model.train()
    return float(F.cross_entropy(logits, labels)), 100. * float((logits.argmax(1) == labels).float().mean())


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def hand_loop(steps, pick: str, init_ckpt: str, teacher_ckpt: str, eval_data, crd: bool = False):
    """Replays the recorded inputs; returns (mismatches: list of messages, eval per epoch, final student).

    Every step starts from train_kd's weights and buffers at that step (the student's, and CRD's embeddings and
    banks), after checking that the hand loop's own update of the step before reached them; the optimizer state
    (momentum), the schedule and CRD's Z are the hand loop's own throughout. Comparing updates, not free runs:
    the picks are a top-k and CRD's scores exp(v·m / τ) at τ = 0.07 turn a float32 rounding of 1e-7 in the
    weights into 1e-3 in a gradient, so free runs part after a few steps without any defect."""
    teacher = timm.create_model('resnet8', num_classes=10)
    teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True))
    teacher.eval()
    student = timm.create_model('resnet8', num_classes=10)
    student.load_state_dict(torch.load(init_ckpt, weights_only=True))
    student.train()
    method = HandCRD(steps[0]['distiller']) if crd else None
    params = list(student.parameters()) + (list(method.parameters()) if crd else [])
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=WD)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(MILESTONES), gamma=0.1)
    per_epoch = len(steps) // EPOCHS
    mismatches, evals = [], []
    for i, step in enumerate(steps):
        bad = [k for k, v in student.state_dict().items() if not close(v, step['state'][k])]
        if crd:
            mine = dict(memory_s=method.memory_s, memory_t=method.memory_t,
                        **{k: v for k, v in method.state_dict().items()})
            bad += [f'crd.{k}' for k, v in mine.items() if not close(v, step['distiller'][k])]
        if bad:
            mismatches.append(f'step {i} (epoch {i // per_epoch}): {bad[:4]}')
            return mismatches, evals, student
        student.load_state_dict(step['state'])
        if crd:
            method.load_state_dict({k: step['distiller'][k] for k in method.state_dict()})
            method.memory_s, method.memory_t = step['distiller']['memory_s'].clone(), step['distiller']['memory_t'].clone()
        x, y = step['x'], step['y']
        with torch.no_grad():
            t_x = teacher(x)
            f_t = pre_logits(teacher, x) if crd else None
        views = None if pick == 'kd' else picked_views(step, pick, student, teacher)  # before any grad pass
        assert (views is None) == ('pool' not in step)
        if crd:
            feats = student.forward_features(x)
            s_x, f_s = student.forward_head(feats), student.forward_head(feats, pre_logits=True)
        else:
            s_x = student(x)
        loss = GAMMA * F.cross_entropy(s_x, y) + ALPHA * kd_term(s_x, t_x)
        if views is not None:
            loss = loss + ALPHA * kd_term(student(views[0]), views[1])
        if crd:
            loss = loss + method(f_s, f_t, step['extras']['index'], step['negatives'])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (i + 1) % per_epoch == 0:
            sched.step()
            evals.append(evaluate(student, *eval_data))
    return mismatches, evals, student


def _eval_images(res) -> tuple:
    """The validation images of synthetic/10x16, normalised as train_kd reads them (its recorded mean / std)."""
    mean, std = res['recipe']['mean'], res['recipe']['std']
    ds = create_kd_dataset('synthetic/10x16', split='validation', is_training=False,
                           transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]))
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(images), torch.tensor(labels)


def check_run(train_kd, tmp_path, monkeypatch, teacher_ckpt, init_ckpt, pick, extra=(), workers=0, crd=False):
    views = [] if pick == 'kd' else ['--tl-cutmix', '--pick', pick]
    argv = ['--model', 'resnet8', *DATA, *RECIPE, '--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt,
            '--initial-checkpoint', init_ckpt, *views, '--workers', str(workers), *extra]
    steps, summary, res = run_train_kd(train_kd, tmp_path, monkeypatch, argv)
    assert len(steps) == EPOCHS * 96 // BATCH
    assert [float(r['lr']) for r in summary] == pytest.approx([LR * 0.1 ** k for k in range(EPOCHS)])
    mismatches, evals, student = hand_loop(steps, pick, init_ckpt, teacher_ckpt, _eval_images(res), crd=crd)
    assert not mismatches, f'train_kd left the hand loop at {mismatches[0]}'
    final = torch.load(tmp_path / 'run' / 'last.pth.tar', weights_only=True)['state_dict']
    bad = [k for k, v in student.state_dict().items() if not close(v, final[k])]
    assert not bad, f'the final weights differ: {bad[:4]}'
    for epoch, ((loss, top1), row) in enumerate(zip(evals, summary)):
        assert float(row['eval_loss']) == pytest.approx(loss, rel=1e-4, abs=1e-5), f'epoch {epoch} eval loss'
        assert float(row['eval_top1']) == pytest.approx(top1, abs=1e-6), f'epoch {epoch} eval top-1'
    return steps, summary


@pytest.mark.parametrize('workers', [0, 2])
def test_pick_kld_trajectory_equals_the_hand_loop(tmp_path, train_kd, monkeypatch, teacher_ckpt, init_ckpt, workers):
    check_run(train_kd, tmp_path, monkeypatch, teacher_ckpt, init_ckpt, 'kld', workers=workers)


@pytest.mark.parametrize('pick', ['t_ent', 's_ent', 'random', 'none', 'kd'])
def test_every_criterion_tlcutmix_and_kd_trajectories_equal_the_hand_loop(tmp_path, train_kd, monkeypatch,
                                                                         teacher_ckpt, init_ckpt, pick):
    check_run(train_kd, tmp_path, monkeypatch, teacher_ckpt, init_ckpt, pick)


def test_pick_on_a_per_sample_view_trajectory_equals_the_hand_loop(tmp_path, train_kd, monkeypatch, teacher_ckpt,
                                                                   init_ckpt):
    steps, _ = check_run(train_kd, tmp_path, monkeypatch, teacher_ckpt, init_ckpt, 'kld', extra=['--tl-aug', 'flip'],
                         workers=2)
    assert any(not torch.equal(s['extras']['view_input'], s['x']) for s in steps)  # the view is its own image


def test_pick_with_crd_trajectory_equals_the_hand_loop(tmp_path, train_kd, monkeypatch, teacher_ckpt, init_ckpt):
    check_run(train_kd, tmp_path, monkeypatch, teacher_ckpt, init_ckpt, 'kld', extra=CRD_FLAGS, crd=True)
