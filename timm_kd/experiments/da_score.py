""" Which augmentation should I distil with? The teacher-only score of Wang et al., for any view

    python -m timm_kd.da_score --teacher resnet14 --teacher-checkpoint teacher/last.pth.tar \\
        --dataset sklearn/digits --img-size 12 --std-aug crop \\
        --views none,flip,crop_flip,cutout,autoaugment,mixup,cutmix,cutmix_pick_tent --seeds 0,1,2

The frozen teacher runs over training batches under each view (the ``VIEWS`` table of
``timm_kd/data/views.py``, made exactly as ``train_kd.py`` makes it: per-sample views by the training
loader, mixing views by ``DistillMixup``) and the authors' statistic is computed from its softmax
probabilities (``TeacherProbStats``): the rows of the original batch and of the view are collected,
every ``--chunk`` blocks the mean probability vector is kept, and T. stddev is the standard deviation of
the kept vectors per class, averaged over classes. Lower is claimed to be better for KD. Also the mean
teacher entropy and the share of originals the teacher gets wrong. Each view is scored once per
``--seeds`` entry (another sample order and other augmentation draws); the table shows the mean and
the standard deviation over seeds, ranked by mean T. stddev. Writes scores.json, scores.csv and
scores.png / scores.svg into ``--output``.

A mistake (unknown view, a policy that cannot apply to the image size, a teacher for other classes)
prints one sentence and exits with code 2 before any scoring.
"""
import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence

import torch

from timm_kd.data.mixup import DistillMixup
from timm_kd.data.transforms import STD_AUG_MODES
from timm_kd.data.views import VIEWS, ImageSpec, create_view_transform, resolve_view
from timm_kd.distill.diagnostics import TeacherProbStats
from timm_kd.distill.resolution import ImageSize, resize_for_teacher
from timm_kd.train.args import check_numbers
from timm_kd.train.build import (
    DataConfig, create_data_splits, create_student_model, create_teacher_model, resolve_data_config)
from timm_kd.train.data import create_train_loader
from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import atomic_write_text, output_error

__all__ = ['TeacherProbStats', 'score_view', 'main']

_logger = logging.getLogger('da_score')


# ---------------------------------------------------------------------------------------------------------------
# scoring


def _teacher_on_data(teacher: torch.nn.Module, mean: Sequence[float], std: Sequence[float],
                     size: Optional[ImageSize] = None):
    """The teacher as a function of batches at the data's size, normalized with the data's mean / std, as
    ``DistillationTask`` feeds it: resized to its input ``size`` (``resolution.resize_for_teacher``) and
    re-normalized when its own ``pretrained_cfg`` (a published teacher) says it was trained with others."""
    cfg = getattr(teacher, 'pretrained_cfg', None) or {}
    renormalize = cfg.get('mean') is not None and cfg.get('std') is not None and (
        tuple(cfg['mean']), tuple(cfg['std'])) != (tuple(mean), tuple(std))
    if renormalize:
        view = (lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1))
        d_mean, d_std, t_mean, t_std = view(mean), view(std), view(cfg['mean']), view(cfg['std'])

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = resize_for_teacher(x, size)
        return teacher((x * d_std + d_mean - t_mean) / t_std if renormalize else x)
    return forward


def _teacher_rows(teacher, x: torch.Tensor, y: torch.Tensor, view_input: Optional[torch.Tensor], mixer,
                  student=None, temperature: float = 4.0):
    """(teacher logits of x, teacher logits of the view rows the student would train on, or None).

    The rows are those of ``DistillationTask``: a per-sample view as it is, or the mixer's pool made from
    it (or from x), reduced to the picked rows when the view picks."""
    from timm.utils import unwrap_model
    from timm_kd.data.pick import pick_scores, pick_topk
    from timm_kd.distill.pick import batchnorm_modules, frozen_bn_stats
    base = x if view_input is None else view_input
    if mixer is None:
        if view_input is None:
            return teacher(x), None
        t_all = teacher(torch.cat([x, view_input]))
        return t_all[:x.shape[0]], t_all[x.shape[0]:]
    views = mixer(base, y)
    pool = views.x_mix if views.pick != 'random' else views.x_mix.index_select(0, views.pick_index)
    t_all = teacher(torch.cat([x, pool]))
    t_x, t_pool = t_all[:x.shape[0]], t_all[x.shape[0]:]
    if views.pick in (None, 'random'):
        return t_x, t_pool
    s_pool = None
    if views.pick in ('kld', 's_ent'):
        with frozen_bn_stats(batchnorm_modules(unwrap_model(student))):
            s_pool = student(pool)
    rows = pick_topk(pick_scores(views.pick, s_pool, t_pool, temperature), views.num_pick)
    return t_x, t_pool.index_select(0, rows)


@torch.no_grad()
def score_view(teacher, loader, mixer, batches: int, chunk: Optional[int] = None, student=None,
               temperature: float = 4.0, device: torch.device = torch.device('cpu'),
               chunk_study: Sequence[int] = ()) -> Dict[str, Any]:
    """Run ``batches`` training batches of ``loader`` (epoch after epoch) under one view; the summary of
    ``TeacherProbStats`` plus ``batches``, ``kept`` (the number of chunk vectors) and, for ``chunk_study``,
    ``stddev_by_chunk`` (T. stddev of the same teacher outputs for other chunk sizes)."""
    stats = TeacherProbStats(chunk)
    others = {c: TeacherProbStats(c) for c in chunk_study}
    sampler = loader.batch_sampler.sampler
    done, epoch = 0, 0
    while done < batches:
        sampler.set_epoch(epoch)
        for x, y, *more in loader:
            view = more[0]['view_input'].to(device) if more else None
            x, y = x.to(device), y.to(device)
            t_x, t_view = _teacher_rows(teacher, x, y, view, mixer, student, temperature)
            for st in (stats, *others.values()):
                st.update(t_x, t_view, y)
            done += 1
            if done == batches:
                break
        epoch += 1
    out = dict(stats.summary(), batches=done, kept=len(stats.kept))
    if others:
        out['stddev_by_chunk'] = {c: st.summary()['stddev'] for c, st in others.items()}
    return out


# ---------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_kd.da_score', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Rank teacher-labelled views for distillation by the teacher-only score (T. stddev of the '
                    'teacher\'s chunk-mean probability, Wang et al.): lower is claimed better.',
        epilog='views:\n' + '\n'.join(f'  {n:20s} {v.help}' for n, v in VIEWS.items()))
    p.add_argument('--teacher', required=True, metavar='MODEL', help='as train_kd.py --teacher')
    p.add_argument('--teacher-checkpoint', default=None, metavar='PATH', help='as train_kd.py')
    p.add_argument('--teacher-input-size', type=int, nargs='+', default=None, metavar='N',
                   help='as train_kd.py: the image size the teacher takes, N or H W (default: its pretrained config '
                        'without --teacher-checkpoint, else the data\'s); views are made at the data\'s size and '
                        'resized for the teacher')
    p.add_argument('--dataset', required=True, metavar='NAME', help='as train_kd.py (e.g. sklearn/digits)')
    p.add_argument('--data-dir', default=None, metavar='DIR')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--img-size', type=int, default=None, metavar='N', help='image size (default: dataset recipe)')
    p.add_argument('--std-aug', default='crop_flip', choices=STD_AUG_MODES,
                   help='augmentation of the original view (train_kd.py --std-aug)')
    p.add_argument('--crop-padding', type=int, default=None, metavar='PX')
    p.add_argument('--train-num-samples', type=int, default=None, metavar='N')
    p.add_argument('--views', default='none,flip,crop_flip,cutout,autoaugment,mixup,cutmix,cutmix_pick_tent',
                   help='comma list of VIEWS names or timm policy strings (default: the authors\' eight)')
    p.add_argument('--student', default=None, metavar='MODEL',
                   help='student for the views that pick with it (cutmix_pick_kld / _sent); randomly initialised '
                        'unless --student-checkpoint (the authors score with an untrained student)')
    p.add_argument('--student-checkpoint', default=None, metavar='PATH')
    p.add_argument('--batches', type=int, default=None, metavar='N',
                   help='training batches per view and seed (default: one epoch)')
    p.add_argument('-b', '--batch-size', type=int, default=64, help='batch size (default 64, the authors)')
    p.add_argument('--chunk', type=int, default=None, metavar='BLOCKS',
                   help='blocks per kept mean vector (a batch gives 1 block, 2 with a view; default: the '
                        "authors' 10 with a view, 5 without)")
    p.add_argument('--chunk-study', default='', metavar='LIST',
                   help='also record T. stddev for these chunk sizes (comma list of blocks) from the same outputs')
    p.add_argument('--seeds', default='0,1,2', help='comma list of seeds; one score per view and seed')
    p.add_argument('--kd-temperature', type=float, default=4.0, help="temperature of the 'kld' pick score")
    p.add_argument('-j', '--workers', type=int, default=0, help='data loader workers (default 0)')
    p.add_argument('--output', default='', metavar='DIR', help='default: output/da_score/<date-time>')
    p.add_argument('--no-plot', action='store_true', help='skip the bar plot')
    return p


def _data(args: argparse.Namespace, view: Optional[Any] = None, config: Optional[str] = None) -> DataConfig:
    """The data of the runs being scored, as ``train_kd.py`` reads it; a per-sample view comes with the train split."""
    return resolve_data_config(
        args.dataset, data_dir=args.data_dir, num_classes=args.num_classes, img_size=args.img_size,
        crop_padding=args.crop_padding, std_aug=args.std_aug,
        sample_view=config if view is not None and view.kind == 'sample' else None)


def _mixer(view: Any, data: DataConfig) -> Optional[DistillMixup]:
    """The ``DistillMixup`` of a mixing view (its ``VIEWS`` entry's arguments), else None."""
    return DistillMixup(**view.mixup, num_classes=data.num_classes) if view.kind == 'mix' else None


def _check_views(args: argparse.Namespace) -> List[Any]:
    """Resolve every view name and build what it needs (policy on this image size, mixer), before any scoring."""
    out = []
    for name in [v.strip() for v in args.views.split(',') if v.strip()]:
        try:
            view, config = resolve_view(name)
        except ValueError as e:
            raise UsageError(str(e)) from e
        if view.needs_student and not args.student:
            raise UsageError(f'The view {name!r} picks with the student: add --student MODEL (e.g. the student you plan '
                             f'to train; randomly initialised as the authors, or --student-checkpoint).')
        if view.kind == 'mix' and args.batch_size < 2:
            raise UsageError(f'{name}: the view pairs images within a batch and needs --batch-size >= 2.')
        try:
            data = _data(args, view, config)
            if view.kind == 'sample':  # the policy on this image size
                create_view_transform(config, ImageSpec(data.size, data.mean, data.std, data.crop_padding,
                                                        data.interpolation))
            _mixer(view, data)
        except ValueError as e:  # UsageError included
            raise UsageError(str(e) if view.kind == 'sample' and not isinstance(e, UsageError)
                             else f'{name}: {e}') from e
        out.append((name, view, config))
    if not out:
        raise UsageError('--views is empty: give a comma list of view names.')
    return out


def _check_budget(views: List[Any], batches: int, chunk: Optional[int]) -> None:
    """Every view gets at least two chunk means (T. stddev is their standard deviation), checked before any scoring."""
    for name, view, _ in views:
        per_batch = 1 if view.kind == 'none' else 2  # the original rows, and the view's rows
        size = chunk or 5 * per_batch
        kept = batches * per_batch // size
        if kept < 2:
            raise UsageError(f"view {name!r}: {batches} batches give {kept} mean{'' if kept == 1 else 's'} of {size} "
                             f"blocks ({per_batch} block{'' if per_batch == 1 else 's'} per batch), and T. stddev needs "
                             f"at least 2: pass --batches {-(-2 * size // per_batch)} or more, or a smaller --chunk.")


def _mean_sd(values: Sequence[float]):
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return m, sd


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Score every view for every seed; returns the result dict (also written to --output)."""
    import numpy as np

    try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    except ValueError:
        raise UsageError(f'--seeds must be a comma list of integers, got {args.seeds!r}.') from None
    if not seeds:
        raise UsageError('--seeds is empty.')
    if args.batches is not None and args.batches < 1:
        raise UsageError(f'--batches must be >= 1, got {args.batches}.')
    try:
        study = [int(c) for c in args.chunk_study.split(',') if c.strip()]
    except ValueError:
        study = [0]
    if (args.chunk is not None and args.chunk < 1) or any(c < 1 for c in study):
        raise UsageError(f'--chunk and --chunk-study take block counts >= 1, got {args.chunk} / {args.chunk_study!r}.')
    check_numbers(build_parser(), args)
    out_dir = os.path.abspath(args.output or os.path.join('output', 'da_score', datetime.now().strftime('%Y%m%d-%H%M%S')))
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f'--output {out_dir} is a file, not a folder: pass a new or empty folder.')
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UsageError(f'--output {out_dir} is not empty: pass another folder.')
    views = _check_views(args)
    data = _data(args)
    if args.teacher_input_size is not None and len(args.teacher_input_size) > 2:
        raise UsageError(f'--teacher-input-size takes N or H W, got {args.teacher_input_size}.')
    teacher = create_teacher_model(args.teacher, data, checkpoint=args.teacher_checkpoint,
                                   input_size=args.teacher_input_size).eval()
    t_input = teacher.kd_teacher_info['input_size']  # [C, H, W], train_kd's rule
    teacher = _teacher_on_data(teacher, data.mean, data.std, tuple(t_input[1:]))
    student = create_student_model(args.student, data, initial_checkpoint=args.student_checkpoint) \
        if args.student else None
    batches = args.batches
    if batches is None:  # one epoch: as many batches as the loader of the training split gives
        train_ds, _ = create_data_splits(args.dataset, data, data_dir=args.data_dir,
                                         train_num_samples=args.train_num_samples, seed=seeds[0])
        batches = len(create_train_loader(train_ds, args.batch_size, seeds[0], 0, 1, 0))
    _check_budget(views, batches, args.chunk)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise output_error(out_dir, e) from None
    if student is not None:
        student.train()  # the pick pass scores with batch statistics (frozen running stats), as in training

    t0, cpu0 = time.perf_counter(), time.process_time()
    per_seed: List[Dict[str, Any]] = []
    for name, view, config in views:
        data = _data(args, view, config)
        for seed in seeds:
            train_ds, _ = create_data_splits(args.dataset, data, data_dir=args.data_dir,
                                             train_num_samples=args.train_num_samples, seed=seed)
            loader = create_train_loader(train_ds, args.batch_size, seed, 0, 1, args.workers, rngs=data.rngs,
                                         extras=data.loader_extras)
            mixer = _mixer(view, data)
            np.random.seed(seed)  # DistillMixup draws from numpy's global RNG, as timm's Mixup
            torch.manual_seed(seed)
            t1 = time.perf_counter()
            res = score_view(teacher, loader, mixer, batches, args.chunk, student,
                             args.kd_temperature, chunk_study=study)
            per_seed.append(dict(view=name, kind=view.kind, config=config, seed=seed, seconds=time.perf_counter() - t1,
                                 **res))
            print(f'  {name:20s} seed {seed}: T. stddev {res.get("stddev", math.nan):.6f}  entropy '
                  f'{res["entropy"]:.4f}  disagreement {res.get("disagreement", math.nan):.4f}  ({res["batches"]} '
                  f'batches, {res["kept"]} chunks, {time.perf_counter() - t1:.1f} s)', flush=True)

    rows = []
    for name, view, config in views:
        mine = [r for r in per_seed if r['view'] == name]
        row = dict(view=name, kind=view.kind, config=config, seeds=len(mine), help=view.help, note='')
        for key in ('stddev', 'entropy', 'disagreement'):
            row[f'{key}_mean'], row[f'{key}_sd'] = _mean_sd([r.get(key, math.nan) for r in mine])
        unscored = [str(r['seed']) for r in mine if math.isnan(r.get('stddev', math.nan))]
        if unscored:  # no mean over the other seeds: the view is not comparable, and says so
            row['stddev_mean'] = row['stddev_sd'] = math.nan
            row['note'] = f'no T. stddev for seed{"s" if len(unscored) > 1 else ""} {", ".join(unscored)}'
            print(f'da_score: warning: view {name!r} has {row["note"]}; it is ranked last.', file=sys.stderr,
                  flush=True)
        rows.append(row)
    rows.sort(key=lambda r: (math.isnan(r['stddev_mean']), r['stddev_mean']))
    for rank, row in enumerate(rows, 1):
        row['rank'] = rank

    header = f'{"rank":>4s}  {"view":20s} {"T. stddev":>20s} {"entropy":>16s} {"disagreement":>16s}'
    lines = [header] + [
        f'{r["rank"]:>4d}  {r["view"]:20s} {r["stddev_mean"]:>10.6f} ± {r["stddev_sd"]:<8.6f} '
        f'{r["entropy_mean"]:>7.4f} ± {r["entropy_sd"]:<6.4f} {r["disagreement_mean"]:>7.4f} ± '
        f'{r["disagreement_sd"]:<6.4f}' for r in rows]
    total = time.perf_counter() - t0
    lines.append(f'(mean ± standard deviation over {len(seeds)} seed(s); {per_seed[0]["batches"]} batches of '
                 f'{args.batch_size} per view and seed; {total:.0f} s)')
    print('\n'.join(lines), flush=True)

    result = dict(teacher=args.teacher, teacher_checkpoint=args.teacher_checkpoint, dataset=args.dataset,
                  img_size=data.size, teacher_input_size=t_input, std_aug=args.std_aug, batch_size=args.batch_size,
                  chunk=args.chunk,
                  seeds=seeds, batches=args.batches, ranking=rows, per_seed=per_seed, seconds=round(total, 1),
                  cpu_seconds=round(time.process_time() - cpu0, 1), torch_threads=torch.get_num_threads(),
                  cpu_count=os.cpu_count(), load_average=list(os.getloadavg()),
                  time=time.strftime('%Y-%m-%d %H:%M:%S %z'), command=' '.join(sys.argv))
    atomic_write_text(os.path.join(out_dir, 'scores.json'), json.dumps(result, indent=2, default=str) + '\n')
    buf = io.StringIO()
    fields = ['rank', 'view', 'kind', 'config', 'seeds', 'stddev_mean', 'stddev_sd', 'entropy_mean', 'entropy_sd',
              'disagreement_mean', 'disagreement_sd', 'note']
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(out_dir, 'scores.csv'), buf.getvalue())
    if not args.no_plot:
        from timm_kd.experiments.figures import plot_t_stddev
        kind_colors = {'sample': 'tab:green', 'mix': 'tab:blue'}
        sd = [r['stddev_sd'] if r['seeds'] > 1 and not math.isnan(r['stddev_sd']) else 0. for r in rows]
        plot_t_stddev([(r['view'], r['stddev_mean'], e) for r, e in zip(rows, sd)], out_dir, stem='scores',
                      colors=[kind_colors.get(r['kind'], 'tab:gray') for r in rows],
                      title=f'teacher {args.teacher} on {args.dataset}: {len(seeds)} seed(s), error bars = sd over '
                            f'seeds')
    print(f'Wrote {out_dir}/scores.json, scores.csv' + ('' if args.no_plot else ', scores.png, scores.svg'), flush=True)
    result['output'] = out_dir
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command line entry point; a user mistake prints one sentence and raises SystemExit(2)."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f'da_score: error: {e}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == '__main__':
    main()
