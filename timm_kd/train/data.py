"""Data loading for exact resume: a per-epoch deterministic, rank-sharded sampler and per-sample RNG.

Bit-for-bit resume in the middle of an epoch needs (1) the same sample order, whatever happened before,
and (2) augmentation randomness that does not depend on which batches were skipped or which worker
loaded a sample. ``EpochSampler`` draws the epoch's permutation and one seed per sample from a generator
seeded with (seed, epoch); it yields ``(index, sample_seed)`` keys and can start ``k`` batches into the
epoch without loading them. ``SeededSamples`` seeds torch / numpy / random with the sample's seed around
``dataset[index]`` and restores the previous state, so the main process RNG (mixing, dropout) is never
touched by data loading and workers behave like the main process.

Loader batches are ``(input, target)``, or ``(input, target, extras)`` when ``extras`` are asked for: a dict of
task keyword arguments, ``view_input`` (the per-sample second view made by a ``PairedTransform``, drawn from
the sample's seed after the original, so the original and its random numbers are those of a one-view run)
and ``index`` (the sample index, e.g. for CRD's memory bank).

Each process takes every ``world_size``-th element of the permutation (the tail that does not split evenly
is dropped, as DistributedSampler(drop_last=True)), so all ranks run the same number of steps.
"""
import random
from typing import Iterator, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, get_worker_info

__all__ = ['EpochSampler', 'SeededSamples', 'create_train_loader', 'create_eval_loader', 'EXTRAS']

EXTRAS = ('view_input', 'index')  # what a training batch can carry beside (input, target): task kwargs


class EpochSampler(Sampler):
    """Shuffled (index, sample_seed) keys of one rank for ``set_epoch(e)``; ``set_start(n)`` skips n samples."""

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.per_rank = num_samples // world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2 ** 62, (n,), generator=g)  # indexed by sample, not by position
        mine = order[self.rank:self.per_rank * self.world_size:self.world_size][self.start:]
        for i in mine.tolist():
            yield i, int(seeds[i])


class SeededSamples(Dataset):
    """``dataset[index]`` with the RNGs its transform uses seeded by the key's sample seed.

    ``rngs``: which generators the transform draws from: 'torch' (torchvision transforms), 'random' and
    'numpy' (timm's RandAugment / AutoAugment, RandomErasing). In the main process (``workers=0``) their
    states are restored afterwards, so loading never disturbs the training randomness; worker processes
    just reseed (saving numpy's state costs ~0.2 ms a sample).

    ``extras``: task keyword arguments added to each sample as a third element, a dict: 'view_input' (the
    dataset's image is an ``(x, x_view)`` pair, see ``timm_kd.data.views.PairedTransform``) and / or 'index'.
    """

    def __init__(self, dataset: Dataset, rngs: Sequence[str] = ('torch', 'random', 'numpy'),
                 extras: Sequence[str] = ()):
        unknown = set(extras) - set(EXTRAS)
        if unknown:
            raise ValueError(f'Unknown loader extras {sorted(unknown)}: expected some of {EXTRAS}.')
        self.dataset = dataset
        self.rngs = tuple(rngs)
        self.extras = tuple(extras)

    def __len__(self) -> int:
        return len(self.dataset)

    def _seed(self, seed: int) -> None:
        # default_generator, not torch.manual_seed: leaves CUDA generators alone in the main process
        torch.default_generator.manual_seed(seed)
        if 'random' in self.rngs:
            random.seed(seed)
        if 'numpy' in self.rngs:
            np.random.seed(seed % 2 ** 32)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self._with_extras(self.dataset[key], key)
        index, seed = key
        if get_worker_info() is not None:
            self._seed(seed)
            return self._with_extras(self.dataset[index], index)
        py_state = random.getstate() if 'random' in self.rngs else None
        np_state = np.random.get_state() if 'numpy' in self.rngs else None
        with torch.random.fork_rng(devices=[]):  # saves / restores the CPU generator only
            self._seed(seed)
            try:
                return self._with_extras(self.dataset[index], index)
            finally:
                if py_state is not None:
                    random.setstate(py_state)
                if np_state is not None:
                    np.random.set_state(np_state)

    def _with_extras(self, sample, index: int):
        if not self.extras:
            return sample
        image, target = sample[:2]
        extras = {}
        if 'view_input' in self.extras:
            image, extras['view_input'] = image
        if 'index' in self.extras:
            extras['index'] = index
        return image, target, extras


def create_train_loader(dataset: Dataset, batch_size: int, seed: int, rank: int, world_size: int,
                        workers: int = 0, pin_memory: bool = False,
                        rngs: Sequence[str] = ('torch', 'random', 'numpy'), extras: Sequence[str] = ()) -> DataLoader:
    """Training loader of one rank (drop_last, as timm). ``loader.batch_sampler.sampler`` is the EpochSampler;
    ``rngs`` the generators the transform uses, ``extras`` the task kwargs each batch carries (see SeededSamples)."""
    if len(dataset) // world_size < batch_size:
        raise ValueError(f'the training set has {len(dataset)} samples, fewer than one batch of {batch_size} per '
                         f'process ({world_size} process(es))')
    sampler = EpochSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        SeededSamples(dataset, rngs, extras),
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=True),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        # an explicit generator keeps the loader from drawing worker base seeds from the global RNG
        generator=torch.Generator().manual_seed(seed),
    )


def create_eval_loader(dataset: Dataset, batch_size: int, workers: int = 0, pin_memory: bool = False,
                       seed: int = 0) -> DataLoader:
    """Sequential eval loader; give it to accelerator.prepare for sharding and gather_for_metrics."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))
