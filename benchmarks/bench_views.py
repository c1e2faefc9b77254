#!/usr/bin/env python3
"""Does the teacher-only score rank views the way distilled students do? (sklearn digits, offline)

1. trains the digits demo teacher (resnet14, 12 epochs, the recipe of ``examples/digits_demo.py``) unless
   ``--teacher-checkpoint`` is given;
2. scores ``--views`` with ``python -m timm_kd.da_score`` (``--score-seeds``, ``--score-batches``), timed;
3. distils a resnet8 student on each view for ``--epochs`` epochs and each of ``--seeds`` (two runs at a
   time, one thread each) and reads the students' last-epoch test loss and top-1;
4. reports Spearman's rho between the views' mean T. stddev and the students' mean test loss, with a
   bootstrap over seeds (each view's score and loss re-averaged over seeds drawn with replacement).

    python benchmarks/bench_views.py --json benchmarks/results/views_digits_cpu2.json
"""
import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'examples'))
from _common import environment, load_average, write_json  # noqa: E402


def ranks(values: Sequence[float]) -> List[float]:
    """Ranks 1..n, ties get their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks."""
    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va and vb else math.nan


def bootstrap_rho(score: Dict[str, List[float]], loss: Dict[str, List[float]], n: int = 2000, seed: int = 0):
    """rho over views, each view's score and loss re-averaged over its seeds drawn with replacement."""
    rng = random.Random(seed)
    views = list(score)
    rhos = []
    for _ in range(n):
        s = [sum(rng.choices(score[v], k=len(score[v]))) / len(score[v]) for v in views]
        l_ = [sum(rng.choices(loss[v], k=len(loss[v]))) / len(loss[v]) for v in views]
        r = spearman(s, l_)
        if not math.isnan(r):
            rhos.append(r)
    rhos.sort()
    q = (lambda p: rhos[min(len(rhos) - 1, int(p * len(rhos)))])
    return dict(median=q(0.5), low=q(0.025), high=q(0.975), n=len(rhos))


def _python(argv: List[str], log: str, env: Dict[str, str]) -> subprocess.Popen:
    f = open(log, 'w')
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)


def _run_all(jobs: List[tuple], parallel: int, env: Dict[str, str]) -> None:
    """Run (argv, log) jobs, ``parallel`` at a time; a failing job stops everything with its log's tail."""
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            argv, log = pending.pop(0)
            running.append((_python(argv, log, env), log))
        time.sleep(1)
        for p, log in list(running):
            if p.poll() is not None:
                running.remove((p, log))
                if p.returncode != 0:
                    with open(log) as f:
                        raise SystemExit(f'bench_views: {log} failed:\n' + ''.join(f.readlines()[-10:]))


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--views', default='none,crop_flip,autoaugment,mixup,cutmix,patch_shuffle')
    p.add_argument('--score-views', default='none,flip,crop,crop_flip,cutout,autoaugment,mixup,cutmix,'
                                            'cutmix_pick_tent,patch_shuffle',
                   help='views the timed score command ranks (a superset of --views)')
    p.add_argument('--seeds', default='0,1', help='student seeds')
    p.add_argument('--score-seeds', default='0,1,2')
    p.add_argument('--chunk-study', default='2,4,10,20,40', help='chunk sizes (blocks) also recorded by the score')
    p.add_argument('--score-batches', type=int, default=36, help='batches per view and seed (36 = 2 epochs)')
    p.add_argument('--epochs', type=int, default=10, help='student epochs')
    p.add_argument('--teacher-checkpoint', default=None)
    p.add_argument('--work', default='output/bench_views', help='folder for the runs')
    p.add_argument('--parallel', type=int, default=2)
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    import torch
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=ROOT)
    os.makedirs(args.work, exist_ok=True)
    result = dict(benchmark='views', env=environment(torch.device('cpu')), config=vars(args),
                  command=' '.join(['python', 'benchmarks/bench_views.py'] + (argv if argv is not None else sys.argv[1:])))
    import digits_demo
    demo = digits_demo.build_parser().parse_args(['--seed', '0'])
    common = digits_demo.run_argv('student', 'resnet8', None, demo, os.path.abspath(args.work))
    common = [a for a in common if a not in ('--experiment', 'student')]

    teacher = args.teacher_checkpoint
    if teacher is None:
        t0 = time.perf_counter()
        targv = ['train_kd.py'] + digits_demo.run_argv('teacher', 'resnet14', None, demo, os.path.abspath(args.work))
        _run_all([(targv, os.path.join(args.work, 'teacher.log'))], 1, env)
        teacher = os.path.join(args.work, 'teacher', 'last.pth.tar')
        result['teacher_seconds'] = time.perf_counter() - t0
    with open(os.path.join(os.path.dirname(teacher), 'results.json')) as f:
        result['teacher_top1'] = json.load(f)['last_top1']

    # the score command (two threads, as a user would run it) and the students (``--parallel`` at a time,
    # one thread each) run at the same time; the score's CPU time is its own, its wall time depends on the load
    score_dir = os.path.join(args.work, f'score-{time.strftime("%Y%m%d-%H%M%S")}')
    load_before = load_average()
    t0 = time.perf_counter()
    score_log = os.path.join(args.work, 'score.log')
    score = _python(['-m', 'timm_kd.da_score', '--teacher', 'resnet14', '--teacher-checkpoint', teacher,
                     '--dataset', 'sklearn/digits', '--img-size', '12', '--crop-padding', '2', '--std-aug', 'crop',
                     '--views', args.score_views, '--seeds', args.score_seeds, '--batches', str(args.score_batches),
                     '--chunk-study', args.chunk_study, '--output', score_dir], score_log,
                    dict(env, OMP_NUM_THREADS='2', MKL_NUM_THREADS='2'))

    from timm_kd.data.views import resolve_view
    views = [v for v in args.views.split(',') if v]
    seeds = [int(s) for s in args.seeds.split(',')]
    jobs = []
    for v in views:
        view, config = resolve_view(v)
        flags = view.flags(config) if view.kind != 'none' else []
        for s in seeds:
            name = f'student-{v}-s{s}'
            if not os.path.isfile(os.path.join(args.work, name, 'results.json')):
                jobs.append((['train_kd.py', *common, '--epochs', str(args.epochs), '--seed', str(s),
                              '--decay-milestones', *map(str, digits_demo._milestones(args.epochs)),
                              '--teacher', 'resnet14', '--teacher-checkpoint', teacher, '--kd-temperature', '4',
                              '--kd-alpha', '0.9', *flags, '--experiment', name],
                             os.path.join(args.work, f'{name}.log')))
    _run_all(jobs, args.parallel, env)
    result['students_seconds'] = time.perf_counter() - t0
    if score.wait() != 0:
        with open(score_log) as f:
            raise SystemExit('bench_views: the score command failed:\n' + ''.join(f.readlines()[-10:]))
    with open(os.path.join(score_dir, 'scores.json')) as f:
        scores = json.load(f)
    result['score'] = dict(seconds=scores['seconds'], cpu_seconds=scores['cpu_seconds'], load_average_before=load_before,
                           load_average_after=load_average(), ranking=scores['ranking'], output=score_dir)

    per_seed_score = {r['view']: [q['stddev'] for q in scores['per_seed'] if q['view'] == r['view']]
                      for r in scores['ranking'] if r['view'] in views}
    loss, top1 = {}, {}
    for v in views:
        loss[v], top1[v] = [], []
        for s in seeds:
            with open(os.path.join(args.work, f'student-{v}-s{s}', 'summary.csv'), newline='') as f:
                last = list(csv.DictReader(f))[-1]
            loss[v].append(float(last['eval_loss']))
            top1[v].append(float(last['eval_top1']))
    mean = (lambda xs: sum(xs) / len(xs))
    table = [dict(view=v, t_stddev=mean(per_seed_score[v]), t_stddev_per_seed=per_seed_score[v],
                  student_test_loss=mean(loss[v]), student_test_loss_per_seed=loss[v],
                  student_top1=mean(top1[v]), student_top1_per_seed=top1[v]) for v in views]
    rho = spearman([r['t_stddev'] for r in table], [r['student_test_loss'] for r in table])
    result.update(students=table, spearman_rho=rho, spearman_bootstrap=bootstrap_rho(per_seed_score, loss),
                  student_epochs=args.epochs, load_average_end=load_average())
    for r in table:
        print(f'{r["view"]:20s} T. stddev {r["t_stddev"]:.5f}  student test loss {r["student_test_loss"]:.4f} '
              f'(per seed {", ".join(f"{x:.4f}" for x in r["student_test_loss_per_seed"])})  top-1 {r["student_top1"]:.2f}')
    b = result['spearman_bootstrap']
    print(f'Spearman rho(T. stddev, student test loss) over {len(views)} views: {rho:+.3f} '
          f'(bootstrap over seeds: median {b["median"]:+.3f}, 95 % interval [{b["low"]:+.3f}, {b["high"]:+.3f}]); '
          f'score command {result["score"]["seconds"]:.0f} s ({result["score"]["cpu_seconds"]:.0f} CPU s); '
          f'load {load_average()}')
    write_json(args.json, result)
    return result


if __name__ == '__main__':
    main()
