"""The YAML recipes in configs/: they parse with train_kd's parser, name registered models and give the
CRD / RepDistiller schedule exactly (lr per epoch as torch's MultiStepLR, SGD without Nesterov, ...)."""
import glob
import json
import os
import re

import pytest
import timm
import torch
import yaml

from timm_kd.distill.methods import METHODS
from timm_kd.report import RESULTS_VERSIONS, Group, RunRecord, build_table, load_paper, load_run
from timm_kd.train.args import parse_args, validate_args
from timm_kd.train.schedule import create_kd_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the recipes: configs/<dataset>/*.yaml, configs/<dataset>/<method>/*.yaml (configs/sweeps/ holds grids of
# timm_kd.sweep, tested in test_sweep.py)
CONFIGS = sorted(c for pattern in (('*', '*.yaml'), ('*', '*', '*.yaml'))
                 for c in glob.glob(os.path.join(ROOT, 'configs', *pattern))
                 if os.path.relpath(c, os.path.join(ROOT, 'configs')).split(os.sep)[0] != 'sweeps')
KD_CONFIGS = [c for c in CONFIGS if '__' in os.path.basename(c)]
# the recipes of the CRD / RepDistiller schedule (CIFAR-100, Tiny ImageNet); configs/imagenet/ has the paper's ImageNet
# schedule (tests/test_imagenet_recipes.py)
CRD_SCHEDULE_CONFIGS = [c for c in CONFIGS if os.sep + 'imagenet' + os.sep not in c]
SMALL_LR_STUDENTS = ('mobilenetv2_cifar', 'shufflenetv1_cifar', 'shufflenetv2_cifar')

# Wang et al. (ICLR'22 submission "Understanding the success of KD - a data augmentation perspective"),
# Tab. 3: the seven CIFAR-100 teacher -> student pairs (also in Good-DA-in-KD's scripts/).
PAPER_CIFAR100_PAIRS = {
    ('wrn_40_2', 'wrn_16_2'), ('resnet56', 'resnet20'), ('resnet32x4', 'resnet8x4'), ('vgg13_cifar', 'vgg8_cifar'),
    ('vgg13_cifar', 'mobilenetv2_cifar'), ('resnet50_cifar', 'vgg8_cifar'), ('resnet32x4', 'shufflenetv2_cifar'),
}

# Tab. 9 (AT / CC / SP / PKT / VID + TLCutMix): the same pairs but ResNet110 -> ResNet20 in place of ResNet56's
TABLE9_PAIRS = PAPER_CIFAR100_PAIRS - {('resnet56', 'resnet20')} | {('resnet110', 'resnet20')}
TABLE9_METHODS = ('at', 'cc', 'sp', 'pkt', 'vid')
# RepDistiller scripts/run_cifar_distill.sh, -b of each method
REPDISTILLER_BETA = {'crd': 0.8, 'at': 1000.0, 'cc': 0.02, 'sp': 3000.0, 'pkt': 30000.0, 'vid': 1.0}


def _args(path, *extra):
    args, explicit = parse_args(['--config', path, *extra])
    validate_args(args, explicit)
    return args


def _name(path):
    return os.path.relpath(path, ROOT)


def test_the_paper_pairs_and_the_tiny_imagenet_teachers_exist():
    pairs = {(_args(c).teacher, _args(c).model) for c in KD_CONFIGS
             if os.path.dirname(c) == os.path.join(ROOT, 'configs', 'cifar100')}
    assert pairs == PAPER_CIFAR100_PAIRS | TABLE9_PAIRS  # a KD recipe for every pair of Tab. 3 and Tab. 9
    tiny = [_args(c) for c in CONFIGS if os.sep + 'tinyimagenet' + os.sep in c]
    # Tab. 4: the seven pairs of Tab. 3 on Tiny ImageNet, and a recipe for every teacher (trained with CE first)
    assert {(a.teacher, a.model) for a in tiny if a.teacher} == PAPER_CIFAR100_PAIRS
    assert {a.model for a in tiny if not a.teacher} == {t for t, _ in PAPER_CIFAR100_PAIRS}


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_parses_and_names_registered_models(path):
    args = _args(path)
    assert timm.is_model(args.model), args.model
    assert args.teacher is None or timm.is_model(args.teacher), args.teacher
    # file name = <teacher architecture>__<student>.yaml, or teacher_<model>.yaml / student_<model>.yaml (CE alone)
    base = os.path.splitext(os.path.basename(path))[0]
    if args.teacher:
        assert base == f'{args.teacher.split(".")[0]}__{args.model}'  # a pretrained tag (resnet34.tv_in1k) is left out
    else:
        assert base in (f'teacher_{args.model}', f'student_{args.model}')


@pytest.mark.parametrize('path', CRD_SCHEDULE_CONFIGS, ids=_name)
def test_config_is_the_crd_recipe(path):
    a = _args(path)
    assert (a.opt, a.momentum, a.weight_decay, a.wd_all_params) == ('momentum', 0.9, 5e-4, True)
    assert (a.batch_size, a.epochs, a.epoch_scale) == (64, 240, 1.0)
    assert (a.sched, a.decay_milestones, a.decay_rate) == ('multistep_torch', [150, 180, 210], 0.1)
    assert (a.warmup_epochs, a.cooldown_epochs, a.smoothing, a.mixup, a.cutmix) == (0, 0, 0.0, 0.0, 0.0)
    assert a.lr == (0.01 if a.model in SMALL_LR_STUDENTS else 0.05)
    assert a.std_aug == 'crop_flip'
    if 'cifar100' in a.dataset:
        assert (a.dataset, a.num_classes, a.crop_padding) == ('torch/cifar100', 100, 4)
    else:
        assert (a.dataset, a.num_classes, a.crop_padding) == ('tinyimagenet', 200, 8)
    if a.teacher:  # the paper's KD weights + TLCutMix, + pick but for Tab. 9's methods
        assert (a.kd_temperature, a.kd_alpha, a.tl_cutmix, a.tl_mixup, a.mixed_kd_weight) == (4.0, 0.9, 1.0, 0.0, 1.0)
        assert a.pick == ('none' if a.distill in TABLE9_METHODS else 'kld')
        assert a.pick == 'none' or (a.pick_candidates, a.pick_ratio) == (2, 0.5)


def test_method_recipes_tables_3_and_9():
    """configs/cifar100/<method>/: CRD+TLCutMix+pick for the seven pairs of Tab. 3, Tab. 9's methods +TLCutMix for
    its seven pairs, each with RepDistiller's beta and the paper's CE / KD weights (Tab. 9: the methods include the
    KD loss)."""
    by_method = {}
    for path in KD_CONFIGS:
        folder = os.path.basename(os.path.dirname(path))
        if folder in METHODS and os.path.basename(os.path.dirname(os.path.dirname(path))) == 'cifar100':
            a = _args(path)
            assert a.distill == folder and a.task_loss_weight == 0.1
            assert getattr(a, f'{folder}_beta') == REPDISTILLER_BETA[folder]
            by_method.setdefault(folder, set()).add((a.teacher, a.model))
    assert by_method.pop('crd') == PAPER_CIFAR100_PAIRS
    assert by_method == {m: TABLE9_PAIRS for m in TABLE9_METHODS}


def _method_of_a_quoting_recipe(path):
    """The method of a recipe whose header quotes every published number of its pair (the method recipes, and the
    KD recipe of ResNet110 -> ResNet20, a pair only Tab. 9 has), else None."""
    method = os.path.basename(os.path.dirname(path))
    if method in METHODS:
        return method if os.path.basename(os.path.dirname(os.path.dirname(path))) == 'cifar100' else None
    kd_only_in_table9 = [f'{t}__{s}.yaml' for t, s in TABLE9_PAIRS - PAPER_CIFAR100_PAIRS]
    return 'kd' if method == 'cifar100' and os.path.basename(path) in kd_only_in_table9 else None


def _quoted_numbers(path):
    """{label: (top1, std or None)} of the "LABEL 75.46 (0.25)" numbers in a recipe's header (the comment lines
    before its command line)."""
    header = open(path).read().split('accelerate launch')[0]
    return {label: (float(top1), float(std) if std else None)
            for label, top1, std in re.findall(r'([A-Za-z0-9+]+(?: alone)?) ([0-9]+\.[0-9]+)(?: \(([0-9.]+)\))?', header)}


def test_method_recipes_quote_every_published_number_of_their_pair():
    """The header of configs/cifar100/<method>/<pair>.yaml quotes, as configs/paper_results.yaml holds them, the
    teacher and every published number of its method on its pair (with and without the view, alone, + KD); so does
    the KD recipe of Tab. 9's ResNet110 -> ResNet20 (KD, KD+TLCutMix)."""
    paper = load_paper(os.path.join(ROOT, 'configs', 'paper_results.yaml'))
    for path in KD_CONFIGS:
        method = _method_of_a_quoting_recipe(path)
        if method is None:
            continue
        cfg = yaml.safe_load(open(path))
        published = {e['source'].rsplit(', ', 1)[1]: (e['top1'], e.get('std')) for e in paper
                     if e['match']['dataset'] == cfg['dataset'] and e['match'].get('distill') == method
                     and (e['match']['teacher'], e['match']['model']) == (cfg['teacher'], cfg['model'])}
        teacher = [e['top1'] for e in paper if e['match']['dataset'] == cfg['dataset']
                   and e['match']['model'] == cfg['teacher'] and e['match']['teacher'] is None]
        assert set(published) >= set(_variants(method).values()) and len(teacher) == 1, path
        assert _quoted_numbers(path) == {'teacher': (teacher[0], None), **published}, path



def _variants(method):
    """{extra flags: label in configs/paper_results.yaml} of the runs a method recipe's header names."""
    alone = ('--kd-alpha', '0', '--task-loss-weight', '1')
    if method == 'kd':  # Tab. 9's baseline rows (it has no +pick row)
        return {('--pick', 'none', '--tl-cutmix', '0'): 'KD', ('--pick', 'none'): 'KD+TLCutMix'}
    if method == 'crd':
        return {(): 'CRD+TLCutMix+pick', ('--epoch-scale', '4'): 'CRD+TLCutMix+pick960',
                ('--pick', 'none', '--tl-cutmix', '0'): 'CRD', ('--pick', 'none', '--tl-cutmix', '0', *alone): 'CRD alone'}
    name = method.upper()
    return {(): f'{name}+TLCutMix', ('--tl-cutmix', '0'): f'{name}+KD', ('--tl-cutmix', '0', *alone): f'{name} alone'}


def test_method_recipe_variants_meet_their_published_number_in_the_report():
    """Each run a method recipe names (the recipe, and its variants without the view, without KD, 960 epochs), and
    the Tab. 9 rows of the ResNet110 -> ResNet20 KD recipe, recorded as train_kd records args.yaml, gets from
    timm_kd.report --paper the number its header quotes."""
    paper = load_paper(os.path.join(ROOT, 'configs', 'paper_results.yaml'))
    for path in KD_CONFIGS:
        method = _method_of_a_quoting_recipe(path)
        if method is None:
            continue
        quoted = _quoted_numbers(path)
        for extra, label in _variants(method).items():
            settings = yaml.safe_load(yaml.safe_dump(vars(_args(path, *extra))))  # as args.yaml holds them
            run = RunRecord(path, settings, [], {'best_top1': 0.0, 'last_top1': 0.0}, [])
            [row] = build_table([Group(settings, [run])], [], paper=paper)
            assert row['paper_source'].endswith(', ' + label), (path, extra, row['paper_source'])
            assert (row['paper_top1'], row['paper_std']) == quoted[label], (path, extra)

def _lr_per_epoch(args, base_lr):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr, momentum=0.9)
    sched, num_epochs = create_kd_scheduler(opt, args, updates_per_epoch=7)
    lrs = []
    for epoch in range(num_epochs):  # as the training loop: the lr of epoch e is set by step(e)
        sched.step(epoch)
        lrs.append(opt.param_groups[0]['lr'])
    return lrs


def _torch_multistep(base_lr, epochs, milestones):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        ref.step()
    return lrs


@pytest.mark.parametrize(
    'path', [c for c in CONFIGS if c.endswith(('wrn_40_2__wrn_16_2.yaml', 'mobilenetv2_cifar.yaml'))], ids=_name)
def test_config_lr_per_epoch_is_crd(path):
    a = _args(path)
    lrs = _lr_per_epoch(a, a.lr)
    assert len(lrs) == 240
    ref = _torch_multistep(a.lr, 240, [150, 180, 210])
    assert lrs == pytest.approx(ref, rel=1e-9)
    # CRD's adjust_learning_rate: 1-based epoch E gets lr0 * 0.1 ** #(E > m)
    crd = [a.lr * 0.1 ** sum(e > m for m in (150, 180, 210)) for e in range(1, 241)]
    assert lrs == pytest.approx(crd, rel=1e-9)
    assert lrs[149] == pytest.approx(a.lr) and lrs[150] == pytest.approx(a.lr * 0.1)


def test_epoch_scale_scales_epochs_and_milestones():
    path = [c for c in KD_CONFIGS if c.endswith('resnet56__resnet20.yaml')][0]
    a = _args(path, '--epoch-scale', '4')
    lrs = _lr_per_epoch(a, a.lr)
    assert lrs == pytest.approx(_torch_multistep(0.05, 960, [600, 720, 840]), rel=1e-9)


def test_command_line_overrides_config_for_paper_variants():
    path = [c for c in KD_CONFIGS if c.endswith('resnet56__resnet20.yaml')][0]
    a = _args(path, '--pick', 'none')  # KD + TLCutMix
    assert (a.pick, a.tl_cutmix) == ('none', 1.0)
    a = _args(path, '--pick', 'none', '--tl-cutmix', '0')  # plain KD
    assert (a.pick, a.tl_cutmix, a.teacher) == ('none', 0.0, 'resnet56')


def test_a_config_trains_end_to_end(tmp_path):
    """One recipe through train_kd.main on a tiny synthetic CIFAR-100 stand-in, with a RepDistiller-format teacher."""
    import sys
    sys.path.insert(0, ROOT)
    import train_kd
    teacher = timm.create_model('resnet32x4', num_classes=100)
    ckpt = tmp_path / 'ckpt_epoch_240.pth'
    torch.save({'epoch': 240, 'model': teacher.state_dict(), 'accuracy': 0.0}, ckpt)
    path = os.path.join(ROOT, 'configs', 'cifar100', 'resnet32x4__shufflenetv2_cifar.yaml')
    res = train_kd.main(['--config', path, '--dataset', 'synthetic/100x16', '--teacher-checkpoint', str(ckpt),
                         '--epochs', '1', '--train-num-samples', '128', '--val-num-samples', '32', '--workers', '0',
                         '--output', str(tmp_path / 'runs'), '--experiment', 'smoke', '--checkpoint-hist', '0'])
    assert res['finished'] and res['model'] == 'shufflenetv2_cifar' and res['teacher'] == 'resnet32x4'
    # results.json carries the layout version the report reads, and the report reads this run
    with open(os.path.join(res['run_dir'], 'results.json')) as f:
        assert json.load(f)['version'] in RESULTS_VERSIONS
    assert load_run(res['run_dir']).results['last_top1'] == res['last_top1']
    r = res['recipe']
    assert (r['lr'], r['opt'], r['wd_all_params'], r['pick'], r['tl_cutmix'], r['batch_size']) == \
        (0.01, 'momentum', True, 'kld', 1.0, 64)
