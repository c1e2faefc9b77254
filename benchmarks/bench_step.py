#!/usr/bin/env python3
"""Speed of one distillation training step: timm-kd against a minimal hand-written PyTorch loop.

For a student/teacher pair, a batch size and a device, times one full training step (forward, loss,
backward, SGD step) of KD, KD+TLmixup, KD+TLCutMix and KD+TLCutMix+pick (each criterion), once through
``timm_kd.DistillationTask`` + ``timm_kd.DistillMixup`` ("ours") and once through a hand-written loop
doing the same math (docs/methods.md) with plain ``F.kl_div`` / ``F.cross_entropy`` ("hand"). Variants
and implementations are interleaved (A B B A ...) across repeats so machine load hits all of them alike.

Printed ratios and their goals:
  * our step / hand loop (KD, TLCutMix: within 5 %),
  * DistillMixup time / our step time (<= 2 %),
  * pick / TLCutMix step time against the FLOP model (student fwd 1, bwd 2, teacher fwd c per sample:
    TLCutMix = 6B + 2cB, pick(kld) with 2B candidates = 8B + 3cB; <= 1.05x the model's ratio),
  * peak memory of a step (CPU: RSS growth in a fresh process; CUDA: max_memory_allocated).

Two other runs:
  * ``--goals``: KD, TLCutMix and pick-kld, ours against hand, at 1 and at 2 threads in one run; the median
    CPU-time ratio at 1 thread and the median wall-time ratio at 2 threads must be <= 1.05 (both ratios
    are printed for both thread counts, with the spread of the paired repeats);
  * ``--distill kd,dkd,...`` (or ``all``): each distillation method's step (no view) against KD's in the
    same interleaved run, its extra peak memory, and its step time against the prediction from its work:
    FLOPs of one training step (``FlopCounterMode``) at KD's FLOP rate plus the bytes its ops read and write
    at the copy bandwidth measured in the run (``run_methods``); the FLOP-only ratio is printed too. The goal
    is measured / predicted within 10 %.

Example (the defaults, a few minutes on 2 CPU cores):
    python benchmarks/bench_step.py --model resnet20 --teacher resnet56 -b 64 --json out/bench_step.json
    python benchmarks/bench_step.py --goals --repeats 10 --steps 2 --no-memory
    python benchmarks/bench_step.py --distill all --repeats 6
"""
import argparse
import contextlib
import copy
import math
import multiprocessing as mp
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    SCHEMA_VERSION, current_rss, environment, fmt_ratio, load_average, peak_rss, summarize, sync, write_json,
)

ALL_VARIANTS = ('kd', 'tlmixup', 'tlcutmix', 'pick-kld', 'pick-t_ent', 'pick-s_ent', 'pick-random')
IMPLS = ('ours', 'hand')
# Forward GFLOPs of one 32x32 CIFAR-100 image as FlopCounterMode counts them: the fallback for c.
TABLE_GFLOPS = {'resnet20': 0.0816, 'resnet56': 0.2515, 'resnet8x4': 0.3541, 'resnet32x4': 2.1661}
GOALS = {'ours_over_hand': 1.05, 'mixup_share': 0.02, 'pick_over_model': 1.05, 'method_vs_prediction': 0.10}
GOAL_VARIANTS = ('kd', 'tlcutmix', 'pick-kld')
GOAL_THREADS = (1, 2)
METHOD_PREFIX = 'distill-'  # variant name of a distillation method's step: distill-<name>
BANK_SAMPLES = 50000  # CRD's memory bank: one row per CIFAR-100 training image


def flop_model(variant: str, c: float, n_candidates: int = 2, pick_ratio: float = 0.5) -> float:
    """Step cost in student-forward units per original sample (fwd 1, bwd 2, teacher c; docs/methods.md).

    The picked views train like TLCutMix's x' (3 + c, teacher logits reused from the pool); the pool
    costs one teacher forward per candidate and, for criteria that need the student, one no-grad
    student forward per candidate. With 2 candidates and ratio 1/2 'pick-kld' is 8 + 3c.
    """
    if variant == 'kd':
        return 3 + c
    if variant in ('tlmixup', 'tlcutmix'):
        return 6 + 2 * c
    crit = variant.split('-', 1)[1]
    picked = n_candidates * pick_ratio
    cost = 3 + c + 3 * picked
    if crit == 'random':  # nothing to score: the teacher only labels the picked views
        return cost + c * picked
    cost += c * n_candidates
    if crit in ('kld', 's_ent'):
        cost += n_candidates
    return cost


# --------------------------------------------------------------------------------------------------
# The hand-written loop. Deliberately independent of timm_kd: plain PyTorch, the math of docs/methods.md.
# --------------------------------------------------------------------------------------------------

def _kl(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * batchmean KL(softmax(t/T) || softmax(s/T))."""
    return F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction='batchmean', log_target=True) * T * T


class HandStep:
    """One training step written by hand: KD, TLmixup, TLCutMix or TLCutMix+pick.

    Pairing is a random derangement built without host sync (a random n-cycle from ``randperm``);
    lambda and the box are drawn on the host, once per batch (the authors' scheme).
    """

    def __init__(
            self, student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, variant: str,
            temperature: float = 4., gamma: float = 0.1, alpha: float = 0.9, n_candidates: int = 2,
            pick_ratio: float = 0.5, amp_dtype: Optional[torch.dtype] = None, seed: int = 0,
    ):
        self.student, self.teacher, self.opt = student, teacher, optimizer
        self.variant, self.T, self.gamma, self.alpha = variant, temperature, gamma, alpha
        self.n_candidates, self.pick_ratio = n_candidates, pick_ratio
        self.crit = variant.split('-', 1)[1] if variant.startswith('pick') else None
        self.amp_dtype = amp_dtype
        self.rng = random.Random(seed)
        self.bn_buffers = [
            b for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def _perm(self, n: int, device: torch.device) -> torch.Tensor:
        order = torch.randperm(n, device=device)
        perm = torch.empty_like(order)
        perm[order] = order.roll(-1)  # order[i] -> order[i+1]: one cycle through all, no fixed point
        return perm

    def _mixup(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.rng.betavariate(1., 1.)
        return torch.lerp(x[self._perm(x.shape[0], x.device)], x, lam)

    def _cutmix(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        lam = self.rng.betavariate(1., 1.)
        ch, cw = int(H * math.sqrt(1. - lam)), int(W * math.sqrt(1. - lam))
        cy, cx = self.rng.randrange(H), self.rng.randrange(W)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x[self._perm(x.shape[0], x.device), :, y0:y1, x0:x1]
        return out

    @torch.no_grad()
    def _score(self, pool: torch.Tensor, t_pool: torch.Tensor) -> torch.Tensor:
        if self.crit == 't_ent':
            logits = t_pool
        else:  # student scores in train mode on the pool; its BN running stats must not move
            saved = [b.clone() for b in self.bn_buffers]
            s_pool = self.student(pool)
            for b, s in zip(self.bn_buffers, saved):
                b.copy_(s)
            if self.crit == 'kld':
                log_t, log_s = F.log_softmax(t_pool / self.T, 1), F.log_softmax(s_pool / self.T, 1)
                return (log_t.exp() * (log_t - log_s)).sum(1)
            logits = s_pool
        logp = F.log_softmax(logits.float(), 1)
        return -(logp.exp() * logp).sum(1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        with self._autocast(x.device):
            views = t_views = None
            if self.variant == 'kd':
                with torch.no_grad():
                    t_x = self.teacher(x)
            elif self.crit is None:  # TLmixup / TLCutMix: one teacher forward over x and x'
                views = self._mixup(x) if self.variant == 'tlmixup' else self._cutmix(x)
                with torch.no_grad():
                    t_x, t_views = self.teacher(torch.cat([x, views])).split(B)
            else:
                pool = torch.cat([self._cutmix(x) for _ in range(self.n_candidates)])
                k = int(pool.shape[0] * self.pick_ratio)
                with torch.no_grad():
                    if self.crit == 'random':  # no score needed: label only the picked views
                        views = pool[torch.randperm(pool.shape[0], device=x.device)[:k]]
                        t_x, t_views = self.teacher(torch.cat([x, views])).split(B)
                    else:
                        t_x, t_pool = self.teacher(torch.cat([x, pool])).split([B, pool.shape[0]])
                        idx = self._score(pool, t_pool).topk(k).indices
                        views, t_views = pool[idx], t_pool[idx]  # teacher logits reused, not recomputed
            s_x = self.student(x)
            loss = self.gamma * F.cross_entropy(s_x, y) + self.alpha * _kl(s_x, t_x, self.T)
            if views is not None:
                loss = loss + self.alpha * _kl(self.student(views), t_views, self.T)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


# --------------------------------------------------------------------------------------------------
# Our step: timm_kd.DistillMixup + timm_kd.DistillationTask.
# --------------------------------------------------------------------------------------------------

def make_mixup(variant: str, num_classes: int, n_candidates: int = 2, pick_ratio: float = 0.5):
    import timm_kd
    if variant == 'kd' or variant.startswith(METHOD_PREFIX):
        return None
    if variant == 'tlmixup':
        return timm_kd.DistillMixup(mixup_alpha=1., cutmix_alpha=0., num_classes=num_classes)
    if variant == 'tlcutmix':
        return timm_kd.DistillMixup(mixup_alpha=0., cutmix_alpha=1., num_classes=num_classes)
    crit = variant.split('-', 1)[1]
    return timm_kd.DistillMixup(
        mixup_alpha=0., cutmix_alpha=1., num_classes=num_classes, pick=crit, n_candidates=n_candidates,
        pick_ratio=pick_ratio)


class OurStep:
    """One training step through timm_kd's task: ``task(x, y)['loss'].backward()`` + SGD step."""

    def __init__(self, task: nn.Module, optimizer: torch.optim.Optimizer, amp_dtype: Optional[torch.dtype] = None):
        self.task, self.opt, self.amp_dtype = task, optimizer, amp_dtype
        self.needs_index = task.distiller.needs_index

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(x.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        extras = {'index': torch.arange(x.shape[0], device=x.device)} if self.needs_index else {}
        with ctx:
            loss = self.task(x, y, **extras)['loss']
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def mixup_call(mix) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """The DistillMixup work of one step alone (view generation; picking is scored by the task)."""
    return lambda x, y: mix(x, y)


# --------------------------------------------------------------------------------------------------
# Set-up shared by the timing run and the memory probes.
# --------------------------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='resnet20', help='student (a timm model name)')
    p.add_argument('--teacher', default='resnet56', help='teacher (a timm model name; random weights)')
    p.add_argument('-b', '--batch-size', type=int, default=64)
    p.add_argument('--num-classes', type=int, default=100)
    p.add_argument('--img-size', type=int, default=None, help="default: the student's pretrained_cfg")
    p.add_argument('--variants', default=','.join(ALL_VARIANTS), help=f'comma list of {ALL_VARIANTS}')
    p.add_argument('--impls', default=','.join(IMPLS), help='ours,hand')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', choices=('none', 'bf16', 'fp16'), default=None,
                   help='autocast dtype (default: bf16 on CUDA, none on CPU)')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help='channels_last memory format (default: on for CUDA, off for CPU)')
    p.add_argument('--compile', action='store_true', help='torch.compile student and teacher (both impls)')
    p.add_argument('--repeats', type=int, default=5, help='timed repeats per variant, interleaved')
    p.add_argument('--steps', type=int, default=3, help='training steps per timed repeat')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per variant before timing')
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (CPU)')
    p.add_argument('--n-candidates', type=int, default=2)
    p.add_argument('--pick-ratio', type=float, default=0.5)
    p.add_argument('--lr', type=float, default=0.05)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-memory probes')
    p.add_argument('--no-sync-probe', dest='sync_probe', action='store_false',
                   help='skip counting host-sync calls (.item(), bool(t), ...) in one step')
    p.add_argument('--goals', action='store_true',
                   help=f'the goals run: {",".join(GOAL_VARIANTS)}, ours and hand, at {GOAL_THREADS} threads '
                        f'(overrides --variants, --impls, --threads; no memory probes)')
    p.add_argument('--distill', default='', metavar='NAMES',
                   help='comma list of distillation methods (or "all"): step time of each against KD in the same '
                        'run, extra memory, and measured against predicted cost (overrides --variants, --impls)')
    p.add_argument('--json', default=None, metavar='PATH', help='write the results as JSON')
    p.add_argument('-q', '--quiet', action='store_true')
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(',') if v]
    args.impls = [v for v in args.impls.split(',') if v]
    if args.goals and args.distill:
        p.error('--goals and --distill are separate runs: give one')
    if args.goals:
        args.variants, args.impls, args.memory = list(GOAL_VARIANTS), list(IMPLS), False
    if args.distill:
        from timm_kd.distill.methods import METHODS
        names = sorted(METHODS) if args.distill == 'all' else [m for m in args.distill.split(',') if m]
        for m in names:
            if m not in METHODS:
                p.error(f'unknown distillation method {m!r}; choose from {sorted(METHODS)} or all')
        refusals = _refusals(names, args.model)  # e.g. token distillation needs a student with a distillation token
        if args.distill != 'all' and refusals:
            p.error(next(iter(refusals.values())))
        names = [m for m in names if m not in refusals]  # all: the methods that can train this student
        # KD is the baseline of every ratio; its step is the 'kd' variant
        args.variants = ['kd'] + [METHOD_PREFIX + m for m in names if m != 'kd']
        args.impls = ['ours']
    for v in args.variants:
        if v not in ALL_VARIANTS and not v.startswith(METHOD_PREFIX):
            p.error(f'unknown variant {v!r}; choose from {ALL_VARIANTS}')
    for v in args.impls:
        if v not in IMPLS:
            p.error(f'unknown impl {v!r}; choose from {IMPLS}')
    if args.batch_size < 2 or args.batch_size % 2:
        p.error('--batch-size must be even and >= 2 (mixing pairs samples)')
    dev = torch.device(args.device)
    if args.amp is None:
        args.amp = 'bf16' if dev.type == 'cuda' else 'none'
    if args.channels_last is None:
        args.channels_last = dev.type == 'cuda'
    return args


def _refusals(names: List[str], model: str) -> Dict[str, str]:
    """Method name -> why it cannot train ``model`` (``Distiller.check_student``), for the methods that cannot."""
    import timm
    import timm_kd  # noqa: F401  (registers the CIFAR models)
    from timm_kd.distill.methods import METHODS
    student, out = timm.create_model(model), {}
    for m in names:
        try:
            METHODS[m].check_student(student)
        except ValueError as e:
            out[m] = str(e)
    return out


def amp_dtype(args) -> Optional[torch.dtype]:
    return {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]


class Bench:
    """Models, optimizers, data and the step callables of one benchmark configuration."""

    def __init__(self, args: argparse.Namespace, variants: List[str], impls: List[str]):
        import timm
        import timm_kd  # noqa: F401  (registers the CIFAR models)
        self.args, self.device = args, torch.device(args.device)
        torch.manual_seed(args.seed)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        dev, nc = self.device, args.num_classes
        teacher = timm.create_model(args.teacher, num_classes=nc).to(dev, memory_format=fmt).eval()
        teacher.requires_grad_(False)
        student = timm.create_model(args.model, num_classes=nc).to(dev, memory_format=fmt).train()
        size = args.img_size or student.pretrained_cfg.get('input_size', (3, 32, 32))[-1]
        self.input_size = (3, size, size)
        self.teacher_module, self.student_module = teacher, student
        self.students = {impl: copy.deepcopy(student) for impl in impls}  # same start, own optimizer
        t_run = torch.compile(teacher) if args.compile else teacher
        s_run = {k: torch.compile(m) if args.compile else m for k, m in self.students.items()}
        self.opts = {k: torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
                     for k, m in self.students.items()}
        g = torch.Generator().manual_seed(args.seed)
        B = args.batch_size
        self.batches = [
            (torch.randn(B, *self.input_size, generator=g).to(dev, memory_format=fmt),
             torch.randint(0, nc, (B,), generator=g).to(dev)) for _ in range(2)]
        self.steps: Dict[Tuple[str, str], Callable] = {}
        self.mixups: Dict[str, Any] = {}
        adt = amp_dtype(args)
        for v in variants:
            method = v[len(METHOD_PREFIX):] if v.startswith(METHOD_PREFIX) else 'kd'
            if 'hand' in impls and method == 'kd':
                self.steps[v, 'hand'] = HandStep(
                    s_run['hand'], t_run, self.opts['hand'], v, n_candidates=args.n_candidates,
                    pick_ratio=args.pick_ratio, amp_dtype=adt, seed=args.seed)
            if 'ours' in impls:
                mix = make_mixup(v, nc, args.n_candidates, args.pick_ratio)
                task = timm_kd.DistillationTask(
                    self.students['ours'], teacher, mixup=mix, method=method, temperature=4.0, task_loss_weight=0.1,
                    distill_loss_weight=0.9,
                    method_kwargs=dict(num_samples=BANK_SAMPLES) if timm_kd.distill.METHODS[method].needs_index
                    else None).to(dev)
                task.train()
                extra = [q for q in task.distiller.parameters() if q.requires_grad]
                if extra:  # a method's trainable parts step with the student
                    self.opts['ours'].add_param_group({'params': extra})
                if args.compile:
                    task.compile()
                self.steps[v, 'ours'] = OurStep(task, self.opts['ours'], adt)
                if mix is not None:
                    self.mixups[v] = mix
        self._i = 0

    def batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        self._i += 1
        return self.batches[self._i % len(self.batches)]

    def run(self, fn: Callable, n: int) -> float:
        """Wall seconds per call of fn over n calls (one device sync, at the end). The process CPU
        seconds per call go to ``self.last_cpu``: with one thread they measure the work itself,
        whatever else runs on the machine."""
        sync(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            self.last_out = fn(*self.batch())
        sync(self.device)
        self.last_cpu = (time.process_time() - c0) / max(n, 1)
        return (time.perf_counter() - t0) / max(n, 1)


# --------------------------------------------------------------------------------------------------
# Host-sync probe and memory probe.
# --------------------------------------------------------------------------------------------------

_SYNC_METHODS = ('item', 'tolist', 'cpu', 'numpy', 'nonzero', '__bool__', '__int__', '__float__', '__index__')


@contextlib.contextmanager
def count_host_syncs():
    """Count tensor calls that force a host/device sync on an accelerator (a CPU-visible proxy)."""
    counts: Dict[str, int] = {}
    saved = {}

    def wrap(owner, name):
        orig = getattr(owner, name)
        saved[owner, name] = (orig, name in vars(owner))

        def f(*a, **kw):
            counts[name] = counts.get(name, 0) + 1
            return orig(*a, **kw)
        setattr(owner, name, f)

    for name in _SYNC_METHODS:
        wrap(torch.Tensor, name)
    for name in ('equal', 'nonzero', 'masked_select', 'unique'):
        wrap(torch, name)
    try:
        yield counts
    finally:
        for (owner, name), (orig, own) in saved.items():
            if own:
                setattr(owner, name, orig)
            else:  # inherited from the C base class: drop our shadowing attribute
                delattr(owner, name)


def _memory_child(args: argparse.Namespace, variant: str, impl: str, queue) -> None:
    try:
        torch.set_num_threads(args.threads)
        bench = Bench(args, [variant], [impl])
        step = bench.steps[variant, impl]
        x, y = bench.batch()
        dev = bench.device
        if dev.type == 'cuda':
            step(x, y)  # allocator and cuDNN warm-up, then measure a steady step
            sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            step(x, y)
            sync(dev)
            queue.put({'peak_bytes': torch.cuda.max_memory_allocated(dev) - base, 'kind': 'cuda_max_allocated'})
            return
        base = current_rss()
        for _ in range(2):
            step(x, y)
        queue.put({'peak_bytes': max(peak_rss() - base, 0), 'kind': 'cpu_rss_growth'})
    except Exception as e:  # report, do not hang the parent
        queue.put({'error': f'{type(e).__name__}: {e}'})


def measure_memory(args: argparse.Namespace, log: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
    """Peak memory of a step per variant and impl, each in a fresh process (the allocator keeps freed
    memory, so in-process RSS after the first variant says little about the next)."""
    ctx = mp.get_context('forkserver')
    ctx.set_forkserver_preload(['torch', 'timm', 'timm_kd'])
    out: Dict[str, Dict[str, Any]] = {}
    for v in args.variants:
        for impl in args.impls:
            q = ctx.Queue()
            p = ctx.Process(target=_memory_child, args=(args, v, impl, q))
            p.start()
            try:
                res = q.get(timeout=600)
            except Exception as e:
                res = {'error': f'no result: {type(e).__name__}'}
            p.join(60)
            out.setdefault(v, {})[impl] = res
            if 'peak_bytes' in res:
                log(f'  memory {v:12s} {impl:5s} {res["peak_bytes"] / 2 ** 20:8.1f} MiB ({res["kind"]})')
            else:
                log(f'  memory {v:12s} {impl:5s} {res}')
    return out


def count_flops(model: nn.Module, input_size: Tuple[int, ...], device: torch.device) -> Optional[float]:
    """Forward FLOPs of one image (torch's FlopCounterMode: 2 per multiply-add)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
        was_training = model.training
        model.eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.randn(1, *input_size, device=device))
        model.train(was_training)
        return float(fc.get_total_flops())
    except Exception:  # pragma: no cover - older torch
        return None


def timed_interleaved(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]):
    """Every step of ``bench`` timed ``args.repeats`` times, interleaved: the order flips every repeat
    (A B C, C B A, ...) and ours / hand alternate, so machine load hits all alike. Returns wall and CPU
    seconds per step by (variant, impl), the last losses and the DistillMixup seconds per call by variant."""
    times: Dict[Tuple[str, str], List[float]] = {k: [] for k in bench.steps}
    cpu_times: Dict[Tuple[str, str], List[float]] = {k: [] for k in bench.steps}
    last_loss: Dict[Tuple[str, str], torch.Tensor] = {}
    mix_times: Dict[str, List[float]] = {v: [] for v in bench.mixups}
    keys = list(bench.steps)
    t0 = time.perf_counter()
    for r in range(args.repeats):
        order = keys if r % 2 == 0 else keys[::-1]
        for key in order:
            times[key].append(bench.run(bench.steps[key], args.steps))
            cpu_times[key].append(bench.last_cpu)
            last_loss[key] = bench.last_out.detach()
            if key[0] in bench.mixups and key[1] == 'ours':
                mix_times[key[0]].append(bench.run(mixup_call(bench.mixups[key[0]]), args.steps))
        log(f'  repeat {r + 1}/{args.repeats} done ({time.perf_counter() - t0:.0f}s)')
    return times, cpu_times, last_loss, mix_times


def warm_up(bench: Bench, args: argparse.Namespace) -> None:
    for step in bench.steps.values():
        for _ in range(args.warmup):
            step(*bench.batch())
    for mix in bench.mixups.values():
        for _ in range(max(args.warmup, 1)):
            mixup_call(mix)(*bench.batch())


def paired(a: List[float], b: List[float]) -> Dict[str, float]:
    """Median and spread of the per-repeat ratios a/b (the two ran back to back: load cancels best)."""
    return summarize([x / y for x, y in zip(a, b)])


class _BytesMoved(TorchDispatchMode):
    """Bytes of the tensors every op reads and writes (inputs and outputs; views and reshapes move none)."""

    _NO_DATA = {'view', '_unsafe_view', 'as_strided', 'expand', 't', 'transpose', 'permute', 'slice', 'select',
                'unsqueeze', 'squeeze', 'alias', 'detach', 'reshape', 'flatten', 'split', 'unbind', 'chunk', 'narrow',
                'lift_fresh', 'split_with_sizes', 'unflatten'}

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in self._NO_DATA:
            self.total += sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                              if isinstance(t, torch.Tensor))
        return out


def step_bytes(step: Callable, batch: Tuple[torch.Tensor, torch.Tensor]) -> float:
    """Bytes read and written by the ops of one training step (the memory traffic if nothing stayed in cache)."""
    with _BytesMoved() as counter:
        step(*batch)
    return float(counter.total)


def copy_bandwidth(device: torch.device, mib: int = 64, repeats: int = 10) -> float:
    """Bytes per second of a large tensor copy (read + write) on the device: the rate of memory-bound work."""
    src = torch.ones(mib * 2 ** 18, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    return 2 * src.numel() * src.element_size() * repeats / (time.perf_counter() - start)


def step_flops(step: Callable, batch: Tuple[torch.Tensor, torch.Tensor]) -> Optional[float]:
    """FLOPs of one training step, forward and backward (torch's FlopCounterMode: matmuls and convolutions)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover - older torch
        return None
    with FlopCounterMode(display=False) as fc:
        step(*batch)
    return float(fc.get_total_flops())


def run_goals(args: argparse.Namespace, result: Dict[str, Any], log: Callable[[str], None]) -> None:
    """Ours / hand for the goal variants at 1 and 2 threads: CPU time at 1 thread, wall time at 2 (<= 1.05)."""
    bench = Bench(args, args.variants, args.impls)
    runs: Dict[str, Any] = {}
    goals: Dict[str, Any] = {}
    for threads in GOAL_THREADS:
        torch.set_num_threads(threads)
        warm_up(bench, args)
        times, cpu_times, last_loss, _ = timed_interleaved(bench, args, log)
        per_variant = {}
        for v in args.variants:
            wall = paired(times[v, 'ours'], times[v, 'hand'])
            cpu = paired(cpu_times[v, 'ours'], cpu_times[v, 'hand'])
            per_variant[v] = {'wall': wall, 'cpu': cpu,
                              'finite_loss': all(bool(torch.isfinite(last_loss[v, i]).item()) for i in args.impls)}
            measure = 'cpu' if threads == 1 else 'wall'
            r = per_variant[v][measure]['median']
            goals[f'{v}_{measure}_{threads}t'] = {'value': r, 'goal': GOALS['ours_over_hand'],
                                                  'met': r <= GOALS['ours_over_hand']}
            cpu_goal, wall_goal = (GOALS['ours_over_hand'], None) if threads == 1 else (None, GOALS['ours_over_hand'])
            log(f'{threads} thread(s) ours / hand {v:10s} CPU time {fmt_ratio(cpu["median"], cpu_goal)} '
                f'[{cpu["min"]:.3f}..{cpu["max"]:.3f}]  wall {fmt_ratio(wall["median"], wall_goal)} '
                f'[{wall["min"]:.3f}..{wall["max"]:.3f}]')
        runs[f'threads_{threads}'] = {'variants': per_variant, 'load_average_end': load_average()}
    torch.set_num_threads(args.threads)
    result['goals_run'] = runs
    result['goals'] = goals
    log(f'goals met: {all(g["met"] for g in goals.values())}; load average end: {load_average()}')


def run_methods(args: argparse.Namespace, result: Dict[str, Any], memory: Dict[str, Dict[str, Any]],
                log: Callable[[str], None]) -> None:
    """Each method's step against KD's (same run): time ratio, its prediction from the step's work, extra memory.

    The prediction is a two-term cost model of one step: FLOPs (``FlopCounterMode``: matmuls, convolutions) at a
    rate R plus bytes moved (every op's inputs and outputs) at the copy bandwidth BW measured in this run; R is
    what KD's measured step leaves for its FLOPs, R = F_kd / (t_kd − bytes_kd / BW). A method is then predicted
    at (F / R + bytes / BW) / t_kd. The FLOP-only ratio F / F_kd is reported too; it under-predicts memory-bound
    work (CRD's (B, n_data) score passes, VID's element-wise likelihood on stage maps)."""
    bench = Bench(args, args.variants, args.impls)
    batch = bench.batch()
    flops = {v: step_flops(bench.steps[v, 'ours'], batch) for v in args.variants}
    moved = {v: step_bytes(bench.steps[v, 'ours'], batch) for v in args.variants}
    bandwidth = copy_bandwidth(bench.device)
    warm_up(bench, args)
    times, cpu_times, last_loss, _ = timed_interleaved(bench, args, log)
    t_kd = summarize(times['kd', 'ours'])['median']
    flop_time = t_kd - moved['kd'] / bandwidth  # KD's step time left for its FLOPs
    rate = flops['kd'] / flop_time if flops['kd'] and flop_time > 0 else None
    result['cost_model'] = {'copy_bandwidth_bytes_per_s': bandwidth, 'flops_per_s': rate, 'kd_sec_per_step': t_kd}
    rate_text = '-' if rate is None else f'{rate / 1e9:.1f}'
    log(f'cost model: copy bandwidth {bandwidth / 1e9:.1f} GB/s, FLOP rate {rate_text} GFLOP/s (KD step '
        f'{t_kd * 1e3:.1f} ms: {moved["kd"] / 2 ** 20:.0f} MiB moved, {flops["kd"] / 1e9:.2f} GFLOPs)')
    methods: Dict[str, Any] = {}
    goals: Dict[str, Any] = {}
    base_mem = memory.get('kd', {}).get('ours', {}).get('peak_bytes')
    for v in args.variants:
        name = v[len(METHOD_PREFIX):] if v.startswith(METHOD_PREFIX) else 'kd'
        ratio = paired(times[v, 'ours'], times['kd', 'ours'])
        by_flops = flops[v] / flops['kd'] if flops[v] and flops['kd'] else None
        predicted = (flops[v] / rate + moved[v] / bandwidth) / t_kd if rate else by_flops
        mem = memory.get(v, {}).get('ours', {}).get('peak_bytes')
        entry = {'sec_per_step': summarize(times[v, 'ours']), 'over_kd': ratio,
                 'cpu_over_kd': paired(cpu_times[v, 'ours'], cpu_times['kd', 'ours']),
                 'step_gflops': flops[v] and flops[v] / 1e9, 'step_mib_moved': moved[v] / 2 ** 20,
                 'predicted_over_kd': predicted, 'predicted_flops_over_kd': by_flops,
                 'extra_memory_bytes': mem - base_mem if mem is not None and base_mem is not None else None,
                 'finite_loss': bool(torch.isfinite(last_loss[v, 'ours']).item())}
        methods[name] = entry
        if predicted and name != 'kd':
            off = ratio['median'] / predicted - 1
            goals[f'{name}_vs_prediction'] = {'value': off, 'goal': GOALS['method_vs_prediction'],
                                              'met': abs(off) <= GOALS['method_vs_prediction']}
        extra = entry['extra_memory_bytes']
        log(f'{name:8s} step / KD {ratio["median"]:.3f} [{ratio["min"]:.3f}..{ratio["max"]:.3f}], CPU time '
            f'{entry["cpu_over_kd"]["median"]:.3f}, predicted {"-" if predicted is None else f"{predicted:.3f}"} '
            f'(FLOPs only {"-" if by_flops is None else f"{by_flops:.3f}"}), '
            f'extra memory {"-" if extra is None else f"{extra / 2 ** 20:.1f} MiB"}')
    result['methods'] = methods
    result['goals'] = goals
    log(f'within 10 % of the prediction: {all(g["met"] for g in goals.values())}; load average end: {load_average()}')


# --------------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda s: print(s, flush=True))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: Dict[str, Any] = {
        'schema_version': SCHEMA_VERSION, 'benchmark': 'step', 'env': environment(device),
        'config': {k: getattr(args, k) for k in (
            'model', 'teacher', 'batch_size', 'num_classes', 'device', 'amp', 'channels_last', 'compile',
            'repeats', 'steps', 'warmup', 'threads', 'n_candidates', 'pick_ratio', 'lr', 'seed', 'variants',
            'impls', 'goals', 'distill')},
        'command': ' '.join(['python', 'benchmarks/bench_step.py'] + (argv if argv is not None else sys.argv[1:])),
    }
    log(f'bench_step: {args.model} <- {args.teacher}, batch {args.batch_size}, {device}, amp {args.amp}, '
        f'channels_last {args.channels_last}, compile {args.compile}, threads {torch.get_num_threads()}, '
        f'load {load_average()}')

    # memory first: fresh processes, nothing else running in this one yet
    memory = measure_memory(args, log) if args.memory else {}
    if args.goals or args.distill:
        t_run = time.perf_counter()
        if args.goals:
            run_goals(args, result, log)
        else:
            run_methods(args, result, memory, log)
        result['env']['load_average_end'] = load_average()
        result['wall_seconds'] = time.perf_counter() - t_run
        write_json(args.json, result)
        return result

    t_build = time.perf_counter()
    bench = Bench(args, args.variants, args.impls)
    log(f'set-up {time.perf_counter() - t_build:.1f}s, input {bench.input_size}')

    s_flops = count_flops(bench.student_module, bench.input_size, device)
    t_flops = count_flops(bench.teacher_module, bench.input_size, device)
    if s_flops and t_flops:
        c, c_source = t_flops / s_flops, 'measured (FlopCounterMode)'
    elif args.model in TABLE_GFLOPS and args.teacher in TABLE_GFLOPS:
        c, c_source = TABLE_GFLOPS[args.teacher] / TABLE_GFLOPS[args.model], 'research table'
    else:
        c, c_source = 1.0, 'unknown (assumed 1)'
    result['flops'] = {
        'student_gflops': s_flops and s_flops / 1e9, 'teacher_gflops': t_flops and t_flops / 1e9,
        'c': c, 'c_source': c_source,
        'c_table': (TABLE_GFLOPS[args.teacher] / TABLE_GFLOPS[args.model]
                    if args.model in TABLE_GFLOPS and args.teacher in TABLE_GFLOPS else None),
    }
    log(f'FLOPs/img: student {result["flops"]["student_gflops"]} G, teacher {result["flops"]["teacher_gflops"]} G, '
        f'c = {c:.3f} ({c_source})')

    # host-sync probe: one step of each variant with sync-forcing calls counted
    syncs: Dict[str, Dict[str, Dict[str, int]]] = {}
    if args.sync_probe:
        for (v, impl), step in bench.steps.items():
            with count_host_syncs() as counts:
                step(*bench.batch())
            syncs.setdefault(v, {})[impl] = dict(counts)

    # warm-up
    t0 = time.perf_counter()
    warm_up(bench, args)
    log(f'warm-up {time.perf_counter() - t0:.1f}s')

    times, cpu_times, last_loss, mix_times = timed_interleaved(bench, args, log)
    # the last timed losses must be finite, else the timing measured NaN arithmetic (synced after timing)
    finite = {f'{v}/{impl}': bool(torch.isfinite(loss).item()) for (v, impl), loss in last_loss.items()}

    B = args.batch_size
    variants_out: Dict[str, Any] = {}
    for v in args.variants:
        vo: Dict[str, Any] = {'flop_model_units': flop_model(v, c, args.n_candidates, args.pick_ratio)}
        for impl in args.impls:
            st = summarize(times[v, impl])
            vo[impl] = {'sec_per_step': st, 'images_per_s': B / st['median'],
                        'cpu_sec_per_step': summarize(cpu_times[v, impl])}
            if memory.get(v, {}).get(impl):
                vo[impl]['memory'] = memory[v][impl]
            if syncs.get(v, {}).get(impl) is not None:
                vo[impl]['host_sync_calls'] = syncs[v][impl]
        if 'ours' in args.impls and 'hand' in args.impls:
            # paired per-repeat ratios: ours and hand ran back to back, so load cancels best here
            vo['ours_over_hand'] = summarize([a / b for a, b in zip(times[v, 'ours'], times[v, 'hand'])])
            # ratio of the fastest repeats: load only ever adds time, so minima estimate the work itself
            vo['ours_over_hand']['ratio_of_min'] = min(times[v, 'ours']) / min(times[v, 'hand'])
            vo['ours_over_hand']['cpu_time_ratio'] = (summarize(cpu_times[v, 'ours'])['median']
                                                      / summarize(cpu_times[v, 'hand'])['median'])
        if v in mix_times and mix_times[v]:
            mt = summarize(mix_times[v])
            vo['mixup'] = {'sec_per_call': mt, 'share_of_step': mt['median'] / vo['ours']['sec_per_step']['median']}
        variants_out[v] = vo
    result['variants'] = variants_out

    # headline ratios and goals
    ratios: Dict[str, Any] = {}
    goals: Dict[str, Any] = {}
    for v in ('kd', 'tlcutmix'):
        if v in variants_out and 'ours_over_hand' in variants_out[v]:
            r = variants_out[v]['ours_over_hand']['median']
            ratios[f'{v}_ours_over_hand'] = r
            goals[f'{v}_ours_over_hand'] = {'value': r, 'goal': GOALS['ours_over_hand'],
                                            'met': r <= GOALS['ours_over_hand']}
    for v, vo in variants_out.items():
        if 'mixup' in vo:
            ratios[f'{v}_mixup_share'] = vo['mixup']['share_of_step']
    if 'tlcutmix_mixup_share' in ratios:
        r = ratios['tlcutmix_mixup_share']
        goals['tlcutmix_mixup_share'] = {'value': r, 'goal': GOALS['mixup_share'], 'met': r <= GOALS['mixup_share']}
    if 'tlcutmix' in variants_out:
        base = variants_out['tlcutmix']
        for v, vo in variants_out.items():
            if not v.startswith('pick'):
                continue
            model_ratio = vo['flop_model_units'] / base['flop_model_units']
            entry = {'flop_model': model_ratio}
            for impl in args.impls:
                measured = vo[impl]['sec_per_step']['median'] / base[impl]['sec_per_step']['median']
                entry[impl] = measured
                entry[f'{impl}_over_model'] = measured / model_ratio
                entry[f'{impl}_cpu_time'] = (vo[impl]['cpu_sec_per_step']['median']
                                             / base[impl]['cpu_sec_per_step']['median'])
            ratios[f'{v}_over_tlcutmix'] = entry
            if 'ours' in entry:
                goals[f'{v}_over_tlcutmix'] = {
                    'value': entry['ours_over_model'], 'goal': GOALS['pick_over_model'],
                    'met': entry['ours_over_model'] <= GOALS['pick_over_model']}
    result['ratios'] = ratios
    result['goals'] = goals
    result['finite_loss'] = finite
    result['env']['load_average_end'] = load_average()
    result['wall_seconds'] = time.perf_counter() - t_build

    # report
    log('')
    log(f'{"variant":12s} {"impl":5s} {"img/s":>8s} {"ms/step":>9s} {"spread":>7s} {"mem MiB":>8s} {"syncs":>5s}')
    for v, vo in variants_out.items():
        for impl in args.impls:
            st = vo[impl]['sec_per_step']
            mem = vo[impl].get('memory', {}).get('peak_bytes')
            ns = vo[impl].get('host_sync_calls')
            log(f'{v:12s} {impl:5s} {vo[impl]["images_per_s"]:8.1f} {st["median"] * 1e3:9.1f} '
                f'{st["rel_iqr"] * 100:6.1f}% {mem / 2 ** 20 if mem is not None else float("nan"):8.1f} '
                f'{sum(ns.values()) if ns is not None else "-":>5}')
    log('')
    for v, vo in variants_out.items():
        if 'ours_over_hand' in vo:
            goal = GOALS['ours_over_hand'] if v in ('kd', 'tlcutmix') else None
            oh = vo['ours_over_hand']
            log(f'ours / hand        {v:12s} {fmt_ratio(oh["median"], goal)}'
                f'  [paired repeats: {oh["min"]:.3f}..{oh["max"]:.3f}; fastest/fastest {oh["ratio_of_min"]:.3f}; '
                f'CPU time {oh["cpu_time_ratio"]:.3f}]')
    for v, vo in variants_out.items():
        if 'mixup' in vo:
            log(f'mixup / step       {v:12s} {fmt_ratio(vo["mixup"]["share_of_step"], GOALS["mixup_share"])}')
    for k, e in ratios.items():
        if k.endswith('_over_tlcutmix'):
            parts = ', '.join(f'{impl} {e[impl]:.3f} ({e[impl + "_over_model"]:.3f}x model; CPU time '
                              f'{e[impl + "_cpu_time"]:.3f})' for impl in args.impls)
            log(f'{k:30s} FLOP model {e["flop_model"]:.3f}; measured {parts}')
    log(f'load average end: {load_average()}; finite losses: {all(finite.values())}')
    write_json(args.json, result)
    return result


if __name__ == '__main__':
    main()
