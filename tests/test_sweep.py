"""timm_kd.sweep: grid expansion, the dry run, the shipped grids (valid runs; the paper-table grids run exactly their
recipes), and a real tiny sweep that is killed with SIGKILL, resumed (bit-exact against an uninterrupted run) and
then skipped as finished."""
import csv
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import timm
from timm_kd import sweep
from timm_kd.report import Group, RunRecord, build_table, load_paper
from timm_kd.train.args import parse_args

ROOT = Path(__file__).resolve().parents[1]
# the sweep continues a killed run with train_kd.py --resume RUN_DIR from its mid-epoch recovery checkpoint and
# checks the result equals an uninterrupted run
COVERS = ('--resume', '--checkpoint-every')
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _grid(tmp_path, axes, base=None, **extra):
    path = tmp_path / 'grid.yaml'
    path.write_text(yaml.safe_dump(dict(output=str(tmp_path / 'sweep'), base=base or {}, axes=axes, **extra)))
    return str(path)


def test_expand_grid_names_flags_and_order():
    grid = dict(base=dict(model='resnet8', amp=False, decay_milestones=[2, 3], wd_all_params=True, lr=0.1),
                axes=dict(view={'kd': {'tl_cutmix': 0}, 'tl cutmix': {'tl_cutmix': 1.0, 'lr': 0.2}},
                          method=['kd', 'dkd'], seed=[0, 1]))
    runs = sweep.expand_grid(grid)
    assert [r.name for r in runs][:3] == ['view-kd__method-kd__seed-0', 'view-kd__method-kd__seed-1',
                                          'view-kd__method-dkd__seed-0']
    last = runs[-1]
    assert last.name == 'view-tl_cutmix__method-dkd__seed-1'
    assert last.labels == {'view': 'tl_cutmix', 'method': 'dkd', 'seed': '1'}
    # base flags, then each axis's flags (later wins in argparse); True -> switch, False -> nothing
    assert last.argv == ['--model', 'resnet8', '--decay-milestones', '2', '3', '--wd-all-params', '--lr', '0.2',
                         '--tl-cutmix', '1.0', '--distill', 'dkd', '--seed', '1']
    with pytest.raises(sweep.UsageError, match='same folder name|get the folder name'):
        sweep.expand_grid(dict(axes=dict(view={'a b': {}, 'a_b': {}})))
    with pytest.raises(sweep.UsageError, match='no values'):
        sweep.expand_grid(dict(axes=dict(seed=[])))


def test_step_cost_follows_the_flop_model():
    def cost(*argv):
        return sweep.step_cost(parse_args(['--model', 'resnet8', *argv])[0])
    t = ('--teacher', 'resnet8')
    assert cost() == 3 and cost(*t) == 4 and cost(*t, '--tl-cutmix') == 8 and cost(*t, '--tl-mixup') == 8
    assert cost(*t, '--tl-cutmix', '--pick', 'kld') == 11 and cost(*t, '--tl-cutmix', '--pick', 't_ent') == 9


def test_user_mistakes_exit_2_before_any_run(tmp_path, capsys):
    assert sweep.main([str(tmp_path / 'missing.yaml')]) == 2
    bad = tmp_path / 'bad.yaml'
    bad.write_text('axes: {seed: [0]}\nbase: {model: resnet8}\nextra: 1\n')
    assert sweep.main([str(bad)]) == 2
    flagged = _grid(tmp_path, dict(seed=[0]), base=dict(model='resnet8', no_such_flag=3))
    assert sweep.main([flagged, '--dry-run']) == 2
    assert sweep.main([flagged, '--jobs', '0']) == 2
    missing = _grid(tmp_path, dict(seed=[0, 1]), base=dict(model='resnet8', teacher='resnet8',
                                                          teacher_checkpoint=str(tmp_path / 'none.pth')))
    assert sweep.main([missing]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all(e.startswith('timm_kd.sweep: error: ') for e in err)
    assert 'does not exist' in err[4] and '1 more invalid run' in err[4]
    assert "unknown keys ['extra']" in err[1] and "Run 'seed-0'" in err[2] and '--no-such-flag' in err[2]
    assert not (tmp_path / 'sweep').exists()


def test_shipped_grids_give_valid_train_kd_runs(tmp_path, monkeypatch):
    """Every run of configs/sweeps/*.yaml passes train_kd's flag checks (teacher files stubbed)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / 'configs', tmp_path / 'configs')
    plans = {}
    for grid in sorted((ROOT / 'configs' / 'sweeps').glob('*.yaml')):
        runs = sweep.expand_grid(sweep.load_grid(str(grid)))
        for run in runs:
            for flag, value in zip(run.argv, run.argv[1:]):
                if flag == '--teacher-checkpoint':
                    Path(value).parent.mkdir(parents=True, exist_ok=True)
                    Path(value).touch()
        sweep._plan(runs, str(tmp_path / 'out'))
        assert [r.state for r in runs] == ['new'] * len(runs), [r.info for r in runs if r.info][:1]
        plans[grid.stem] = {r.name: parse_args(r.argv)[0] for r in runs}
    pairs = {(a.teacher, a.model) for a in plans['table3_pairs'].values()}
    assert len(pairs) == 7 and len(plans['table3_pairs']) == 7 * 2 * 3
    assert {int(a.epochs * a.epoch_scale) for a in plans['fig1_epoch_scales'].values()} == {240, 480, 720, 960}
    assert {a.teacher or None for a in plans['fig1_epoch_scales'].values()} == {None, 'resnet32x4'}
    assert {a.mix_fraction for a in plans['choi_pmu'].values() if a.tl_mixup} == {0.1, 0.5, 1.0}
    views = {n.split('__')[0]: (a.tl_cutmix, a.tl_mixup, a.cutmix_hard, a.pick)
             for n, a in plans['table1_views'].items()}
    assert views == {'view-kd': (0, 0, 0, 'none'), 'view-kd_cutmix': (0, 0, 1.0, 'none'),
                     'view-tlmixup': (0, 1.0, 0, 'none'), 'view-tlcutmix': (1.0, 0, 0, 'none'),
                     'view-tlcutmix_pick': (1.0, 0, 0, 'kld')}


# The grids that reproduce a table of Wang et al.: grid -> (table, its methods, the recipe folder whose pairs are the
# table's, {view label: (the flags that the recipe's header names for that row, the row's name in
# configs/paper_results.yaml; {M}: the method)}). A run of the cell (method, pair) is the recipe
# configs/cifar100/[<method>/]<pair>.yaml with those flags (method kd: the pair's recipe in configs/cifar100/).
PAPER_GRIDS = {
    'table3_pairs': ('Tab. 3', ('kd',), 'crd', {'kd': (('--pick', 'none', '--tl-cutmix', '0'), 'KD'),
                                                'tlcutmix_pick': ((), 'KD+TLCutMix+pick')}),
    'table3_crd': ('Tab. 3', ('crd',), 'crd', {'crd': (('--pick', 'none', '--tl-cutmix', '0'), 'CRD'),
                                               'crd_tlcutmix_pick': ((), 'CRD+TLCutMix+pick')}),
    'table9_methods': ('Tab. 9', ('at', 'cc', 'sp', 'pkt', 'vid'), 'at', {'kd': (('--tl-cutmix', '0'), '{M}+KD'),
                                                                        'tlcutmix': ((), '{M}+TLCutMix')}),
}
# flags that name where a run goes, its seed, and the recipe file (a grid may build a method recipe's flags from
# the pair's KD recipe): every other flag must be what the recipe gives
RECIPE_FREE_FLAGS = ('output', 'experiment', 'seed', 'config')


def _recipe_command(recipe):
    """train_kd.py arguments of the command a recipe's header quotes (its data flags and teacher checkpoint)."""
    lines = open(recipe).read().split('accelerate launch train_kd.py', 1)[1].splitlines()
    command = [lines[0]]
    for line in lines[1:]:
        if not command[-1].rstrip().endswith('\\'):
            break
        command.append(line.lstrip('#'))
    return shlex.split('\n'.join(command).replace('\\\n', ' '), comments=True)


def _recipe_free(args):
    return {k: v for k, v in vars(args).items() if k not in RECIPE_FREE_FLAGS}


@pytest.mark.parametrize('grid', sorted(PAPER_GRIDS))
def test_paper_grids_run_exactly_the_recipes_of_their_table(grid, monkeypatch):
    """Every run of a grid that reproduces a paper table resolves to the flags of the recipe + variant that the
    recipe's header names for the run's row (data flags and teacher checkpoint included), the runs fill the
    table's cells x seeds 0-2 exactly once, and the report pairs each run with that row's published number."""
    monkeypatch.chdir(ROOT)  # grids and recipes name files relative to the repository
    table, methods, pairs_folder, views = PAPER_GRIDS[grid]
    paper = load_paper('configs/paper_results.yaml')
    cells, recipes = [], {}
    for run in sweep.expand_grid(sweep.load_grid(f'configs/sweeps/{grid}.yaml')):
        args = parse_args(run.argv)[0]
        pair = f'{args.teacher}__{args.model}.yaml'
        recipe = os.path.join('configs', 'cifar100', *([] if args.distill == 'kd' else [args.distill]), pair)
        extra, row = views[run.labels['view']]
        if (recipe, extra) not in recipes:
            recipes[recipe, extra] = _recipe_free(parse_args([*_recipe_command(recipe), *extra])[0])
        got, want = _recipe_free(args), recipes[recipe, extra]
        assert got == want, (run.name, recipe, extra, {k: (got[k], want[k]) for k in got if got[k] != want[k]})
        cells.append((args.distill, pair, run.labels['view'], args.seed))
        settings = yaml.safe_load(yaml.safe_dump(vars(args)))  # as args.yaml holds them
        record = RunRecord(run.name, settings, [], {'best_top1': 0.0, 'last_top1': 0.0}, [])
        [line] = build_table([Group(settings, [record])], [], paper=paper)
        assert line['paper_source'] == f'Wang et al. {table}, {row.format(M=args.distill.upper())}', run.name
    pairs = sorted(os.listdir(os.path.join('configs', 'cifar100', pairs_folder)))
    assert len(pairs) == 7
    assert sorted(cells) == sorted((m, p, v, s) for m in methods for p in pairs for v in views for s in (0, 1, 2))

FAKE_TRAIN = """
import json, os, sys
argv = sys.argv[1:]
run = argv[argv.index('--resume') + 1] if '--resume' in argv else os.path.join(
    argv[argv.index('--output') + 1], argv[argv.index('--experiment') + 1])
os.makedirs(run, exist_ok=True)
if argv[argv.index('--lr') + 1] == '9.0':
    sys.exit('train_kd.py: error: the loss became non-finite')
with open(os.path.join(run, 'results.json'), 'w') as f:
    json.dump(dict(finished=True, best_top1=50.0, best_epoch=0, last_top1=49.0, argv=argv,
                   devices=os.environ.get('CUDA_VISIBLE_DEVICES')), f)
"""


def test_failed_runs_stale_folders_and_the_launcher(tmp_path, capsys):
    """A stand-in for train_kd.py (--script) that finishes at once, or fails for --lr 9."""
    script = tmp_path / 'fake_train.py'
    script.write_text(FAKE_TRAIN)
    grid = _grid(tmp_path, dict(lr=[0.1, 9.0], seed=[0, 1]), base=dict(model='resnet8', epochs=2))
    stale = tmp_path / 'sweep' / 'lr-0.1__seed-1'
    stale.mkdir(parents=True)
    (stale / 'log.txt').write_text('killed before its first checkpoint')
    assert sweep.main([grid, '--script', str(script), '--jobs', '3', '--devices', '0,1,2']) == 1
    out = capsys.readouterr().out
    assert out.count('FAILED (exit 1)') == 2 and 'the loss became non-finite' in out
    assert 'failed: lr-9.0__seed-0, lr-9.0__seed-1' in out and 'lr-0.1__seed-1: started (restarted' in out
    moved = list((tmp_path / 'sweep' / '.stale').iterdir())
    assert len(moved) == 1 and (moved[0] / 'log.txt').read_text() == 'killed before its first checkpoint'
    done = json.loads((stale / 'results.json').read_text())['argv']
    assert done[-4:] == ['--output', str(tmp_path / 'sweep'), '--experiment', 'lr-0.1__seed-1']
    assert sweep.run_state(str(tmp_path / 'sweep' / 'lr-9.0__seed-0')) == 'restart'
    # the first three runs start at once, each on its own slot of --devices, in order
    seen = [json.loads((tmp_path / 'sweep' / f'lr-0.1__seed-{s}' / 'results.json').read_text())['devices']
            for s in (0, 1)]
    assert seen == ['0', '1']
    assert sweep.device_slots('0,1,2,3', 2) == ['0,1', '2,3']
    with pytest.raises(sweep.UsageError, match='multiple of --jobs 2'):
        sweep.device_slots('0,1,2', 2)
    # accelerate launch: the launcher's own arguments go before the script, a resume needs only the folder
    run = sweep.Run('r', {}, ['--lr', '1'], state='resume')
    cmd = sweep._command(run, '/s', 'train_kd.py', 'accelerate', ['--num_processes', '2'])
    assert cmd[1:] == ['-m', 'accelerate.commands.launch', '--num_processes', '2', 'train_kd.py', '--resume', '/s/r']


def _rows(run_dir):
    with open(Path(run_dir) / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_sweep_resumes_a_killed_run_and_skips_finished_ones(tmp_path, capsys, monkeypatch):
    teacher_ckpt = str(tmp_path / 'teacher.pth')  # a random resnet8 teacher
    torch.save(timm.create_model('resnet8', num_classes=10).state_dict(), teacher_ckpt)
    base = dict(model='resnet8', dataset='synthetic/10x16', train_num_samples=64, val_num_samples=16, batch_size=16,
                workers=0, lr=0.05, warmup_epochs=0, epochs=2, log_interval=100, checkpoint_every=2,
                teacher='resnet8', teacher_checkpoint=teacher_ckpt, tl_cutmix=1.0, pick='kld')
    grid = _grid(tmp_path, dict(seed=[3, 4]), base=base)
    out = tmp_path / 'sweep'
    killed = out / 'seed-3'

    assert sweep.main([grid, '--dry-run']) == 0
    plan = capsys.readouterr().out
    assert plan.count('new      seed-') == 2 and '(2 epochs, 0.00141M units)' in plan  # 2 x 64 x 11
    assert not out.exists()

    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1')
    p = subprocess.Popen([sys.executable, '-m', 'timm_kd.sweep', grid, '--jobs', '1'], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (killed / 'recovery.pth.tar').exists():
        assert p.poll() is None, f'the sweep ended early: {p.stdout.read()}'
        assert time.time() < deadline, 'no recovery checkpoint after 300 s'
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)  # the sweep and its train_kd.py child
    p.wait()
    while sweep.run_state(str(killed)) == 'running':  # the child's lock goes when the child is gone, a moment later
        assert time.time() < deadline, 'the killed train_kd.py still holds its run folder'
        time.sleep(0.01)
    assert sweep.run_state(str(killed)) == 'resume' and sweep.run_state(str(out / 'seed-4')) == 'new'

    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert sweep.main([grid, '--jobs', '2']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any('seed-3: started (resumed' in ln for ln in lines) and any('seed-4: started (new' in ln for ln in lines)
    assert sum('finished in' in ln for ln in lines) == 2 and lines[-2].startswith('[' + '#' * 30 + '] 4/4 epochs')

    # the resumed run equals an uninterrupted one with the same flags
    spec = importlib.util.spec_from_file_location('train_kd', ROOT / 'train_kd.py')
    train_kd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_kd)
    argv = json.loads((out / 'sweep.json').read_text())['runs']['seed-3']['argv']
    train_kd.main(argv + ['--output', str(tmp_path), '--experiment', 'uninterrupted'])
    assert _rows(killed) == _rows(tmp_path / 'uninterrupted')
    assert 'train_kl_ratio' in _rows(killed)[0]

    stamp = (killed / 'results.json').stat().st_mtime_ns
    t0 = time.time()
    assert sweep.main([grid, '--jobs', '2']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum('skipped (finished: best top-1' in ln for ln in lines) == 2 and time.time() - t0 < 5
    assert (killed / 'results.json').stat().st_mtime_ns == stamp
    timed = json.loads((out / 'sweep.json').read_text())['runs']
    assert all(timed[n]['wall_seconds'] > 0 and timed[n]['labels']['seed'] == n[-1] for n in ('seed-3', 'seed-4'))


# ---------------------------------------------------------------------------------------------------------
# issue 21: no traceback, no hang, no live run touched
# ---------------------------------------------------------------------------------------------------------

def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm_kd.sweep: error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize('item, phrase', [
    ('lr=!!python/object/apply:os.system ["touch pwned"]', "--set lr=!!python/object/apply:os.system"),
    ('lr=!custom 0.1', "could not determine a constructor for the tag '!custom'"),
    ('lr=[0.1', '--set lr=[0.1 is not valid YAML'),
])
def test_a_yaml_tag_in_set_is_one_sentence(tmp_path, capsys, item, phrase):
    grid = _grid(tmp_path, dict(seed=[0]), base=dict(model='resnet8'))
    assert sweep.main([grid, '--set', item, '--dry-run']) == 2
    assert phrase in _one_error(capsys) and not (tmp_path / 'pwned').exists()


def test_the_default_script_is_the_train_kd_py_beside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not found through the current folder
    assert sweep._default_script() == str(ROOT / 'train_kd.py')


def test_a_label_too_long_for_a_file_name_is_one_sentence(tmp_path, capsys):
    script = tmp_path / 'fake_train.py'
    script.write_text(FAKE_TRAIN)
    grid = _grid(tmp_path, dict(view={'x' * 250: dict(pick='none')}, seed=[0]), base=dict(model='resnet8'))
    assert sweep.main([grid, '--script', str(script)]) == 2
    err = _one_error(capsys)
    assert "Run 'seed-0__view-xxxx" in err and 'a folder name of 263 bytes' in err and 'use shorter axis labels' in err
    assert not (tmp_path / 'sweep').exists()


@pytest.mark.timeout(120)  # a guard: reading a FIFO would block forever
def test_a_fifo_in_a_run_folder_never_blocks_the_sweep(tmp_path, capsys):
    grid = _grid(tmp_path, dict(seed=[0]), base=dict(model='resnet8'))
    run = tmp_path / 'sweep' / 'seed-0'
    run.mkdir(parents=True)
    os.mkfifo(run / 'results.json')
    assert sweep.main([grid, '--dry-run']) == 2
    assert f'{run / "results.json"} is a named pipe (FIFO)' in _one_error(capsys)


@pytest.mark.parametrize('state', ['resume', 'restart'])
def test_a_rerun_leaves_a_live_run_alone(tmp_path, capsys, state):
    """Issue 21: a rerun of a killed sweep resumed a run that was still alive; its start removed the live run's temp
    file and the run died. A run folder locked by a live process is neither resumed, restarted nor moved."""
    from timm_kd.utils.files import TEMP_PREFIX, lock_folder
    script = tmp_path / 'fake_train.py'
    script.write_text(FAKE_TRAIN)
    grid = _grid(tmp_path, dict(lr=[0.1], seed=[0, 1]), base=dict(model='resnet8', epochs=2))
    live = tmp_path / 'sweep' / 'lr-0.1__seed-0'
    live.mkdir(parents=True)
    (live / f'{TEMP_PREFIX}abc').write_bytes(b'a checkpoint being written')
    if state == 'resume':
        (live / 'last.pth.tar').write_bytes(b'a checkpoint')
    with lock_folder(str(live)):  # the live train_kd.py holds its run folder
        before = sorted(p.name for p in live.iterdir())
        assert sweep.main([grid, '--script', str(script), '--dry-run']) == 0
        assert 'running  lr-0.1__seed-0' in capsys.readouterr().out
        assert sweep.main([grid, '--script', str(script)]) == 1
        out = capsys.readouterr().out
    assert f'lr-0.1__seed-0: not started (running in process {os.getpid()} on ' in out
    assert 'lr-0.1__seed-1: finished' in out and 'still running elsewhere: lr-0.1__seed-0' in out
    assert sorted(p.name for p in live.iterdir()) == before and not (tmp_path / 'sweep' / '.stale').exists()


SLOW_TRAIN = """
import os, sys, time
argv = sys.argv[1:]
run = os.path.join(argv[argv.index('--output') + 1], argv[argv.index('--experiment') + 1])
os.makedirs(run, exist_ok=True)
with open(os.path.join(run, 'pid'), 'w') as f:
    f.write(str(os.getpid()))
time.sleep(600)
"""


@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_sweep_with_one_sentence(tmp_path):
    """Issue 21: Ctrl-C of a sweep ended in a traceback. Ctrl-C reaches the whole foreground process group (the sweep
    and its runs): the runs stop, the sweep says so in one sentence, and a rerun continues them."""
    script = tmp_path / 'slow_train.py'
    script.write_text(SLOW_TRAIN)
    grid = _grid(tmp_path, dict(seed=[0, 1]), base=dict(model='resnet8', epochs=2))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1')
    p = subprocess.Popen([sys.executable, '-m', 'timm_kd.sweep', grid, '--script', str(script), '--jobs', '2'],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids = [tmp_path / 'sweep' / f'seed-{s}' / 'pid' for s in (0, 1)]
    while not all(f.exists() and f.read_text() for f in pids):
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert 'Traceback' not in out + err and err.strip().splitlines() == [
        'timm_kd.sweep: interrupted: the running runs were stopped (seed-0, seed-1); run the same command again to '
        'continue them.']
    for f in pids:  # every run process has ended
        with pytest.raises(ProcessLookupError):
            os.kill(int(f.read_text()), 0)
    assert json.loads((tmp_path / 'sweep' / 'sweep.json').read_text())['runs'].keys() == {'seed-0', 'seed-1'}
    assert sweep.run_state(str(tmp_path / 'sweep' / 'seed-0')) == 'restart'  # continued by the next call
