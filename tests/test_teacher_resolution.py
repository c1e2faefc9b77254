"""Teachers at their own resolution (``timm_kd/distill/resolution.py``).

The teachers here are ViTs with a fixed input size (timm refuses any other), so a pass that reached the teacher
unresized would fail, and forward hooks record what the teacher and the student see: the teacher gets every batch
(x, the pool of views, the picked rows, its evaluation, the augmentation score) at its own size, made by the one
documented interpolation, the student never anything but its own size. The size comes from the teacher's
pretrained config, or from --teacher-input-size, and is recorded in args.yaml, results.json and the model card.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from timm.models import save_for_hf

import timm_kd  # noqa: F401  (registers the CIFAR models)
from timm_kd import DistillMixup, DistillationTask
from timm_kd.distill.resolution import image_size, pretrained_input_size, resize_for_teacher
from timm_kd.hub.cards import student_card
from timm_kd.train import build
from timm_kd.train.args import parse_args, validate_args
from timm_kd.train.main import main
from timm_kd.experiments import da_score
from test_train_kd import BASE

COVERS = ('--teacher-input-size', 'DistillationTask.teacher_input_size')

pytestmark = pytest.mark.usefixtures('one_torch_thread')

CLASSES = 10


def _vit(size: int, seed: int = 0):
    """A one-block ViT that only takes ``size`` px images (timm's fixed_input_size), with ImageNet-style mean/std."""
    torch.manual_seed(seed)
    kwargs = dict(img_size=size, patch_size=8, depth=1, embed_dim=24, num_heads=2)
    return timm.create_model('vit_tiny_patch16_224', num_classes=CLASSES, **kwargs).eval(), kwargs


@pytest.fixture(scope='module')
def vit48(tmp_path_factory) -> str:
    """``local-dir:`` teacher trained 'at 48 px': its config.json says so (as a Hub teacher's does)."""
    model, kwargs = _vit(48)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 48, 48), num_classes=CLASSES)
    folder = tmp_path_factory.mktemp('vit48')
    save_for_hf(model, folder, model_args=kwargs, safe_serialization=True)
    return f'local-dir:{folder}'


class _Inputs:
    """Forward pre-hook: the shape (and the tensor) of every input a model gets."""

    def __init__(self, model):
        self.seen = []
        model.register_forward_pre_hook(lambda m, args: self.seen.append(args[0].detach().clone()))

    @property
    def shapes(self):
        return [tuple(x.shape) for x in self.seen]


# ------------------------------------------------------------------------------------- the helper

def test_image_size_spellings_and_mistakes():
    assert image_size(32) == (32, 32) and image_size([24, 30]) == (24, 30) and image_size((3, 224, 224)) == (224, 224)
    for bad in (7, (0, 32), (32, 4), (1, 2, 3, 4), 'x', True, 32.0, [16, 16.5]):
        with pytest.raises(ValueError, match='must be an image size of at least 8 px'):
            image_size(bad)
    assert pretrained_input_size(_vit(40)[0]) == (224, 224)  # timm's cfg of the registered name
    assert pretrained_input_size(torch.nn.Linear(2, 2)) is None


def test_the_resize_is_bilinear_antialiased_and_only_when_needed():
    x = torch.randn(2, 3, 16, 16)
    assert resize_for_teacher(x, None) is x and resize_for_teacher(x, (16, 16)) is x
    for size in ((48, 48), (8, 12)):
        ref = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)
        assert torch.equal(resize_for_teacher(x, size), ref)
    half = x.bfloat16()  # resized in float32 (no bfloat16 kernel on the CPU), returned in its own dtype
    assert torch.equal(resize_for_teacher(half, (8, 12)), resize_for_teacher(half.float(), (8, 12)).bfloat16())
    # weights sum to one: a constant image stays constant, so resizing commutes with the re-normalisation
    flat = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(resize_for_teacher(flat, (40, 40)), torch.full((1, 3, 40, 40), 0.7))
    # downsampling averages what it drops (no aliasing): one bright pixel between plain bilinear's samples survives
    dot = torch.zeros(1, 1, 16, 16)
    dot[..., 0, 0] = 1.
    assert F.interpolate(dot, size=(4, 4), mode='bilinear', align_corners=False).sum() == 0
    assert resize_for_teacher(dot, (4, 4)).sum() > 0


# ------------------------------------------------------------------------------------- the task, pass by pass

VIEWS = {
    'none': None,
    'tl_cutmix': dict(cutmix_alpha=1.0),
    'pick_kld': dict(pick='kld'),  # the teacher labels x and the whole pool, once
    'pick_random': dict(pick='random'),  # rows picked first: the teacher labels x and the picked rows only
    'cutmix_hard': dict(label_mode='hard', num_classes=CLASSES),  # the teacher sees x only
}


@pytest.mark.parametrize('view', list(VIEWS))
def test_the_teacher_sees_its_size_on_every_pass_and_the_student_its_own(view):
    teacher, _ = _vit(24)  # mean/std 0.5: the task re-normalizes too
    student = timm.create_model('resnet8', num_classes=CLASSES)  # CIFAR mean/std, 16 px
    t_in, s_in = _Inputs(teacher), _Inputs(student)
    task = DistillationTask(student, teacher, teacher_input_size=24).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, CLASSES, (8,), generator=g)
    views = DistillMixup(seed=1, **VIEWS[view])(x, y) if VIEWS[view] is not None else None
    out = task(x, y, views=views)
    assert t_in.shapes == [(8 + {'none': 0, 'tl_cutmix': 8, 'pick_kld': 16, 'pick_random': 8, 'cutmix_hard': 0}[view],
                            3, 24, 24)]  # one teacher pass, at its size
    assert all(shape[-2:] == (16, 16) for shape in s_in.shapes) and len(s_in.shapes) >= 1
    rows = None if views is None or view == 'cutmix_hard' else \
        views.x_mix.index_select(0, views.pick_index) if view == 'pick_random' else views.x_mix
    batch = x if rows is None else torch.cat([x, rows])
    s_mean, s_std = (torch.tensor(v).view(1, -1, 1, 1) for v in (student.pretrained_cfg['mean'],
                                                                  student.pretrained_cfg['std']))
    expect = (F.interpolate(batch, size=(24, 24), mode='bilinear', align_corners=False, antialias=True)
              * s_std + s_mean - 0.5) / 0.5
    torch.testing.assert_close(t_in.seen[0], expect)
    assert torch.isfinite(out['loss'])
    task.teacher_logits(x)  # the teacher's own evaluation
    assert t_in.shapes[-1] == (8, 3, 24, 24)


def test_without_a_size_the_teacher_sees_the_students_input():
    teacher, student = timm.create_model('resnet8', num_classes=CLASSES).eval(), timm.create_model('resnet8',
                                                                                                    num_classes=CLASSES)
    t_in = _Inputs(teacher)
    x = torch.randn(4, 3, 16, 16)
    DistillationTask(student, teacher, mixup=DistillMixup(seed=0)).train()(x, torch.arange(4))
    assert torch.equal(t_in.seen[0][:4], x)


# ------------------------------------------------------------------------------------- train_kd.py, da_score

def _watch_teachers(monkeypatch):
    """Record the inputs of every teacher train_kd or da_score builds."""
    watched = []
    create_teacher_model = build.create_teacher_model

    def watching(*args, **kwargs):
        teacher = create_teacher_model(*args, **kwargs)
        watched.append(_Inputs(teacher))
        return teacher
    for module in (build, da_score):  # da_score imported it by name
        monkeypatch.setattr(module, 'create_teacher_model', watching)
    return watched


def test_a_32px_student_distils_from_a_teacher_built_at_48px(tmp_path, vit48, monkeypatch):
    watched = _watch_teachers(monkeypatch)
    res = main(BASE[:2] + ['--dataset', 'synthetic/10x32', '--train-num-samples', '32', '--val-num-samples', '16',
                           '-b', '8', '--workers', '0', '--epochs', '1', '--warmup-epochs', '0', '--teacher', vit48,
                           '--tl-cutmix', '--pick', 'kld', '--output', str(tmp_path), '--experiment', 'run'])
    assert res['finished']
    shapes = watched[0].shapes
    # the teacher's evaluation (16 images in batches of 8), then each of the 4 steps once: x and a pool of 2 x 8
    # views (the picked rows reuse the pool's logits)
    assert shapes == [(8, 3, 48, 48)] * 2 + [(24, 3, 48, 48)] * 4, shapes
    run = Path(res['run_dir'])
    results = json.loads((run / 'results.json').read_text())
    args = yaml.safe_load((run / 'args.yaml').read_text())
    assert results['teacher_input_size'] == [3, 48, 48] and results['data_config']['input_size'] == [3, 32, 32]
    assert args['teacher_input_size'] == [48, 48]
    card = student_card(timm.create_model('resnet8', num_classes=CLASSES), 'me/resnet8.kd', results=results,
                        args=args, which='last', epoch=0)
    assert "input 3x48x48 (the student's images resized for it)" in card.split('**Teacher:**')[1].split('\n')[0]
    # replaying the run's args.yaml keeps the size, and so does a resume
    again, _ = parse_args(['--config', str(run / 'args.yaml')])
    assert again.teacher_input_size == [48, 48]


def _size_of(argv):
    args, explicit = parse_args(argv)
    validate_args(args, explicit)
    dc = build.data_config(args, explicit)
    build.build_teacher(args, dc)
    return args.teacher_input_size


def test_where_the_size_comes_from(tmp_path, vit48, teacher_ckpt):
    data = ['--model', 'resnet8', '--dataset', 'synthetic/10x16']
    assert _size_of(data + ['--teacher', vit48]) == [48, 48]  # its weights' own config
    assert _size_of(data + ['--teacher', vit48, '--teacher-input-size', '48']) == [48, 48]
    # a registered architecture with a checkpoint: its cfg (32 px) is the family's, not the checkpoint's
    assert _size_of(data + ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt]) == [16, 16]
    assert _size_of(data + ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt,
                            '--teacher-input-size', '24', '20']) == [24, 20]


def test_a_size_the_teacher_cannot_take_is_one_sentence_before_training(tmp_path, vit48, capsys):
    with pytest.raises(SystemExit) as e:  # the fixed 48 px ViT cannot take 40 px
        main(BASE + ['--teacher', vit48, '--teacher-input-size', '40', '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count('\n') == 0, err
    assert f"The teacher '{vit48}' at --teacher-input-size cannot take 3x40x40 inputs" in err
    assert not (tmp_path / 'out').exists()


def test_da_score_resizes_for_the_teacher(tmp_path, vit48, monkeypatch):
    watched = _watch_teachers(monkeypatch)
    res = da_score.main(['--teacher', vit48, '--dataset', 'synthetic/10x32', '--train-num-samples', '32', '-b', '8',
                         '--views', 'none,cutmix', '--seeds', '0', '--batches', '2', '--chunk', '1', '--no-plot',
                         '--output', str(tmp_path / 'score')])
    shapes = watched[0].shapes
    assert all(s[1:] == (3, 48, 48) for s in shapes) and (16, 3, 48, 48) in shapes, shapes
    assert res['teacher_input_size'] == [3, 48, 48]
    assert json.loads((tmp_path / 'score' / 'scores.json').read_text())['teacher_input_size'] == [3, 48, 48]


def test_a_teachers_own_normalisation_is_kept_unless_its_weights_come_from_a_checkpoint(monkeypatch, teacher_ckpt):
    """A registered name's own pretrained weights (Hub, local store) come with the mean / std they were trained with,
    and the task re-normalises for them; a checkpoint's weights take the data's (the architecture default is not
    the checkpoint's)."""
    args, explicit = parse_args(['--model', 'resnet8', '--dataset', 'synthetic/10x16'])
    dc = build.data_config(args, explicit)

    def pretrained_teacher(name, checkpoint=None, num_classes=None):
        model = timm.create_model('resnet8', num_classes=num_classes).eval()
        model.pretrained_cfg = dict(model.pretrained_cfg, mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
        return model

    monkeypatch.setattr(build.teacher_lib, 'create_teacher', pretrained_teacher)
    own = build.create_teacher_model('resnet8', dc)
    assert own.pretrained_cfg['mean'] == (0.4, 0.4, 0.4) != tuple(dc.mean)
    task = DistillationTask(build.create_student(args, dc), own)
    assert task._renormalize
    from_checkpoint = build.create_teacher_model('resnet8', dc, checkpoint=teacher_ckpt)
    assert tuple(from_checkpoint.pretrained_cfg['mean']) == tuple(dc.mean)
