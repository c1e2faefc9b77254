""" CRD: contrastive representation distillation

Tian, Krishnan, Isola, "Contrastive Representation Distillation" (ICLR 2020). The pooled features of
both models are embedded by trainable heads g_s, g_t (linear → L2 norm, d dims). A memory bank keeps one
embedding per training sample and model (momentum-averaged, renormalized). For sample i with
embeddings v_s, v_t, the positive is row i of the other model's bank and the N negatives are rows of
samples of other classes; every pair gets h = exp(v·m / τ) / Z (Z fixed from the first batch as
mean(h)·n_data), and NCE with noise probability P_n = 1/n_data gives, per direction,

    L = −(1/B) Σ_i [ log(h_i⁺ / (h_i⁺ + N·P_n + ε)) + Σ_k log(N·P_n / (h_ik⁻ + N·P_n + ε)) ],   ε = 1e-7

L_CRD = β · (L(student anchor, teacher bank) + L(teacher anchor, student bank)).

Published defaults (RepDistiller ``--distill crd -r 1 -a 0 -b 0.8 --feat_dim 128 --nce_k 16384
--nce_t 0.07 --nce_m 0.5 --mode exact``; ``-a 1`` for CRD+KD): β = 0.8, d = 128, N = 16384, τ = 0.07,
momentum 0.5, CE weight 1, no KD term; banks initialised uniform in ±1/sqrt(d/3); the feature is the
pooled pre-logits (``feat[-1]``).

Negatives: uniform without replacement among the samples of other classes ("exact" mode, where the
authors' dataset draws them). The class of each sample is recorded in the bank when the sample is first
seen, so the dataset only has to yield sample indices; a sample not seen yet counts as another class,
which changes nothing but the draw in the first epoch (its bank row is still the random
initialisation). When fewer than N other-class samples exist, the rest are filled with same-class ones.
With the bank on the CPU the draw is numpy's partial shuffle per sample (N random numbers a sample, as
the authors' ``np.random.choice``); on an accelerator, one random key per bank row and a top-k on the
device (no host sync). The draw is a function of (``seed``, step, process rank), the step is part of the
module state: a resumed run draws the same negatives. The loss's gradient in the embeddings is taken in the
forward, while the banks are as the scores saw them, so the banks are then updated in place (as the authors
update them after scoring) without autograd holding them. Banks, labels, Z and the step are buffers / extra
state of this module (in the training checkpoint, never in the exported student). Under several processes
(torch.distributed) every process updates its banks with the samples of all processes and Z is their
mean, so all processes hold the bank one process would, and any one's checkpoint resumes them all.

Scores, and at what memory: the scores of the drawn rows are either gathered from the bank (the drawn rows only:
B·(1 + N)·d floats read, a few anchors at a time, and their gradient in the anchor one fused weighted sum of the same
rows, ``embedding_bag``) or taken from one matmul of the anchors with the whole bank (B·n_data·d multiply-adds, a few
anchors at a time as well; the gradient a scatter into the chunk and a matmul back). A bank row costs the matmul
about 1/24 of what a drawn row costs to gather (a CPU, ``benchmarks/bench_crd.py``), so the matmul is kept where the
bank is small next to the draw, n_data <= ``dense_max_rows_per_draw`` (24) x (1 + N): CIFAR-100 (50k rows, 3 x) and
Tiny ImageNet (6 x); ImageNet (1.28M rows, 78 x) scores its drawn rows only. Both give the same values (up to the
order of float sums). No buffer of a step grows with batch x n_data: a chunk holds at most ``chunk_elements`` floats
(64 MiB), and so do the device draw's random keys; a step allocates besides only (B, 1 + N) tensors (the rows, the
scores, their gradient). The state is the two banks, 2·n_data·d float32 (ImageNet, d = 128: 1.31 GB), the labels
and, for the host draw, the class order (3·n_data int64: 31 MB at ImageNet).
"""
import math
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..intermediates import no_autocast, pre_logits_dim
from . import register_method
from .base import AT_LEAST_ONE, POSITIVE, FlagRange, ModelOutputs
from .feature import FeatureDistiller

__all__ = ['CRD', 'nce_loss', 'sort_by_class', 'draw_on_host', 'draw_on_device', 'score_drawn_rows',
           'drawn_rows_sum', 'CHUNK_ELEMENTS', 'DENSE_MAX_ROWS_PER_DRAW']

_EPS = 1e-7
# Elements (float32: 64 MiB) a step's scratch buffer holds: whole-bank scores, gathered bank rows and the device
# draw's keys are made this many at a time, so none grows with batch x n_data (at batch 256 and ImageNet's 1.28M
# rows such a buffer would be 1.3 GB).
CHUNK_ELEMENTS = 2 ** 24
# The whole-bank matmul is used while the bank has at most this many rows per drawn row (see the module docstring).
DENSE_MAX_ROWS_PER_DRAW = 24


def _process_group() -> Tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) without it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(t: torch.Tensor, world: int) -> torch.Tensor:
    """The concatenation over processes (rank order) of equally shaped tensors."""
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def nce_loss(scores: torch.Tensor, log_z: torch.Tensor, num_data: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """NCE loss of CRD and its gradient in the scores, from (B, 1 + N) scores s = v·m / τ (column 0: the
    positive), h = exp(s) / Z, noise P_n = 1/num_data.

    With log(h + N·P_n + ε) = log(exp(s) + K) − log Z and K = (N·P_n + ε)·Z, the module docstring's L is
    L = (1/B)·[Σ_ij log(exp(s_ij) + K) − Σ_i s_i0] − N·log(N·P_n·Z), and ∂L/∂s_ij = (exp(s_ij) / (exp(s_ij) + K)
    − [j = 0]) / B: three element-wise passes over the matrix for both.
    """
    batch, num_negatives = scores.shape[0], scores.shape[1] - 1
    noise = num_negatives / num_data
    exp_scores = scores.exp()
    denominators = exp_scores + (noise + _EPS) * log_z.exp()
    loss = (denominators.log().sum() - scores[:, 0].sum()) / batch - num_negatives * (math.log(noise) + log_z)
    grad = exp_scores.div_(denominators)
    grad[:, 0] -= 1
    return loss, grad.div_(batch)


def sort_by_class(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(order, labels[order]): the bank rows grouped by class (stable), the input of ``draw_on_host``."""
    order = torch.argsort(labels, stable=True)
    return order, labels[order]


def _chunks(batch: int, per_row: int, budget: int) -> Iterator[slice]:
    """Consecutive slices of ``batch`` rows of ``per_row`` elements each, at most ``budget`` elements a slice (at
    least one row)."""
    step = max(1, budget // per_row)
    return (slice(i, min(i + step, batch)) for i in range(0, batch, step))


def score_drawn_rows(v: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """(B, K) scores v[i] · bank[rows[i, j]] of the drawn rows only: the rows of a few anchors at a time are gathered
    into ``scratch`` (a flat float buffer of at least K·d elements; its size bounds a chunk), then one batched
    matrix-vector product."""
    batch, num = rows.shape
    dim = bank.shape[1]
    out = v.new_empty(batch, num, 1)
    for s in _chunks(batch, num * dim, scratch.numel()):
        idx = rows[s].flatten()
        gathered = torch.index_select(bank, 0, idx, out=scratch[:idx.numel() * dim].view(-1, dim))
        torch.bmm(gathered.view(-1, num, dim), v[s, :, None], out=out[s])
    return out.squeeze(2)


def drawn_rows_sum(weights: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, d) sums Σ_j weights[i, j] · bank[rows[i, j]] (the gradient of ``score_drawn_rows`` in v), without gathering
    the rows: one fused ``embedding_bag``."""
    return F.embedding_bag(rows, bank, mode='sum', per_sample_weights=weights)


def draw_on_host(by_class: Tuple[torch.Tensor, torch.Tensor], index: torch.Tensor, target: torch.Tensor, num: int,
                 seed: Tuple[int, ...]) -> torch.Tensor:
    """(B, 1 + num) bank rows: index[i], then a uniform draw without replacement of ``num`` rows whose label is
    not target[i].

    With the bank rows grouped by class (``sort_by_class``), the rows of other classes are the sorted positions
    outside the target's block, and numpy's choice without replacement (a partial shuffle: ``num`` random
    numbers) picks among them. With fewer than ``num`` such rows, all of them are taken and the rest drawn from
    the block.
    """
    order, sorted_labels = by_class
    starts = torch.searchsorted(sorted_labels, target)
    counts = torch.searchsorted(sorted_labels, target, right=True) - starts
    order, total = order.numpy(), len(order)
    rng = np.random.default_rng(seed)
    rows = np.empty((len(target), 1 + num), dtype=np.int64)
    rows[:, 0] = index.numpy()
    for i, (start, count) in enumerate(zip(starts.tolist(), counts.tolist())):
        others = total - count
        if others >= num:
            positions = rng.choice(others, num, replace=False)
            positions += count * (positions >= start)  # skip the target's block
        else:
            positions = np.concatenate([np.arange(start), np.arange(start + count, total),
                                        start + rng.choice(count, num - others, replace=False)])
        rows[i, 1:] = order[positions]
    return torch.from_numpy(rows)


def draw_on_device(labels: torch.Tensor, index: torch.Tensor, target: torch.Tensor, num: int,
                   generator: torch.Generator, budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """(B, 1 + num) bank rows as ``draw_on_host`` draws them, with device kernels only (no host sync).

    Random keys in [0, 1) for other-class rows and in [-1, 0) for same-class rows, the ``num`` largest win:
    uniform without replacement from the other classes, same-class rows only fill up. The keys of a few anchors
    are drawn at a time, at most ``budget`` of them.
    """
    rows = torch.empty(target.shape[0], 1 + num, dtype=torch.long, device=labels.device)
    rows[:, 0] = index
    for s in _chunks(target.shape[0], labels.shape[0], budget):
        keys = torch.rand(s.stop - s.start, labels.shape[0], generator=generator, device=labels.device)
        keys.sub_((labels[None, :] == target[s, None]).to(keys.dtype))
        rows[s, 1:] = keys.topk(num, dim=1, sorted=False).indices
    return rows


@register_method('crd')
class CRD(FeatureDistiller):
    """Contrastive representation distillation with a memory bank of the whole training set."""
    default_beta = 0.8
    needs_pre_logits = True
    needs_index = True
    needs_class_target = True
    chunk_elements = CHUNK_ELEMENTS
    dense_max_rows_per_draw = DENSE_MAX_ROWS_PER_DRAW

    def __init__(self, student: nn.Module, teacher: nn.Module, *, num_classes: int, temperature: float,
                 num_samples: int, beta: Optional[float] = None, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, nce_m: float = 0.5, seed: int = 0):
        super().__init__(student, teacher, num_classes=num_classes, temperature=temperature, beta=beta)
        if not 0 < nce_k < num_samples:
            raise ValueError(f'CRD draws nce_k negatives from the other {num_samples - 1} training samples: '
                             f'nce_k must be between 1 and {num_samples - 1}, got {nce_k}.')
        self.num_samples = int(num_samples)
        self.nce_k = int(nce_k)
        self.nce_t = float(nce_t)
        self.nce_m = float(nce_m)
        self.seed = int(seed)
        self.step = 0  # draws so far: with the seed it determines the next negatives (extra state)
        self.embed_s = nn.Linear(pre_logits_dim(student), feat_dim)
        self.embed_t = nn.Linear(pre_logits_dim(teacher), feat_dim)
        bound = 1. / math.sqrt(feat_dim / 3)
        self.register_buffer('memory_s', torch.rand(num_samples, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer('memory_t', torch.rand(num_samples, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer('labels', torch.full((num_samples,), -1, dtype=torch.long))
        self.register_buffer('z', torch.zeros(2))  # normalization constants (student, teacher anchor)
        self._generator: Optional[torch.Generator] = None
        self._scratch_buffer: Optional[torch.Tensor] = None
        self._class_order: Optional[Tuple[Any, ...]] = None  # (labels, its version, order, sorted labels)

    def get_extra_state(self) -> torch.Tensor:
        # the step as a CPU tensor: a plain number in the module state, read without a device sync
        return torch.tensor(self.step, dtype=torch.long)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.step = int(state)

    def sample_negatives(self, index: torch.Tensor, target: torch.Tensor, rank: int = 0, world: int = 1
                         ) -> torch.Tensor:
        """(B, 1 + nce_k) bank rows: the sample itself, then nce_k others of other classes, no repeats."""
        device = self.labels.device
        if device.type == 'cpu':
            return draw_on_host(self._by_class(), index, target, self.nce_k, (self.seed % 2 ** 64, self.step, rank))
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self.seed * 2 ** 31 + self.step * world + rank)
        return draw_on_device(self.labels, index, target, self.nce_k, self._generator, self.chunk_elements)

    def _by_class(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``sort_by_class(self.labels)``, sorted again only after the labels changed (in place: a new sample, a
        loaded state; or replaced: moved): once every sample has been seen, never (1.28M labels: ~80 ms a sort)."""
        key = (self.labels, self.labels._version)
        if self._class_order is None or self._class_order[0] is not key[0] or self._class_order[1] != key[1]:
            self._class_order = key + sort_by_class(self.labels)
        return self._class_order[2:]

    def _scores_whole_bank(self) -> bool:
        """Score the drawn rows out of a matmul with the whole bank (small banks), else gather them."""
        return self.num_samples <= self.dense_max_rows_per_draw * (1 + self.nce_k)

    def _scratch(self, per_row: int, batch: int) -> torch.Tensor:
        """A flat float buffer for chunks of ``per_row`` elements a batch row (at most ``chunk_elements``, at least
        one row), kept from step to step: a fresh one each step costs page faults (on a CPU) comparable to the
        passes over it."""
        size = per_row * min(batch, max(1, self.chunk_elements // per_row))
        buffer = self._scratch_buffer
        if buffer is None or buffer.numel() < size or buffer.device != self.memory_s.device:
            buffer = self._scratch_buffer = self.memory_s.new_empty(size)
        return buffer

    def _scores(self, v: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N) scores v·bank[rows] (v already divided by τ)."""
        if not self._scores_whole_bank():
            return score_drawn_rows(v, bank, rows, self._scratch(rows.shape[1] * bank.shape[1], len(v)))
        # one matmul with the whole bank and a gather: cheaper than gathering B·(1 + N) rows of d floats while the
        # bank is small (CIFAR: n_data = 3·(1 + N))
        out, n = rows.new_empty(rows.shape, dtype=v.dtype), self.num_samples
        scratch = self._scratch(n, len(v))
        for s in _chunks(len(v), n, scratch.numel()):
            torch.gather(torch.mm(v[s], bank.t(), out=scratch[:len(v[s]) * n].view(-1, n)), 1, rows[s], out=out[s])
        return out

    def _grad_in_anchor(self, v: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, grad_scores: torch.Tensor
                        ) -> Optional[torch.Tensor]:
        """∂L/∂v of the scores (v / τ)·bank[rows] given ∂L/∂scores; None when v needs no gradient."""
        if not v.requires_grad:
            return None
        if not self._scores_whole_bank():
            return drawn_rows_sum(grad_scores, bank, rows).div_(self.nce_t)
        out, n = torch.empty_like(v), self.num_samples
        scratch = self._scratch(n, len(v))
        for s in _chunks(len(v), n, scratch.numel()):
            spread = scratch[:len(v[s]) * n].view(-1, n).zero_().scatter_add_(1, rows[s], grad_scores[s])
            torch.mm(spread, bank, out=out[s])
        return out.div_(self.nce_t)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: torch.Tensor,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if index is None:
            raise ValueError('CRD needs the sample index of every image (index=...), for its memory bank.')
        v_s = F.normalize(self.embed_s(student.pre_logits).float(), dim=1)
        v_t = F.normalize(self.embed_t(teacher.pre_logits).float(), dim=1)
        rank, world = _process_group()
        index_all, target_all = _gather(index, world), _gather(target, world)
        if self.labels.device.type != 'cpu' or not torch.equal(self.labels[index_all], target_all):
            self.labels.index_copy_(0, index_all, target_all)  # on the CPU only when new: keeps the class order
        rows = self.sample_negatives(index, target, rank, world)
        pairs = ((v_s, self.memory_t), (v_t, self.memory_s))  # each anchor against the other model's bank
        with no_autocast(v_s), torch.no_grad():
            scores = [self._scores(v / self.nce_t, bank, rows) for v, bank in pairs]
            if self.step == 0:
                z = torch.stack([s.exp().mean() for s in scores]) * self.num_samples
                if world > 1:
                    dist.all_reduce(z)
                    z /= world
                self.z.copy_(z)
            losses, grads = zip(*(nce_loss(s, log_z, self.num_samples) for s, log_z in zip(scores, self.z.log())))
            # the gradient in v needs the banks as the scores saw them: taken now, the banks can be updated in place
            # below (autograd would keep them for the backward, which needs a copy of both banks every step)
            grads_v = [self._grad_in_anchor(v, bank, rows, g) for (v, bank), g in zip(pairs, grads)]
            for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                v = _gather(v, world)
                memory.index_copy_(0, index_all, F.normalize(memory[index_all] * self.nce_m + v * (1 - self.nce_m),
                                                             dim=1))
        loss = sum(losses)
        for (v, _), grad_v in zip(pairs, grads_v):
            if grad_v is not None:  # zero-valued term whose gradient in v is grad_v
                surrogate = (v * grad_v).sum()
                loss = loss + (surrogate - surrogate.detach())
        self.step += 1
        return {'crd_loss': self.beta * loss}

    @classmethod
    def add_args(cls, group) -> None:
        super().add_args(group)
        group.add_argument('--crd-feat-dim', type=int, default=128, metavar='D',
                           help='CRD: width of the embeddings and the memory bank (default 128)')
        group.add_argument('--nce-k', type=int, default=16384, metavar='N',
                           help='CRD: negatives per sample (default 16384)')
        group.add_argument('--nce-t', type=float, default=0.07, metavar='TAU',
                           help='CRD: temperature of the contrastive scores (default 0.07)')
        group.add_argument('--nce-m', type=float, default=0.5, metavar='M',
                           help='CRD: momentum of the memory bank update (default 0.5)')

    @classmethod
    def arg_ranges(cls) -> Dict[str, FlagRange]:
        # momentum 1 would never update the bank; the upper bound of --nce-k is the training set, checked with it
        return dict(super().arg_ranges(), crd_feat_dim=AT_LEAST_ONE, nce_k=AT_LEAST_ONE, nce_t=POSITIVE,
                    nce_m=(0, 1, False, True))

    @classmethod
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(super().kwargs_from_args(args), feat_dim=args.crd_feat_dim, nce_k=args.nce_k, nce_t=args.nce_t,
                    nce_m=args.nce_m, seed=args.seed)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', num_samples={self.num_samples}, nce_k={self.nce_k}, nce_t={self.nce_t}, '
                f'nce_m={self.nce_m}')
