#!/usr/bin/env python3
"""Knowledge distillation training script for timm models (timm train.py's interface, accelerate underneath).

    accelerate launch train_kd.py --config configs/<recipe>.yaml --model resnet8x4 --teacher resnet32x4 \\
        --teacher-checkpoint t.pth --dataset torch/cifar100 --data-dir data --dataset-download --tl-cutmix --pick kld
    python train_kd.py --model resnet20 --dataset torch/cifar100 --data-dir data ...    # no teacher: plain CE

One process or N (``accelerate launch --multi_gpu --num_processes N``; on a CPU-only machine add
``--main_process_port 0``): only the student is data-parallel, the teacher is frozen on every device,
eval metrics are gathered over all processes and only the main process writes. Shared flags mean what
they mean in timm's train.py; the KD group, ``--std-aug``, ``--epoch-scale``, ``--sched multistep_torch``,
``--wd-all-params`` and ``--checkpoint-every`` are ours (``--help``). Output: ``output/train/<experiment>/``
with args.yaml, summary.csv, log.txt, last.pth.tar, model_best.pth.tar, results.json. ``--resume RUN_DIR``
continues a run bit-for-bit from its last (or mid-epoch recovery) checkpoint.

This file orchestrates: the distillation step is ``timm_kd.DistillationTask`` (with ``timm_kd.DistillMixup``),
the pieces of the loop live in ``timm_kd/train/``. ``main(argv)`` returns the results dict.
"""
import argparse
import logging
import os
import shlex
import sys
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

import timm
import timm_kd
from timm_kd.data.datasets import DatasetNotFoundError, create_kd_dataset, dataset_defaults
from timm_kd.data.transforms import SMALL_INPUT_LIMIT, create_kd_transform
from timm_kd.train.args import (
    LARGE_INPUT_AUG_FLAGS, UsageError, build_parser, kd_view_modes, parse_args, resolve_loss_weights, validate_args)
from timm_kd.train.checkpoint import (
    atomic_link_or_copy, atomic_save, atomic_write_text, capture_rng_state, find_resume_checkpoint, load_checkpoint,
    restore_rng_state)
from timm_kd.train.data import create_eval_loader, create_train_loader
from timm_kd.train.loop import EpochMeters, NonFiniteLossError, evaluate, train_one_epoch
from timm_kd.train.output import LogFiles, new_run_dir, write_results, write_summary_row
from timm_kd.train.schedule import create_kd_scheduler, schedule_lengths, set_position

_logger = logging.getLogger('train_kd')
CHECKPOINT_VERSION = 1


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    for line in s.splitlines():
        if 'size mismatch' in line:
            return line.strip().rstrip('.')
    return (s.splitlines()[0] if s else type(e).__name__).rstrip('.')


# ----------------------------------------------------------------------------------------------- setup steps
def _data_config(args: argparse.Namespace, explicit: Dict[str, Any]) -> Dict[str, Any]:
    """Classes, input size, normalisation and crop padding: flags over the dataset's recipe defaults."""
    try:
        dd = dataset_defaults(args.dataset, args.data_dir)
    except ValueError as e:
        raise UsageError(str(e)) from e
    num_classes = args.num_classes or dd['num_classes']
    if args.num_classes and dd['num_classes'] and args.num_classes != dd['num_classes']:
        raise UsageError(f'--num-classes {args.num_classes} does not match dataset {args.dataset!r}, which has '
                         f'{dd["num_classes"]} classes.')
    if not num_classes:
        raise UsageError(f'The number of classes of dataset {args.dataset!r} is not known: pass --num-classes N.')
    if args.input_size:
        in_chans, h, w = args.input_size
        if h != w:
            raise UsageError(f'--input-size must be square (C H H), got {args.input_size}.')
        size = h
    else:
        in_chans, size = args.in_chans or 3, args.img_size or dd['input_size']
    mean = tuple(args.mean) if args.mean else tuple(dd['mean'])
    std = tuple(args.std) if args.std else tuple(dd['std'])
    mean, std = (mean * in_chans if len(mean) == 1 else mean), (std * in_chans if len(std) == 1 else std)
    if len(mean) != in_chans or len(std) != in_chans:
        raise UsageError(f'--mean/--std need {in_chans} values (one per input channel), got {len(mean)}/{len(std)}.')
    crop_padding = args.crop_padding if args.crop_padding is not None else dd['crop_padding']
    std_aug = 'none' if args.no_aug else args.std_aug
    timm_kwargs: Dict[str, Any] = {}
    if size < SMALL_INPUT_LIMIT:
        defaults = build_parser().parse_args([])
        changed = [k for k in LARGE_INPUT_AUG_FLAGS if k in explicit and explicit[k] != getattr(defaults, k)]
        if changed:
            raise UsageError(f'--{changed[0].replace("_", "-")} is a timm ImageNet augmentation for inputs >= '
                             f'{SMALL_INPUT_LIMIT} px; the {size} px recipe is pad + crop + flip (see --std-aug).')
        if args.crop_pct is not None:
            raise UsageError(f'--crop-pct applies to inputs >= {SMALL_INPUT_LIMIT} px; {size} px eval images are '
                             f'used whole.')
    else:
        timm_kwargs = dict(scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip,
                           color_jitter=args.color_jitter, auto_augment=args.aa, re_prob=args.reprob,
                           re_mode=args.remode, re_count=args.recount)
    return dict(num_classes=int(num_classes), in_chans=in_chans, size=int(size), mean=mean, std=std,
                crop_padding=int(crop_padding), std_aug=std_aug, interpolation=args.interpolation or 'bilinear',
                train_interpolation=args.train_interpolation, crop_pct=args.crop_pct, timm_kwargs=timm_kwargs)


def _set_norm_cfg(model: torch.nn.Module, dc: Dict[str, Any], input_size: bool = True) -> None:
    """Record the normalisation the data really has in the model's pretrained_cfg (tasks and Hub export read it)."""
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    cfg.update(mean=dc['mean'], std=dc['std'])
    if input_size:
        cfg.update(input_size=(dc['in_chans'], dc['size'], dc['size']), num_classes=dc['num_classes'])
    model.pretrained_cfg = cfg
    if hasattr(model, 'default_cfg'):
        model.default_cfg = cfg


def _check_forward(model: torch.nn.Module, dc: Dict[str, Any], what: str) -> None:
    """One tiny eval-mode forward: catches input-size and class-count mismatches before any data is read."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, dc['in_chans'], dc['size'], dc['size'],
                                    device=next(model.parameters()).device))
    except Exception as e:  # noqa: BLE001 - any failure here is an incompatible model / input pair
        raise UsageError(f'The {what} cannot take {dc["in_chans"]}x{dc["size"]}x{dc["size"]} inputs: '
                         f'{_first_line(e)}.') from e
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[-1] != dc['num_classes']:
        raise UsageError(f'The {what} predicts {tuple(out.shape[1:])} outputs but the dataset has '
                         f'{dc["num_classes"]} classes: pass a model / checkpoint for {dc["num_classes"]} classes.')


def _create_student(args: argparse.Namespace, dc: Dict[str, Any]) -> torch.nn.Module:
    kw: Dict[str, Any] = dict(pretrained=args.pretrained, num_classes=dc['num_classes'], in_chans=dc['in_chans'])
    if args.drop:
        kw['drop_rate'] = args.drop
    if args.drop_path is not None:
        kw['drop_path_rate'] = args.drop_path
    if args.gp is not None:
        kw['global_pool'] = args.gp
    kw.update(args.model_kwargs)
    try:
        model = timm.create_model(args.model, **kw)
    except Exception as e:  # noqa: BLE001 - unknown kwargs (TypeError), missing weights (RuntimeError/OSError) ...
        raise UsageError(f'Could not create student {args.model!r}: {_first_line(e)}.') from e
    if args.initial_checkpoint:
        try:
            timm_kd.load_kd_checkpoint(model, args.initial_checkpoint)
        except Exception as e:  # noqa: BLE001 - KDCheckpointError / unreadable file
            raise UsageError(f'--initial-checkpoint {args.initial_checkpoint!r} does not fit {args.model!r}: '
                             f'{_first_line(e)}.') from e
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    _set_norm_cfg(model, dc)
    _check_forward(model, dc, f'student {args.model!r}')
    return model


def _create_teacher(args: argparse.Namespace, dc: Dict[str, Any]) -> torch.nn.Module:
    from timm_kd.hub import TeacherLoadError, create_teacher
    try:
        teacher = create_teacher(args.teacher, checkpoint=args.teacher_checkpoint, num_classes=dc['num_classes'])
    except TeacherLoadError as e:
        raise UsageError(str(e).rstrip('.') + '.') from e
    t_classes = getattr(teacher, 'num_classes', None)
    if isinstance(t_classes, int) and t_classes != dc['num_classes']:
        raise UsageError(f'Teacher {args.teacher!r} predicts {t_classes} classes but the dataset and the student have '
                         f'{dc["num_classes"]}: use a teacher trained on the same classes.')
    if not args.teacher.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')):
        # A registered architecture (+ checkpoint) carries its family's default mean/std, not necessarily the
        # ones it was trained with; KD teachers are trained on the student's dataset with its normalisation.
        # Published teachers (hf-hub:, local-dir:) keep their config, and the task re-normalises for them.
        _set_norm_cfg(teacher, dc, input_size=False)
    _check_forward(teacher, dc, f'teacher {args.teacher!r}')
    return teacher


def _dataset_classes(ds) -> Tuple[Optional[int], bool]:
    """(class count, exact?) of a dataset: exact from its class list, else a lower bound from its targets."""
    for obj in (ds, getattr(ds, 'reader', None)):
        for attr in ('classes', 'class_to_idx'):
            v = getattr(obj, attr, None)
            if v:
                return len(v), True
    targets = getattr(ds, 'targets', None)
    if targets is not None and len(targets):
        return int(max(int(t) for t in targets)) + 1, False
    return None, False


def _create_datasets(args: argparse.Namespace, dc: Dict[str, Any]):
    kw: Dict[str, Any] = {}
    if args.class_map:
        kw['class_map'] = args.class_map
    if args.input_key:
        kw['input_key'] = args.input_key
    if args.target_key:
        kw['target_key'] = args.target_key
    common = dict(input_size=dc['size'], mean=dc['mean'], std=dc['std'], crop_padding=dc['crop_padding'])
    train_tf = create_kd_transform(is_training=True, std_aug=dc['std_aug'], interpolation=dc['train_interpolation'],
                                   **common, **dc['timm_kwargs'])
    eval_kw = {'crop_pct': dc['crop_pct']} if dc['crop_pct'] is not None and dc['timm_kwargs'] else {}
    eval_tf = create_kd_transform(is_training=False, interpolation=dc['interpolation'], **common, **eval_kw)
    out = []
    synthetic = args.dataset.lower().startswith('synthetic/')
    for split, training, tf, num in ((args.train_split, True, train_tf, args.train_num_samples),
                                     (args.val_split, False, eval_tf, args.val_num_samples)):
        try:
            ds = create_kd_dataset(args.dataset, root=args.data_dir, split=split, is_training=training,
                                   download=args.dataset_download, transform=tf,
                                   **kw, **({'num_samples': num} if synthetic and num else {}))
        except (DatasetNotFoundError, ValueError, OSError, RuntimeError) as e:
            raise UsageError(str(e).rstrip('.') + '.') from e
        if len(ds) == 0:
            raise UsageError(f'The {split!r} split of dataset {args.dataset!r} is empty.')
        n, exact = _dataset_classes(ds)
        if n is not None and (n > dc['num_classes'] or (exact and n != dc['num_classes'])):
            raise UsageError(f'The {split!r} split of dataset {args.dataset!r} has {n} classes but the models have '
                             f'{dc["num_classes"]}: fix --num-classes or the dataset.')
        if num and len(ds) > num:
            ds = torch.utils.data.Subset(ds, range(num))
        out.append(ds)
    return out


def _create_task(args: argparse.Namespace, dc: Dict[str, Any], student, teacher, device) -> Tuple[Any, Any]:
    """(task, timm Mixup or None): DistillationTask with a teacher, timm's ClassificationTask without."""
    from timm.data import Mixup
    timm_mix = args.mixup > 0 or args.cutmix > 0 or (args.cutmix_minmax is not None and not kd_view_modes(args))
    mixup_fn = None
    if timm_mix:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=dc['num_classes'])
    criterion_kwargs = dict(smoothing=args.smoothing, soft_targets=timm_mix)
    if teacher is None:
        from timm.task import ClassificationTask
        return ClassificationTask(student, criterion_kwargs=criterion_kwargs, device=device, verbose=False), mixup_fn
    mixer = None
    if kd_view_modes(args):
        hard = args.cutmix_hard > 0
        pick = None if args.pick == 'none' else args.pick
        try:
            mixer = timm_kd.DistillMixup(
                mixup_alpha=args.tl_mixup,
                cutmix_alpha=args.cutmix_hard if hard else args.tl_cutmix,
                cutmix_minmax=args.cutmix_minmax if (args.tl_cutmix or hard) else None,
                prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                label_smoothing=args.smoothing if hard else 0., num_classes=dc['num_classes'],
                pairing=args.mix_pairing, label_mode='hard' if hard else 'teacher',
                cutout=(True if args.cutout == -1 else args.cutout) if args.cutout else False,
                mix_fraction=args.mix_fraction, n_candidates=args.pick_candidates if pick else None,
                pick=pick, pick_ratio=args.pick_ratio)
        except ValueError as e:
            raise UsageError(str(e)) from e
    gamma, alpha = resolve_loss_weights(args)
    try:
        task = timm_kd.DistillationTask(
            student, teacher, mixup=mixer, temperature=args.kd_temperature, task_loss_weight=gamma,
            distill_loss_weight=alpha, mixed_kd_weight=args.mixed_kd_weight, criterion_kwargs=criterion_kwargs,
            device=device)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return task, mixup_fn


def _resolve_lr(args: argparse.Namespace, world_size: int) -> None:
    """timm: without --lr, lr = lr_base * (global batch / lr_base_size) (sqrt scaling for ada*/lamb)."""
    if args.lr is not None:
        return
    global_bs = args.batch_size * world_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    ratio = global_bs / args.lr_base_size
    args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
    _logger.info(f'Learning rate {args.lr:g} from --lr-base {args.lr_base} and global batch {global_bs} ({scale}).')


def _load_weights(model: torch.nn.Module, state_dict: Dict[str, Any], what: str) -> None:
    try:
        res = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        raise UsageError(f'{what}: {_first_line(e)}.') from e
    if res.missing_keys or res.unexpected_keys:
        raise UsageError(f'{what}: missing keys {res.missing_keys[:5]}, unexpected keys {res.unexpected_keys[:5]}.')


def _distribute_bn(model: torch.nn.Module, accelerator, mode: str) -> None:
    """timm's --dist-bn: average (reduce) or broadcast BatchNorm running statistics over processes."""
    import torch.distributed as dist
    world = accelerator.num_processes
    for name, buf in model.named_buffers():
        if 'running_mean' in name or 'running_var' in name:
            if mode == 'reduce':
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(world)
            else:
                dist.broadcast(buf, 0)


def _unwrap_ddp(m):
    return m.module if isinstance(m, torch.nn.parallel.DistributedDataParallel) else m


def _recipe(args: argparse.Namespace, dc: Dict[str, Any], world: int, mixed_precision: str) -> Dict[str, Any]:
    lengths = schedule_lengths(args)
    gamma, alpha = resolve_loss_weights(args)
    recipe = dict(
        epochs=lengths.epochs, epoch_scale=args.epoch_scale, sched=args.sched, lr=args.lr,
        decay_milestones=lengths.decay_milestones, decay_rate=args.decay_rate, warmup_epochs=args.warmup_epochs,
        opt=args.opt, momentum=args.momentum, weight_decay=args.weight_decay, wd_all_params=args.wd_all_params,
        batch_size=args.batch_size, global_batch_size=args.batch_size * world, world_size=world,
        smoothing=args.smoothing, std_aug=dc['std_aug'], crop_padding=dc['crop_padding'],
        input_size=[dc['in_chans'], dc['size'], dc['size']], mean=list(dc['mean']), std=list(dc['std']),
        mixup=args.mixup, cutmix=args.cutmix, seed=args.seed, mixed_precision=mixed_precision,
        model_ema=args.model_ema)
    if args.teacher:
        recipe.update(kd_temperature=args.kd_temperature, task_loss_weight=gamma, distill_loss_weight=alpha,
                      mixed_kd_weight=args.mixed_kd_weight, tl_mixup=args.tl_mixup, tl_cutmix=args.tl_cutmix,
                      cutmix_hard=args.cutmix_hard, cutout=args.cutout, pick=args.pick,
                      pick_candidates=args.pick_candidates, pick_ratio=args.pick_ratio,
                      mix_fraction=args.mix_fraction, mix_pairing=args.mix_pairing)
    return recipe


# ----------------------------------------------------------------------------------------------- training
def _train(args: argparse.Namespace, explicit: Dict[str, Any], logs: LogFiles) -> Dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, gather_object
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.utils import random_seed

    # 1. the checkpoint to resume from must be readable before anything else happens
    ckpt, resume_file = None, None
    if args.resume:
        try:
            resume_file = find_resume_checkpoint(args.resume)
            ckpt = load_checkpoint(resume_file)
        except ValueError as e:
            raise UsageError(f'--resume: {e}.') from e
        if ckpt.get('arch') not in (None, args.model):
            raise UsageError(f'--resume {resume_file} holds a {ckpt["arch"]!r} model, not --model {args.model!r}.')

    mixed_precision = {'float16': 'fp16', 'bfloat16': 'bf16'}[args.amp_dtype] if args.amp else None
    try:
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=not args.no_ddp_bb)])
    except (ValueError, RuntimeError) as e:
        raise UsageError(f'accelerate cannot start with these settings: {_first_line(e)}.') from e
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    _logger.info(f'Training with {world} process(es) on {device} ({accelerator.distributed_type}), '
                 f'mixed precision {accelerator.mixed_precision}.')
    random_seed(args.seed, rank)

    # 2. models and data, with every compatibility check before the first step
    dc = _data_config(args, explicit)
    student = _create_student(args, dc)
    teacher = _create_teacher(args, dc) if args.teacher else None
    train_ds, eval_ds = _create_datasets(args, dc)
    try:
        loader_train = create_train_loader(train_ds, args.batch_size, args.seed, rank, world, args.workers,
                                           args.pin_mem)
    except ValueError as e:
        raise UsageError(f'Dataset {args.dataset!r}: {e}.') from e
    sampler = loader_train.batch_sampler.sampler
    updates_per_epoch = len(loader_train)
    loader_eval = create_eval_loader(eval_ds, args.validation_batch_size or args.batch_size, args.workers,
                                     args.pin_mem, seed=args.seed)
    task, mixup_fn = _create_task(args, dc, student, teacher, device)
    task.to(device)
    if args.channels_last:
        task.to(memory_format=torch.channels_last)
    _resolve_lr(args, world)
    try:
        optimizer = create_optimizer_v2(student, **optimizer_kwargs(cfg=args),
                                        filter_bias_and_bn=not args.wd_all_params, **args.opt_kwargs)
    except (ValueError, TypeError, AssertionError) as e:
        raise UsageError(f'Could not create optimizer {args.opt!r}: {_first_line(e)}.') from e
    start_epoch, start_step, best = 0, 0, dict(metric=None, epoch=None, top1=None, top5=None)
    teacher_metrics, hist, last_metrics = None, [], dict(epoch=None, top1=None, top5=None)
    if ckpt is not None:
        _load_weights(student, ckpt['state_dict'], f'--resume {resume_file} does not fit {args.model!r}')
        if not args.no_resume_opt:
            try:
                optimizer.load_state_dict(ckpt['optimizer'])
            except (ValueError, KeyError, RuntimeError) as e:
                raise UsageError(f'The optimizer state in {resume_file} does not fit --opt {args.opt}: '
                                 f'{_first_line(e)} (use --no-resume-opt).') from e
        start_epoch, start_step = int(ckpt['next_epoch']), int(ckpt['next_step'])
        best = dict(ckpt.get('best') or best)
        teacher_metrics, hist = ckpt.get('teacher_metrics'), list(ckpt.get('checkpoint_hist') or [])
        last_metrics = dict(ckpt.get('last') or last_metrics)
    if args.model_ema:  # after the resumed weights: a run that turns EMA on later starts it from them
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if ckpt is not None and 'state_dict_ema' in ckpt:
            _load_weights(task.get_trainable_module(ema=True).module, ckpt['state_dict_ema'], 'EMA weights')

    if args.torchcompile:
        task.compile(backend=args.torchcompile)
    task.trainable_module = accelerator.prepare_model(task.trainable_module)
    optimizer = accelerator.prepare_optimizer(optimizer)
    loader_eval = accelerator.prepare_data_loader(loader_eval)
    lr_scheduler, num_epochs = create_kd_scheduler(optimizer, args, updates_per_epoch)
    if ckpt is not None:
        if lr_scheduler is not None and ckpt.get('scheduler'):
            lr_scheduler.load_state_dict(ckpt['scheduler'])
        if accelerator.scaler is not None and ckpt.get('scaler'):
            accelerator.scaler.load_state_dict(ckpt['scaler'])
        if int(ckpt.get('world_size', world)) != world:
            seen = start_step * args.batch_size * int(ckpt['world_size'])
            start_step = min(seen // (args.batch_size * world), updates_per_epoch)
            _logger.warning(f'Resuming {ckpt["world_size"]}-process checkpoint with {world} processes: continuing '
                            f'at step {start_step}; the run will not be bit-identical to an uninterrupted one.')
        if start_step >= updates_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
    set_position(lr_scheduler, start_epoch, start_step, updates_per_epoch)

    # 3. the run folder (main process only), never an existing one unless resuming into it
    run_dir = None
    if accelerator.is_main_process:
        run_dir = _run_dir(args, explicit, resume_file, dc)
        logs.add_file(os.path.join(run_dir, 'log.txt'))
        atomic_write_text(os.path.join(run_dir, 'args.yaml'), yaml.safe_dump(vars(args), default_flow_style=False))
    eval_model = _unwrap_ddp(task.get_eval_model())
    n_params = sum(p.numel() for p in student.parameters())
    _logger.info(f'Run folder: {run_dir}. Student {args.model} ({n_params / 1e6:.3f}M params), '
                 f'{dc["num_classes"]} classes, input {dc["in_chans"]}x{dc["size"]}x{dc["size"]}, '
                 f'train {len(train_ds)} / eval {len(eval_ds)} images ({args.dataset or args.data_dir}).')
    if teacher is not None:
        _logger.info(f'Teacher {args.teacher} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.3f}M params), '
                     f'input re-normalized: {bool(getattr(task, "_renormalize", False))}; {task.extra_repr()}.')
    _logger.info(f'Schedule: {args.sched}, {num_epochs} epochs x {updates_per_epoch} steps, lr {args.lr:g}, '
                 f'milestones {schedule_lengths(args).decay_milestones if "multistep" in args.sched else "-"}, '
                 f'opt {args.opt}, weight decay {args.weight_decay:g} '
                 f'({"all params" if args.wd_all_params else "no bias/norm"}), batch {args.batch_size} x {world}.')

    # 4. teacher accuracy on the eval set, before training
    if teacher is not None:
        if teacher_metrics is None:
            teacher_metrics = evaluate(task.teacher_logits, loader_eval, accelerator, args.channels_last)
        _logger.info(f'Teacher {args.teacher}: top-1 {teacher_metrics["top1"]:.2f}, top-5 '
                     f'{teacher_metrics["top5"]:.2f}, loss {teacher_metrics["loss"]:.4f} on the '
                     f'{args.val_split!r} split ({len(eval_ds)} images).')

    recipe = _recipe(args, dc, world, accelerator.mixed_precision)
    data_config = dict(input_size=[dc['in_chans'], dc['size'], dc['size']], mean=list(dc['mean']),
                       std=list(dc['std']), crop_pct=dc['crop_pct'] or 1.0, interpolation=dc['interpolation'],
                       num_classes=dc['num_classes'])
    results: Dict[str, Any] = dict(
        model=args.model, teacher=args.teacher, teacher_checkpoint=args.teacher_checkpoint,
        teacher_top1=teacher_metrics['top1'] if teacher_metrics else None,
        teacher_top5=teacher_metrics['top5'] if teacher_metrics else None,
        best_top1=None, best_top5=None, best_epoch=None, last_top1=None, last_top5=None, last_epoch=None,
        num_classes=dc['num_classes'], dataset=args.dataset, eval_metric=args.eval_metric, recipe=recipe,
        data_config=data_config, world_size=world, run_dir=run_dir, finished=False)

    meters = EpochMeters()
    if ckpt is not None and start_step > 0 and len(ckpt.get('rank_states') or []) == world:
        state = ckpt['rank_states'][rank]
        if state.get('meters'):
            meters.load_state_dict(state['meters'], device)

    def checkpoint_dict(epoch: int, next_epoch: int, next_step: int, metric) -> Optional[Dict[str, Any]]:
        """Collective: every process contributes its RNG and meters; the main process gets the dict."""
        mine = {'rng': capture_rng_state(), 'meters': meters.state_dict() if next_step else None}
        states = gather_object([mine]) if world > 1 else [mine]
        if not accelerator.is_main_process:
            return None
        d = dict(
            arch=args.model, args=vars(args), version=CHECKPOINT_VERSION, epoch=epoch, metric=metric,
            state_dict=accelerator.unwrap_model(task.trainable_module).state_dict(),
            optimizer=optimizer.state_dict(), scheduler=lr_scheduler.state_dict() if lr_scheduler else None,
            scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            next_epoch=next_epoch, next_step=next_step, best=dict(best), last=dict(last_metrics),
            teacher_metrics=teacher_metrics,
            checkpoint_hist=list(hist), world_size=world, rank_states=states, num_classes=dc['num_classes'],
            data_config=data_config)
        if args.model_ema:
            d['state_dict_ema'] = task.get_trainable_module(ema=True).module.state_dict()
        return d

    def save_recovery(epoch: int, next_step: int, num_updates: int) -> None:
        d = checkpoint_dict(epoch, epoch, next_step, None)
        if d is not None:
            atomic_save(d, os.path.join(run_dir, 'recovery.pth.tar'))

    if ckpt is not None:
        states = ckpt.get('rank_states') or []
        if len(states) == world:
            restore_rng_state(states[rank]['rng'])
        else:
            _logger.warning('The checkpoint has no RNG state for this process count: fresh random streams.')
        _logger.info(f'Resumed from {resume_file} at epoch {start_epoch} step {start_step}.')
    del ckpt

    # 5. epochs
    num_updates = start_epoch * updates_per_epoch + start_step
    for epoch in range(start_epoch, num_epochs):
        step0 = start_step if epoch == start_epoch else 0
        sampler.set_epoch(epoch, start=step0 * args.batch_size)
        if epoch != start_epoch or step0 == 0:
            meters = EpochMeters()
        if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            for m in (mixup_fn, getattr(task, 'mixup', None)):
                if m is not None:
                    m.mixup_enabled = False
        lr = sum(g['lr'] for g in optimizer.param_groups) / len(optimizer.param_groups)
        num_updates = train_one_epoch(
            epoch, task, loader_train, optimizer, accelerator, args, meters, start_step=step0,
            lr_scheduler=lr_scheduler, mixup_fn=mixup_fn, save_recovery=save_recovery, num_updates=num_updates)
        local = meters.averages()
        per_rank = gather_object([local]) if world > 1 else [local]
        train_metrics = {k: sum(r[k] for r in per_rank if k in r) / sum(1 for r in per_rank if k in r)
                         for k in per_rank[0]}
        if world > 1 and args.dist_bn:
            _distribute_bn(_unwrap_ddp(task.get_trainable_module()), accelerator, args.dist_bn)
        eval_model.eval()
        eval_metrics = evaluate(eval_model, loader_eval, accelerator, args.channels_last)
        metrics_for_best = eval_metrics
        row = {'epoch': epoch, **{f'train_{k}': v for k, v in train_metrics.items()},
               **{f'eval_{k}': v for k, v in eval_metrics.items()}}
        if args.model_ema:
            ema = task.get_trainable_module(ema=True)
            if world > 1 and args.dist_bn:
                _distribute_bn(ema.module, accelerator, args.dist_bn)
            ema.eval()
            metrics_for_best = evaluate(ema, loader_eval, accelerator, args.channels_last)
            row.update({f'eval_ema_{k}': v for k, v in metrics_for_best.items()})
        row['lr'] = lr
        eval_model.train()
        metric = metrics_for_best[args.eval_metric]
        improved = best['metric'] is None or (
            metric < best['metric'] if args.eval_metric == 'loss' else metric > best['metric'])
        if improved:
            best = dict(metric=metric, epoch=epoch, top1=metrics_for_best['top1'], top5=metrics_for_best['top5'])
        if lr_scheduler is not None:
            lr_scheduler.step(epoch + 1, metric)
        _logger.info(f'Epoch {epoch}: train loss {train_metrics.get("loss", float("nan")):.4f}, eval loss '
                     f'{metrics_for_best["loss"]:.4f}, top-1 {metrics_for_best["top1"]:.2f}, top-5 '
                     f'{metrics_for_best["top5"]:.2f} (best {best["top1"]:.2f} @ {best["epoch"]})')

        last_metrics = dict(epoch=epoch, top1=metrics_for_best['top1'], top5=metrics_for_best['top5'])
        d = checkpoint_dict(epoch, epoch + 1, 0, metric)  # collective
        if accelerator.is_main_process:
            write_summary_row(os.path.join(run_dir, 'summary.csv'), row)
            last = os.path.join(run_dir, 'last.pth.tar')
            atomic_save(d, last)
            if improved:
                atomic_link_or_copy(last, os.path.join(run_dir, 'model_best.pth.tar'))
            hist = _update_hist(run_dir, hist, epoch, metric, args)
            write_results(os.path.join(run_dir, 'results.json'), _with_metrics(results, best, last_metrics))

    # 6. wrap up
    if world > 1:
        sums = gather_object([float(sum(p.detach().double().sum() for p in student.parameters()))])
        results['ranks_in_sync'] = len(set(sums)) == 1
        if not results['ranks_in_sync']:
            _logger.error(f'The student weights differ between processes after training: {sums}.')
    results = _with_metrics(results, best, last_metrics)
    results['finished'] = True
    if accelerator.is_main_process:
        write_results(os.path.join(run_dir, 'results.json'), results)
        _logger.info(f'*** Best top-1 {_f(results["best_top1"])} (epoch {results["best_epoch"]}), top-5 '
                     f'{_f(results["best_top5"])}; last top-1 {_f(results["last_top1"])}, top-5 '
                     f'{_f(results["last_top5"])}' + (f'; teacher top-1 {_f(results["teacher_top1"])}'
                                                       if teacher is not None else '') + f'. Run folder: {run_dir}')
        if args.push_to_hub:
            results.update(_push(run_dir, args))
            write_results(os.path.join(run_dir, 'results.json'), results)
    accelerator.wait_for_everyone()
    return results


def _with_metrics(results: Dict[str, Any], best: Dict[str, Any], last: Dict[str, Any]) -> Dict[str, Any]:
    return dict(results, best_top1=best['top1'], best_top5=best['top5'], best_epoch=best['epoch'],
                last_top1=last['top1'], last_top5=last['top5'], last_epoch=last['epoch'])


def _f(v) -> str:
    return '-' if v is None else f'{v:.2f}'


def _run_dir(args: argparse.Namespace, explicit: Dict[str, Any], resume_file: Optional[str],
             dc: Dict[str, Any]) -> str:
    named = 'experiment' in explicit or 'output' in explicit
    if resume_file:
        ckpt_dir = os.path.dirname(os.path.abspath(resume_file))
        if not named and os.path.isfile(os.path.join(ckpt_dir, 'args.yaml')):
            return ckpt_dir
        if args.experiment:  # resume into the named folder
            path = os.path.join(args.output or os.path.join('.', 'output', 'train'), args.experiment)
            os.makedirs(path, exist_ok=True)
            return path
    name = args.experiment or '-'.join(
        [datetime.now().strftime('%Y%m%d-%H%M%S'), timm.models.safe_model_name(args.model)]
        + ([timm.models.safe_model_name(args.teacher.split(':')[-1].split('/')[-1])] if args.teacher else [])
        + [str(dc['size'])])
    return new_run_dir(args.output or os.path.join('.', 'output', 'train'), name)


def _update_hist(run_dir: str, hist: List[List], epoch: int, metric: float, args: argparse.Namespace) -> List[List]:
    """Keep the ``--checkpoint-hist`` best epochs as checkpoint-<epoch>.pth.tar (timm's CheckpointSaver)."""
    if not args.checkpoint_hist:
        return hist
    hist = [h for h in hist if h[0] != epoch] + [[epoch, metric]]
    hist.sort(key=lambda h: h[1], reverse=args.eval_metric != 'loss')
    path = os.path.join(run_dir, f'checkpoint-{epoch}.pth.tar')
    if [epoch, metric] in hist[:args.checkpoint_hist]:
        atomic_link_or_copy(os.path.join(run_dir, 'last.pth.tar'), path)
    for e, _ in hist[args.checkpoint_hist:]:
        p = os.path.join(run_dir, f'checkpoint-{e}.pth.tar')
        if os.path.exists(p):
            os.remove(p)
    return hist[:args.checkpoint_hist]


def _push(run_dir: str, args: argparse.Namespace) -> Dict[str, Any]:
    from timm_kd.hub import publish_student
    try:
        url = publish_student(run_dir, args.push_to_hub, private=args.hub_private)
    except Exception as e:  # noqa: BLE001 - report and keep the local run untouched
        _logger.error(f'Publishing to {args.push_to_hub} failed: {_first_line(e)}. The run folder is untouched; '
                      f'retry with: python hfhub/publish.py {run_dir} --repo-id {args.push_to_hub}')
        return {'hub_url': None, 'hub_error': _first_line(e)}
    _logger.info(f'Published to {url}.')
    return {'hub_url': str(url)}


def _is_main_env() -> bool:
    return os.environ.get('RANK', os.environ.get('LOCAL_RANK', '0')) in ('0', '')


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Train; returns the results dict. A user error prints one sentence and raises SystemExit(2) (as argparse);
    a non-finite loss raises SystemExit(1)."""
    logs = LogFiles(is_main=_is_main_env())
    try:
        args, explicit = parse_args(argv)
        validate_args(args, explicit)
        _logger.info('train_kd.py ' + ' '.join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))
        return _train(args, explicit, logs)
    except UsageError as e:
        if _is_main_env():
            print(f'train_kd.py: error: {e}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except NonFiniteLossError as e:
        _logger.error(f'Stopped: {e}.')
        if _is_main_env():
            print(f'train_kd.py: error: {e}.', file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        logs.close()
        _release_accelerate_state()


def _release_accelerate_state() -> None:
    """Let an in-process caller (tests, notebooks) run main() again with other accelerate settings."""
    if 'RANK' in os.environ or 'LOCAL_RANK' in os.environ:
        return  # launched processes exit right after main()
    try:
        from accelerate.state import AcceleratorState, GradientState
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except Exception:  # noqa: BLE001 - private accelerate API; failing to reset only matters for reuse
        pass


if __name__ == '__main__':
    results = main()
    sys.exit(0 if results.get('finished') and not results.get('hub_error') else 1)
