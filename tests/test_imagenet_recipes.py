"""Table 5 (ImageNet) and Table 4 (Tiny ImageNet) of Wang et al.: the recipes in configs/imagenet/ and
configs/tinyimagenet/, their published numbers in configs/paper_results.yaml, and the grid of Table 5: every cell runs
once, the dry run names its published number, and the report pairs each run with its row."""
import os
import re
import shlex

import pytest
import torch
import yaml

import timm
from timm_kd.experiments import sweep
from timm_kd.experiments.report import Group, RunRecord, build_table, load_paper, paper_entry
from timm_kd.train.args import parse_args, validate_args
from timm_kd.train.build import resolve_lr
from timm_kd.train.schedule import create_kd_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET = os.path.join(ROOT, 'configs', 'imagenet')
RECIPE = os.path.join(IMAGENET, 'resnet34__resnet18.yaml')
GRID = os.path.join(ROOT, 'configs', 'sweeps', 'table5_imagenet.yaml')
PAPER = load_paper(os.path.join(ROOT, 'configs', 'paper_results.yaml'))
# the recipe (or method recipe) and variant flags of every run row of Tab. 5, and its name in paper_results.yaml
TABLE5 = {
    'student': ('student_resnet18.yaml', (), 'student'),
    'kd': ('resnet34__resnet18.yaml', ('--pick', 'none', '--tl-cutmix', '0'), 'KD'),
    'sp': ('sp/resnet34__resnet18.yaml', (), 'SP'),
    'at': ('at/resnet34__resnet18.yaml', (), 'AT'),
    'crd': ('crd/resnet34__resnet18.yaml', (), 'CRD'),
    'kd200': ('resnet34__resnet18.yaml', ('--pick', 'none', '--tl-cutmix', '0', '--epoch-scale', '2'), 'KD200'),
    'kd_tlcutmix': ('resnet34__resnet18.yaml', ('--pick', 'none'), 'KD+TLCutMix'),
    'kd_tlcutmix_pick': ('resnet34__resnet18.yaml', (), 'KD+TLCutMix+pick'),
    'kd_tlcutmix_pick200': ('resnet34__resnet18.yaml', ('--epoch-scale', '2'), 'KD+TLCutMix+pick200'),
}
METHOD_KEYS = ('distill', 'sp_beta', 'at_beta', 'at_p', 'crd_beta', 'crd_feat_dim', 'nce_k', 'nce_t', 'nce_m',
               'dkd_alpha', 'dkd_beta', 'dkd_warmup', 'kd_temperature', 'kd_alpha', 'task_loss_weight',
               'distill_loss_weight', 'tl_cutmix', 'pick', 'teacher', 'kd_model_name', 'kd_distill_type',
               'config')


def _args(path, *extra):
    args, explicit = parse_args(['--config', path, *extra])
    validate_args(args, explicit)
    return args


def _settings(args):
    """A run's settings as the report reads them (its args.yaml)."""
    return yaml.safe_load(yaml.safe_dump(vars(args)))


def _row(settings):
    [row] = build_table([Group(settings, [RunRecord('run', settings, [], {'best_top1': 0., 'last_top1': 0.}, [])])],
                        [], paper=PAPER)
    return row['paper_source']


def test_imagenet_recipe_is_the_papers():
    a = _args(RECIPE)
    assert (a.dataset, a.num_classes, a.img_size, a.model, a.teacher, a.pretrained) == (
        'imagenet', 1000, 224, 'resnet18', 'resnet34.tv_in1k', False)
    # the teacher: torchvision's ResNet-34 weights, which timm takes from the Hub
    cfg = timm.models.get_pretrained_cfg(a.teacher)
    assert cfg.hf_hub_id == 'timm/resnet34.tv_in1k' and cfg.num_classes == 1000
    # data: RandomResizedCrop(224) + flip, no colour jitter, bilinear; eval resize 256 + centre crop 224
    assert (a.scale, a.ratio, a.hflip, a.color_jitter, a.aa, a.reprob) == ([0.08, 1.0], [0.75, 4 / 3], 0.5, 0., None, 0.)
    assert (a.train_interpolation, a.interpolation, a.crop_pct, a.std_aug) == ('bilinear', 'bilinear', 0.875, 'crop_flip')
    # schedule: batch 256, lr 0.1, 100 epochs, x0.1 after 30 / 60 / 90, classic SGD, wd 1e-4 on every parameter
    assert (a.opt, a.momentum, a.weight_decay, a.wd_all_params, a.batch_size) == ('momentum', 0.9, 1e-4, True, 256)
    assert (a.epochs, a.epoch_scale, a.sched, a.decay_milestones, a.decay_rate) == (100, 1., 'multistep_torch',
                                                                                    [30, 60, 90], 0.1)
    assert (a.warmup_epochs, a.cooldown_epochs, a.smoothing, a.mixup, a.cutmix) == (0, 0, 0., 0., 0.)
    # KD+TLCutMix+pick: T 4, 0.1 CE + 0.9 KL, a pool of 2 x batch, half of it kept (the authors' --n_pick 256)
    assert (a.kd_temperature, a.kd_alpha, a.tl_cutmix, a.pick, a.pick_candidates, a.pick_ratio) == (
        4., 0.9, 1., 'kld', 2, 0.5)


@pytest.mark.parametrize('world,batch,lr', [(1, 256, 0.1), (8, 32, 0.1), (2, 128, 0.1), (2, 256, 0.2), (4, 128, 0.2)])
def test_imagenet_lr_follows_the_global_batch(world, batch, lr):
    """lr = 0.1 x global batch / 256: the recipe's 0.1 whenever --batch-size is 256 / processes."""
    a = _args(RECIPE, '--batch-size', str(batch))
    assert a.lr is None
    resolve_lr(a, world)
    assert a.lr == pytest.approx(lr)


@pytest.mark.parametrize('scale,epochs,decays', [(1, 100, [30, 60, 90]), (2, 200, [60, 120, 180])])
def test_imagenet_lr_per_epoch(scale, epochs, decays):
    a = _args(RECIPE, '--epoch-scale', str(scale))
    resolve_lr(a, 1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=a.lr)
    sched, num_epochs = create_kd_scheduler(opt, a, updates_per_epoch=3)
    lrs = []
    for epoch in range(num_epochs):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]['lr'])
    assert num_epochs == epochs and [e for e in range(1, epochs) if lrs[e] != lrs[e - 1]] == decays
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(1e-4)


def test_imagenet_method_recipes_change_the_method_only():
    """SP, AT, CRD, DKD and the student alone: the data and the schedule of the KD recipe, their own method."""
    base = vars(_args(RECIPE))
    methods = {}
    for path in [os.path.join(IMAGENET, 'student_resnet18.yaml')] + [
            os.path.join(IMAGENET, m, 'resnet34__resnet18.yaml') for m in ('sp', 'at', 'crd', 'dkd')]:
        a = vars(_args(path))
        assert {k: v for k, v in a.items() if k not in METHOD_KEYS} == {
            k: v for k, v in base.items() if k not in METHOD_KEYS}, path
        methods[a['distill'] if a['teacher'] else 'ce'] = a
    assert methods['ce']['teacher'] is None
    for name, beta in (('sp', 3000.), ('at', 1000.), ('crd', 0.8)):  # RepDistiller's beta, with the KD term
        m = methods[name]
        assert (m[f'{name}_beta'], m['task_loss_weight'], m['kd_alpha'], m['tl_cutmix'], m['pick']) == (
            beta, 0.1, 0.9, 0., 'none')
    assert (methods['crd']['crd_feat_dim'], methods['crd']['nce_k'], methods['crd']['nce_t'],
            methods['crd']['nce_m']) == (128, 16384, 0.07, 0.5)
    # mdistiller configs/imagenet/r34_r18/dkd.yaml: CE 1, alpha 1, beta 0.5, T 1, warm-up 1 epoch
    d = methods['dkd']
    assert (d['task_loss_weight'], d['distill_loss_weight'], d['dkd_alpha'], d['dkd_beta'], d['kd_temperature'],
            d['dkd_warmup']) == (1., 1., 1., 0.5, 1., 1)


def _quoted(path, with_top5):
    """{label: numbers} quoted in a recipe header: "LABEL top1 / top5" (ImageNet) or "LABEL top1 (std)" (Tiny)."""
    header = open(path).read().split('accelerate launch')[0]
    if with_top5:
        return {label: (float(a), float(b)) for label, a, b in
                re.findall(r'([A-Za-z0-9+]+) ([0-9]+\.[0-9]+) / ([0-9]+\.[0-9]+)', header)}
    return {label: (float(a), float(b) if b else None) for label, a, b in
            re.findall(r'([A-Za-z0-9+]+) ([0-9]+\.[0-9]+) %?,? ?(?:\(([0-9.]+)\))?', header)}


def _published(dataset, label, teacher=None, model=None):
    [entry] = [e for e in PAPER if e['source'].rsplit(', ', 1)[1] == label and e['match']['dataset'] == dataset
               and (teacher is None or e['match'].get('teacher') == teacher)
               and (model is None or e['match']['model'] == model)]
    return entry


def test_imagenet_recipes_quote_their_published_rows():
    """Every number a configs/imagenet/ header quotes is the one configs/paper_results.yaml holds for that row."""
    quoted = {}
    for path in sorted(os.path.join(d, f) for d, _, files in os.walk(IMAGENET) for f in files):
        numbers = _quoted(path, with_top5=True)
        assert numbers, path
        quoted.update(numbers)
    for label, (top1, top5) in quoted.items():
        entry = _published('imagenet', label)
        assert (entry['top1'], entry['top5']) == (top1, top5), label
    assert set(quoted) == {row for _, _, row in TABLE5.values()} | {'teacher', 'KD'} - {'kd'}
    dkd = _published('imagenet', 'DKD')
    assert dkd['top1'] == 71.7 and 'DKD 71.70' in open(os.path.join(IMAGENET, 'dkd', 'resnet34__resnet18.yaml')).read()


@pytest.mark.parametrize('row', sorted(TABLE5))
def test_each_table5_row_is_a_recipe_the_report_pairs_with_its_number(row):
    recipe, extra, label = TABLE5[row]
    source = _row(_settings(_args(os.path.join(IMAGENET, recipe), *extra)))
    assert source == f'Wang et al. Tab. 5, {label}'


def test_table5_grid_runs_every_cell_once_and_the_dry_run_names_its_number(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the grid names files relative to the repository
    runs = sweep.expand_grid(sweep.load_grid(GRID))
    assert sorted(r.labels['row'] for r in runs) == sorted(TABLE5) and {r.labels['seed'] for r in runs} == {'0'}
    for run in runs:  # each run is its row's recipe + variant, the data folder and the seed aside
        recipe, extra, _ = TABLE5[run.labels['row']]
        got = vars(parse_args(run.argv)[0])
        want = vars(parse_args(['--config', f'configs/imagenet/{recipe}', *extra])[0])
        assert {k: v for k, v in got.items() if k not in ('config', 'data_dir', 'seed')} == {
            k: v for k, v in want.items() if k not in ('config', 'data_dir', 'seed')}, run.name
    assert sweep.main([GRID, '--dry-run']) == 0
    plan = capsys.readouterr().out
    published = re.findall(r'^  new +row-(\w+)__seed-0 .*\n.*\n +published: (.*)$', plan, re.M)
    rows = {row: text for row, text in published}
    assert len(published) == len(rows) == len(TABLE5)
    for row, (_, _, label) in TABLE5.items():
        entry = _published('imagenet', label)
        assert rows[row] == f'{entry["source"]}: top-1 {entry["top1"]}, top-5 {entry["top5"]}', row
    # every published row of Tab. 5 is run once, but the teacher's (torchvision's weights, which every run measures)
    table5 = {e['source'] for e in PAPER if e['source'].startswith('Wang et al. Tab. 5, ')}
    assert table5 - {text.split(':')[0] for text in rows.values()} == {'Wang et al. Tab. 5, teacher'}


def _tiny_command(path):
    lines = open(path).read().split('accelerate launch train_kd.py', 1)[1].splitlines()
    return shlex.split(' '.join(line.lstrip('#').rstrip('\\') for line in lines[:2]))


def test_tiny_imagenet_recipes_quote_table4_and_name_their_teacher_recipe():
    """Each Tiny ImageNet pair's header quotes Tab. 4's teacher, KD and KD+TLCutMix+pick as paper_results.yaml holds
    them, and its command takes the teacher from the last checkpoint of the teacher's recipe."""
    folder = os.path.join(ROOT, 'configs', 'tinyimagenet')
    pairs = sorted(f for f in os.listdir(folder) if '__' in f)
    assert len(pairs) == 7
    for name in pairs:
        path = os.path.join(folder, name)
        a = _args(path)
        quoted = _quoted(path, with_top5=False)
        for label in ('teacher', 'KD', 'KD+TLCutMix+pick'):
            if label == 'teacher':
                entry = [e for e in PAPER if e['match'] == {'dataset': 'tinyimagenet', 'model': a.teacher, 'teacher': None,
                                                             'epoch_scale': 1, 'distill': 'kd'}][0]
            else:
                entry = _published('tinyimagenet', label, a.teacher, a.model)
            assert quoted[label] == (entry['top1'], entry.get('std')), (name, label)
        command = _tiny_command(path)
        checkpoint = command[command.index('--teacher-checkpoint') + 1]
        teacher_recipe = os.path.join(folder, f'teacher_{a.teacher}.yaml')
        experiment = re.search(r'--experiment (\S+)', open(teacher_recipe).read()).group(1)
        assert checkpoint == f'output/train/{experiment}/last.pth.tar' and _args(teacher_recipe).model == a.teacher
        # the variants a header names meet their Tab. 4 rows in the report
        for extra, label in ((('--pick', 'none', '--tl-cutmix', '0'), 'KD'), (('--pick', 'none'), 'KD+TLCutMix'),
                             ((), 'KD+TLCutMix+pick'), (('--epoch-scale', '2'), 'KD+TLCutMix+pick480')):
            assert _row(_settings(_args(path, *extra))) == f'Wang et al. Tab. 4, {label}', (name, extra)


def test_a_published_entry_is_found_the_way_the_report_finds_it():
    """sweep's dry run and the report read the same entry: paper_entry is the report's lookup."""
    settings = _settings(_args(RECIPE))
    assert paper_entry(settings, PAPER)['source'] == _row(settings) == 'Wang et al. Tab. 5, KD+TLCutMix+pick'
