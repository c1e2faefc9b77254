"""Setup steps of ``train_kd.py``: data config, student, teacher, datasets, task, lr, weight loading.

Every step turns a user mistake into a ``UsageError`` with one sentence (class counts, input sizes,
checkpoints that do not fit, missing data), so the script fails before its first training step.
"""
import argparse
import logging
import os
import pickle
from typing import Any, Dict, List, Optional, Tuple

import torch

import timm
import timm_kd
from timm_kd.data.datasets import DatasetNotFoundError, create_kd_dataset, dataset_defaults
from timm_kd.data.transforms import SMALL_INPUT_LIMIT, create_kd_transform
from timm_kd.data.views import ImageSpec, PairedTransform, create_view_transform, images_per_step
from timm_kd.distill import teacher as teacher_lib
from timm_kd.distill.methods import METHODS
from timm_kd.utils.errors import UsageError
from timm_kd.utils.messages import first_line
from .args import LARGE_INPUT_AUG_FLAGS, build_parser, kd_view_modes, resolve_loss_weights, tl_aug_on
from .schedule import schedule_lengths

__all__ = ['data_config', 'create_student', 'build_teacher', 'create_datasets', 'subset_indices', 'create_mixer',
           'create_task', 'resolve_lr', 'load_weights', 'recipe_of', 'distill_record', 'views_record']

_logger = logging.getLogger('train_kd')
_TORCH_NAMES = ('cifar10', 'cifar100', 'mnist', 'fashionmnist', 'kmnist', 'qmnist', 'svhn', 'stl10')


def _load_class_map(args: argparse.Namespace) -> Optional[Dict[Any, int]]:
    """--class-map read as timm reads it (a .txt of class names, the line number being the index, or a .pkl dict
    name -> index), checked to give every class a non-negative integer index; None without the flag."""
    if not args.class_map:
        return None
    from timm.data.readers.class_map import load_class_map as timm_load_class_map
    try:
        class_to_idx = timm_load_class_map(args.class_map, args.data_dir or '')
    except (AssertionError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise UsageError(f'--class-map {args.class_map!r} cannot be read ({first_line(e) or type(e).__name__}): use a '
                         f'.txt file with one class name per line or a .pkl dict of class name -> index.') from e
    if not class_to_idx or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                   for i in class_to_idx.values()):
        raise UsageError(f'--class-map {args.class_map!r} must map class names to indices 0, 1, 2, ...')
    return class_to_idx


def data_config(args: argparse.Namespace, explicit: Dict[str, Any]) -> Dict[str, Any]:
    """Classes, input size, normalisation and crop padding: flags over the dataset's recipe defaults.

    With --class-map the map sets the classes, as in timm: its largest index + 1 (a map of some of the class
    folders trains on those classes only; the images of the others are left out)."""
    try:
        dd = dataset_defaults(args.dataset, args.data_dir)
    except ValueError as e:
        raise UsageError(str(e)) from e
    class_map = _load_class_map(args)
    if class_map is not None:
        dd['num_classes'] = max(class_map.values()) + 1
    num_classes = args.num_classes or dd['num_classes']
    if args.num_classes and dd['num_classes'] and args.num_classes != dd['num_classes']:
        raise UsageError(f'--num-classes {args.num_classes} does not match dataset {args.dataset!r}, which has '
                         f'{dd["num_classes"]} classes.')
    if not num_classes and '/' not in (args.dataset or '').strip('/') and not (
            args.data_dir and os.path.isdir(args.data_dir)):
        # timm reads a name without prefix as an image folder under --data-dir
        hint = f' (did you mean torch/{args.dataset}?)' if args.dataset.lower() in _TORCH_NAMES else ''
        where = f'--data-dir {args.data_dir!r} is not a directory' if args.data_dir else 'no --data-dir was given'
        raise UsageError(f'Dataset {args.dataset!r} is read as an image folder, but {where}{hint}.')
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
    return dict(num_classes=int(num_classes), class_map=class_map, in_chans=in_chans, size=int(size), mean=mean,
                std=std, crop_padding=int(crop_padding), std_aug=std_aug, interpolation=args.interpolation or 'bilinear',
                train_interpolation=args.train_interpolation, crop_pct=args.crop_pct, timm_kwargs=timm_kwargs,
                # the small-image recipe is torchvision crop + flip (torch RNG only); timm's transforms (and
                # the --tl-aug policies) also draw from python's random and numpy
                rngs=('torch',) if size < SMALL_INPUT_LIMIT and not tl_aug_on(args) else ('torch', 'random', 'numpy'),
                # task kwargs the loader adds: the per-sample view, sample indices for methods with a row per sample
                loader_extras=(('view_input',) if tl_aug_on(args) else ()) + (
                    ('index',) if METHODS[args.distill].needs_index else ()))


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
                         f'{first_line(e)}.') from e
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[-1] != dc['num_classes']:
        raise UsageError(f'The {what} predicts {tuple(out.shape[1:])} outputs but the dataset has '
                         f'{dc["num_classes"]} classes: pass a model / checkpoint for {dc["num_classes"]} classes.')


def create_student(args: argparse.Namespace, dc: Dict[str, Any]) -> torch.nn.Module:
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
        raise UsageError(f'Could not create student {args.model!r}: {first_line(e)}.') from e
    if args.initial_checkpoint:
        try:
            timm_kd.load_kd_checkpoint(model, args.initial_checkpoint)
        except Exception as e:  # noqa: BLE001 - KDCheckpointError / unreadable file
            raise UsageError(f'--initial-checkpoint {args.initial_checkpoint!r} does not fit {args.model!r}: '
                             f'{first_line(e)}.') from e
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    _set_norm_cfg(model, dc)
    _check_forward(model, dc, f'student {args.model!r}')
    return model


def build_teacher(args: argparse.Namespace, dc: Dict[str, Any]) -> torch.nn.Module:
    """``timm_kd.distill.teacher.create_teacher`` for ``--teacher``: its load errors become usage errors."""
    try:
        teacher = teacher_lib.create_teacher(args.teacher, checkpoint=args.teacher_checkpoint,
                                             num_classes=dc['num_classes'])
    except teacher_lib.TeacherLoadError as e:
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
            if v:  # a class_to_idx (e.g. from a class map) numbers the classes 0 .. its largest index
                return (max(v.values()) + 1 if isinstance(v, dict) else len(v)), True
    targets = getattr(ds, 'targets', None)
    if targets is not None and len(targets):
        return int(max(int(t) for t in targets)) + 1, False
    return None, False


def _targets(ds) -> Optional[List[int]]:
    """Class index of every sample, read without loading images (torchvision ``targets``, timm reader samples)."""
    targets = getattr(ds, 'targets', None)
    if targets is None:
        samples = getattr(getattr(ds, 'reader', None), 'samples', None) or getattr(ds, 'samples', None)
        if samples is not None:
            targets = [t for _, t in samples]
    return None if targets is None or len(targets) != len(ds) else [int(t) for t in targets]


def subset_indices(ds, num: int, seed: int) -> List[int]:
    """``num`` sample indices of ``ds`` (in dataset order) for --train/val-num-samples: a stratified draw that keeps
    every class with a share proportional to its size (largest remainders, at least one sample each; fewer samples
    than classes: one from each of the ``num`` largest classes), seeded by ``seed`` alone so every process and every
    resume takes the same subset. Without labels: a seeded draw."""
    g = torch.Generator().manual_seed(seed)
    targets = _targets(ds)
    if targets is None:
        return sorted(torch.randperm(len(ds), generator=g)[:num].tolist())
    by_class: Dict[int, List[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    classes = sorted(by_class)
    ideal = {c: num * len(by_class[c]) / len(targets) for c in classes}
    quota = {c: max(int(num >= len(classes)), int(ideal[c])) for c in classes}
    while sum(quota.values()) > num:  # the minimum of one per class overshot: take from the most over-served
        c = max((c for c in classes if quota[c] > 1), key=lambda c: quota[c] - ideal[c])
        quota[c] -= 1
    while sum(quota.values()) < num:  # largest remainders first (ties: lower class index)
        c = max((c for c in classes if quota[c] < len(by_class[c])), key=lambda c: ideal[c] - quota[c])
        quota[c] += 1
    picked = []
    for c in classes:
        members = by_class[c]
        picked += [members[j] for j in torch.randperm(len(members), generator=g)[:quota[c]].tolist()]
    return sorted(picked)


def create_datasets(args: argparse.Namespace, dc: Dict[str, Any]):
    kw: Dict[str, Any] = {}
    if dc['class_map'] is not None:
        kw['class_map'] = dc['class_map']  # the map as read: timm's readers would look for a bare name per split folder
    if args.input_key:
        kw['input_key'] = args.input_key
    if args.target_key:
        kw['target_key'] = args.target_key
    common = dict(input_size=dc['size'], mean=dc['mean'], std=dc['std'], crop_padding=dc['crop_padding'])
    train_tf = create_kd_transform(is_training=True, std_aug=dc['std_aug'], interpolation=dc['train_interpolation'],
                                   **common, **dc['timm_kwargs'])
    if tl_aug_on(args):  # the teacher-labelled per-sample view, made from the original's crop / flip
        spec = ImageSpec(dc['size'], dc['mean'], dc['std'], dc['crop_padding'], dc['interpolation'])
        try:
            train_tf = PairedTransform(train_tf, *create_view_transform(args.tl_aug, spec))
        except ValueError as e:
            raise UsageError(f'--tl-aug: {e}') from e
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
        if dc['class_map'] is not None:
            _check_class_map(args, dc['class_map'], ds, split, training)
        if len(ds) == 0:
            raise UsageError(f'The {split!r} split of dataset {args.dataset!r} is empty.')
        n, exact = _dataset_classes(ds)
        if n is not None and (n > dc['num_classes'] or (exact and n != dc['num_classes'])):
            raise UsageError(f'The {split!r} split of dataset {args.dataset!r} has {n} classes but the models have '
                             f'{dc["num_classes"]}: fix --num-classes or the dataset.')
        if num and len(ds) > num:
            ds = torch.utils.data.Subset(ds, subset_indices(ds, num, args.seed))
        out.append(ds)
    return out


def _check_class_map(args: argparse.Namespace, class_map: Dict[Any, int], ds, split: str, training: bool) -> None:
    """The dataset applies --class-map (timm's folder, tar and Hub readers do; torchvision and our own datasets
    would ignore it), and in the training split every class of the map has images (a misspelt name would leave
    one out silently)."""
    reader = getattr(ds, 'reader', None)
    if not any(getattr(reader, attr, None) == class_map for attr in ('class_to_idx', 'class_name_to_idx')):
        raise UsageError(f'Dataset {args.dataset or args.data_dir!r} does not apply --class-map (timm applies it to '
                         f'image folders, tar files and hfds/ datasets): drop the flag or use such a dataset.')
    targets = _targets(ds) if training else None
    if targets is not None:
        names = {i: name for name, i in class_map.items()}
        empty = sorted(set(names) - set(targets))
        if empty:
            raise UsageError(f'--class-map {args.class_map!r} names classes without images in the {split!r} split '
                             f'({", ".join(repr(names[i]) for i in empty[:5])}): check them against the class '
                             f'folders.')


def create_mixer(args: argparse.Namespace, dc: Dict[str, Any]) -> Optional['timm_kd.DistillMixup']:
    """The DistillMixup of the KD view flags (--tl-mixup, --tl-cutmix, --cutmix-hard, --cutout, --pick ...), or None."""
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
    return mixer


def create_task(args: argparse.Namespace, dc: Dict[str, Any], student, teacher, device, train_ds=None
                ) -> Tuple[Any, Any]:
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
    gamma, alpha = resolve_loss_weights(args)
    try:
        task = timm_kd.DistillationTask(
            student, teacher, mixup=create_mixer(args, dc), method=args.distill,
            method_kwargs=_method_kwargs(args, train_ds), view_loss=args.view_loss,
            temperature=args.kd_temperature, task_loss_weight=gamma, distill_loss_weight=alpha,
            mixed_kd_weight=args.mixed_kd_weight, criterion_kwargs=criterion_kwargs, device=device)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return task, mixup_fn


def _method_kwargs(args: argparse.Namespace, train_ds) -> Dict[str, Any]:
    """The hyper-parameters of --distill: its flags, and for a method with a row per training sample (CRD's
    memory bank) the size of the training set, whose loader then yields sample indices."""
    cls = METHODS[args.distill]
    kwargs = cls.kwargs_from_args(args)
    if cls.needs_index:
        if isinstance(train_ds, torch.utils.data.IterableDataset) or not hasattr(train_ds, '__len__'):
            raise UsageError(f'--distill {args.distill} keeps one memory row per training sample and needs sample '
                             f'indices, which the stream {args.dataset!r} does not have: use a map-style dataset.')
        kwargs['num_samples'] = len(train_ds)
    return kwargs


def distill_record(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The distillation method of a run as results.json records it (None without a teacher)."""
    if not args.teacher:
        return None
    gamma, alpha = resolve_loss_weights(args)
    return dict(method=args.distill, **METHODS[args.distill].kwargs_from_args(args), view_loss=args.view_loss,
                temperature=args.kd_temperature, task_loss_weight=gamma, distill_loss_weight=alpha,
                mixed_kd_weight=args.mixed_kd_weight)


def resolve_lr(args: argparse.Namespace, world_size: int) -> None:
    """timm: without --lr, lr = lr_base * (global batch / lr_base_size) (sqrt scaling for ada*/lamb)."""
    if args.lr is not None:
        return
    global_bs = args.batch_size * world_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    ratio = global_bs / args.lr_base_size
    args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
    _logger.info(f'Learning rate {args.lr:g} from --lr-base {args.lr_base} and global batch {global_bs} ({scale}).')


def load_weights(model: torch.nn.Module, state_dict: Dict[str, Any], what: str) -> None:
    try:
        res = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        raise UsageError(f'{what}: {first_line(e)}.') from e
    if res.missing_keys or res.unexpected_keys:
        raise UsageError(f'{what}: missing keys {res.missing_keys[:5]}, unexpected keys {res.unexpected_keys[:5]}.')


def views_record(args: argparse.Namespace, task) -> Dict[str, Any]:
    """What a step trains on (results.json 'views', the model card): the views, the images per step of one process
    and the loss weights (task CE on x, KL on x, KL on the views)."""
    gamma, alpha = resolve_loss_weights(args)
    mixer = getattr(task, 'mixup', None)
    return dict(sample_view=args.tl_aug if tl_aug_on(args) else None, mix_view=repr(mixer) if mixer else None,
                images_per_step=images_per_step(args.batch_size, tl_aug_on(args), mixer),
                loss_weights=dict(task=gamma, kd=alpha, views=alpha * args.mixed_kd_weight))


def recipe_of(args: argparse.Namespace, dc: Dict[str, Any], world: int, mixed_precision: str) -> Dict[str, Any]:
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
                      mix_fraction=args.mix_fraction, mix_pairing=args.mix_pairing, tl_aug=args.tl_aug)
    return recipe
