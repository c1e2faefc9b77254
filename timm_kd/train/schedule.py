"""Learning-rate schedule of ``train_kd.py``: timm's schedulers, ``--epoch-scale`` and ``multistep_torch``.

timm's ``multistep`` applies milestone ``m`` at epoch index ``m - 1`` (0-based), one epoch earlier than
``torch.optim.lr_scheduler.MultiStepLR`` and the CRD / RepDistiller recipe (lr x0.1 from epoch index
150 on, i.e. after 150 epochs). ``--sched multistep_torch`` gives the torch / CRD meaning with timm's
scheduler class (shifted milestones), so warmup, noise and per-update stepping still work.

The loop steps the schedule like timm's train.py: ``step(epoch + 1)`` after each epoch and
``step_update(num_updates)`` after each optimizer update; ``set_position`` puts a fresh scheduler at an
(epoch, step) position on resume.
"""
import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

from timm.scheduler import MultiStepLRScheduler, create_scheduler_v2, scheduler_kwargs

__all__ = ['ScheduleLengths', 'schedule_lengths', 'create_kd_scheduler', 'set_position']


@dataclass(frozen=True)
class ScheduleLengths:
    """Epoch counts after --epoch-scale (args keep the user's unscaled values)."""
    epochs: int
    decay_milestones: List[int]
    decay_epochs: float


def schedule_lengths(args: argparse.Namespace) -> ScheduleLengths:
    k = float(args.epoch_scale)
    return ScheduleLengths(
        epochs=int(args.epochs * k),
        decay_milestones=[int(m * k) for m in args.decay_milestones],
        decay_epochs=args.decay_epochs * k if args.decay_epochs >= 1 else args.decay_epochs,
    )


def create_kd_scheduler(optimizer, args: argparse.Namespace, updates_per_epoch: int) -> Tuple[Optional[object], int]:
    """(scheduler or None, number of epochs to train) for ``args`` (``--sched``, ``--epoch-scale``, ...)."""
    lengths = schedule_lengths(args)
    kw = scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss')
    kw.update(num_epochs=lengths.epochs, decay_milestones=lengths.decay_milestones, decay_epochs=lengths.decay_epochs)
    if args.sched != 'multistep_torch':
        return create_scheduler_v2(optimizer, **kw, updates_per_epoch=updates_per_epoch)

    on_epochs = kw['step_on_epochs']
    unit = 1 if on_epochs else updates_per_epoch
    # timm decays when t + 1 >= d; torch when t >= m (t after any warmup prefix): d = m + 1 in scheduler units.
    decay_t = [m * unit + 1 for m in lengths.decay_milestones]
    noise = kw['noise']
    t_initial = lengths.epochs * unit
    if noise is not None:
        noise = [n * t_initial for n in noise] if isinstance(noise, (list, tuple)) else noise * t_initial
        if isinstance(noise, list) and len(noise) == 1:
            noise = noise[0]
    sched = MultiStepLRScheduler(
        optimizer,
        decay_t=decay_t,
        decay_rate=kw['decay_rate'],
        warmup_t=kw['warmup_epochs'] * unit,
        warmup_lr_init=kw['warmup_lr'],
        warmup_prefix=kw['warmup_prefix'],
        t_in_epochs=on_epochs,
        noise_range_t=noise,
        noise_pct=kw['noise_pct'],
        noise_std=kw['noise_std'],
        noise_seed=kw['noise_seed'],
    )
    num_epochs = lengths.epochs + (kw['warmup_epochs'] if kw['warmup_prefix'] else 0)
    return sched, num_epochs


def set_position(scheduler, epoch: int, step: int, updates_per_epoch: int) -> None:
    """Set the lr of a freshly built scheduler for (epoch, step-in-epoch), as the uninterrupted loop had it."""
    if scheduler is None or type(scheduler).__name__ == 'PlateauLRScheduler':
        return  # plateau keeps real state: its lr comes back with the optimizer and scheduler state dicts
    if scheduler.t_in_epochs:
        scheduler.step(epoch)
    else:
        scheduler.step_update(epoch * updates_per_epoch + step)
