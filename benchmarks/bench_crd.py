#!/usr/bin/env python3
"""CRD's loss at ImageNet scale: the extra memory and the time of one step of ``timm_kd``'s CRD module.

A bank of ``--rows`` samples (default 1.28M, ImageNet's training set) with every label known (``--classes``
classes), two memory banks of ``--feat-dim`` (CRD's 128), ``--nce-k`` negatives (16384) and a batch of
``--batch-size`` anchors (256, the ImageNet recipe). The embedding heads are small (64 pre-logit features of two
resnet8 stand-ins, random inputs): what is measured is CRD itself, its draw, scores, NCE loss, gradient and bank update, forward and backward.
Each scoring path runs in a fresh process:

  * ``drawn``: the drawn rows alone, gathered chunk by chunk (CRD's choice for a bank this size),
  * ``whole_bank``: one matmul with the whole bank, chunk by chunk (CRD's choice for CIFAR-size banks),
  * ``whole_bank_unchunked``: the same in one piece, as CRD did before: two (batch, rows) float buffers,

plus ``device_draw``: the accelerator draw of the negatives (random keys, top-k; on this CPU) alone. Reported per
path: the extra memory of a step, i.e. the peak RSS over the steps minus the RSS before the first step (the banks,
2 x rows x feat-dim float32, are allocated and touched before), and the seconds per step (median).

    python benchmarks/bench_crd.py --json benchmarks/results/crd_imagenet_cpu1.json
"""
import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SCHEMA_VERSION, current_rss, environment, load_average, peak_rss, summarize, write_json  # noqa: E402

PATHS = ('drawn', 'whole_bank', 'whole_bank_unchunked', 'device_draw')
GOAL_EXTRA_BYTES = 2 ** 30  # the extra memory of a step at 1.28M rows and batch 256: under 1 GiB
WIDTH = 64  # pre-logit features of resnet8, the stand-in whose width sets the embedding heads' input


def _crd(args: argparse.Namespace, path: str):
    import timm
    import timm_kd  # noqa: F401  (the small stand-in models)
    from timm_kd.distill.methods import create_method
    torch.manual_seed(args.seed)
    models = [timm.create_model('resnet8', num_classes=args.classes) for _ in range(2)]  # never run: their width
    method = create_method('crd', *models, num_classes=args.classes, temperature=4.0, num_samples=args.rows,
                           nce_k=args.nce_k, feat_dim=args.feat_dim, seed=args.seed)
    method.labels.copy_(torch.randint(0, args.classes, (args.rows,)))  # every sample seen (the steady state)
    if path == 'drawn':
        method.dense_max_rows_per_draw = 0
    else:
        method.dense_max_rows_per_draw = 10 ** 12
        if path == 'whole_bank_unchunked':
            method.chunk_elements = 10 ** 15
    return method


def measure(args: argparse.Namespace, path: str) -> Dict[str, Any]:
    """One path in this process: RSS before the first step, peak RSS after ``--steps`` steps, seconds a step (main()
    runs each path in a fresh process, so the peak is that path's)."""
    from timm_kd.distill.methods import ModelOutputs
    from timm_kd.distill.methods.crd import draw_on_device
    method = _crd(args, path)
    g = torch.Generator().manual_seed(args.seed + 1)
    batches = []
    for _ in range(args.steps):
        index = torch.randperm(args.rows, generator=g)[:args.batch_size]
        batches.append((torch.randn(args.batch_size, WIDTH, generator=g),
                        torch.randn(args.batch_size, WIDTH, generator=g), method.labels[index], index))
    before = current_rss()
    seconds = []
    for p_s, p_t, target, index in batches:
        t0 = time.perf_counter()
        if path == 'device_draw':
            draw_on_device(method.labels, index, target, method.nce_k, g)
        else:
            p_s = p_s.requires_grad_()
            loss = method(ModelOutputs(None, pre_logits=p_s), ModelOutputs(None, pre_logits=p_t), target,
                          index=index)['crd_loss']
            loss.backward()
        seconds.append(time.perf_counter() - t0)
    return {'rss_before_step': before, 'peak_rss': peak_rss(), 'extra_bytes': peak_rss() - before,
            'sec_per_step': summarize(seconds[1:] or seconds), 'first_step_s': seconds[0]}


def _child(args: argparse.Namespace, path: str, queue) -> None:
    try:
        torch.set_num_threads(args.threads)
        queue.put(measure(args, path))
    except Exception as e:  # noqa: BLE001 - reported, the parent goes on with the next path
        queue.put({'error': f'{type(e).__name__}: {e}'})


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rows', type=int, default=1281167, help='bank rows: training samples (ImageNet-1k: 1281167)')
    p.add_argument('--classes', type=int, default=1000)
    p.add_argument('-b', '--batch-size', type=int, default=256)
    p.add_argument('--nce-k', type=int, default=16384)
    p.add_argument('--feat-dim', type=int, default=128, help="embedding and bank width (CRD's 128)")
    p.add_argument('--paths', default=','.join(PATHS), help=f'comma list of {PATHS}')
    p.add_argument('--steps', type=int, default=3, help='steps per path (the first one is not timed)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None, metavar='PATH')
    args = p.parse_args(argv)
    args.paths = [s for s in args.paths.split(',') if s]
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        p.error(f'unknown paths {sorted(unknown)}')
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result: Dict[str, Any] = {
        'schema_version': SCHEMA_VERSION, 'benchmark': 'crd', 'env': environment(torch.device('cpu')),
        'config': {k: getattr(args, k) for k in ('rows', 'classes', 'batch_size', 'nce_k', 'feat_dim', 'paths',
                                                  'steps', 'threads', 'seed')},
        'command': ' '.join(['python', 'benchmarks/bench_crd.py'] + (argv if argv is not None else sys.argv[1:])),
        'bank_bytes': 2 * args.rows * args.feat_dim * 4,
    }
    print(f'bench_crd: {args.rows} rows x {args.feat_dim}, batch {args.batch_size}, {args.nce_k} negatives, '
          f'{args.threads} thread(s), load {load_average()}; banks {result["bank_bytes"] / 2 ** 30:.2f} GiB', flush=True)
    ctx = mp.get_context('spawn')
    paths: Dict[str, Any] = {}
    for path in args.paths:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(args, path, queue))
        proc.start()
        try:
            res = queue.get(timeout=3600)
        except Exception as e:  # noqa: BLE001
            res = {'error': f'no result: {type(e).__name__}'}
        proc.join(60)
        paths[path] = res
        if 'error' in res:
            print(f'  {path:22s} {res["error"]}', flush=True)
        else:
            print(f'  {path:22s} extra memory of a step {res["extra_bytes"] / 2 ** 20:8.1f} MiB, '
                  f'{res["sec_per_step"]["median"]:.2f} s a step (first {res["first_step_s"]:.2f} s)', flush=True)
    result['paths'] = paths
    drawn = paths.get('drawn', {})
    if 'extra_bytes' in drawn:
        result['goal'] = {'extra_bytes': drawn['extra_bytes'], 'goal_bytes': GOAL_EXTRA_BYTES,
                          'met': drawn['extra_bytes'] < GOAL_EXTRA_BYTES}
        print(f'drawn rows: extra memory of a step {drawn["extra_bytes"] / 2 ** 20:.1f} MiB (goal < 1024 MiB: '
              f'{"met" if result["goal"]["met"] else "MISSED"})', flush=True)
    result['env']['load_average_end'] = load_average()
    write_json(args.json, result)
    return result


if __name__ == '__main__':
    main()
