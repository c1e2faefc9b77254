"""Run a grid of ``train_kd.py`` experiments: ``python -m timm_kd.sweep GRID.yaml [--jobs N] [--dry-run]``.

A grid file names the sweep folder, the flags every run shares and the axes to cross::

    output: output/sweeps/table1_views       # the sweep folder (default: output/sweeps/<grid file name>)
    paper: configs/paper_results.yaml        # optional: the dry run names each run's published number
    base:                                    # train_kd.py flags of every run (flag names, "_" or "-")
      config: configs/cifar100/resnet32x4__resnet8x4.yaml
      data_dir: data
    axes:                                    # crossed in this order
      view:                                  # a labelled axis: label -> the flags it sets
        kd: {tl_cutmix: 0, pick: none}
        tlcutmix: {tl_cutmix: 1.0, pick: none}
      epoch_scale: [1, 2]                    # a list axis: values of one flag (AXIS_FLAGS, else the axis name)
      seed: [0, 1, 2]

Every run becomes ``train_kd.py <base flags> <axis flags> --output SWEEP --experiment NAME`` with the
deterministic name ``view-kd__epoch_scale-1__seed-0`` (axis-label pairs in axis order), so a sweep that is
run again finds its runs: finished ones (results.json ``finished: true``) are skipped, interrupted ones
continue with ``train_kd.py --resume RUN_DIR`` (bit-exact, see the resume section of train_kd), a folder
that was killed before its first checkpoint is moved to ``SWEEP/.stale/`` and started afresh, and a run whose
folder another process holds (a train_kd.py still running in it, e.g. left by a killed sweep) is left alone.
``SWEEP/sweep.json`` records every run's labels and flags (``timm_kd.report`` shows the labels) and the
wall time of each run the sweep finished (the dry run's time estimate). The output of run NAME goes to
``SWEEP/logs/NAME.log``. Flags are passed through unchanged: whatever train_kd.py accepts works. Ctrl-C
stops the running runs and the sweep (exit code 130); the same command continues them.
"""
import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from timm_kd.experiments.report import load_paper, paper_entry
from timm_kd.train.args import kd_view_modes, parse_args, validate_args
from timm_kd.train.state import checkpoint_candidates
from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import FileReadError, atomic_write_text, folder_lock_holder, open_regular, parse_yaml, \
    read_json, read_text, read_yaml_mapping

__all__ = ['Run', 'load_grid', 'parse_overrides', 'expand_grid', 'flags_to_argv', 'run_state',
           'step_cost', 'device_slots', 'execute', 'main', 'AXIS_FLAGS']

# list axes whose name is not the train_kd flag they set
AXIS_FLAGS = {'method': 'distill', 'view': 'tl_aug'}
# training images of the datasets whose size is known without loading them (--train-num-samples wins)
TRAIN_IMAGES = {'torch/cifar100': 50000, 'torch/cifar10': 50000, 'sklearn/digits': 1201, 'tinyimagenet': 100000,
                'imagenet': 1281167}
GRID_KEYS = ('output', 'base', 'axes', 'paper')
SWEEP_FILE = 'sweep.json'
# the longest file name made from a run name: SWEEP/.stale/NAME-YYYYmmdd-HHMMSS (a file name has at most 255 bytes)
MAX_RUN_NAME = 255 - len('-20260101-000000')


@dataclass
class Run:
    """One run of a sweep: its folder name, axis labels (axis -> label) and train_kd.py flags."""
    name: str
    labels: Dict[str, str]
    argv: List[str]
    state: str = 'new'
    epochs: Optional[int] = None  # total epochs after --epoch-scale (None when not parseable)
    cost: Optional[float] = None  # FLOP-model units of the whole run (see step_cost)
    info: Dict[str, Any] = field(default_factory=dict)


def _flag(key: str) -> str:
    return '--' + str(key).replace('_', '-')


def flags_to_argv(flags: Dict[str, Any]) -> List[str]:
    """train_kd.py arguments of a flag mapping: ``True`` -> ``--flag``, ``False``/``None`` -> nothing,
    a list -> ``--flag v1 v2``, anything else -> ``--flag value``."""
    argv: List[str] = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(_flag(key))
        elif isinstance(value, (list, tuple)):
            argv += [_flag(key), *map(str, value)]
        else:
            argv += [_flag(key), str(value)]
    return argv


def _label(value: Any) -> str:
    """A folder-safe label: letters, digits and ``._+-``; anything else becomes ``_``."""
    return re.sub(r'[^A-Za-z0-9._+-]', '_', str(value)) or '_'


def load_grid(path: str) -> Dict[str, Any]:
    grid = read_yaml_mapping(path, 'Grid file', f'a mapping with the keys {", ".join(GRID_KEYS)}')
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise UsageError(f'Grid file {path!r} has unknown keys {unknown}: the keys are {", ".join(GRID_KEYS)}.')
    if not isinstance(grid.get('base') or {}, dict) or not isinstance(grid.get('axes') or {}, dict):
        raise UsageError(f'Grid file {path!r}: base and axes must be mappings.')
    grid.setdefault('output', os.path.join('output', 'sweeps', os.path.splitext(os.path.basename(path))[0]))
    return grid


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``--set flag=value`` items as a flag mapping (values read as YAML: numbers, lists, true/false)."""
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise UsageError(f'--set expects FLAG=VALUE, got {item!r}.')
        out[key.strip().lstrip('-').replace('-', '_')] = parse_yaml(value, f'--set {item}') if value else ''
    return out


def _axis_values(axis: str, values: Any) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, flags) of every value of an axis."""
    if isinstance(values, dict):
        out = []
        for label, flags in values.items():
            if not isinstance(flags, dict):
                raise UsageError(f'Axis {axis!r}: the value of label {label!r} must be a mapping of flags.')
            out.append((_label(label), flags))
    elif isinstance(values, list):
        out = [(_label(v), {AXIS_FLAGS.get(axis, axis): v}) for v in values]
    else:
        raise UsageError(f'Axis {axis!r} must be a list of values or a mapping of labels to flags.')
    if not out:
        raise UsageError(f'Axis {axis!r} has no values.')
    return out


def expand_grid(grid: Dict[str, Any]) -> List[Run]:
    """All runs of a grid, in axis order (the last axis varies fastest). Raises UsageError on name clashes."""
    base = grid.get('base') or {}
    axes = [(axis, _axis_values(axis, values)) for axis, values in (grid.get('axes') or {}).items()]
    runs, seen = [], {}
    for combo in itertools.product(*(values for _, values in axes)):
        labels = {axis: label for (axis, _), (label, _) in zip(axes, combo)}
        flags = dict(base)
        for _, extra in combo:
            flags.update(extra)
        name = '__'.join(f'{axis}-{label}' for axis, label in labels.items()) or 'run'
        if len(name.encode()) > MAX_RUN_NAME:
            raise UsageError(f'Run {name[:40] + "..."!r} gets a folder name of {len(name.encode())} bytes, more than '
                             f'the {MAX_RUN_NAME} a file name allows here: use shorter axis labels.')
        if name in seen:
            raise UsageError(f'Two runs of the grid get the folder name {name!r}: make the axis labels unique.')
        seen[name] = True
        runs.append(Run(name, labels, flags_to_argv(flags)))
    return runs


def run_state(run_dir: str) -> str:
    """'running' (another process holds the folder's lock), 'done' (results.json says finished), 'resume' (a
    checkpoint to continue from), 'restart' (a folder without checkpoint: killed before its first one) or 'new'.
    A record that cannot be read safely (a link, a FIFO, ...) raises ``FileReadError``."""
    if not os.path.isdir(run_dir):
        return 'new'
    if folder_lock_holder(run_dir) is not None:
        return 'running'
    results = read_json(os.path.join(run_dir, 'results.json'), default={})
    if isinstance(results, dict) and results.get('finished'):
        return 'done'
    if checkpoint_candidates(run_dir):
        return 'resume'
    return 'restart'


def step_cost(args: argparse.Namespace) -> float:
    """Cost of one training image in student-forward units, from the FLOP model of the benchmarks (student
    forward 1, backward 2, teacher forward c, taken as c = 1 since the teacher is not built here): CE 3,
    KD 3 + c, a trained view 6 + 2c, pick with a student scoring pass (kld, s_ent) 8 + 3c, other picks 6 + 3c
    (random: 6 + 2c)."""
    if not args.teacher:
        return 3.0
    has_view = bool(kd_view_modes(args)) or getattr(args, 'tl_aug', None) not in (None, '', 'none')
    pick = getattr(args, 'pick', 'none') or 'none'
    if not has_view:
        return 4.0
    if pick in ('kld', 's_ent'):
        return 11.0
    if pick == 't_ent':
        return 9.0
    return 8.0


def _read_train_argv(argv: Sequence[str], what: str) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """train_kd's reading of ``argv`` and the flags it sets explicitly; an error becomes a UsageError that starts
    with ``what``."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_args(list(argv))
    except SystemExit:
        last = (err.getvalue().strip().splitlines() or ['invalid flags'])[-1]
        raise UsageError(f'{what}: train_kd.py rejects the flags: {last}.') from None
    except UsageError as e:
        raise UsageError(f'{what}: {e}') from None


def _units(cost: float) -> str:
    return f'{cost / 1e9:.3g}G' if cost >= 1e9 else f'{cost / 1e6:.3g}M'


def _plan(runs: List[Run], sweep_dir: str, paper: Sequence[Dict[str, Any]] = ()) -> None:
    """Fill in every run's state, total epochs, cost and, given published numbers, the entry its settings match.
    Flags train_kd.py cannot parse raise UsageError; a run that parses but fails train_kd's checks (e.g. a missing
    teacher checkpoint) gets the state 'invalid'."""
    for run in runs:
        run.state = run_state(os.path.join(sweep_dir, run.name))
        if run.state == 'running':
            run.info['holder'] = folder_lock_holder(os.path.join(sweep_dir, run.name))
        args, explicit = _read_train_argv(run.argv, f'Run {run.name!r}')
        if run.state != 'done':
            try:  # train_kd's checks that need no model or data: flag combinations, files that must exist
                validate_args(args, explicit)
            except UsageError as e:
                run.state, run.info['error'] = 'invalid', f'Run {run.name!r}: {e}'
        run.epochs = int(args.epochs * float(args.epoch_scale))
        images = args.train_num_samples or TRAIN_IMAGES.get((args.dataset or '').lower())
        if images is None and (args.dataset or '').lower().startswith('synthetic/'):
            images = int(args.dataset.split('/')[1].split('x')[0]) * 64  # SyntheticDataset's train size
        run.cost = run.epochs * images * step_cost(args) if images else None
        if paper:
            run.info['paper'] = paper_entry(vars(args), paper)


def _read_sweep_file(sweep_dir: str) -> Dict[str, Any]:
    data = read_json(os.path.join(sweep_dir, SWEEP_FILE), default={})
    return data if isinstance(data, dict) else {}


def _write_sweep_file(sweep_dir: str, grid_path: str, runs: List[Run], wall: Dict[str, float]) -> None:
    """Merge this grid's runs into sweep.json (runs of earlier grids in the same folder are kept)."""
    data = _read_sweep_file(sweep_dir)
    entries = data.get('runs') if isinstance(data.get('runs'), dict) else {}
    for run in runs:
        entry = dict(entries.get(run.name) or {})
        entry.update(labels=run.labels, argv=run.argv, epochs=run.epochs, cost=run.cost)
        if run.name in wall:
            entry['wall_seconds'] = round(wall[run.name], 2)
        entries[run.name] = entry
    data.update(grid=os.path.abspath(grid_path), runs=entries)
    atomic_write_text(os.path.join(sweep_dir, SWEEP_FILE), json.dumps(data, indent=2) + '\n')


def _measured_rate(sweep_dir: str) -> Optional[float]:
    """Cost units per second over the runs this sweep folder has timed (None before the first one)."""
    entries = (_read_sweep_file(sweep_dir).get('runs') or {}).values()
    timed = [(e['cost'], e['wall_seconds']) for e in entries if e.get('cost') and e.get('wall_seconds')]
    return sum(c for c, _ in timed) / sum(w for _, w in timed) if timed else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f'{h}h{rem // 60:02d}m' if h else f'{rem // 60}m{rem % 60:02d}s'


def _holder(run: Run) -> str:
    holder = run.info.get('holder') or {}
    return f'process {holder.get("pid", "?")} on {holder.get("host", "an unknown host")}'


def _published(entry: Optional[Dict[str, Any]]) -> str:
    if entry is None:
        return 'none matches'
    std = f' ({entry["std"]})' if entry.get('std') is not None else ''
    top5 = f', top-5 {entry["top5"]}' if entry.get('top5') is not None else ''
    return f'{entry.get("source")}: top-1 {entry["top1"]}{std}{top5}'


def print_plan(runs: List[Run], sweep_dir: str, script: str, jobs: int, rate: Optional[float]) -> None:
    todo = [r for r in runs if r.state not in ('done', 'running')]
    busy = sum(r.state == 'running' for r in runs)
    print(f'Sweep {sweep_dir}: {len(runs)} runs, {len(runs) - len(todo) - busy} finished, '
          + (f'{busy} running elsewhere, ' if busy else '') + f'{len(todo)} to run ({jobs} at a time).')
    for run in runs:
        cost = f'{_units(run.cost)} units' if run.cost else 'cost unknown'
        cmd = f'--resume {os.path.join(sweep_dir, run.name)}' if run.state == 'resume' else ' '.join(
            shlex.quote(a) for a in run.argv)
        print(f'  {run.state:8s} {run.name}  ({run.epochs} epochs, {cost})\n           {script} {cmd}')
        if run.state == 'invalid':
            print(f'           {run.info["error"]}')
        elif run.state == 'running':
            print(f'           its folder is held by {_holder(run)}: left alone')
        if 'paper' in run.info:
            print(f'           published: {_published(run.info["paper"])}')
    if not todo:
        print('Nothing to run: every run has finished.')
        return
    known = [r.cost for r in todo if r.cost]
    total = sum(known)
    line = (f'Estimated cost of the runs to do: {_units(total)} units (training images x epochs x FLOP-model '
            f'step cost, teacher counted as one student forward)')
    if len(known) < len(todo):
        line += f'; {len(todo) - len(known)} run(s) of unknown dataset size not counted'
    if rate and total:
        line += f'; at the measured {rate:,.0f} units/s: about {_duration(total / rate / min(jobs, len(todo)))} wall'
    elif total:
        line += '; no measured rate yet (pass --rate UNITS_PER_S or run one job first)'
    print(line + '.')


class Progress:
    """Status lines plus one progress bar (redrawn in place on a terminal, printed after each run otherwise)."""

    def __init__(self, runs: List[Run], sweep_dir: str, stream: Optional[TextIO] = None, width: int = 30):
        self.runs, self.sweep_dir, self.width = runs, sweep_dir, width
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.t0 = time.time()
        self.finished = self.failed = self.running = 0

    def _epochs_done(self, run: Run) -> int:
        if run.state == 'done':
            return run.epochs or 0
        try:
            return max(len(read_text(os.path.join(self.sweep_dir, run.name, 'summary.csv'), default='').splitlines())
                       - 1, 0)
        except FileReadError:
            return 0

    def bar(self) -> str:
        total = sum(r.epochs or 0 for r in self.runs) or 1
        done = min(sum(self._epochs_done(r) for r in self.runs), total)
        fill = int(self.width * done / total)
        return (f'[{"#" * fill}{"." * (self.width - fill)}] {done}/{total} epochs, {self.finished}/{len(self.runs)} '
                f'runs finished, {self.running} running, {self.failed} failed, {_duration(time.time() - self.t0)}')

    def line(self, text: str) -> None:
        self.stream.write(('\r\033[K' if self.tty else '') + text + '\n')
        self.draw()

    def draw(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write('\r\033[K' + self.bar() + ('\n' if final else ''))
        elif final:
            self.stream.write(self.bar() + '\n')
        self.stream.flush()


def _result_summary(run_dir: str) -> str:
    try:
        r = read_json(os.path.join(run_dir, 'results.json'))
        return f'best top-1 {r["best_top1"]:.2f} (epoch {r["best_epoch"]}), last {r["last_top1"]:.2f}'
    except (FileReadError, KeyError, TypeError, ValueError):
        return 'no results.json'


def _last_error(log_path: str) -> str:
    try:
        with open_regular(log_path) as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 16)))
            tail = f.read().decode('utf-8', errors='replace')
    except (OSError, FileReadError):
        return ''
    lines = [ln.strip() for ln in tail.splitlines()[-30:] if ln.strip()]
    errors = [ln for ln in lines if 'error' in ln.lower()]
    return (errors or lines or [''])[-1][:300]


def _command(run: Run, sweep_dir: str, script: str, launcher: str, launch_args: List[str]) -> List[str]:
    run_dir = os.path.join(sweep_dir, run.name)
    train = ['--resume', run_dir] if run.state == 'resume' else [
        *run.argv, '--output', sweep_dir, '--experiment', run.name]
    prefix = [sys.executable, '-m', 'accelerate.commands.launch', *launch_args] if launcher == 'accelerate' \
        else [sys.executable]
    return [*prefix, script, *train]


def device_slots(devices: str, jobs: int) -> List[str]:
    """``--devices 0,1,2,3`` split into ``jobs`` equal CUDA_VISIBLE_DEVICES values ('0,1' and '2,3' for 2 jobs)."""
    ids = [d.strip() for d in devices.split(',') if d.strip()]
    if not ids or len(ids) % jobs:
        raise UsageError(f'--devices {devices!r} must list a multiple of --jobs {jobs} devices (each run gets '
                         f'the same number).')
    per = len(ids) // jobs
    return [','.join(ids[i:i + per]) for i in range(0, len(ids), per)]


class Interrupted(Exception):
    """Ctrl-C during a sweep: ``names`` are the runs that were stopped, ``wall`` the wall seconds of those that had
    finished."""

    def __init__(self, names: List[str], wall: Dict[str, float]):
        super().__init__(', '.join(names))
        self.names, self.wall = names, wall


def _stop(active: Dict[subprocess.Popen, tuple], grace: float = 30.0) -> None:
    """Stop the running runs: SIGTERM, SIGKILL after ``grace`` seconds; close their logs. A second Ctrl-C is ignored
    meanwhile, so the runs are never left half-stopped."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for proc in active:
            proc.terminate()
        for proc, entry in active.items():
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            entry[2].close()  # the run's log file
    finally:
        signal.signal(signal.SIGINT, before)


def execute(runs: List[Run], sweep_dir: str, script: str, jobs: int, launcher: str = 'python',
            launch_args: Sequence[str] = (), devices: Optional[List[str]] = None, poll: float = 0.5
            ) -> Dict[str, float]:
    """Run every run that is not done, ``jobs`` at a time (each on its own ``devices`` slot, when given: its
    CUDA_VISIBLE_DEVICES). A run whose folder another process holds (see ``run_state``) is left alone. Returns wall
    seconds of the runs that finished; Ctrl-C stops the running runs and raises :class:`Interrupted`."""
    os.makedirs(os.path.join(sweep_dir, 'logs'), exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // jobs)))
    progress = Progress(runs, sweep_dir)
    queue, active, wall = [], {}, {}
    for i, run in enumerate(runs, 1):
        tag = f'[{i:>{len(str(len(runs)))}}/{len(runs)}]'
        if run.state == 'done':
            progress.finished += 1
            progress.line(f'{tag} {run.name}: skipped (finished: {_result_summary(os.path.join(sweep_dir, run.name))})')
        else:
            queue.append((tag, run))
    try:
        while queue or active:
            while queue and len(active) < jobs:
                tag, run = queue.pop(0)
                run_dir = os.path.join(sweep_dir, run.name)
                log_path = os.path.join(sweep_dir, 'logs', f'{run.name}.log')
                try:  # again now: the folder may have been taken or let go since the plan
                    run.state = run_state(run_dir)
                    if run.state == 'running':
                        run.info['holder'] = folder_lock_holder(run_dir)
                        progress.line(f'{tag} {run.name}: not started (running in {_holder(run)}; run the same command '
                                      f'again once it has ended)')
                        continue
                    log = open_regular(log_path, 'a')  # never through a link
                except FileReadError as e:
                    run.state = 'failed'
                    progress.failed += 1
                    progress.line(f'{tag} {run.name}: FAILED before it started: {e}')
                    continue
                how = 'new'
                if run.state == 'done':
                    progress.finished += 1
                    log.close()
                    progress.line(f'{tag} {run.name}: skipped (finished elsewhere: {_result_summary(run_dir)})')
                    continue
                if run.state == 'restart':  # killed before its first checkpoint: keep the folder, start afresh
                    stale = os.path.join(sweep_dir, '.stale', f'{run.name}-{datetime.now():%Y%m%d-%H%M%S}')
                    os.makedirs(os.path.dirname(stale), exist_ok=True)
                    shutil.move(run_dir, stale)
                    how = f'restarted, the old folder is {stale}'
                elif run.state == 'resume':
                    how = 'resumed'
                slot = devices.pop(0) if devices else None
                proc = subprocess.Popen(_command(run, sweep_dir, script, launcher, list(launch_args)),
                                        stdout=log, stderr=subprocess.STDOUT,
                                        env=dict(env, CUDA_VISIBLE_DEVICES=slot) if slot is not None else env)
                active[proc] = (tag, run, log, log_path, time.time(), slot)
                how += f', devices {slot}' if slot is not None else ''
                progress.running = len(active)
                progress.line(f'{tag} {run.name}: started ({how}; log {log_path})')
            time.sleep(poll)
            for proc in [p for p in active if p.poll() is not None]:
                tag, run, log, log_path, t_start, slot = active.pop(proc)
                if slot is not None:
                    devices.append(slot)
                log.close()
                progress.running = len(active)
                seconds = time.time() - t_start
                run_dir = os.path.join(sweep_dir, run.name)
                try:
                    done = proc.returncode == 0 and run_state(run_dir) == 'done'
                except FileReadError:
                    done = False
                if done:
                    run.state = 'done'
                    progress.finished += 1
                    wall[run.name] = seconds
                    progress.line(f'{tag} {run.name}: finished in {_duration(seconds)}, {_result_summary(run_dir)}')
                else:
                    progress.failed += 1
                    progress.line(f'{tag} {run.name}: FAILED (exit {proc.returncode}) after {_duration(seconds)}: '
                                  f'{_last_error(log_path)} (log {log_path})')
            progress.draw()
    except KeyboardInterrupt:
        _stop(active)
        raise Interrupted([entry[1].name for entry in active.values()], wall) from None
    progress.draw(final=True)
    return wall


def _default_script() -> str:
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # timm_kd/experiments/..
    beside = os.path.join(package, 'train_kd.py')
    return beside if os.path.isfile(beside) else 'train_kd.py'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m timm_kd.sweep', description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('grid', help='grid YAML file (see configs/sweeps/)')
    p.add_argument('--output', default='', help='sweep folder (overrides the grid file\'s output)')
    p.add_argument('--set', action='append', default=[], metavar='FLAG=VALUE',
                   help='override or add a base flag of the grid (YAML value), e.g. teacher_checkpoint=t.pth; '
                        'repeatable')
    p.add_argument('--jobs', '-j', type=int, default=1, help='runs at a time (default 1)')
    p.add_argument('--launcher', choices=('python', 'accelerate'), default='python',
                   help='start each run as a plain process (default) or with accelerate launch')
    p.add_argument('--launch-args', default='',
                   help='arguments for accelerate launch, e.g. "--multi_gpu --num_processes 2"')
    p.add_argument('--devices', default='', metavar='IDS',
                   help='GPU ids shared out between the --jobs runs, e.g. 0,1,2,3 with --jobs 2: each run sees 2 '
                        '(CUDA_VISIBLE_DEVICES)')
    p.add_argument('--script', default='', help='train_kd.py to run (default: the one beside timm_kd, else ./)')
    p.add_argument('--dry-run', action='store_true', help='print the plan and its estimated cost, run nothing')
    p.add_argument('--rate', type=float, default=None,
                   help='cost units per second for the dry run\'s time estimate (default: measured by this sweep)')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:  # before any run started (or after the last one ended)
        print('timm_kd.sweep: interrupted before any run started.', file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    try:
        if args.jobs < 1:
            raise UsageError(f'--jobs must be at least 1, got {args.jobs}.')
        slots = device_slots(args.devices, args.jobs) if args.devices else None
        script = args.script or _default_script()
        if not os.path.isfile(script):
            raise UsageError(f'train_kd.py was not found at {script!r}: pass --script PATH.')
        grid = load_grid(args.grid)
        grid['base'] = dict(grid.get('base') or {}, **parse_overrides(args.set))
        sweep_dir = os.path.abspath(args.output or grid['output'])
        runs = expand_grid(grid)
        _plan(runs, sweep_dir, load_paper(grid['paper']) if grid.get('paper') else ())
        rate = _measured_rate(sweep_dir)  # reads sweep.json: a link or a FIFO there is refused now
    except UsageError as e:
        print(f'timm_kd.sweep: error: {e}', file=sys.stderr)
        return 2
    if args.dry_run:
        print_plan(runs, sweep_dir, script, args.jobs, args.rate or rate)
        return 0
    invalid = [r for r in runs if r.state == 'invalid']
    if invalid:
        print(f'timm_kd.sweep: error: {invalid[0].info["error"]}' + (
            f' ({len(invalid) - 1} more invalid run(s): --dry-run lists them)' if len(invalid) > 1 else ''),
            file=sys.stderr)
        return 2
    os.makedirs(sweep_dir, exist_ok=True)
    _write_sweep_file(sweep_dir, args.grid, runs, {})
    wall: Dict[str, float] = {}
    try:
        wall = execute(runs, sweep_dir, script, args.jobs, args.launcher, shlex.split(args.launch_args), slots)
    except Interrupted as e:
        _write_sweep_file(sweep_dir, args.grid, runs, e.wall)
        print(f'timm_kd.sweep: interrupted: the running runs were stopped ({e}); run the same command again to '
              f'continue them.', file=sys.stderr)
        return 130
    _write_sweep_file(sweep_dir, args.grid, runs, wall)
    busy = [r.name for r in runs if r.state == 'running']
    failed = [r.name for r in runs if r.state not in ('done', 'running')]
    print(f'Sweep {sweep_dir}: {len(runs) - len(failed) - len(busy)}/{len(runs)} runs finished'
          + (f'; failed: {", ".join(failed)} (run the same command again to retry them)' if failed else '')
          + (f'; still running elsewhere: {", ".join(busy)}' if busy else '')
          + f'. Tables: python -m timm_kd.report {sweep_dir}')
    return 1 if failed or busy else 0


if __name__ == '__main__':
    sys.exit(main())
