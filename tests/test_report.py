"""timm_kd.report and timm_kd.figures on hand-made run folders with known numbers (no training)."""
import csv
import glob
import hashlib
import io
import json
import math
import os
import re

import pytest
import yaml

from timm_kd import report
from timm_kd.figures import epoch_scaling_series, read_da_score, write_figures

ARGS = dict(model='resnet8', teacher='resnet14', dataset='sklearn/digits', epochs=3, epoch_scale=1.0, lr=0.05,
            tl_cutmix=None, pick='none', workers=0, output='/somewhere', data_dir='', resume='')


def fake_run(root, name, best, last, finished=True, version=None, summary=True, kl=None, **args):
    """A run folder as train_kd.py writes it: args.yaml, summary.csv (3 epochs), results.json."""
    d = root / name
    d.mkdir(parents=True)
    settings = dict(ARGS, experiment=name, **args)
    (d / 'args.yaml').write_text(yaml.safe_dump(settings))
    curve = [best - 5.0, best, last]
    if summary:
        with open(d / 'summary.csv', 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['epoch', 'train_loss', 'train_kl_ratio', 'eval_top1', 'lr'])
            for e, acc in enumerate(curve):
                w.writerow([e, 1.0, '' if kl is None else kl + 0.1 * e, acc, 0.05])
    results = dict(model='resnet8', best_top1=best, best_epoch=1, last_top1=last, last_epoch=2, finished=finished)
    if version is not None:
        results['version'] = version
    (d / 'results.json').write_text(json.dumps(results))
    return d


def mean_sd(xs):
    """Independent reference: arithmetic mean and the n-1 sample standard deviation."""
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / 'runs'
    kd = {0: (71.0, 70.0), 1: (72.0, 71.5), 2: (74.0, 73.0)}
    cm = {0: (73.0, 72.0), 1: (75.5, 74.0)}  # seed 2 missing
    for s, (b, l) in kd.items():
        fake_run(root / 'kd', f'kd-s{s}', b, l, seed=s)
    for s, (b, l) in cm.items():
        fake_run(root / 'deeper' / 'tlcutmix', f'tlcm-s{s}', b, l, seed=s, tl_cutmix=1.0, pick='kld', kl=1.2)
    return root, kd, cm


def _tree_state(root):
    """(mtime_ns, sha256) of every file below root (a link: its target's name; a FIFO: its mode)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if os.path.islink(p) or not os.path.isfile(p):
                out[p] = (st.st_mtime_ns, os.readlink(p) if os.path.islink(p) else st.st_mode)
                continue
            with open(p, 'rb') as fh:
                out[p] = (st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


def test_runs_from_before_the_timm_flags_group_with_runs_after(tmp_path):
    """A KD run whose args.yaml predates --kd-model-name / --kd-distill-type / --teacher-input-size / the token and
    feature flags groups with the same run made after them; another teacher input size is another group."""
    new = dict(kd_model_name='resnet14', kd_distill_type='logit', kd_loss_type='kl', kd_token_distill_type='soft',
               kd_student_feature_dim=None, kd_teacher_feature_dim=None)
    old = fake_run(tmp_path, 'old', 71.0, 70.0, seed=0)
    results = json.loads((old / 'results.json').read_text())
    (old / 'results.json').write_text(json.dumps(dict(results, data_config=dict(input_size=[3, 8, 8]))))
    fake_run(tmp_path, 'new', 72.0, 71.0, seed=1, teacher_input_size=[8, 8], **new)
    fake_run(tmp_path, 'resized', 73.0, 72.0, seed=0, teacher_input_size=[32, 32], **new)
    runs, _ = report.load_runs([str(tmp_path)])
    groups = report.group_runs(runs)
    assert sorted(sorted(r.name for r in g.runs) for g in groups) == [['new', 'old'], ['resized']]
    assert report.varying_keys(groups) == ['teacher_input_size']


def test_known_numbers_give_the_known_table(runs, capsys):
    root, kd, cm = runs
    assert report.main([str(root), '--baseline', 'tl_cutmix=none,pick=none', '--format', 'csv']) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0])[:2] == ['pick', 'tl_cutmix']  # the settings that differ, in args.yaml order
    assert [r['tl_cutmix'] for r in rows] == ['', '1.0'] and [r['pick'] for r in rows] == ['none', 'kld']
    by = {r['pick']: r for r in rows}
    for name, runs_ in (('none', kd), ('kld', cm)):
        r = by[name]
        assert int(r['n']) == len(runs_) and r['seeds'] == ' '.join(map(str, sorted(runs_)))
        for i, metric in enumerate(('best_top1', 'last_top1')):
            m, sd = mean_sd([v[i] for v in runs_.values()])
            assert float(r[f'{metric}_mean']) == pytest.approx(m, abs=1e-9)
            assert float(r[f'{metric}_std']) == pytest.approx(sd, abs=1e-9)
            base = sum(v[i] for v in kd.values()) / 3
            assert float(r[f'{metric}_delta']) == pytest.approx(m - base, abs=1e-9)
    assert by['none']['note'] == ''
    assert by['kld']['note'] == 'n<3; missing seed 2'

    # the Markdown table: mean (std) of best and last, n, deltas, the flag
    assert report.main([str(root), '--baseline', 'pick=none']) == 0
    md = capsys.readouterr().out.splitlines()
    m_best, sd_best = mean_sd([v[0] for v in cm.values()])
    m_last, sd_last = mean_sd([v[1] for v in cm.values()])
    base_last = sum(v[1] for v in kd.values()) / 3
    assert md[0] == '| pick | tl_cutmix | n | best top-1 | last top-1 | Δ best | Δ last | note |'
    row = [c.strip() for c in md[3].strip('|').split('|')]
    assert row[:5] == ['kld', '1', '2', f'{m_best:.2f} ({sd_best:.2f})', f'{m_last:.2f} ({sd_last:.2f})']
    assert row[6] == f'{m_last - base_last:+.2f}' and row[7] == 'n<3; missing seed 2'


def test_single_seed_has_no_std_and_latex_escapes(tmp_path, capsys):
    fake_run(tmp_path, 'only', 80.0, 79.0, seed=0)
    fake_run(tmp_path, 'other', 81.0, 78.0, seed=0, lr=0.1)
    assert report.main([str(tmp_path), '--format', 'latex']) == 0
    tex = capsys.readouterr().out
    assert r'0.05 & 1 & 80.00 (--) & 79.00 (--) & n$<$3 \\' in tex and tex.startswith(r'\begin{tabular}{lrrrl}')


def test_broken_folders_are_named_and_skipped_and_nothing_is_modified(runs, tmp_path, capsys):
    root, kd, cm = runs
    bad = root / 'bad'
    fake_run(bad, 'unfinished', 50.0, 49.0, finished=False, seed=0)
    fake_run(bad, 'future', 50.0, 49.0, version=99, seed=0)
    fake_run(bad, 'nosummary', 50.0, 49.0, summary=False, seed=0)
    (bad / 'noresults').mkdir()
    (bad / 'noresults' / 'args.yaml').write_text(yaml.safe_dump(ARGS))
    # a run's own sub-folders (a published copy) are not runs of their own
    copy = root / 'kd' / 'kd-s0' / 'hub' / 'x' / 'training'
    copy.mkdir(parents=True)
    for f in ('args.yaml', 'results.json', 'summary.csv'):
        copy.joinpath(f).write_bytes((root / 'kd' / 'kd-s0' / f).read_bytes())
    before = _tree_state(root)
    out = tmp_path / 'out'
    paper = tmp_path / 'paper.yaml'
    paper.write_text(yaml.safe_dump([dict(source='Tab. 3', match=dict(model='resnet8', pick='kld'), top1=74.78,
                                          std=0.35)]))
    assert report.main([str(root), '--output', str(out / 't.md'), '--figures', str(out / 'fig'), '--paper',
                        str(paper)]) == 0
    captured = capsys.readouterr()
    reasons = {line.split(':', 1)[0].rsplit('/', 1)[-1]: line for line in captured.err.splitlines()
               if line.startswith('skipped')}
    assert set(reasons) == {'unfinished', 'future', 'nosummary', 'noresults'}  # damaged records: see below
    assert 'unknown version 99' in reasons['future'] and 'unfinished' in reasons['unfinished']
    assert 'no summary.csv' in reasons['nosummary'] and 'no results.json' in reasons['noresults']
    assert '| 3 |' in captured.out and '| 74.78 (0.35) |' in captured.out  # kd-s0's copy was not counted
    assert _tree_state(root) == before  # mtimes and contents of every file unchanged
    assert (out / 't.md').read_text() == captured.out
    assert (out / 'fig' / 'accuracy.png').read_bytes()[:4] == b'\x89PNG'
    assert (out / 'fig' / 'pick_diagnostics.svg').read_text().lstrip().startswith('<?xml')


def test_user_mistakes_exit_2_with_one_sentence(runs, tmp_path, capsys):
    root, _, _ = runs
    assert report.main([str(tmp_path / 'nope')]) == 2
    assert report.main([str(root), '--baseline', 'pick=random']) == 2
    assert report.main([str(root), '--baseline', 'lr=0.05']) == 2  # both groups match
    assert report.main([str(root), '--baseline', 'pick']) == 2
    bad = tmp_path / 'p.yaml'
    bad.write_text('top1: 3\n')
    assert report.main([str(root), '--paper', str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all(e.startswith('timm_kd.report: error: ') for e in err)
    assert 'matches no group' in err[1] and 'matches 2 groups' in err[2]


@pytest.mark.parametrize('item, phrase', [
    ('lr=!!python/object/apply:os.system ["touch pwned"]', '--baseline lr=!!python/object/apply:os.system'),
    ('lr=[0.1', '--baseline lr=[0.1 is not valid YAML'),
])
def test_a_yaml_tag_in_baseline_is_one_sentence(runs, tmp_path, capsys, item, phrase):
    """--baseline values are read as YAML like sweep's --set: plain values only, a tag or a syntax error is one
    sentence."""
    root, _, _ = runs
    assert report.main([str(root), '--baseline', item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0] and not (tmp_path / 'pwned').exists(), err


def test_sweep_labels_replace_the_flags_they_determine(tmp_path, capsys):
    sweep = tmp_path / 'sweep'
    labels = {}
    for view, flags in (('kd', {}), ('tlcutmix', dict(tl_cutmix=1.0, pick='kld'))):
        for scale in (1.0, 2.0):
            for s in (0, 1):
                name = f'view-{view}__epoch_scale-{scale:g}__seed-{s}'
                acc = 60.0 + 5 * scale + (3 if view == 'kd' else 4 * scale) + s
                fake_run(sweep, name, acc + 1, acc, seed=s, epoch_scale=scale, **flags)
                labels[name] = {'labels': {'view': view, 'epoch_scale': f'{scale:g}', 'seed': str(s)}}
    (sweep / 'sweep.json').write_text(json.dumps({'runs': labels}))
    assert report.main([str(sweep), '--baseline', 'view=kd,epoch_scale=1', '--figures', str(tmp_path / 'f')]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith('| view | epoch_scale | n |')  # tl_cutmix / pick follow from the view label
    assert [ln.split('|')[1].strip() for ln in md[2:]] == ['kd', 'kd', 'tlcutmix', 'tlcutmix']
    for ext in ('png', 'svg'):
        assert (tmp_path / 'f' / f'epoch_scaling.{ext}').stat().st_size > 1000
    # the curves of the figure: test error = 100 - last top-1 per total epochs (= 3 x epoch_scale here)
    runs, _ = report.load_runs([str(sweep)])
    groups = report.group_runs(runs)
    series = epoch_scaling_series(groups, report.varying_keys(groups))
    for view in ('kd', 'tlcutmix'):  # acc = 60 + 5 scale + (3 | 4 scale) + seed
        points = series[f'view={view}']
        assert [p[0] for p in points] == [3, 6]
        for (_, mean, std, n), scale in zip(points, (1.0, 2.0)):
            accs = [60.0 + 5 * scale + (3 if view == 'kd' else 4 * scale) + s for s in (0, 1)]
            assert n == 2 and mean == pytest.approx(100 - sum(accs) / 2) and std == pytest.approx(mean_sd(accs)[1])


def test_da_score_json_shapes(tmp_path):
    shapes = [{'ranking': [{'rank': 1, 'view': 'flip', 'stddev_mean': 0.1, 'stddev_sd': 0.01},
                           {'rank': 2, 'view': 'cutmix', 'stddev_mean': 0.2, 'stddev_sd': float('nan')}]},
              [{'view': 'cutmix', 't_stddev': 0.2}, {'view': 'flip', 't_stddev': 0.1}],
              {'results': {'cutmix': {'t_stddev': 0.2}, 'flip': {'t_stddev': 0.1}}},
              {'cutmix': 0.2, 'flip': 0.1}]
    for i, data in enumerate(shapes):
        p = tmp_path / f'{i}.json'
        p.write_text(json.dumps(data))
        assert sorted(read_da_score(str(p))) == [('cutmix', 0.2, 0.0), ('flip', 0.1, 0.01 if i == 0 else 0.0)]
    p.write_text(json.dumps({'something': 'else'}))
    assert read_da_score(str(p)) is None
    runs, _ = report.load_runs([str(fake_run(tmp_path / 'r', 'a', 50.0, 49.0, seed=0).parent)])
    paths = write_figures(report.group_runs(runs), [], str(tmp_path / 'f'), da_score=str(tmp_path / '0.json'))
    assert sorted(os.path.basename(p) for p in paths) == ['accuracy.png', 'accuracy.svg', 't_stddev.png',
                                                         't_stddev.svg']


def test_shipped_paper_numbers_match_the_recipes_and_reach_the_table(tmp_path, capsys):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paper = report.load_paper(os.path.join(root, 'configs', 'paper_results.yaml'))
    picks = {(e['match']['dataset'], e['match']['teacher'], e['match']['model']): (e['top1'], e.get('std'))
             for e in paper if e['source'].endswith('KD+TLCutMix+pick')}
    for recipe in glob.glob(os.path.join(root, 'configs', '*', '*__*.yaml')):
        # "# Paper: ... student 74.78 (0.35)" (CIFAR), "KD+TLCutMix+pick 53.66 (0.05)" (Tiny ImageNet; ImageNet: no std)
        header = open(recipe).read().split('accelerate launch')[0]
        number = re.search(r'KD\+TLCutMix\+pick ([0-9.]+)(?: \(([0-9.]+)\))?', header) or \
            re.search(r'student ([0-9.]+) \(([0-9.]+)\)', header)
        cfg = yaml.safe_load(open(recipe))
        # a pair without a published +pick number (Tab. 9's ResNet110 -> ResNet20) quotes none
        quoted = (float(number[1]), float(number[2]) if number[2] else None) if number else None
        assert picks.get((cfg['dataset'], cfg['teacher'], cfg['model'])) == quoted, recipe
    runs = tmp_path / 'runs'
    pair = dict(dataset='torch/cifar100', teacher='resnet32x4', model='resnet8x4', tl_mixup=0.0, cutmix_hard=0.0,
                cutout=0, mix_fraction=1.0)
    for s in (0, 1, 2):
        fake_run(runs, f'kd{s}', 74.0, 73.0 + s, seed=s, **dict(pair, tl_cutmix=0.0, pick='none'))
        fake_run(runs, f'pick{s}', 75.0, 74.0 + s, seed=s, **dict(pair, tl_cutmix=1.0, pick='kld'))
    assert report.main([str(runs), '--paper', os.path.join(root, 'configs', 'paper_results.yaml')]) == 0
    md = capsys.readouterr().out
    assert '| 74.00 (1.00) | 73.33 (0.25) | +0.67 |' in md and '| 75.00 (1.00) | 74.78 (0.35) | +0.22 |' in md


# (run flags, the entry of configs/paper_results.yaml it must get) on resnet32x4 -> resnet8x4; None: no distill key
# in args.yaml (a run from before --distill, trained with KD)
WITH_KD = dict(kd_alpha=0.9, task_loss_weight=0.1)
ALONE = dict(kd_alpha=0.0, task_loss_weight=1.0)
PAIRINGS = [
    (dict(distill=None), 'Wang et al. Tab. 3, KD'),
    (dict(distill='kd'), 'Wang et al. Tab. 3, KD'),
    (dict(distill=None, tl_cutmix=1.0, pick='kld'), 'Wang et al. Tab. 3, KD+TLCutMix+pick'),
    (dict(distill='kd', tl_cutmix=1.0, pick='kld'), 'Wang et al. Tab. 3, KD+TLCutMix+pick'),
    (dict(distill='kd', tl_cutmix=1.0, pick='kld', epoch_scale=4.0), 'Wang et al. Tab. 3, KD+TLCutMix+pick960'),
    (dict(distill='crd', **WITH_KD), 'Wang et al. Tab. 3, CRD'),
    (dict(distill='crd', **ALONE), 'CRD paper (RepDistiller README) Tab. 1, CRD alone'),
    (dict(distill='crd', tl_cutmix=1.0, pick='kld', **WITH_KD), 'Wang et al. Tab. 3, CRD+TLCutMix+pick'),
    (dict(distill='at', **WITH_KD), 'Wang et al. Tab. 9, AT+KD'),
    (dict(distill='at'), 'CRD paper (RepDistiller README) Tab. 1, AT alone'),  # AT's own weights: CE 1, no KD
    (dict(distill='at', tl_cutmix=1.0, **WITH_KD), 'Wang et al. Tab. 9, AT+TLCutMix'),
    (dict(distill='vid', tl_cutmix=1.0, **WITH_KD), 'Wang et al. Tab. 9, VID+TLCutMix'),
]


def test_runs_pair_with_the_published_number_of_their_method(tmp_path):
    """A CRD / AT / VID run gets its own method's number, a KD run (with or without the distill key) KD's, never
    another method's: the shipped configs/paper_results.yaml through load_run and build_table."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paper = report.load_paper(os.path.join(root, 'configs', 'paper_results.yaml'))
    pair = dict(dataset='torch/cifar100', teacher='resnet32x4', model='resnet8x4', tl_mixup=0.0, cutmix_hard=0.0,
                cutout=0, mix_fraction=1.0, tl_cutmix=0.0, pick='none')
    for i, (flags, _) in enumerate(PAIRINGS):
        fake_run(tmp_path, f'run{i}', 75.0, 74.0, seed=0, **{k: v for k, v in dict(pair, **flags).items()
                                                           if v is not None})
    runs, skipped = report.load_runs([str(tmp_path)])
    assert not skipped and len(runs) == len(PAIRINGS)
    for run in runs:
        flags, source = PAIRINGS[int(run.name[3:])]
        with open(os.path.join(run.path, 'args.yaml')) as f:
            assert ('distill' in yaml.safe_load(f)) == (flags['distill'] is not None)
        [row] = report.build_table([report.Group(run.settings, [run])], [], paper=paper)
        [entry] = [e for e in paper if e['source'] == source and e['match'].get('teacher') == 'resnet32x4'
                   and e['match']['model'] == 'resnet8x4']
        assert (row['paper_source'], row['paper_top1'], row['paper_std']) == (source, entry['top1'], entry.get('std'))
        assert entry['match']['distill'] == (flags['distill'] or 'kd')


def test_every_paper_entry_matches_on_train_kd_flags_and_names_its_method():
    """Every `match` key of the shipped file is a train_kd flag (a typo would silently match nothing), and every
    entry says which --distill method it is (the report must never pair a run with another method's number)."""
    from timm_kd.distill.methods import METHODS
    from timm_kd.train.args import parse_args
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = set(vars(parse_args(['--model', 'resnet8'])[0]))
    for entry in report.load_paper(os.path.join(root, 'configs', 'paper_results.yaml')):
        assert set(entry['match']) <= flags, entry
        assert entry['match']['distill'] in METHODS, entry


def test_results_without_version_are_version_1(tmp_path):
    for version in (None, 1):
        run = fake_run(tmp_path, f'v{version}', 50.0, 49.0, version=version, seed=0)
        assert report.load_run(str(run)).results['last_top1'] == 49.0


def test_same_setting_rules():
    assert report.same_setting(None, 'none') and report.same_setting(0, False) and report.same_setting(1, 1.0)
    assert not report.same_setting('kld', 'none') and not report.same_setting(0.5, 0.25)
    assert report.same_setting('torch/cifar100', 'torch/cifar100') and not report.same_setting(1, 'kd')


# ---------------------------------------------------------------------------------------------------------
# issue 21: run folders are inputs; unsafe or damaged records are one sentence, never a hang or a traceback
# ---------------------------------------------------------------------------------------------------------

ALIAS_BOMB = 'a: &a [x, x, x, x, x, x, x, x, x]\n' + ''.join(
    f'{c}: &{c} [{", ".join([f"*{p}"] * 9)}]\n' for p, c in zip('abcdefgh', 'bcdefghi'))


@pytest.mark.timeout(120)  # a guard: a FIFO read blocks forever, the alias bomb spins for hours
@pytest.mark.parametrize('case, phrase', [
    ('binary-summary', 'summary.csv is not UTF-8 text'),
    ('non-numeric-summary', "summary.csv has 'n/a' in column eval_top1 of row 2, not a number"),
    ('fifo-results', 'results.json is a named pipe (FIFO), not a regular file'),
    ('fifo-args', 'args.yaml is a named pipe (FIFO), not a regular file'),
    ('link-summary', 'summary.csv is a symbolic link'),
    ('deep-results', 'results.json nests lists or mappings deeper than 64 levels'),
    ('alias-bomb-args', 'args.yaml stands for more than 200000 values once its YAML aliases are expanded'),
    ('list-args', 'args.yaml holds a list, not a mapping of flags'),
    ('truncated-results', 'results.json is not valid JSON'),
])
def test_unsafe_or_damaged_records_are_one_sentence(runs, tmp_path, capsys, case, phrase):
    root, _, _ = runs
    run = root / 'kd' / 'kd-s1'
    name = {'binary': 'summary.csv', 'non': 'summary.csv', 'link': 'summary.csv', 'deep': 'results.json',
            'alias': 'args.yaml', 'list': 'args.yaml', 'truncated': 'results.json'}.get(case.split('-')[0])
    name = name or case.split('-')[1] + ('.json' if case.endswith('results') else '.yaml')
    target = run / name
    if case == 'binary-summary':
        target.write_bytes(bytes(range(256)) * 8)
    elif case == 'non-numeric-summary':
        target.write_text(target.read_text().replace(',72.0,', ',n/a,'))
    elif case.startswith('fifo'):
        target.unlink()
        os.mkfifo(target)
    elif case == 'link-summary':
        target.unlink()
        target.symlink_to(root / 'kd' / 'kd-s0' / 'summary.csv')
    elif case == 'deep-results':
        target.write_text('{"best_top1": ' + '[' * 100_000 + ']' * 100_000 + '}')
    elif case == 'alias-bomb-args':
        target.write_text(ALIAS_BOMB)
    elif case == 'list-args':
        target.write_text('- just\n- a list\n')
    else:
        target.write_text('{"best_top1": 5')
    before = _tree_state(root)
    assert report.main([str(root), '--output', str(tmp_path / 'out' / 't.md'), '--figures',
                        str(tmp_path / 'out' / 'fig')]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err == f'timm_kd.report: error: {target} ' + err.split(f'{target} ', 1)[-1] and phrase in err, err
    assert '\n' not in err and 'Traceback' not in err and captured.out == ''
    assert not (tmp_path / 'out').exists() and _tree_state(root) == before


def test_the_report_never_writes_inside_a_run_folder_or_over_an_input(runs, tmp_path, capsys, read_only_folder):
    root, _, _ = runs
    run = root / 'kd' / 'kd-s0'
    paper = tmp_path / 'paper.yaml'
    paper.write_text(yaml.safe_dump([dict(source='x', match=dict(pick='kld'), top1=70.0)]))
    before = _tree_state(root)
    cases = [(['--output', str(run / 'summary.csv')], f'--output {run / "summary.csv"} is inside the run folder {run}'),
             (['--output', str(run / 'hub' / 'table.md')], 'is inside the run folder'),
             (['--output', str(run)], 'is inside the run folder'),
             (['--figures', str(run / 'figures')], f'--figures {run / "figures"} is inside the run folder {run}'),
             (['--output', str(tmp_path)], f'--output {tmp_path} is a folder'),
             (['--paper', str(paper), '--output', str(paper)], f'--output {paper} is the --paper file'),
             (['--output', str(read_only_folder / 't.md')], f'Cannot write {read_only_folder / "t.md"}: '),
             (['--figures', str(read_only_folder / 'fig')], f'Cannot write {read_only_folder / "fig"}'),
             (['--figures', str(paper)], f'--figures {paper} is not a folder')]
    for argv, phrase in cases:
        assert report.main([str(root), *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith('timm_kd.report: error: ') and phrase in err and '\n' not in err, (argv, err)
    assert _tree_state(root) == before and list(read_only_folder.iterdir()) == []
    assert yaml.safe_load(paper.read_text())[0]['top1'] == 70.0
    # beside the runs of a sweep is fine: the sweep folder itself is not a run folder
    assert report.main([str(root), '--output', str(root / 'kd' / 'table.md')]) == 0
