"""What a run records about itself: results.json's ``distill``, ``recipe`` and ``views`` sections, which the
report and the model cards read. ``run_record`` builds them once per run from the flags, the data config and
the run's ``DistillSetup`` (the loss weights and the temperature resolved once, stated once)."""
import argparse
from typing import Any, Dict, Optional

from timm_kd.data.views import images_per_step
from .args import tl_aug_on
from .build import DataConfig, DistillSetup
from .schedule import schedule_lengths

__all__ = ['run_record']


def run_record(args: argparse.Namespace, dc: DataConfig, distill: Optional[DistillSetup], task, world: int,
               mixed_precision: str) -> Dict[str, Any]:
    """{'distill', 'recipe'[, 'views']}: the method (None without a teacher), the training recipe (with the KD
    settings when there is a teacher) and, with a teacher, what a step trains on."""
    record = dict(distill=_distill(distill), recipe=_recipe(args, dc, distill, world, mixed_precision))
    if distill is not None:
        record['views'] = _views(args, distill, task)
    return record


def _distill(distill: Optional[DistillSetup]) -> Optional[Dict[str, Any]]:
    """The distillation method, its hyper-parameters, the view loss, T and the loss weights."""
    if distill is None:
        return None
    return dict(method=distill.method, **distill.method_kwargs, view_loss=distill.view_loss,
                temperature=distill.temperature, task_loss_weight=distill.task_loss_weight,
                distill_loss_weight=distill.distill_loss_weight, mixed_kd_weight=distill.mixed_kd_weight)


def _views(args: argparse.Namespace, distill: DistillSetup, task) -> Dict[str, Any]:
    """What a step trains on (the model card's too): the views, the images per step of one process and the loss
    weights (task CE on x, KL on x, KL on the views)."""
    mixer = getattr(task, 'mixup', None)
    alpha = distill.distill_loss_weight
    return dict(sample_view=args.tl_aug if tl_aug_on(args) else None, mix_view=repr(mixer) if mixer else None,
                images_per_step=images_per_step(args.batch_size, tl_aug_on(args), mixer),
                loss_weights=dict(task=distill.task_loss_weight, kd=alpha, views=alpha * distill.mixed_kd_weight))


def _recipe(args: argparse.Namespace, dc: DataConfig, distill: Optional[DistillSetup], world: int,
            mixed_precision: str) -> Dict[str, Any]:
    """The settings that make the run's numbers: schedule (resolved lengths and lr), optimizer, batch, data
    recipe, and with a teacher the KD settings (the loss weights as resolved)."""
    lengths = schedule_lengths(args)
    recipe = dict(
        epochs=lengths.epochs, epoch_scale=args.epoch_scale, sched=args.sched, lr=args.lr,
        decay_milestones=lengths.decay_milestones, decay_rate=args.decay_rate, warmup_epochs=args.warmup_epochs,
        opt=args.opt, momentum=args.momentum, weight_decay=args.weight_decay, wd_all_params=args.wd_all_params,
        batch_size=args.batch_size, global_batch_size=args.batch_size * world, world_size=world,
        smoothing=args.smoothing, std_aug=dc.std_aug, crop_padding=dc.crop_padding,
        input_size=[dc.in_chans, dc.size, dc.size], mean=list(dc.mean), std=list(dc.std),
        mixup=args.mixup, cutmix=args.cutmix, seed=args.seed, mixed_precision=mixed_precision,
        model_ema=args.model_ema)
    if distill is not None:
        recipe.update(kd_temperature=distill.temperature, task_loss_weight=distill.task_loss_weight,
                      distill_loss_weight=distill.distill_loss_weight, mixed_kd_weight=distill.mixed_kd_weight,
                      tl_mixup=args.tl_mixup, tl_cutmix=args.tl_cutmix, cutmix_hard=args.cutmix_hard,
                      cutout=args.cutout, pick=args.pick, pick_candidates=args.pick_candidates,
                      pick_ratio=args.pick_ratio, mix_fraction=args.mix_fraction, mix_pairing=args.mix_pairing,
                      tl_aug=args.tl_aug)
    return recipe
