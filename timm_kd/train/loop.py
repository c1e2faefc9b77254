"""The epoch loop of ``train_kd.py``: one training epoch through a timm task, evaluation, meters.

The task (``timm.task.ClassificationTask`` or ``timm_kd.DistillationTask``) does the forward and the
loss; this loop only moves data, steps the optimizer / schedule / EMA, accumulates the task's scalar
outputs on the device (no host sync per step), checks for non-finite losses, logs and asks for
mid-epoch checkpoints. Loader batches are ``(input, target)`` or ``(input, target, extras)``, ``extras`` a
dict of task keyword arguments (``view_input``, ``index``) moved to the device with the batch. Nothing here
knows about distillation.
"""
import logging
import math
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from timm_kd.distill.diagnostics import TeacherProbStats

__all__ = ['NonFiniteLossError', 'EpochMeters', 'mean_lr', 'train_one_epoch', 'evaluate']

_logger = logging.getLogger('train_kd')


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""


class EpochMeters:
    """Sums of a task's scalar outputs over the steps of an epoch, kept on the device, and the epoch's starting lr.

    A mid-epoch checkpoint carries them, so a resumed epoch reports the numbers of the uninterrupted one."""

    def __init__(self, lr: Optional[float] = None):
        self.lr = lr  # mean lr of the param groups at the epoch's first step (summary.csv's lr column)
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.teacher = TeacherProbStats()  # the teacher-only augmentation score of the epoch's views

    def update(self, out: Dict[str, Any], target: torch.Tensor) -> None:
        for k, v in out.items():
            if k == 'output' or not torch.is_tensor(v) or v.numel() != 1:
                continue
            v = v.detach().float().reshape(())
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1
        if torch.is_tensor(out.get('teacher_output')):
            view = out.get('teacher_view_output')
            self.teacher.update(out['teacher_output'], view if torch.is_tensor(view) else None, target)
        logits = out.get('output')
        if torch.is_tensor(logits) and target.ndim == 1 and logits.ndim == 2:  # hard labels: train top-1 on x
            acc = (logits.detach().argmax(-1) == target).float().mean() * 100.
            self.sums['top1'] = self.sums['top1'] + acc if 'top1' in self.sums else acc
            self.counts['top1'] = self.counts.get('top1', 0) + 1

    def averages(self) -> Dict[str, float]:
        avg = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        avg.update({f't_{k}': v for k, v in self.teacher.summary().items()})
        return avg

    def state_dict(self) -> Dict[str, Any]:
        return {'sums': {k: v.detach().cpu() for k, v in self.sums.items()}, 'counts': dict(self.counts),
                'teacher': self.teacher.state_dict(), 'lr': self.lr}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        self.lr = state.get('lr', self.lr)  # checkpoints of earlier versions lack it: keep the lr at the resume step
        self.sums = {k: v.to(device) for k, v in state['sums'].items()}
        self.counts = dict(state['counts'])
        if state.get('teacher'):
            self.teacher.load_state_dict(state['teacher'], device)


def mean_lr(optimizer) -> float:
    """The mean lr over the optimizer's param groups (what summary.csv and the progress lines report)."""
    lrs = [g['lr'] for g in optimizer.param_groups]
    return sum(lrs) / len(lrs)


def _to_device(batch, device: torch.device, channels_last: bool) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """(input, target, extras) of a loader batch ``(input, target)`` or ``(input, target, extras)`` on ``device``;
    ``extras`` are keyword arguments of the task (e.g. ``view_input``, ``index``)."""
    x, y, extras = batch if len(batch) == 3 else (*batch, {})
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    extras = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in extras.items()}
    if channels_last and torch.is_tensor(extras.get('view_input')):
        extras['view_input'] = extras['view_input'].contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True), extras


def train_one_epoch(
        epoch: int,
        task: torch.nn.Module,
        loader,
        optimizer,
        accelerator,
        args,
        meters: EpochMeters,
        start_step: int = 0,
        lr_scheduler=None,
        mixup_fn: Optional[Callable] = None,
        save_recovery: Optional[Callable[[int, int], None]] = None,
        num_updates: int = 0,
) -> int:
    """Train ``loader`` (already positioned at ``start_step``) for one epoch. Returns the update count.

    ``save_recovery(epoch, next_step)`` is called (on every process) every ``--checkpoint-every`` steps, after
    the losses so far were checked finite."""
    device = accelerator.device
    steps = start_step + len(loader)
    # A host sync per step is free on CPU; on accelerators check (and log) only at log intervals and before
    # a recovery checkpoint, which must never hold the state after a non-finite loss.
    check_every = 1 if device.type == 'cpu' else args.log_interval
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    # the distiller's own parameters (if any) are not in the DDP-wrapped student: average their gradients here
    distiller = getattr(task, 'distiller', None)
    synced = [p for p in distiller.parameters() if p.requires_grad] \
        if distiller is not None and accelerator.num_processes > 1 else []
    task.get_trainable_module().train()
    t_log, n_log = time.time(), 0
    for step, batch in enumerate(loader, start=start_step):
        x, y, extras = _to_device(batch, device, args.channels_last)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        with accelerator.autocast():
            out = task(x, y, **extras)
        loss = out['loss']
        accelerator.backward(loss)
        for p in synced:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(accelerator.num_processes)
        if args.clip_grad is not None:
            params = task.get_clip_parameters(exclude_head='agc' in args.clip_mode)
            if args.clip_mode == 'norm':
                accelerator.clip_grad_norm_(params, args.clip_grad)
            else:
                from timm.utils import dispatch_clip_grad
                accelerator.unscale_gradients()
                dispatch_clip_grad(params, value=args.clip_grad, mode=args.clip_mode)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        task.update_ema(num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        meters.update(out, y)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()),
                                torch.full_like(first_bad, step), first_bad)
        n_log += 1

        last = step + 1 == steps
        recovery_due = save_recovery is not None and args.checkpoint_every and \
            (step + 1) % args.checkpoint_every == 0 and not last
        if (step + 1) % check_every == 0 or last or recovery_due:
            bad = first_bad.clone()
            if accelerator.num_processes > 1:  # every rank must stop at the same step, or the others hang
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            if int(bad) >= 0:
                raise NonFiniteLossError(
                    f'the training loss became non-finite at epoch {epoch} step {int(bad)} (counting from 0; check the '
                    f'data and the teacher if the lr is not to blame), no checkpoint was written from that step')
        if accelerator.is_main_process and ((step + 1) % args.log_interval == 0 or last):
            dt = max(time.time() - t_log, 1e-9)
            avg = meters.averages()
            parts = '  '.join(f'{k}: {avg[k]:.4g}' for k in avg if k != 'loss')
            _logger.info(
                f'Train: {epoch} [{step + 1:>4d}/{steps} ({100. * (step + 1) / steps:>3.0f}%)]  '
                f'Loss: {float(loss.detach()):#.4g} ({avg.get("loss", math.nan):#.4g})  {parts}  '
                f'LR: {mean_lr(optimizer):.3e}  {n_log * x.shape[0] * accelerator.num_processes / dt:>7.1f} img/s')
            t_log, n_log = time.time(), 0
        if recovery_due:
            save_recovery(epoch, step + 1)
    return num_updates


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], loader, accelerator, channels_last: bool = False,
             ) -> Dict[str, float]:
    """Loss / top-1 / top-5 of ``forward`` over an accelerate-prepared loader, gathered over all processes."""
    tot = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # loss sum, top1, top5, n
    for batch in loader:
        x, y, _ = _to_device(batch, accelerator.device, channels_last)
        with accelerator.autocast():
            logits = forward(x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, reduction='none')
        k = min(5, logits.shape[-1])
        hit = logits.topk(k, dim=-1).indices == y[:, None]
        loss, c1, c5 = accelerator.gather_for_metrics((loss, hit[:, 0].float(), hit.any(-1).float()))
        tot += torch.stack([loss.sum(), c1.sum(), c5.sum(), torch.tensor(float(loss.numel()), device=loss.device)]
                           ).to(tot)
    n = max(float(tot[3]), 1.0)
    return {'loss': float(tot[0]) / n, 'top1': 100. * float(tot[1]) / n, 'top5': 100. * float(tot[2]) / n}
