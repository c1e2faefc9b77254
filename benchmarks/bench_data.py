#!/usr/bin/env python3
"""Data loading throughput of the CIFAR KD recipe against the training step's consumption.

CIFAR cannot be downloaded here, so a synthetic CIFAR-shaped training set (uint8 32x32 RGB arrays
served as PIL images, like ``torchvision.datasets.CIFAR100``) goes through the real recipe transform
(``timm_kd.data.create_kd_transform``: pad-4 crop, flip, ToTensor, Normalize) and the real training
loader of ``train_kd.py`` (``timm_kd.train.data.create_train_loader``, per-sample seeding for exact
resume) with train_kd.py's default number of workers. Measured, interleaved over repeats:

  * ``train_kd``: train_kd.py's loader (default workers, and any ``--workers-list``),
  * ``train_kd_view``: the same loader with a teacher-labelled per-sample second view (``--tl-aug``, policy
    ``--view``, default RandAugment ``rand-m9-mstd0.5``): two images per sample,
  * ``plain``: a plain shuffled ``DataLoader`` over the same dataset and transform (no per-sample seeding),
  * ``device_aug``: the on-device path: the uint8 set as one tensor on the device, batches by index,
    crop + flip + normalize on the batch (``DeviceAugment`` of ``benchmarks/gpu_aug.py``),

in images/s, against the step's images/s (``--step-ips``, ``--step-json`` from bench_step.py, or measured
here: our KD step on a fixed batch). The loader keeps up when loader / step >= 3 (goal). ``--e2e`` also
trains the KD step fed by each source, which shows what the loader costs when it shares the CPU.

    python benchmarks/bench_data.py --step-json out/bench_step.json --json out/bench_data.json

``--recipe configs/imagenet/resnet34__resnet18.yaml`` measures the ImageNet pipeline instead: a folder of JPEGs of
ImageNet's sizes (``--num-samples``, written to a temporary ImageFolder tree) read through train_kd.py's own dataset,
transform (RandomResizedCrop 224 + flip) and loader (per-sample seeding for exact resume), for each ``--workers-list``
count; the per-sample costs (JPEG decode, transform, the seeding in a worker and in the main process); and the
recipe's step on this machine (KD and KD+TLCutMix+pick at ``--step-batch``, with their FLOPs per image), from which it
gives the loader workers that feed the step: step images/s / images/s of one worker.

    python benchmarks/bench_data.py --recipe configs/imagenet/resnet34__resnet18.yaml --workers-list 0,1,2
"""
import argparse
import gc
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SCHEMA_VERSION, environment, fmt_ratio, load_average, summarize, sync, write_json  # noqa: E402

GOAL_LOADER_OVER_STEP = 3.0


class SyntheticCifar(torch.utils.data.Dataset):
    """CIFAR-shaped random data: (N, 32, 32, 3) uint8 served as PIL images through ``transform``."""

    def __init__(self, num_samples: int = 10000, size: int = 32, num_classes: int = 100, transform=None, seed: int = 0):
        rng = np.random.RandomState(seed)
        self.data = rng.randint(0, 256, (num_samples, size, size, 3), dtype=np.uint8)
        self.targets = rng.randint(0, num_classes, num_samples).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image
        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def default_workers() -> int:
    """train_kd.py's default for --workers."""
    try:
        from timm_kd.train.args import build_parser
        return int(build_parser().get_default('workers'))
    except Exception:  # pragma: no cover - train_kd not importable
        return 4


def recipe_transform(size: int = 32, padding: int = 4):
    from timm_kd.data import create_kd_transform
    from timm_kd.models import CIFAR100_MEAN, CIFAR100_STD
    return create_kd_transform(size, is_training=True, mean=CIFAR100_MEAN, std=CIFAR100_STD, crop_padding=padding)


def view_dataset(ds: 'SyntheticCifar', policy: str) -> 'SyntheticCifar':
    """The same images with train_kd.py's two-view transform (original + ``policy``, see --tl-aug)."""
    from timm_kd.data.views import ImageSpec, PairedTransform, create_view_transform
    from timm_kd.models import CIFAR100_MEAN, CIFAR100_STD
    paired = SyntheticCifar.__new__(SyntheticCifar)
    paired.data, paired.targets = ds.data, ds.targets
    paired.transform = PairedTransform(ds.transform, *create_view_transform(
        policy, ImageSpec(ds.data.shape[1], CIFAR100_MEAN, CIFAR100_STD, 4)))
    return paired


def make_loader(kind: str, ds, batch_size: int, workers: int, seed: int = 0):
    if kind in ('train_kd', 'train_kd_view'):
        from timm_kd.train.data import create_train_loader
        return create_train_loader(ds, batch_size, seed, 0, 1, workers,
                                   extras=('view_input',) if kind == 'train_kd_view' else ())
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


class EpochBatches:
    """Endless batches of a loader (new epoch when one ends; persistent workers survive epochs)."""

    def __init__(self, loader):
        self.loader, self.epoch, self.it = loader, 0, None

    def next(self):
        while True:
            if self.it is None:
                sampler = getattr(getattr(self.loader, 'batch_sampler', None), 'sampler', None)
                if hasattr(sampler, 'set_epoch'):
                    sampler.set_epoch(self.epoch)
                self.it = iter(self.loader)
            try:
                return next(self.it)
            except StopIteration:
                self.it, self.epoch = None, self.epoch + 1


class DeviceBatches:
    """The on-device path: the uint8 training set lives on the device as one tensor; a batch is an
    index_select of a per-epoch permutation plus ``DeviceAugment`` (crop, flip, normalize)."""

    def __init__(self, data: np.ndarray, targets: List[int], batch_size: int, device: torch.device,
                 padding: int = 4, channels_last: bool = False, seed: int = 0):
        from gpu_aug import DeviceAugment
        from timm_kd.models import CIFAR100_MEAN, CIFAR100_STD
        self.data = torch.from_numpy(data).to(device)  # (N, H, W, C) uint8
        self.targets = torch.tensor(targets, device=device)
        self.aug = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, padding=padding, channels_last=channels_last).to(device)
        self.batch_size, self.device = batch_size, device
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.order, self.pos = None, 0

    def next(self):
        n = self.data.shape[0]
        if self.order is None or self.pos + self.batch_size > n:
            self.order, self.pos = torch.randperm(n, device=self.device, generator=self.g), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.aug(self.data.index_select(0, idx), generator=self.g), self.targets.index_select(0, idx)


def per_sample_costs(ds: SyntheticCifar, n: int = 256) -> Dict[str, float]:
    """Microseconds per sample in this process: PIL image + recipe transform, and what train_kd's
    per-sample seeding (``SeededSamples``, exact resume) adds on top."""
    from timm_kd.train.data import SeededSamples
    seeded = SeededSamples(ds)
    out: Dict[str, List[float]] = {'transform': [], 'seeded_transform': []}
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(n):
            ds[i]
        out['transform'].append((time.perf_counter() - t0) / n * 1e6)
        t0 = time.perf_counter()
        for i in range(n):
            seeded[(i, 1000 + i)]
        out['seeded_transform'].append((time.perf_counter() - t0) / n * 1e6)
    res = {k: min(v) for k, v in out.items()}
    res['seeding_overhead'] = res['seeded_transform'] - res['transform']
    return res


def time_batches(source, n: int, device: torch.device) -> float:
    """Seconds per batch over n batches."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        source.next()
    sync(device)
    return (time.perf_counter() - t0) / max(n, 1)


def time_sources(sources: Dict[str, Any], args: argparse.Namespace, device: torch.device, log: Callable[[str], None],
                 t_start: float) -> Tuple[Dict[str, float], Dict[str, List[float]]]:
    """(start-up seconds, seconds per batch of every repeat) of each source: the start-up (worker spawn, first
    batch) and warm-up untimed but for the record, then ``--repeats`` interleaved timings, the order flipped every
    repeat."""
    startup = {}
    for name, src in sources.items():
        t0 = time.perf_counter()
        src.next()
        startup[name] = time.perf_counter() - t0
        for _ in range(args.warmup_batches):
            src.next()
    times: Dict[str, List[float]] = {k: [] for k in sources}
    names = list(sources)
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(time_batches(sources[name], args.batches, device))
        log(f'  repeat {r + 1}/{args.repeats} ({time.perf_counter() - t_start:.0f}s)')
    return startup, times


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-b', '--batch-size', type=int, default=64)
    p.add_argument('--num-samples', type=int, default=10000, help='synthetic training set size')
    p.add_argument('--workers', type=int, default=None, help="default: train_kd.py's default (--workers)")
    p.add_argument('--workers-list', default='', help='more worker counts to measure, e.g. 0,2')
    p.add_argument('--sources', default='train_kd,train_kd_view,plain,device_aug',
                   help='comma list of train_kd,train_kd_view,plain,device_aug')
    p.add_argument('--view', default='rand-m9-mstd0.5', help='per-sample view of train_kd_view (--tl-aug POLICY)')
    p.add_argument('--batches', type=int, default=30, help='timed batches per repeat')
    p.add_argument('--warmup-batches', type=int, default=5)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads of the main process')
    p.add_argument('--step-ips', type=float, default=None, help="the step's images/s (skips measuring it)")
    p.add_argument('--step-json', default=None, help="bench_step.py --json output: take the step rates from it")
    p.add_argument('--model', default=None, help="student of the measured step (when measured here; default "
                                                 "resnet20, with --recipe the recipe's)")
    p.add_argument('--teacher', default=None, help="its teacher (default resnet56, with --recipe the recipe's)")
    p.add_argument('--step-repeats', type=int, default=3)
    p.add_argument('--e2e', action=argparse.BooleanOptionalAction, default=True,
                   help='also time the KD step fed by each source (default on)')
    p.add_argument('--e2e-steps', type=int, default=5, help='training steps per source and repeat in --e2e')
    p.add_argument('--recipe', default=None, metavar='YAML',
                   help='an ImageNet-size train_kd recipe: measure its JPEG pipeline and step instead (see above)')
    p.add_argument('--step-batch', type=int, default=8, help='--recipe: batch of the measured step')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None, metavar='PATH')
    p.add_argument('-q', '--quiet', action='store_true')
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = default_workers()
    if not args.recipe:
        args.model, args.teacher = args.model or 'resnet20', args.teacher or 'resnet56'
    args.sources = [s for s in args.sources.split(',') if s]
    for s in args.sources:
        if s not in ('train_kd', 'train_kd_view', 'plain', 'device_aug'):
            p.error(f'unknown source {s!r}')
    extra = [int(w) for w in args.workers_list.split(',') if w != '']
    args.worker_counts = [args.workers] + [w for w in extra if w != args.workers]
    return args


def step_rates_from_json(path: str) -> Dict[str, float]:
    import json
    with open(path) as f:
        res = json.load(f)
    out = {}
    for v, vo in res.get('variants', {}).items():
        if 'ours' in vo:
            out[v] = float(vo['ours']['images_per_s'])
    return out


def write_jpeg_folder(root: str, num_samples: int, classes: int = 10, seed: int = 0) -> float:
    """train/<class>/*.JPEG and a small val/ of ImageNet's sizes (sides 333-500 px) and a JPEG's texture (a smooth
    random field plus fine noise, quality 90); the mean file size in bytes."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    sizes = []
    for split, n in (('train', num_samples), ('val', classes)):
        for i in range(n):
            folder = os.path.join(root, split, f'n{i % classes:08d}')
            os.makedirs(folder, exist_ok=True)
            h, w = int(rng.integers(333, 501)), int(rng.integers(375, 501))
            field = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)).resize(
                (w, h), Image.BICUBIC)
            pixels = np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
            path = os.path.join(folder, f'{i}.JPEG')
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
            sizes.append(os.path.getsize(path))
    return float(np.mean(sizes))


def recipe_dataset(recipe: str, root: str):
    """train_kd.py's training dataset (reader, transform) and data config for ``recipe`` on the folder ``root``."""
    from timm_kd.train.args import parse_args as train_args
    from timm_kd.train.build import create_datasets, data_config
    classes = len(os.listdir(os.path.join(root, 'train')))
    args, explicit = train_args(['--config', recipe, '--data-dir', root, '--num-classes', str(classes)])
    dc = data_config(args, explicit)
    return create_datasets(args, dc)[0], dc, args


def seeding_costs(seeded, n: int = 2000) -> Dict[str, float]:
    """Microseconds per sample of the per-sample seeding alone: a worker reseeds, the main process also saves and
    restores the generators' states."""
    t0 = time.perf_counter()
    for i in range(n):
        seeded._seed(1000 + i)
    return {'seeding_in_worker': (time.perf_counter() - t0) / n * 1e6}


def imagenet_main(args: argparse.Namespace, result: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """--recipe: train_kd's loader on ImageNet-like JPEGs per worker count, and the recipe's step on this machine."""
    import tempfile
    from timm_kd.train.data import SeededSamples
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='bench_data_imagenet_') as root:
        result['mean_jpeg_bytes'] = write_jpeg_folder(root, args.num_samples, seed=args.seed)
        ds, dc, train_args = recipe_dataset(args.recipe, root)
        result['transform'] = repr(ds.transform)
        log(f'{args.num_samples} JPEGs of {result["mean_jpeg_bytes"] / 1e3:.0f} kB on average; the recipe\'s '
            f'{dc.size} px transform, loader RNGs {dc.rngs}')
        seeded = SeededSamples(ds, dc.rngs)
        per_sample = per_sample_costs(ds, n=min(64, len(ds)))
        per_sample.update(seeding_costs(seeded))
        from PIL import Image
        path = ds.reader.samples[0][0]
        t0 = time.perf_counter()
        for _ in range(20):
            with Image.open(path) as im:
                im.convert('RGB')
        per_sample['jpeg_decode'] = (time.perf_counter() - t0) / 20 * 1e6
        result['per_sample_us'] = per_sample
        sources = {f'train_kd/w{w}': EpochBatches(make_loader('train_kd', ds, args.batch_size, w, args.seed))
                   for w in args.worker_counts}
        startup, times = time_sources(sources, args, torch.device('cpu'), log, t_start)
        del sources  # the persistent workers end here, before their files go and before the step is timed
        gc.collect()
    out = {}
    for name, ts in times.items():
        workers = int(name.split('/w')[1])
        ips = args.batch_size / summarize(ts)['median']
        out[name] = {'sec_per_batch': summarize(ts), 'images_per_s': ips, 'startup_s': startup[name],
                     'images_per_s_per_worker': ips / workers if workers else None}
    result['sources'] = out
    # the recipe's step on this machine, and its work per image
    from bench_step import Bench, parse_args as step_args, step_flops
    bench = Bench(step_args([
        '--model', args.model or train_args.model, '--teacher', args.teacher or train_args.teacher, '-b',
        str(args.step_batch), '--img-size',
        str(dc.size), '--num-classes', str(train_args.num_classes), '--device', 'cpu', '--threads',
        str(args.threads), '--seed', str(args.seed)]), ['kd', 'pick-kld'], ['ours'])
    step = {}
    for variant in ('kd', 'pick-kld'):
        fn = bench.steps[variant, 'ours']
        flops = step_flops(fn, bench.batch())
        fn(*bench.batch())
        secs = [bench.run(fn, 1) for _ in range(args.step_repeats)]
        step[variant] = {'sec_per_step': summarize(secs), 'images_per_s': args.step_batch / summarize(secs)['median'],
                         'gflops_per_image': flops / args.step_batch / 1e9 if flops else None}
    result['step'] = step
    best = max((o['images_per_s_per_worker'] for o in out.values() if o['images_per_s_per_worker']), default=None)
    result['per_worker_images_per_s'] = best
    result['workers_to_feed_step'] = {v: (s['images_per_s'] / best if best else None) for v, s in step.items()}
    result['env']['load_average_end'] = load_average()
    result['wall_seconds'] = time.perf_counter() - t_start
    log('')
    log('per sample (us, fastest of 3): ' + ', '.join(f'{k} {v:.0f}' for k, v in per_sample.items()))
    for name, o in out.items():
        per = o['images_per_s_per_worker']
        log(f'{name:16s} {o["images_per_s"]:8.1f} img/s' + (f', {per:.1f} a worker' if per else ' (main process)'))
    for v, st in step.items():
        log(f'step {v:9s} {st["images_per_s"]:7.2f} img/s on this machine ({st["gflops_per_image"]:.1f} GFLOPs an image):'
            f' {result["workers_to_feed_step"][v]:.3f} workers of {best:.0f} img/s feed it')
    log(f'load average end: {load_average()}')
    write_json(args.json, result)
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda s: print(s, flush=True))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings('ignore', message='This DataLoader will create')  # we pick workers on purpose
    result: Dict[str, Any] = {
        'schema_version': SCHEMA_VERSION, 'benchmark': 'data', 'env': environment(device),
        'config': {k: getattr(args, k) for k in (
            'batch_size', 'num_samples', 'workers', 'worker_counts', 'sources', 'batches', 'warmup_batches',
            'repeats', 'device', 'threads', 'e2e', 'e2e_steps', 'seed', 'recipe', 'step_batch')},
        'command': ' '.join(['python', 'benchmarks/bench_data.py'] + (argv if argv is not None else sys.argv[1:])),
    }
    if args.recipe:
        log(f'bench_data: {args.recipe}, batch {args.batch_size}, workers {args.worker_counts}, load {load_average()}')
        return imagenet_main(args, result, log)
    log(f'bench_data: batch {args.batch_size}, workers {args.worker_counts} (train_kd default {default_workers()}), '
        f'{device}, load {load_average()}')
    t_start = time.perf_counter()

    ds = SyntheticCifar(args.num_samples, transform=recipe_transform(), seed=args.seed)
    per_sample = per_sample_costs(ds, n=min(256, len(ds)))
    result['per_sample_us'] = per_sample
    sources: Dict[str, Any] = {}
    for kind in ('train_kd', 'train_kd_view', 'plain'):
        if kind in args.sources:
            for w in args.worker_counts:
                data = view_dataset(ds, args.view) if kind == 'train_kd_view' else ds
                sources[f'{kind}/w{w}'] = EpochBatches(make_loader(kind, data, args.batch_size, w, args.seed))
    if 'device_aug' in args.sources:
        sources['device_aug'] = DeviceBatches(ds.data, ds.targets, args.batch_size, device, seed=args.seed)

    startup, times = time_sources(sources, args, device, log, t_start)

    # the step's consumption
    if args.step_ips:
        step_ips, step_source = {'kd': args.step_ips}, '--step-ips'
    elif args.step_json:
        step_ips, step_source = step_rates_from_json(args.step_json), args.step_json
    else:
        step_ips, step_source = None, 'measured here (our KD step, fixed batch)'

    bench = None
    if step_ips is None or args.e2e:
        from bench_step import Bench, parse_args as step_args
        bench = Bench(step_args([
            '--model', args.model, '--teacher', args.teacher, '-b', str(args.batch_size), '--device', args.device,
            '--threads', str(args.threads), '--seed', str(args.seed)]), ['kd'], ['ours'])
        kd_step = bench.steps['kd', 'ours']
        for _ in range(2):
            kd_step(*bench.batch())

    e2e: Dict[str, List[float]] = {}
    if step_ips is None or args.e2e:
        feeds: Dict[str, Callable[[], Tuple[torch.Tensor, torch.Tensor]]] = {'fixed_batch': bench.batch}
        if args.e2e:
            for name, src in sources.items():
                feeds[name] = (lambda s=src: tuple(t.to(device, non_blocking=True) for t in s.next()[:2]))
        e2e = {k: [] for k in feeds}
        n = args.e2e_steps if args.e2e else max(args.e2e_steps, 3)
        for r in range(args.step_repeats):
            for name in (list(feeds) if r % 2 == 0 else list(feeds)[::-1]):
                sync(device)
                t0 = time.perf_counter()
                for _ in range(n):
                    kd_step(*feeds[name]())
                sync(device)
                e2e[name].append((time.perf_counter() - t0) / n)
        if step_ips is None:
            step_ips = {'kd': args.batch_size / summarize(e2e['fixed_batch'])['median']}

    B = args.batch_size
    out_sources = {}
    for name, ts in times.items():
        st = summarize(ts)
        ips = B / st['median']
        o = {'sec_per_batch': st, 'images_per_s': ips, 'startup_s': startup[name],
             'over_step': {v: ips / s for v, s in step_ips.items()}}
        if name in e2e:
            est = summarize(e2e[name])
            o['e2e_kd_step'] = {'sec_per_step': est, 'images_per_s': B / est['median']}
        out_sources[name] = o
    result['sources'] = out_sources
    result['step'] = {'images_per_s': step_ips, 'source': step_source}
    if 'fixed_batch' in e2e:
        est = summarize(e2e['fixed_batch'])
        result['step']['e2e_fixed_batch'] = {'sec_per_step': est, 'images_per_s': B / est['median']}
    goals = {}
    main_name = f'train_kd/w{args.workers}'
    if main_name in out_sources and 'kd' in step_ips:
        r = out_sources[main_name]['over_step']['kd']
        goals['loader_over_kd_step'] = {'value': r, 'goal': GOAL_LOADER_OVER_STEP, 'met': r >= GOAL_LOADER_OVER_STEP,
                                        'loader': main_name}
    view_name = f'train_kd_view/w{args.workers}'
    if view_name in out_sources and 'kd' in step_ips:
        r = out_sources[view_name]['over_step']['kd']
        goals['loader_with_view_over_kd_step'] = {'value': r, 'goal': GOAL_LOADER_OVER_STEP,
                                                  'met': r >= GOAL_LOADER_OVER_STEP, 'loader': view_name,
                                                  'view': args.view}
    result['goals'] = goals
    result['env']['load_average_end'] = load_average()
    result['wall_seconds'] = time.perf_counter() - t_start

    log('')
    log('per sample (us, main process, fastest of 3): ' + ', '.join(f'{k} {v:.0f}' for k, v in per_sample.items()))
    log(f'step images/s ({step_source}): ' + ', '.join(f'{k} {v:.1f}' for k, v in step_ips.items()))
    log(f'{"source":16s} {"img/s":>9s} {"spread":>7s} {"start s":>8s} {"/ KD step":>10s} {"e2e KD img/s":>13s}')
    for name, o in out_sources.items():
        e = o.get('e2e_kd_step', {}).get('images_per_s')
        log(f'{name:16s} {o["images_per_s"]:9.1f} {o["sec_per_batch"]["rel_iqr"] * 100:6.1f}% {o["startup_s"]:8.2f} '
            f'{o["over_step"].get("kd", float("nan")):10.2f} {e if e is not None else float("nan"):13.1f}')
    if 'e2e_fixed_batch' in result['step']:
        log(f'{"fixed batch":16s} {"":9s} {"":7s} {"":8s} {"":10s} {result["step"]["e2e_fixed_batch"]["images_per_s"]:13.1f}')
    for k, g in goals.items():
        log(f'{k}: {fmt_ratio(g["value"], g["goal"], lower_is_better=False)} ({g["loader"]})')
    log(f'load average end: {load_average()}')
    write_json(args.json, result)
    return result


if __name__ == '__main__':
    main()
