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
"""
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..intermediates import no_autocast, pre_logits_dim
from . import register_method
from .base import ModelOutputs
from .feature import FeatureDistiller

__all__ = ['CRD', 'nce_loss', 'sort_by_class', 'draw_on_host', 'draw_on_device']

_EPS = 1e-7


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
                   generator: torch.Generator) -> torch.Tensor:
    """(B, 1 + num) bank rows as ``draw_on_host`` draws them, with device kernels only (no host sync).

    Random keys in [0, 1) for other-class rows and in [-1, 0) for same-class rows, the ``num`` largest win:
    uniform without replacement from the other classes, same-class rows only fill up.
    """
    keys = torch.rand(target.shape[0], labels.shape[0], generator=generator, device=labels.device)
    keys.sub_((labels[None, :] == target[:, None]).to(keys.dtype))
    return torch.cat([index[:, None], keys.topk(num, dim=1, sorted=False).indices], dim=1)


@register_method('crd')
class CRD(FeatureDistiller):
    """Contrastive representation distillation with a memory bank of the whole training set."""
    default_beta = 0.8
    needs_pre_logits = True
    needs_index = True
    needs_class_target = True

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
        self._buffers_bxn: List[Optional[torch.Tensor]] = [None, None]
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
        return draw_on_device(self.labels, index, target, self.nce_k, self._generator)

    def _by_class(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``sort_by_class(self.labels)``, sorted again only after the labels changed (in place: a new sample, a
        loaded state; or replaced: moved): once every sample has been seen, never (1.28M labels: ~80 ms a sort)."""
        key = (self.labels, self.labels._version)
        if self._class_order is None or self._class_order[0] is not key[0] or self._class_order[1] != key[1]:
            self._class_order = key + sort_by_class(self.labels)
        return self._class_order[2:]

    def _grad_in_anchor(self, v: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, grad_scores: torch.Tensor,
                        scratch: torch.Tensor) -> Optional[torch.Tensor]:
        """∂L/∂v of the scores (v / τ @ bankᵀ).gather(1, rows) given ∂L/∂scores; None when v needs no gradient.
        ``scratch``: the (B, n_data) scores, no longer needed."""
        if not v.requires_grad:
            return None
        return scratch.zero_().scatter_add_(1, rows, grad_scores) @ bank / self.nce_t

    def _scratch(self, direction: int, batch: int) -> torch.Tensor:
        """A (batch, n_data) float buffer kept from step to step: a fresh one each step costs page faults (on a CPU)
        comparable to the passes over it."""
        buffer = self._buffers_bxn[direction]
        if buffer is None or buffer.shape[0] != batch or buffer.device != self.memory_s.device:
            buffer = self._buffers_bxn[direction] = self.memory_s.new_empty(batch, self.num_samples)
        return buffer

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
            # scores v·m / τ: one (B, n_data) matmul and a gather, cheaper than gathering B·(1 + N) bank rows of
            # d floats (N·d > n_data for CIFAR)
            all_scores = [torch.mm(v / self.nce_t, bank.t(), out=self._scratch(i, len(v)))
                          for i, (v, bank) in enumerate(pairs)]
            scores = [a.gather(1, rows) for a in all_scores]
            if self.step == 0:
                z = torch.stack([s.exp().mean() for s in scores]) * self.num_samples
                if world > 1:
                    dist.all_reduce(z)
                    z /= world
                self.z.copy_(z)
            losses, grads = zip(*(nce_loss(s, log_z, self.num_samples) for s, log_z in zip(scores, self.z.log())))
            # the gradient in v needs the banks as the scores saw them: taken now, the banks can be updated in place
            # below (autograd would keep them for the backward, which needs a copy of both banks every step)
            grads_v = [self._grad_in_anchor(v, bank, rows, g, a) for (v, bank), g, a in zip(pairs, grads, all_scores)]
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
    def kwargs_from_args(cls, args: Any) -> Dict[str, Any]:
        return dict(super().kwargs_from_args(args), feat_dim=args.crd_feat_dim, nce_k=args.nce_k, nce_t=args.nce_t,
                    nce_m=args.nce_m, seed=args.seed)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', num_samples={self.num_samples}, nce_k={self.nce_k}, nce_t={self.nce_t}, '
                f'nce_m={self.nce_m}')
