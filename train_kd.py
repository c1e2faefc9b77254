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
from typing import Any, Dict, List, Optional

import torch
import yaml

from timm_kd.messages import first_line
from timm_kd.train.args import UsageError, parse_args, validate_args
from timm_kd.train.build import (
    build_teacher, create_datasets, create_student, create_task, data_config, load_weights, recipe_of, resolve_lr)
from timm_kd.train.checkpoint import (
    atomic_link_or_copy, atomic_save, atomic_write_text, capture_rng_state, find_resume_checkpoint, load_checkpoint,
    restore_rng_state)
from timm_kd.train.data import create_eval_loader, create_train_loader
from timm_kd.train.loop import EpochMeters, NonFiniteLossError, distribute_bn, evaluate, train_one_epoch, unwrap_ddp
from timm_kd.train.output import (
    LogFiles, choose_run_dir, keep_best_checkpoints, teacher_lineage, write_results, write_summary_row)
from timm_kd.train.schedule import create_kd_scheduler, schedule_lengths, set_position

_logger = logging.getLogger('train_kd')
CHECKPOINT_VERSION = 1


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
        raise UsageError(f'accelerate cannot start with these settings: {first_line(e)}.') from e
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    _logger.info(f'Training with {world} process(es) on {device} ({accelerator.distributed_type}), '
                 f'mixed precision {accelerator.mixed_precision}.')
    random_seed(args.seed, rank)

    # 2. data, then models, with every compatibility check before the first step. The datasets come first:
    # a missing one is the commonest mistake and cheap to find, while a teacher may be a Hub download.
    dc = data_config(args, explicit)
    train_ds, eval_ds = create_datasets(args, dc)
    student = create_student(args, dc)
    teacher = build_teacher(args, dc) if args.teacher else None
    try:
        loader_train = create_train_loader(train_ds, args.batch_size, args.seed, rank, world, args.workers,
                                           args.pin_mem, rngs=dc['rngs'])
    except ValueError as e:
        raise UsageError(f'Dataset {args.dataset!r}: {e}.') from e
    sampler = loader_train.batch_sampler.sampler
    updates_per_epoch = len(loader_train)
    loader_eval = create_eval_loader(eval_ds, args.validation_batch_size or args.batch_size, args.workers,
                                     args.pin_mem, seed=args.seed)
    task, mixup_fn = create_task(args, dc, student, teacher, device)
    task.to(device)
    if args.channels_last:
        task.to(memory_format=torch.channels_last)
    resolve_lr(args, world)
    try:
        optimizer = create_optimizer_v2(student, **optimizer_kwargs(cfg=args),
                                        filter_bias_and_bn=not args.wd_all_params, **args.opt_kwargs)
    except (ValueError, TypeError, AssertionError) as e:
        raise UsageError(f'Could not create optimizer {args.opt!r}: {first_line(e)}.') from e
    start_epoch, start_step, best = 0, 0, dict(metric=None, epoch=None, top1=None, top5=None)
    teacher_metrics, hist, last_metrics = None, [], dict(epoch=None, top1=None, top5=None)
    if ckpt is not None:
        load_weights(student, ckpt['state_dict'], f'--resume {resume_file} does not fit {args.model!r}')
        if not args.no_resume_opt:
            try:
                optimizer.load_state_dict(ckpt['optimizer'])
            except (ValueError, KeyError, RuntimeError) as e:
                raise UsageError(f'The optimizer state in {resume_file} does not fit --opt {args.opt}: '
                                 f'{first_line(e)} (use --no-resume-opt).') from e
        start_epoch, start_step = int(ckpt['next_epoch']), int(ckpt['next_step'])
        best = dict(ckpt.get('best') or best)
        teacher_metrics, hist = ckpt.get('teacher_metrics'), list(ckpt.get('checkpoint_hist') or [])
        last_metrics = dict(ckpt.get('last') or last_metrics)
    if args.model_ema:  # after the resumed weights: a run that turns EMA on later starts it from them
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if ckpt is not None and 'state_dict_ema' in ckpt:
            load_weights(task.get_trainable_module(ema=True).module, ckpt['state_dict_ema'], 'EMA weights')

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
        run_dir = choose_run_dir(args, explicit, resume_file, dc)
        logs.add_file(os.path.join(run_dir, 'log.txt'))
        atomic_write_text(os.path.join(run_dir, 'args.yaml'), yaml.safe_dump(vars(args), default_flow_style=False))
    eval_model = unwrap_ddp(task.get_eval_model())
    n_params = sum(p.numel() for p in student.parameters())
    _logger.info(f'Run folder: {run_dir}. Student {args.model} ({n_params / 1e6:.3f}M params), '
                 f'{dc["num_classes"]} classes, input {dc["in_chans"]}x{dc["size"]}x{dc["size"]}, '
                 f'train {len(train_ds)} / eval {len(eval_ds)} images ({args.dataset or args.data_dir}).')
    if teacher is not None:
        _logger.info(f'Teacher {args.teacher} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.3f}M params, '
                     f'weights {teacher_lineage(teacher)["teacher_source"]}), '
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

    recipe = recipe_of(args, dc, world, accelerator.mixed_precision)
    data_cfg = dict(input_size=[dc['in_chans'], dc['size'], dc['size']], mean=list(dc['mean']), std=list(dc['std']),
                    crop_pct=dc['crop_pct'] or 1.0, interpolation=dc['interpolation'], num_classes=dc['num_classes'])
    results: Dict[str, Any] = dict(
        model=args.model, teacher=args.teacher, **teacher_lineage(teacher),
        teacher_top1=teacher_metrics['top1'] if teacher_metrics else None,
        teacher_top5=teacher_metrics['top5'] if teacher_metrics else None,
        best_top1=None, best_top5=None, best_epoch=None, last_top1=None, last_top5=None, last_epoch=None,
        num_classes=dc['num_classes'], dataset=args.dataset, eval_metric=args.eval_metric, recipe=recipe,
        data_config=data_cfg, world_size=world, run_dir=run_dir, finished=False)

    meters = EpochMeters()
    if ckpt is not None and start_step > 0 and len(ckpt.get('rank_states') or []) == world:
        state = ckpt['rank_states'][rank]
        if state.get('meters'):
            meters.load_state_dict(state['meters'], device)

    def checkpoint_dict(epoch: int, next_epoch: int, next_step: int, metric) -> Optional[Dict[str, Any]]:
        """Collective: every process contributes its RNG and meters; the main process gets the dict."""
        mine = {'rng': capture_rng_state(), 'meters': meters.state_dict() if next_step else None}
        if world > 1:  # BatchNorm statistics can differ between processes (--no-ddp-bb); keep each one's
            mine['buffers'] = {k: v.detach().cpu().clone() for k, v in student.named_buffers()}
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
            data_config=data_cfg)
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
            if states[rank].get('buffers'):
                with torch.no_grad():
                    for k, v in student.named_buffers():
                        v.copy_(states[rank]['buffers'][k])
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
            distribute_bn(unwrap_ddp(task.get_trainable_module()), accelerator, args.dist_bn)
        eval_model.eval()
        eval_metrics = evaluate(eval_model, loader_eval, accelerator, args.channels_last)
        metrics_for_best = eval_metrics
        row = {'epoch': epoch, **{f'train_{k}': v for k, v in train_metrics.items()},
               **{f'eval_{k}': v for k, v in eval_metrics.items()}}
        if args.model_ema:
            ema = task.get_trainable_module(ema=True)
            if world > 1 and args.dist_bn:
                distribute_bn(ema.module, accelerator, args.dist_bn)
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
            hist = keep_best_checkpoints(run_dir, hist, epoch, metric, args)
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


def _push(run_dir: str, args: argparse.Namespace) -> Dict[str, Any]:
    from timm_kd.hub import publish_student
    try:
        url = publish_student(run_dir, args.push_to_hub, private=args.hub_private)
    except Exception as e:  # noqa: BLE001 - report and keep the local run untouched
        reason = getattr(e, 'reason', None) or first_line(e)
        _logger.error(f'Publishing to {args.push_to_hub} failed ({reason}); the run folder is complete and untouched, '
                      f'retry with: timm-kd-publish {run_dir} --repo-id {args.push_to_hub}')
        return {'hub_url': None, 'hub_error': reason}
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
