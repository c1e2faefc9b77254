"""The training command of timm-kd: ``timm-kd-train`` (console script) and ``train_kd.py`` both call ``main``.

``train`` reads top to bottom: resume state, accelerate, data, models, task and optimizer, the restored
``TrainState``, the run folder, the teacher's accuracy, the epochs, the wrap-up. What a checkpoint holds
and how it comes back is ``timm_kd.train.state``; the step loop is ``timm_kd.train.loop``.
"""
import argparse
import contextlib
import logging
import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml

from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import atomic_write_text, lock_folder, output_error, remove_stale_temp_files
from timm_kd.utils.messages import first_line
from .args import is_main_process_env, parse_args, report_error, resume_flag_changes, run_args_of, validate_args
from .build import (
    build_teacher, check_teacher_source, create_datasets, create_student, create_task, data_config, distill_setup,
    resolve_lr)
from .data import create_eval_loader, create_train_loader
from .loop import EpochMeters, NonFiniteLossError, evaluate, mean_lr, train_one_epoch
from .output import (
    RESULTS_VERSION, LogFiles, choose_run_dir, keep_summary_rows, resume_run_dir, teacher_lineage, write_results,
    write_summary_row)
from .record import run_record
from .schedule import create_kd_scheduler, schedule_lengths, set_position
from .state import (
    CheckpointError, LiveRun, RunIdentity, find_resume_checkpoint, new_run_id, read_run_id, record_run_id)

__all__ = ['main', 'train']

_logger = logging.getLogger('train_kd')


def _create_optimizer(args: argparse.Namespace, student: torch.nn.Module, task: torch.nn.Module):
    """timm's optimizer over the student, plus the trainable parameters of the task's distiller (if any) in
    groups of their own (timm's weight-decay split), after the student's so resumed states line up."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs, param_groups_weight_decay
    try:
        optimizer = create_optimizer_v2(student, **optimizer_kwargs(cfg=args),
                                        filter_bias_and_bn=not args.wd_all_params, **args.opt_kwargs)
    except (ValueError, TypeError, AssertionError) as e:
        raise UsageError(f'Could not create optimizer {args.opt!r}: {first_line(e)}.') from e
    distiller = getattr(task, 'distiller', None)
    if distiller is not None and any(p.requires_grad for p in distiller.parameters()):
        # the weight decay of each group is explicit: timm puts it in the student's groups and leaves the optimizer's
        # default at 0, so a bare group would train the method's parts without decay (RepDistiller decays them)
        groups = [{'params': [p for p in distiller.parameters() if p.requires_grad],
                   'weight_decay': args.weight_decay}] if args.wd_all_params else \
            param_groups_weight_decay(distiller, args.weight_decay)
        for g in groups:
            if g['params']:
                optimizer.add_param_group(g)
    return optimizer


def _lock(folder: str, hold: contextlib.ExitStack) -> str:
    """Hold the run folder's lock until ``hold`` closes (another process run in it: one sentence); returns the
    folder's real path, which names the lock held."""
    try:
        hold.enter_context(lock_folder(folder))
    except OSError as e:  # a read-only folder
        raise output_error(e.filename or folder, e) from e
    return os.path.realpath(folder)


def _evaluate_epoch(run: LiveRun, loader_eval, world: int) -> Dict[str, Any]:
    """Eval metrics of the student (and its EMA), BatchNorm statistics synced first (--dist-bn)."""
    from timm.utils import distribute_bn  # torch.distributed collectives: accelerate set up the process group
    args, task, acc = run.args, run.task, run.accelerator
    if world > 1 and args.dist_bn:
        distribute_bn(task.get_trainable_module(), world, reduce=args.dist_bn == 'reduce')
    eval_model = acc.unwrap_model(task.get_eval_model())
    eval_model.eval()
    row = {f'eval_{k}': v for k, v in evaluate(eval_model, loader_eval, acc, args.channels_last).items()}
    eval_model.train()
    ema = task.get_trainable_module(ema=True)
    if ema is not None:
        if world > 1 and args.dist_bn:
            distribute_bn(ema, world, reduce=args.dist_bn == 'reduce')
        ema.eval()
        row.update({f'eval_ema_{k}': v for k, v in evaluate(ema, loader_eval, acc, args.channels_last).items()})
    return row


def train(args: argparse.Namespace, explicit: Dict[str, Any], logs: LogFiles, hold: contextlib.ExitStack
          ) -> Dict[str, Any]:
    """Run the training; ``hold`` releases the run folder's lock when the caller is done."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, gather_object
    from timm.utils import random_seed

    # 1. the run folder is locked and the checkpoint to resume from must verify, be healthy and be the folder's run's
    # before anything else happens; flags given with it either apply (schedule and run flags) or are refused
    resume, resume_file, schedule_changes, locked = None, None, [], None
    if args.resume:
        folder = resume_run_dir(args, explicit)
        if folder and os.path.isdir(folder) and is_main_process_env():
            locked = _lock(folder, hold)
        identity = RunIdentity(read_run_id(folder), run_args_of(folder)) if folder and os.path.isdir(folder) else \
            RunIdentity()
        try:
            resume_file, resume, skipped = find_resume_checkpoint(args.resume, identity)
        except CheckpointError as e:
            raise UsageError(f'--resume: {e}.') from e
        if skipped and is_main_process_env():
            _logger.warning(f'--resume: skipped {"; ".join(skipped)}; resuming from {os.path.basename(resume_file)}.')
        schedule_changes = resume_flag_changes(args, explicit, resume.args)

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

    # 2. data, then models, with every compatibility check before the first step. Where the teacher's weights
    # come from is checked before any data is read; the datasets are built before the teacher: a missing one is
    # a common mistake and cheap to find, while a teacher may be a Hub download.
    dc = data_config(args, explicit)
    if args.teacher:
        check_teacher_source(args.teacher, checkpoint=args.teacher_checkpoint)
    train_ds, eval_ds = create_datasets(args, dc)
    student = create_student(args, dc)
    teacher = build_teacher(args, dc) if args.teacher else None
    try:
        loader_train = create_train_loader(train_ds, args.batch_size, args.seed, rank, world, args.workers,
                                           args.pin_mem, rngs=dc.rngs, extras=dc.loader_extras)
    except ValueError as e:
        raise UsageError(f'Dataset {args.dataset!r}: {e}.') from e
    sampler = loader_train.batch_sampler.sampler
    updates_per_epoch = len(loader_train)
    loader_eval = create_eval_loader(eval_ds, args.validation_batch_size or args.batch_size, args.workers,
                                     args.pin_mem, seed=args.seed)
    distill = distill_setup(args)  # the method, T and the loss weights, resolved once for the run
    task, mixup_fn = create_task(args, dc, student, teacher, device, train_ds, distill=distill)
    task.to(device)
    if args.channels_last:
        task.to(memory_format=torch.channels_last)
    resolve_lr(args, world)
    optimizer = _create_optimizer(args, student, task)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
    if args.torchcompile:
        task.compile(backend=args.torchcompile)
    task.trainable_module = accelerator.prepare_model(task.trainable_module)
    optimizer = accelerator.prepare_optimizer(optimizer)
    loader_eval = accelerator.prepare_data_loader(loader_eval)
    scheduler, num_epochs = create_kd_scheduler(optimizer, args, updates_per_epoch)
    run = LiveRun(args, accelerator, task, student, optimizer, scheduler, dc)

    # 3. the resumed state, all of it (weights, EMA, distiller, optimizer, schedule, scaler, meters, RNG)
    start_epoch, start_step, run_id = 0, 0, None
    if resume is not None:
        start_epoch, start_step = resume.restore(run, updates_per_epoch, resume_opt=not args.no_resume_opt,
                                                 resume_schedule=not schedule_changes)
        run.resume_point, run_id = (resume_file, start_epoch, start_step), resume.run_id
        if schedule_changes:  # a new schedule from the changed flags, at the resumed position
            for g in optimizer.param_groups:
                g['initial_lr'] = args.lr
            run.scheduler, num_epochs = create_kd_scheduler(optimizer, args, updates_per_epoch)
            if (start_epoch, start_step) > (num_epochs, 0):
                raise UsageError(f'--epochs {args.epochs} (x --epoch-scale {args.epoch_scale:g}) ends at epoch '
                                 f'{num_epochs}, before the checkpoint (epoch {start_epoch}): nothing to train.')
        _logger.info(f'Resumed from {resume_file} at epoch {start_epoch} step {start_step}'
                     + (f'; applied {", ".join(schedule_changes)} (new schedule from there on)'
                        if schedule_changes else '') + '.')
        del resume
    set_position(run.scheduler, start_epoch, start_step, updates_per_epoch)

    # 4. the run folder (main process only), never an existing one unless resuming into it, locked, with the run's
    # id (the folder's, else the checkpoint's, else a new one) and the summary rows the checkpoint saw
    if accelerator.is_main_process:
        try:
            run.run_dir = choose_run_dir(args, explicit, dc)
            if locked != os.path.realpath(run.run_dir):  # the folder a resume continues in is locked already
                _lock(run.run_dir, hold)
            recorded = read_run_id(run.run_dir)
            run.run_id = recorded or run_id or new_run_id()
            if recorded is None:
                record_run_id(run.run_dir, run.run_id)
            stale = remove_stale_temp_files(run.run_dir)
            logs.add_file(os.path.join(run.run_dir, 'log.txt'))
            if resume_file:
                keep_summary_rows(os.path.join(run.run_dir, 'summary.csv'), start_epoch)
        except OSError as e:  # read-only or full disk, a file where a folder should be
            raise output_error(e.filename or run.run_dir or args.output or 'the run folder', e) from e
        if stale:
            _logger.info(f'Removed {len(stale)} temporary file(s) a killed run left: {", ".join(stale)}.')
        atomic_write_text(os.path.join(run.run_dir, 'args.yaml'),
                          yaml.safe_dump(vars(args), default_flow_style=False))
    run_dir = run.run_dir
    n_params = sum(p.numel() for p in student.parameters())
    _logger.info(f'Run folder: {run_dir}. Student {args.model} ({n_params / 1e6:.3f}M params), '
                 f'{dc.num_classes} classes, input {dc.in_chans}x{dc.size}x{dc.size}, '
                 f'train {len(train_ds)} / eval {len(eval_ds)} images ({args.dataset or args.data_dir}).')
    if teacher is not None:
        height, width = args.teacher_input_size
        resized = f'resized to {height}x{width}' if (height, width) != (dc.size, dc.size) else 'not resized'
        _logger.info(f'Teacher {args.teacher} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.3f}M params, '
                     f'weights {teacher_lineage(teacher)["teacher_source"]}), input {resized}, '
                     f're-normalized: {bool(getattr(task, "_renormalize", False))}; {task.extra_repr()}.')
    _logger.info(f'Schedule: {args.sched}, {num_epochs} epochs x {updates_per_epoch} steps, lr {args.lr:g}, '
                 f'milestones {schedule_lengths(args).decay_milestones if "multistep" in args.sched else "-"}, '
                 f'opt {args.opt}, weight decay {args.weight_decay:g} '
                 f'({"all params" if args.wd_all_params else "no bias/norm"}), batch {args.batch_size} x {world}.')

    # 5. teacher accuracy on the eval set, before training (measured once per run)
    if teacher is not None:
        if run.teacher_metrics is None:
            run.teacher_metrics = evaluate(task.teacher_logits, loader_eval, accelerator, args.channels_last)
        tm = run.teacher_metrics
        _logger.info(f'Teacher {args.teacher}: top-1 {tm["top1"]:.2f}, top-5 {tm["top5"]:.2f}, loss '
                     f'{tm["loss"]:.4f} on the {args.val_split!r} split ({len(eval_ds)} images).')
    tm = run.teacher_metrics or {}
    record = run_record(args, dc, distill, task, world, accelerator.mixed_precision)
    results: Dict[str, Any] = dict(
        version=RESULTS_VERSION,
        model=args.model, teacher=args.teacher, **teacher_lineage(teacher), distill=record['distill'],
        teacher_top1=tm.get('top1'), teacher_top5=tm.get('top5'),
        best_top1=None, best_top5=None, best_epoch=None, last_top1=None, last_top5=None, last_epoch=None,
        num_classes=dc.num_classes, dataset=args.dataset, eval_metric=args.eval_metric,
        dataset_name=args.dataset_name, dataset_id=args.dataset_id, val_split=args.val_split,  # for model cards
        train_images=len(train_ds), eval_images=len(eval_ds),
        recipe=record['recipe'], data_config=run.export_data_config(),
        world_size=world, run_dir=run_dir, finished=False)
    if 'views' in record:
        results['views'] = record['views']

    # 6. epochs; a run that diverges stops with the command that continues it from its last healthy checkpoint
    num_updates = start_epoch * updates_per_epoch + start_step
    try:
        if resume_file is None and args.checkpoint_every:  # a first recovery point, whatever comes: the start
            run.mark_good_state()
            run.save_recovery(0, 0)
        for epoch in range(start_epoch, num_epochs):
            step0 = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, start=step0 * args.batch_size)
            if epoch != start_epoch or step0 == 0:  # else meters, the epoch's lr and start came with the checkpoint
                run.meters = EpochMeters(lr=mean_lr(optimizer))
                run.mark_good_state()
            if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                for m in (mixup_fn, getattr(task, 'mixup', None)):
                    if m is not None:
                        m.mixup_enabled = False
            if hasattr(task, 'set_epoch'):  # the method's warm-up (DKD)
                task.set_epoch(epoch)
            num_updates = train_one_epoch(
                epoch, task, loader_train, optimizer, accelerator, args, run.meters, start_step=step0,
                lr_scheduler=run.scheduler, mixup_fn=mixup_fn, save_recovery=run.save_recovery,
                num_updates=num_updates)
            per_rank = gather_object([run.meters.averages()]) if world > 1 else [run.meters.averages()]
            row = {'epoch': epoch, **{f'train_{k}': sum(r[k] for r in per_rank if k in r)
                                      / sum(k in r for r in per_rank) for k in per_rank[0]}}
            row.update(_evaluate_epoch(run, loader_eval, world))
            row['lr'] = run.meters.lr if run.meters.lr is not None else mean_lr(optimizer)
            ev = 'eval_ema' if args.model_ema else 'eval'  # the EMA weights are the ones that get exported
            metric = row[f'{ev}_{args.eval_metric}']
            best = run.best
            improved = best['metric'] is None or (
                metric < best['metric'] if args.eval_metric == 'loss' else metric > best['metric'])
            if improved:
                run.best = dict(metric=metric, epoch=epoch, top1=row[f'{ev}_top1'], top5=row[f'{ev}_top5'])
            if run.scheduler is not None:
                run.scheduler.step(epoch + 1, metric)
            _logger.info(f'Epoch {epoch}: train loss {row.get("train_loss", float("nan")):.4f}, eval loss '
                         f'{row[f"{ev}_loss"]:.4f}, top-1 {row[f"{ev}_top1"]:.2f}, top-5 {row[f"{ev}_top5"]:.2f} '
                         f'(best {run.best["top1"]:.2f} @ {run.best["epoch"]})')
            run.last = dict(epoch=epoch, top1=row[f'{ev}_top1'], top5=row[f'{ev}_top5'])
            if accelerator.is_main_process:  # before the checkpoint: a resumed epoch rewrites its row
                write_summary_row(os.path.join(run_dir, 'summary.csv'), row)
            run.save_epoch(epoch, metric, improved)  # collective
            if accelerator.is_main_process:
                write_results(os.path.join(run_dir, 'results.json'), _with_metrics(results, run))
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f'{e}; {run.resume_advice(args.lr)}') from None

    # 7. wrap up
    if world > 1:
        sums = gather_object([float(sum(p.detach().double().sum() for p in student.parameters()))])
        results['ranks_in_sync'] = len(set(sums)) == 1
        if not results['ranks_in_sync']:
            _logger.error(f'The student weights differ between processes after training: {sums}.')
    results = dict(_with_metrics(results, run), finished=True)
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


def _with_metrics(results: Dict[str, Any], run: LiveRun) -> Dict[str, Any]:
    best, last = run.best, run.last
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


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; returns the results dict. A user error prints one sentence (main process) and raises
    SystemExit(2) (as argparse); a non-finite loss raises SystemExit(1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logs = LogFiles(is_main=is_main_process_env())
    try:
        args, explicit = parse_args(argv)
        validate_args(args, explicit)
        _logger.info('train_kd.py ' + ' '.join(shlex.quote(a) for a in argv))
        with contextlib.ExitStack() as hold:  # the run folder's lock, released however train ends
            return train(args, explicit, logs, hold)
    except UsageError as e:
        report_error(f'train_kd.py: error: {e}')
        raise SystemExit(2) from None
    except NonFiniteLossError as e:
        _logger.error(f'Stopped: {e}.')
        report_error(f'train_kd.py: error: {e}.')
        raise SystemExit(1) from None
    except RuntimeError as e:
        if not is_main_process_env() and _peer_failed(e):
            raise SystemExit(1) from None  # the process that failed reports; the launcher ends this one
        raise
    finally:
        logs.close()
        _release_accelerate_state()


_PEER_GONE = ('Connection closed by peer', 'Connection reset by peer', 'Broken pipe', 'communicator was aborted')


def _peer_failed(e: RuntimeError) -> bool:
    """A collective failed because another process of the run ended (gloo / NCCL report it as RuntimeError)."""
    return isinstance(e, getattr(torch.distributed, 'DistError', ())) or any(s in str(e) for s in _PEER_GONE)


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


def console_main(argv: Optional[List[str]] = None) -> None:
    """Entry of the ``timm-kd-train`` console script and of ``train_kd.py``: exit code 0 only for a finished run
    (and a successful --push-to-hub)."""
    results = main(argv)
    sys.exit(0 if results.get('finished') and not results.get('hub_error') else 1)
