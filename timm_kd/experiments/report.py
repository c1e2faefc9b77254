"""Tables of ``train_kd.py`` runs: ``python -m timm_kd.report RUN_DIR... [--baseline k=v,...] [--paper FILE]``.

Every folder below the given paths that holds an ``args.yaml`` or ``results.json`` is a run folder (folders
inside a run folder, such as a published ``hub/`` copy, and hidden folders are not searched). Runs are grouped
by their settings: the flags in ``args.yaml`` minus those that do not change the result (``IGNORED_SETTINGS``:
the seed and train_kd's run flags: output, experiment, resume, data folder, workers, logging, ...), plus the
axis labels a ``timm_kd.sweep`` recorded in its ``sweep.json``; a flag added after the run was made takes the
value the run was trained with (``PREDATING_FLAG_VALUES``: a run from before ``--distill`` is a KD run). The
table has one column per setting that differs between groups (a flag that a sweep label already determines is
left out), then, for best- and last-epoch top-1, mean (sample standard deviation, n-1) over the seeds, the
number of seeds, and a note where fewer than 3 seeds exist or a group lacks seeds that other groups have.
``--baseline`` adds the difference of every group's mean to the group matching ``key=value,...``; ``--paper``
shows published numbers (``configs/paper_results.yaml``: the first entry whose ``match`` settings all equal
the group's, compared as ``same_setting`` does) beside ours. Output: Markdown (default), CSV or LaTeX.

A folder that is unfinished, lacks a file, or was written by an unknown results version is named on stderr
and skipped. A record that cannot be read safely (a link, a FIFO or other non-regular file, too large or too
deeply nested, a YAML alias bomb, binary or malformed, a summary.csv cell that is not a number) stops the
report with one sentence naming the file (exit code 2). Run folders are inputs: they are only ever opened for
reading, and --output / --figures may not point inside one (nor at another file the report reads).
"""
import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple


from timm_kd.train.args import RESUME_RUN_FLAGS
from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import atomic_write_text, output_error, parse_yaml, read_json, read_text, read_yaml

__all__ = ['RunRecord', 'Group', 'SkippedRun', 'find_run_dirs', 'load_run', 'load_runs', 'group_runs',
           'varying_keys', 'build_table', 'format_table', 'load_paper', 'paper_entry', 'same_setting', 'main',
           'IGNORED_SETTINGS', 'PREDATING_FLAG_VALUES']

# flags that do not change what is trained: train_kd's run flags (where and how a run is carried out and
# recorded; a resume may change them), the seed, over which the table averages, and timm's spellings of
# --teacher / --distill (--kd-model-name, --kd-distill-type: the same settings again)
IGNORED_SETTINGS = frozenset(RESUME_RUN_FLAGS) | {'seed', 'kd_model_name', 'kd_distill_type'}
RESULTS_VERSIONS = (1,)  # results.json layouts this report reads (a file without 'version' is version 1)
# flags train_kd gained after runs had been made: a run whose args.yaml predates the flag was trained as its
# value here says (before --distill, every run was a KD run), so it groups and pairs with published numbers as such.
# --teacher-input-size is derived per run (_predating_teacher_size): before it, a teacher saw the student's images.
PREDATING_FLAG_VALUES = {'distill': 'kd', 'kd_loss_type': 'kl', 'kd_token_distill_type': 'soft',
                         'kd_student_feature_dim': None, 'kd_teacher_feature_dim': None}
REQUIRED_RESULTS = ('best_top1', 'last_top1', 'best_epoch', 'last_epoch')
METRICS = ('best_top1', 'last_top1')
OFF_VALUES = (None, False, 0, '', 'none')
MIN_SEEDS = 3


class SkippedRun(Exception):
    """A run folder the report cannot use; the message says why."""


@dataclass
class RunRecord:
    path: str
    settings: Dict[str, Any]
    label_keys: List[str]
    results: Dict[str, Any]
    rows: List[Dict[str, str]]

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def seed(self) -> Any:
        return self.settings.get('seed')

    def curve(self, column: str) -> List[float]:
        """A summary.csv column per epoch (NaN where empty)."""
        return [float(r[column]) if r.get(column) not in (None, '') else math.nan for r in self.rows]


@dataclass
class Group:
    settings: Dict[str, Any]
    runs: List[RunRecord] = field(default_factory=list)

    def values(self, metric: str) -> List[float]:
        return [float(r.results[metric]) for r in self.runs]

    @property
    def seeds(self) -> List[Any]:
        return sorted((r.seed for r in self.runs), key=str)


_RECORDS = ('args.yaml', 'results.json')


def _is_run_dir(path: str) -> bool:
    return any(os.path.lexists(os.path.join(path, f)) for f in _RECORDS)  # a link or a FIFO too: it is refused


def find_run_dirs(paths: Iterable[str]) -> List[str]:
    """Run folders at or below ``paths`` (sorted, each once). Raises UsageError for a path that does not exist."""
    found = set()
    for top in paths:
        if not os.path.isdir(top):
            raise UsageError(f'{top!r} is not a folder.')
        for dirpath, dirnames, _ in os.walk(top):
            if _is_run_dir(dirpath):
                found.add(os.path.abspath(dirpath))
                dirnames[:] = []  # a run's own sub-folders (e.g. hub/<name>/training) are not runs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    return sorted(found)


def _sweep_labels(run_dir: str) -> Tuple[Dict[str, Any], Dict[str, List[str]]]:
    """The sweep labels of a run (from its parent's sweep.json) and every axis's label order."""
    sweep = read_json(os.path.join(os.path.dirname(run_dir), 'sweep.json'), default={})
    try:
        runs = sweep['runs']
        order: Dict[str, List[str]] = {}
        for entry in runs.values():
            for axis, label in entry['labels'].items():
                order.setdefault(axis, [])
                if label not in order[axis]:
                    order[axis].append(label)
        return dict(runs[os.path.basename(run_dir)]['labels']), order
    except (KeyError, TypeError, AttributeError):  # another layout, or not a run of that sweep
        return {}, {}


def _summary(path: str) -> List[Dict[str, str]]:
    """The rows of a summary.csv, every cell a number or empty."""
    try:
        rows = list(csv.DictReader(read_text(path).splitlines()))
    except csv.Error as e:
        raise UsageError(f'{path} is not a valid CSV file: {e}; fix or remove it.') from None
    for i, row in enumerate(rows, 1):
        for column, cell in row.items():
            if cell is None or column is None:
                raise UsageError(f'{path} has {"fewer" if cell is None else "more"} cells in row {i} than columns in '
                                 f'its header; fix or remove it.')
            try:
                float(cell or 0)
            except ValueError:
                raise UsageError(f'{path} has {cell[:40]!r} in column {column} of row {i}, not a number; fix or '
                                 f'remove it.') from None
    return rows


def _mapping(file: str, read, missing: str, what: str = 'a mapping') -> Dict[str, Any]:
    """The mapping a run record holds (read safely); SkippedRun(``missing``) without the file, one sentence for
    anything else."""
    value = read(file, default=None)
    if value is None:
        raise SkippedRun(missing)
    if not isinstance(value, dict):
        raise UsageError(f'{file} holds a {type(value).__name__}, not {what}; fix or remove it.')
    return value


def load_run(path: str) -> RunRecord:
    """Read one run folder. Raises SkippedRun naming what is missing, unfinished or of an unknown version, and
    UsageError (one sentence naming the file) for a record that cannot be read safely or is malformed."""
    args = _mapping(os.path.join(path, 'args.yaml'), read_yaml, 'no args.yaml', 'a mapping of flags')
    results = _mapping(os.path.join(path, 'results.json'), read_json,
                       'no results.json (the run has not finished an epoch)')
    version = results.get('version', 1)
    if version not in RESULTS_VERSIONS:
        raise SkippedRun(f'results.json has the unknown version {version!r} (this report reads '
                         f'version {", ".join(map(str, RESULTS_VERSIONS))})')
    missing = [k for k in REQUIRED_RESULTS if k not in results]
    if missing:
        raise SkippedRun(f'results.json of an unknown layout: no {", ".join(missing)}')
    if not results.get('finished'):
        raise SkippedRun(f'unfinished (last epoch {results.get("last_epoch")}; resume it with train_kd.py --resume)')
    if not all(isinstance(results[k], (int, float)) and math.isfinite(results[k]) for k in METRICS):
        raise SkippedRun('results.json has no finite best/last top-1')
    if not os.path.lexists(os.path.join(path, 'summary.csv')):
        raise SkippedRun('no summary.csv')
    rows = _summary(os.path.join(path, 'summary.csv'))
    if not rows or 'eval_top1' not in rows[0] or 'epoch' not in rows[0]:
        raise SkippedRun('summary.csv has no epoch / eval_top1 columns')
    labels, _ = _sweep_labels(path)
    labels = {k: v for k, v in labels.items() if k not in args}  # a list axis's flag keeps its typed value
    settings = {**args, **labels}
    for flag, value in PREDATING_FLAG_VALUES.items():
        settings.setdefault(flag, value)
    if 'teacher_input_size' not in settings:
        settings['teacher_input_size'] = _predating_teacher_size(settings, results)
    return RunRecord(path, settings, list(labels), results, rows)


def _predating_teacher_size(settings: Dict[str, Any], results: Dict[str, Any]) -> Optional[List[int]]:
    """The [H, W] the teacher of a run from before --teacher-input-size took: the student's input, which it saw
    as it was (None without a teacher, or when the run records no input size)."""
    size = (results.get('data_config') or results.get('recipe') or {}).get('input_size')
    return list(size[-2:]) if settings.get('teacher') and size else None


def load_runs(paths: Sequence[str]) -> Tuple[List[RunRecord], List[Tuple[str, str]]]:
    """(usable runs, [(folder, why skipped)])."""
    runs, skipped = [], []
    for d in find_run_dirs(paths):
        try:
            runs.append(load_run(d))
        except SkippedRun as e:
            skipped.append((d, str(e)))
    return runs, skipped


def same_setting(a: Any, b: Any) -> bool:
    """Equal as settings: numbers by value (1 == 1.0), any two 'off' values (None, false, 0, '', 'none')
    alike, everything else by its text."""
    if a in OFF_VALUES and b in OFF_VALUES:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def group_runs(runs: Sequence[RunRecord], ignore: Iterable[str] = IGNORED_SETTINGS) -> List[Group]:
    """Runs with identical settings (apart from ``ignore``) form a group; groups in first-seen order."""
    ignore = set(ignore)
    groups: Dict[Tuple, Group] = {}
    for run in runs:
        key = tuple(sorted((k, _key(v)) for k, v in run.settings.items() if k not in ignore))
        groups.setdefault(key, Group(run.settings)).runs.append(run)
    return list(groups.values())


def varying_keys(groups: Sequence[Group], ignore: Iterable[str] = IGNORED_SETTINGS) -> List[str]:
    """Settings that differ between groups: sweep labels first, then flags that no label determines."""
    ignore = set(ignore)
    keys: List[str] = []
    for g in groups:
        keys += [k for k in g.settings if k not in keys and k not in ignore]
    differ = [k for k in keys if len({_key(g.settings.get(k)) for g in groups}) > 1]
    labels = [k for k in differ if any(k in r.label_keys for g in groups for r in g.runs)]
    if not labels:
        return differ

    def determined(k: str) -> bool:  # one value of k per combination of label values
        seen: Dict[Tuple, str] = {}
        for g in groups:
            combo = tuple(_key(g.settings.get(lk)) for lk in labels)
            if seen.setdefault(combo, _key(g.settings.get(k))) != _key(g.settings.get(k)):
                return False
        return True
    return labels + [k for k in differ if k not in labels and not determined(k)]


def load_paper(path: str) -> List[Dict[str, Any]]:
    """Published numbers: a YAML list of ``{source, match: {setting: value}, top1[, std][, note]}``."""
    try:
        entries = read_yaml(path)
    except UsageError as e:
        raise UsageError(f'--paper: {e}') from None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get('match'), dict) and 'top1' in e for e in entries):
        raise UsageError(f'--paper {path!r} must be a list of entries with a "match" mapping and "top1".')
    return entries


def paper_entry(settings: Dict[str, Any], paper: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The first published entry whose ``match`` settings all equal ``settings`` (``same_setting``), or None."""
    for entry in paper:
        if all(same_setting(settings.get(k), v) for k, v in entry['match'].items()):
            return entry
    return None


def parse_baseline(text: str) -> Dict[str, str]:
    pairs = {}
    for item in filter(None, (s.strip() for s in text.split(','))):
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise UsageError(f'--baseline expects key=value pairs separated by commas, got {item!r}.')
        pairs[key.strip()] = parse_yaml(value.strip(), f'--baseline {item}') if value.strip() else ''
    return pairs


def _mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def build_table(groups: Sequence[Group], keys: Sequence[str], baseline: Optional[Dict[str, Any]] = None,
                paper: Sequence[Dict[str, Any]] = ()) -> List[Dict[str, Any]]:
    """One dict per group: the varying settings, n, seeds, mean/std of best and last top-1, deltas against the
    baseline group, the published number, and a note on missing seeds."""
    base = None
    if baseline:
        matches = [g for g in groups if all(same_setting(g.settings.get(k), v) for k, v in baseline.items())]
        if len(matches) != 1:
            what = 'no group' if not matches else f'{len(matches)} groups'
            raise UsageError(f'--baseline {",".join(f"{k}={v}" for k, v in baseline.items())} matches {what}; '
                             f'it must select exactly one row (settings that differ: {", ".join(keys) or "none"}).')
        base = matches[0]
    all_seeds = {str(s) for g in groups for s in g.seeds}
    rows = []
    for g in groups:
        row: Dict[str, Any] = {k: g.settings.get(k) for k in keys}
        row.update(n=len(g.runs), seeds=g.seeds)
        for m in METRICS:
            row[f'{m}_mean'], row[f'{m}_std'] = _mean_std(g.values(m))
            if base is not None:
                row[f'{m}_delta'] = row[f'{m}_mean'] - statistics.fmean(base.values(m))
        entry = paper_entry(g.settings, paper)
        row.update(paper_top1=entry and entry['top1'], paper_std=entry and entry.get('std'),
                   paper_source=entry and entry.get('source'))
        notes = []
        if len(g.runs) < MIN_SEEDS:
            notes.append(f'n<{MIN_SEEDS}')
        missing = sorted(all_seeds - {str(s) for s in g.seeds})
        if missing:
            notes.append(f'missing seed{"s" if len(missing) > 1 else ""} {", ".join(missing)}')
        if len({str(s) for s in g.seeds}) < len(g.runs):
            notes.append('repeated seeds')
        row['note'] = '; '.join(notes)
        rows.append(row)
    return rows


def _num(v: Optional[float], signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '–'
    return f'{v:+.2f}' if signed else f'{v:.2f}'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:g}'
    if isinstance(value, (list, tuple)):
        return ' '.join(map(str, value))
    return '–' if value is None else str(value)


def format_table(rows: Sequence[Dict[str, Any]], keys: Sequence[str], fmt: str = 'md') -> str:
    """Markdown, CSV (raw numbers) or LaTeX (booktabs) text of ``build_table`` rows."""
    has_delta = bool(rows) and 'best_top1_delta' in rows[0]
    has_paper = any(r['paper_top1'] is not None for r in rows)
    if fmt == 'csv':
        cols = [*keys, 'n', 'seeds', 'best_top1_mean', 'best_top1_std', 'last_top1_mean', 'last_top1_std']
        cols += ['best_top1_delta', 'last_top1_delta'] if has_delta else []
        cols += ['paper_top1', 'paper_std', 'paper_source'] if has_paper else []
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator='\n')
        w.writerow(cols + ['note'])
        for r in rows:
            w.writerow([' '.join(map(str, r[c])) if c == 'seeds' else ('' if r[c] is None else r[c])
                        for c in cols] + [r['note']])
        return buf.getvalue()
    header = [*keys, 'n', 'best top-1', 'last top-1']
    header += ['Δ best', 'Δ last'] if has_delta else []
    header += ['paper top-1', 'Δ last vs paper'] if has_paper else []
    header.append('note')
    body = []
    for r in rows:
        cells = [_cell(r[k]) for k in keys] + [str(r['n'])]
        cells += [f'{_num(r[f"{m}_mean"])} ({_num(r[f"{m}_std"])})' for m in METRICS]
        if has_delta:
            cells += [_num(r['best_top1_delta'], True), _num(r['last_top1_delta'], True)]
        if has_paper:
            paper = '–' if r['paper_top1'] is None else _num(r['paper_top1']) + (
                f' ({_num(r["paper_std"])})' if r['paper_std'] is not None else '')
            gap = None if r['paper_top1'] is None else r['last_top1_mean'] - r['paper_top1']
            cells += [paper, _num(gap, True)]
        cells.append(r['note'])
        body.append(cells)
    if fmt == 'latex':
        esc = str.maketrans({'_': r'\_', '%': r'\%', '&': r'\&', '#': r'\#', 'Δ': r'$\Delta$', '–': '--',
                             '<': r'$<$'})
        lines = [r'\begin{tabular}{' + 'l' * len(keys) + 'r' * (len(header) - len(keys) - 1) + 'l}', r'\toprule',
                 ' & '.join(h.translate(esc) for h in header) + r' \\', r'\midrule']
        lines += [' & '.join(c.translate(esc) for c in cells) + r' \\' for cells in body]
        return '\n'.join(lines + [r'\bottomrule', r'\end{tabular}']) + '\n'
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' if i < len(keys) else '---:'
                                                               for i in range(len(header) - 1)) + '|---|']
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in body]
    return '\n'.join(lines) + '\n'


def _sort_groups(groups: List[Group], keys: Sequence[str], runs: Sequence[RunRecord]) -> List[Group]:
    """Unset / off values first, then sweep labels in the grid's order, numbers by value, the rest by text."""
    orders: Dict[str, List[str]] = {}
    for r in runs:
        for axis, labels in _sweep_labels(r.path)[1].items():
            orders.setdefault(axis, labels)

    def key(g: Group):
        out = []
        for k in keys:
            v = g.settings.get(k)
            if v in OFF_VALUES:
                out.append((0, 0.0, _key(v)))
            elif k in orders and v in orders[k]:
                out.append((1, orders[k].index(v), ''))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((2, float(v), ''))
            else:
                out.append((3, 0.0, _key(v)))
        return out
    return sorted(groups, key=key)


def report(paths: Sequence[str], baseline: str = '', paper: str = '', fmt: str = 'md',
           ignore: Iterable[str] = ()) -> Tuple[str, List[Group], List[str], List[Tuple[str, str]]]:
    """(table text, groups, varying keys, skipped folders) of the runs below ``paths``."""
    paper_entries = load_paper(paper) if paper else []
    base = parse_baseline(baseline) if baseline else None
    runs, skipped = load_runs(paths)
    ignored = set(IGNORED_SETTINGS) | set(ignore)
    groups = group_runs(runs, ignored)
    keys = varying_keys(groups, ignored)
    groups = _sort_groups(groups, keys, runs)
    rows = build_table(groups, keys, base, paper_entries)
    return format_table(rows, keys, fmt), groups, keys, skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m timm_kd.report', description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('paths', nargs='+', metavar='RUN_DIR', help='run folders or folders that contain them')
    p.add_argument('--baseline', default='', metavar='KEY=VALUE,...',
                   help='the row the deltas are taken against, e.g. "view=kd" or "tl_cutmix=0,pick=none"')
    p.add_argument('--paper', default='', metavar='YAML', help='published numbers, e.g. configs/paper_results.yaml')
    p.add_argument('--format', choices=('md', 'csv', 'latex'), default=None,
                   help='table format (default: from --output\'s extension, else md)')
    p.add_argument('--output', default='', metavar='FILE', help='also write the table to FILE')
    p.add_argument('--ignore', default='', metavar='KEY,...', help='more settings to leave out of the grouping')
    p.add_argument('--figures', default='', metavar='DIR',
                   help='write the figures (timm_kd.figures: PNG + SVG) of these runs into DIR')
    p.add_argument('--da-score', default='', metavar='JSON',
                   help='a python -m timm_kd.da_score result: adds the T-stddev ranking figure')
    return p


def _check_outputs(args: argparse.Namespace) -> None:
    """--output and --figures write outside every run folder below the inputs and over no file the report reads."""
    run_dirs = [os.path.realpath(d) for d in find_run_dirs(args.paths)]
    for flag, path in (('--output', args.output), ('--figures', args.figures)):
        if not path:
            continue
        real = os.path.realpath(path)
        inside = next((d for d in run_dirs if real == d or real.startswith(d + os.sep)), None)
        if inside:
            raise UsageError(f'{flag} {path} is inside the run folder {inside}; run folders are inputs the report '
                             f'never writes into, so write elsewhere.')
        for what, read in (('--paper', args.paper), ('--da-score', args.da_score)):
            if read and real == os.path.realpath(read):
                raise UsageError(f'{flag} {path} is the {what} file the report reads; write elsewhere.')
    if args.output and os.path.isdir(args.output):
        raise UsageError(f'--output {args.output} is a folder; give the file to write, e.g. {args.output}/table.md.')
    if args.figures and os.path.lexists(args.figures) and not os.path.isdir(args.figures):
        raise UsageError(f'--figures {args.figures} is not a folder; give the folder to write the figures into.')


def _write_outputs(args: argparse.Namespace, text: str, groups: List[Group], keys: List[str]) -> None:
    for path in filter(None, (os.path.dirname(os.path.abspath(args.output)) if args.output else '', args.figures)):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise output_error(path, e) from None
    if args.output:
        atomic_write_text(args.output, text)
    if args.figures:
        from .figures import write_figures
        for path in write_figures(groups, keys, args.figures, da_score=args.da_score or None):
            print(f'wrote {path}', file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = args.format or {'.csv': 'csv', '.tex': 'latex'}.get(os.path.splitext(args.output)[1].lower(), 'md')
    try:
        _check_outputs(args)
        text, groups, keys, skipped = report(args.paths, args.baseline, args.paper, fmt,
                                             filter(None, args.ignore.split(',')))
        for path, why in skipped:
            print(f'skipped {path}: {why}', file=sys.stderr)
        if not groups:
            print('timm_kd.report: no finished run folder found below ' + ', '.join(args.paths), file=sys.stderr)
            return 1
        print(text, end='')
        _write_outputs(args, text, groups, keys)
    except UsageError as e:  # OutputError included
        print(f'timm_kd.report: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
