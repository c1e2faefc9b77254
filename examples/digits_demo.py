#!/usr/bin/env python3
"""Offline knowledge-distillation demo on scikit-learn's digits: no network, a few minutes on 2 CPU cores.

    python examples/digits_demo.py    # -> output/digits_demo/<time>/{results.json,results.md,accuracy.png}

What it does, with ``train_kd.main(argv)`` (two runs at a time in forked worker processes with ``--jobs 2``):

1. trains a teacher (resnet14, cross-entropy, 12 epochs) on ``sklearn/digits`` (1201 train / 596 val
   images of 8x8 grey digits, shown to the models as 12x12 RGB: see below);
2. trains the same student (resnet8, 10 epochs) three times from the same initialisation and data order:
   cross-entropy only (the baseline), KD (T = 4, 0.1 CE + 0.9 KL), and KD+TLCutMix+pick (+ a
   teacher-labelled CutMix view, the 64 of 128 candidates with the largest teacher-student KL);
3. prints best- and last-epoch top-1 of every run, the teacher's accuracy, wall and CPU time, and writes
   results.json, results.md and accuracy.png (eval top-1 per epoch) into the output folder;
4. ends with the experiment tools on the same runs: the table of ``python -m timm_kd.report`` (report.md)
   and its figures (figures/: accuracy per epoch, the KL ratio r and label disagreement of the pick run).

The recipe is the CRD one scaled down: SGD momentum 0.9 (no Nesterov), lr 0.05, weight decay 5e-4 on all
parameters, batch 64, lr x0.1 after 50 % and 75 % of the epochs (torch MultiStepLR), no warm-up, no label
smoothing, random crop with padding = size / 8 (rounded: 2 px at 12 px). Two deliberate changes: 12 px
images instead of CIFAR's 32 px (the digits are 8x8; 7x fewer pixels keep the demo within a few minutes
on 2 busy cores; the CIFAR models run unchanged) and no horizontal flip (``--std-aug crop``: a mirrored
digit is a different shape).

One seed, 596 validation images (1 image = 0.17 points): the binomial standard error of an accuracy
near 97 % is about 0.7 points, so the printed comparison calls a difference smaller than twice the
standard error of the difference "within the noise band" (seed-to-seed variation comes on top).
Digits is easy: the demo shows that the pipeline works end to end, not the paper's CIFAR-100 gains.
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from datetime import datetime
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, model, method (None = CE only, 'kd', 'pick'), label
RUNS = (
    ('teacher', 'resnet14', None, 'teacher, CE'),
    ('student_ce', 'resnet8', None, 'CE only'),
    ('student_kd', 'resnet8', 'kd', 'KD'),
    ('student_kd_tlcutmix_pick', 'resnet8', 'pick', 'KD+TLCutMix+pick'),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--output', default='', help='output folder (default: output/digits_demo/<date-time>)')
    p.add_argument('--teacher-epochs', type=int, default=12, help='teacher epochs (default 12)')
    p.add_argument('--epochs', type=int, default=10, help='student epochs (default 10)')
    p.add_argument('--img-size', type=int, default=12, help='image side in pixels (default 12; 32 = CIFAR size)')
    p.add_argument('--seed', type=int, default=0, help='seed of every run (default 0)')
    p.add_argument('--jobs', type=int, default=2,
                   help='runs at a time, each in a forked worker process with 1 thread (default 2); '
                        '1 = one after the other inside this process')
    p.add_argument('--train-num-samples', type=int, default=None, help='use only N train images (smoke tests)')
    p.add_argument('--val-num-samples', type=int, default=None, help='use only N val images (smoke tests)')
    return p


def _milestones(epochs: int) -> List[int]:
    ms = sorted({max(1, round(epochs * 0.5)), max(1, round(epochs * 0.75))})
    return [m for m in ms if m < epochs] or [epochs]


def run_argv(name: str, model: str, method: Optional[str], args: argparse.Namespace, runs_dir: str) -> List[str]:
    epochs = args.teacher_epochs if name == 'teacher' else args.epochs
    argv = [
        '--dataset', 'sklearn/digits', '--model', model, '--img-size', str(args.img_size),
        '--crop-padding', str(max(1, round(args.img_size / 8))), '--std-aug', 'crop',
        '--opt', 'momentum', '--momentum', '0.9', '--lr', '0.05', '--weight-decay', '5e-4', '--wd-all-params',
        '--batch-size', '64', '--epochs', str(epochs), '--sched', 'multistep_torch',
        '--decay-milestones', *map(str, _milestones(epochs)), '--decay-rate', '0.1', '--warmup-epochs', '0',
        '--smoothing', '0', '--seed', str(args.seed), '--workers', '0', '--checkpoint-hist', '0',
        '--log-interval', '1000', '--output', runs_dir, '--experiment', name,
    ]
    if args.train_num_samples:
        argv += ['--train-num-samples', str(args.train_num_samples)]
    if args.val_num_samples:
        argv += ['--val-num-samples', str(args.val_num_samples)]
    if method:
        argv += ['--teacher', RUNS[0][1], '--teacher-checkpoint', os.path.join(runs_dir, 'teacher', 'last.pth.tar'),
                 '--kd-temperature', '4', '--kd-alpha', '0.9']
    if method == 'pick':
        argv += ['--tl-cutmix', '1.0', '--pick', 'kld', '--pick-candidates', '2', '--pick-ratio', '0.5']
    return argv


def _one_run(job: tuple) -> tuple:
    """Run train_kd.main(argv) in this process with its output in a log file: (name, exit code, wall s, CPU s)."""
    import torch
    import train_kd
    name, argv, log_path = job
    if log_path is not None:  # a pool worker: one core per run, so two runs at a time use both cores
        torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    code = 0
    if log_path is None:
        train_kd.main(argv)
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(log_path, 'w') as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                train_kd.main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
    return name, code, time.perf_counter() - t0, time.process_time() - c0


def _run_phase(pool, phase: List[tuple], args: argparse.Namespace, runs_dir: str, out: str) -> Dict[str, tuple]:
    """Run the given runs (two at a time in the worker pool, or here one by one); (wall s, CPU s) per run."""
    times: Dict[str, tuple] = {}
    if pool is None:
        for name, model, method, _ in phase:
            _, _, wall, cpu = _one_run((name, run_argv(name, model, method, args, runs_dir), None))
            times[name] = (wall, cpu)
            print(f'  {name}: done in {wall:.0f} s ({cpu:.0f} CPU s)', flush=True)
        return times
    jobs = []
    for name, model, method, _ in phase:
        log = os.path.join(out, f'{name}.log')
        jobs.append((name, run_argv(name, model, method, args, runs_dir), log))
        print(f'  {name}: started (log {log})', flush=True)
    for name, code, wall, cpu in pool.imap_unordered(_one_run, jobs, chunksize=1):
        if code != 0:
            with open(os.path.join(out, f'{name}.log')) as f:
                tail = ''.join(f.readlines()[-15:])
            raise SystemExit(f'digits_demo: run {name!r} failed (exit {code}); end of its log:\n{tail}')
        times[name] = (wall, cpu)
        print(f'  {name}: done in {wall:.0f} s ({cpu:.0f} CPU s)', flush=True)
    return times


def _read_run(runs_dir: str, name: str) -> Dict[str, Any]:
    d = os.path.join(runs_dir, name)
    with open(os.path.join(d, 'results.json')) as f:
        res = json.load(f)
    with open(os.path.join(d, 'summary.csv'), newline='') as f:
        rows = list(csv.DictReader(f))
    res['curve'] = [float(r['eval_top1']) for r in rows]
    return res


def _se(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy in percent."""
    p = min(max(acc / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def compare(a: float, b: float, n: int) -> str:
    """'a - b' in points, and whether it exceeds twice the standard error of the difference."""
    d = a - b
    band = 2 * math.hypot(_se(a, n), _se(b, n))
    verdict = 'larger than' if abs(d) > band else 'within'
    return f'{d:+.2f} points ({verdict} the +-{band:.2f} noise band)'


def _plot(path: str, results: Dict[str, Dict[str, Any]], labels: Dict[str, str], title: str, n_val: int) -> None:
    """Eval top-1 per epoch: all epochs (left) and the second half of training, zoomed (right)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    styles = {'teacher': dict(color='black', ls='--'), 'student_ce': dict(color='tab:gray'),
              'student_kd': dict(color='tab:blue'), 'student_kd_tlcutmix_pick': dict(color='tab:red')}
    tail = [y for r in results.values() for y in r['curve'][len(r['curve']) // 2:]]
    for ax, zoom in zip(axes, (False, True)):
        for name, res in results.items():
            ys = res['curve']
            ax.plot(range(1, len(ys) + 1), ys, marker='o', ms=3, lw=1.5, label=f'{res["model"]}: {labels[name]}',
                    **styles.get(name, {}))
        ax.set_xlabel('epoch')
        ax.set_ylabel('eval top-1 (%)')
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_ylim(max(0.0, min(tail) - 1.0), min(100.0, max(tail) + 0.5))
            ax.set_xlim(left=max(r['curve'].__len__() for r in results.values()) // 2 + 0.5)
            ax.set_title('second half, zoomed', fontsize=10)
            se = _se(sum(tail) / len(tail), n_val)
            ax.text(0.02, 0.03, f'{n_val} val images: 1 image = {100 / n_val:.2f} points,\n'
                                f'binomial standard error ~ {se:.2f} points', transform=ax.transAxes,
                    fontsize=8, va='bottom', ha='left', bbox=dict(facecolor='white', alpha=0.8, lw=0))
        else:
            ax.set_ylim(0, 100.5)
            ax.set_title('all epochs', fontsize=10)
            ax.legend(loc='lower right', fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    out = os.path.abspath(args.output or os.path.join(
        'output', 'digits_demo', datetime.now().strftime('%Y%m%d-%H%M%S')))
    if os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f'digits_demo: output folder {out} is not empty: pass another --output.')
    runs_dir = os.path.join(out, 'runs')
    os.makedirs(runs_dir, exist_ok=True)
    labels = {name: label for name, _, _, label in RUNS}
    print(f'digits_demo: teacher {RUNS[0][1]} ({args.teacher_epochs} epochs), students {RUNS[1][1]} '
          f'({args.epochs} epochs), {args.img_size}x{args.img_size} px, seed {args.seed}, output {out}', flush=True)

    t0 = time.perf_counter()
    sys.path.insert(0, REPO)
    import train_kd  # noqa: F401  (imported once here: forked workers inherit it instead of re-importing)
    pool = None
    if args.jobs > 1:
        import multiprocessing as mp
        pool = mp.get_context('fork').Pool(args.jobs)
    try:
        # The CE student needs no teacher: it runs next to the teacher; the two KD students follow.
        times = _run_phase(pool, [RUNS[0], RUNS[1]], args, runs_dir, out)
        times.update(_run_phase(pool, [RUNS[3], RUNS[2]], args, runs_dir, out))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    total = time.perf_counter() - t0
    total_cpu = sum(c for _, c in times.values())

    results = {name: _read_run(runs_dir, name) for name, *_ in RUNS}
    n_val = args.val_num_samples or 596
    teacher_top1 = results['teacher']['last_top1']
    rows = []
    for name, model, method, label in RUNS:
        r = results[name]
        rows.append(dict(run=name, method=label, model=model, best_top1=r['best_top1'], best_epoch=r['best_epoch'],
                         last_top1=r['last_top1'], seconds=round(times[name][0], 1),
                         cpu_seconds=round(times[name][1], 1)))
    ce, kd, pick = (results[n] for n in ('student_ce', 'student_kd', 'student_kd_tlcutmix_pick'))
    comparisons = {
        'KD vs CE only (last epoch)': compare(kd['last_top1'], ce['last_top1'], n_val),
        'KD vs CE only (best epoch)': compare(kd['best_top1'], ce['best_top1'], n_val),
        'KD+TLCutMix+pick vs KD (last epoch)': compare(pick['last_top1'], kd['last_top1'], n_val),
        'KD+TLCutMix+pick vs KD (best epoch)': compare(pick['best_top1'], kd['best_top1'], n_val),
        'KD+TLCutMix+pick vs CE only (last epoch)': compare(pick['last_top1'], ce['last_top1'], n_val),
    }

    header = '| run | model | best top-1 (epoch) | last top-1 | wall time | CPU time |\n|---|---|---|---|---|---|\n'
    table = header + ''.join(
        f'| {r["method"]} | {r["model"]} | {r["best_top1"]:.2f} ({r["best_epoch"] + 1}) | {r["last_top1"]:.2f} '
        f'| {r["seconds"]:.0f} s | {r["cpu_seconds"]:.0f} s |\n' for r in rows)
    notes = (f'sklearn/digits, {n_val} val images, {args.img_size}x{args.img_size} px, one seed ({args.seed}); '
             f'noise band = 2 x binomial standard error of the difference (single run: it ignores seed-to-seed '
             f'variation, so it is a lower bound).')
    lines = [f'Teacher {RUNS[0][1]}: top-1 {teacher_top1:.2f} % (last epoch).', '', table,
             *(f'- {k}: {v}' for k, v in comparisons.items()), '',
             f'Total wall time {total:.0f} s, CPU time {total_cpu:.0f} s ('
             f'{f"{args.jobs} runs at a time" if args.jobs > 1 else "one run at a time"}; '
             f'{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end).',
             notes]
    text = '\n'.join(lines)
    print('\n' + text, flush=True)

    summary = dict(
        dataset='sklearn/digits', img_size=args.img_size, seed=args.seed, n_val=n_val,
        teacher=dict(model=RUNS[0][1], epochs=args.teacher_epochs, top1=teacher_top1),
        student_epochs=args.epochs, runs=rows, comparisons=comparisons,
        curves={name: r['curve'] for name, r in results.items()}, total_seconds=round(total, 1),
        total_cpu_seconds=round(total_cpu, 1), load_average=os.getloadavg()[0], jobs=args.jobs,
        cpu_count=os.cpu_count(), notes=notes)
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write('# timm-kd offline demo: sklearn digits\n\n' + text + '\n\n![eval top-1 per epoch](accuracy.png)\n')
    _plot(os.path.join(out, 'accuracy.png'), results, labels,
          f'sklearn digits ({args.img_size} px): teacher {RUNS[0][1]}, students {RUNS[1][1]}, seed {args.seed}', n_val)
    print(f'\nWrote {os.path.join(out, "results.json")}, results.md and accuracy.png', flush=True)
    report_runs(runs_dir, out)
    summary['output'] = out
    return summary


def report_runs(runs_dir: str, out: str) -> None:
    """The same runs through the experiment tools, as ``python -m timm_kd.report RUNS --baseline run=student_ce
    --figures FIGURES`` does: the table of a multi-seed study (here one seed each) and its figures. The runs are
    labelled by name in runs/sweep.json, the file timm_kd.sweep keeps its axis labels in."""
    from timm_kd import report
    with open(os.path.join(runs_dir, 'sweep.json'), 'w') as f:
        json.dump({'runs': {name: {'labels': {'run': name}} for name, *_ in RUNS}}, f, indent=2)
    print('\npython -m timm_kd.report (table: report.md, figures: figures/):', flush=True)
    code = report.main([runs_dir, '--baseline', 'run=student_ce', '--output', os.path.join(out, 'report.md'),
                        '--figures', os.path.join(out, 'figures')])
    if code != 0:
        raise SystemExit(f'digits_demo: timm_kd.report failed (exit {code})')


if __name__ == '__main__':
    main()
