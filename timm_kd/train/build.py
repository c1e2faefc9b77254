"""Setup steps of ``train_kd.py``: data config, student, teacher, datasets, task, lr, weight loading.

The builders take typed keyword arguments and a ``DataConfig`` (``resolve_data_config``,
``create_student_model``, ``create_teacher_model``, ``create_data_splits``), so a tool calls them
directly; ``data_config``, ``create_student``, ``build_teacher`` and ``create_datasets`` are thin wrappers
that read train_kd's flags. Every step turns a user mistake into a ``UsageError`` with one sentence (class
counts, input sizes, checkpoints that do not fit, missing data), so the script fails before its first
training step.
"""
import argparse
import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

import timm
import timm_kd
from timm_kd.data.datasets import DatasetNotFoundError, create_kd_dataset, dataset_defaults
from timm_kd.data.transforms import SMALL_INPUT_LIMIT, create_kd_transform
from timm_kd.data.views import ImageSpec, PairedTransform, create_view_transform
from timm_kd.distill import teacher as teacher_lib
from timm_kd.distill.methods import METHODS
from timm_kd.distill.resolution import ImageSize, image_size, pretrained_input_size
from timm_kd.utils.errors import UsageError
from timm_kd.utils.messages import first_line
from .args import LARGE_INPUT_AUG_FLAGS, build_parser, kd_view_modes, resolve_loss_weights, tl_aug_on
from .data_rules import check_class_map, check_split_classes

__all__ = ['DataConfig', 'resolve_data_config', 'create_student_model', 'check_teacher_source', 'create_teacher_model',
           'teacher_input_size', 'create_data_splits', 'data_config', 'create_student', 'build_teacher',
           'create_datasets', 'subset_indices', 'create_mixer', 'DistillSetup', 'distill_setup', 'create_task',
           'resolve_lr', 'load_weights']

_logger = logging.getLogger('train_kd')
_TORCH_NAMES = ('cifar10', 'cifar100', 'mnist', 'fashionmnist', 'kmnist', 'qmnist', 'svhn', 'stl10')


@dataclass(frozen=True)
class DataConfig:
    """The data of a run as the builders need it: classes, image shape and normalisation, the train recipe, and
    what the train loader draws and yields. ``resolve_data_config`` fills it from a dataset's recipe."""
    num_classes: int
    in_chans: int
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_padding: int
    std_aug: str = 'crop_flip'
    interpolation: str = 'bilinear'
    train_interpolation: str = 'random'
    crop_pct: Optional[float] = None  # eval centre crop, inputs >= 128 px only
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)  # timm's train-transform args, inputs >= 128 px
    class_map: Optional[Mapping[Any, int]] = None  # class name -> index, read from class_map_file
    class_map_file: str = ''
    sample_view: Optional[str] = None  # the per-sample teacher-labelled view the train split yields (--tl-aug)
    # the small-image recipe is torchvision crop + flip (torch RNG only); timm's transforms (and the per-sample
    # view policies) also draw from python's random and numpy: the loader seeds these per sample
    rngs: Tuple[str, ...] = ('torch',)
    loader_extras: Tuple[str, ...] = ()  # task kwargs the loader adds: view_input, index


def load_class_map(path: str, data_dir: Optional[str] = None) -> Dict[Any, int]:
    """A class map read as timm reads it (a .txt of class names, the line number being the index, or a .pkl dict
    name -> index), checked to index at least two classes, each its own index (``check_class_map``)."""
    from timm.data.readers.class_map import load_class_map as timm_load_class_map
    try:
        class_to_idx = timm_load_class_map(path, data_dir or '')
    except (AssertionError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise UsageError(f'--class-map {path!r} cannot be read ({first_line(e) or type(e).__name__}): use a '
                         f'.txt file with one class name per line or a .pkl dict of class name -> index.') from e
    check_class_map(class_to_idx, path, data_dir or '')
    return class_to_idx


def resolve_data_config(
        dataset: str,
        *,
        data_dir: Optional[str] = None,
        num_classes: Optional[int] = None,
        class_map: Optional[str] = None,
        input_size: Optional[Sequence[int]] = None,
        img_size: Optional[int] = None,
        in_chans: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        crop_padding: Optional[int] = None,
        std_aug: str = 'crop_flip',
        interpolation: Optional[str] = None,
        train_interpolation: str = 'random',
        crop_pct: Optional[float] = None,
        timm_aug: Optional[Mapping[str, Any]] = None,
        sample_view: Optional[str] = None,
        needs_index: bool = False,
) -> DataConfig:
    """Classes, input size, normalisation and crop padding: the arguments over the dataset's recipe defaults.

    With ``class_map`` (a file) the map sets the classes, as in timm: its largest index + 1 (a map of some of the
    class folders trains on those classes only; the images of the others are left out). ``timm_aug`` (timm's
    ``create_transform`` augmentation arguments) and ``crop_pct`` apply to inputs >= 128 px only;
    ``sample_view`` is the per-sample teacher-labelled view of the train split, ``needs_index`` asks the
    loader for sample indices (a method with a row per sample)."""
    try:
        dd = dataset_defaults(dataset, data_dir)
    except ValueError as e:
        raise UsageError(str(e)) from e
    class_to_idx = load_class_map(class_map, data_dir) if class_map else None
    if class_to_idx is not None:
        dd['num_classes'] = max(class_to_idx.values()) + 1
    classes = num_classes or dd['num_classes']
    if num_classes and dd['num_classes'] and num_classes != dd['num_classes']:
        raise UsageError(f'--num-classes {num_classes} does not match dataset {dataset!r}, which has '
                         f'{dd["num_classes"]} classes.')
    if not classes and '/' not in (dataset or '').strip('/') and not (data_dir and os.path.isdir(data_dir)):
        # timm reads a name without prefix as an image folder under --data-dir
        hint = f' (did you mean torch/{dataset}?)' if dataset.lower() in _TORCH_NAMES else ''
        where = f'--data-dir {data_dir!r} is not a directory' if data_dir else 'no --data-dir was given'
        raise UsageError(f'Dataset {dataset!r} is read as an image folder, but {where}{hint}.')
    if not classes:
        raise UsageError(f'The number of classes of dataset {dataset!r} is not known: pass --num-classes N.')
    if input_size:
        in_chans, h, w = input_size
        if h != w:
            raise UsageError(f'--input-size must be square (C H H), got {input_size}.')
        size = h
    else:
        in_chans, size = in_chans or 3, img_size or dd['input_size']
    mean = tuple(mean) if mean else tuple(dd['mean'])
    std = tuple(std) if std else tuple(dd['std'])
    mean, std = (mean * in_chans if len(mean) == 1 else mean), (std * in_chans if len(std) == 1 else std)
    if len(mean) != in_chans or len(std) != in_chans:
        raise UsageError(f'--mean/--std need {in_chans} values (one per input channel), got {len(mean)}/{len(std)}.')
    large = size >= SMALL_INPUT_LIMIT
    return DataConfig(
        num_classes=int(classes), in_chans=in_chans, size=int(size), mean=mean, std=std,
        crop_padding=int(crop_padding if crop_padding is not None else dd['crop_padding']), std_aug=std_aug,
        interpolation=interpolation or 'bilinear', train_interpolation=train_interpolation,
        crop_pct=crop_pct if large else None, timm_kwargs=dict(timm_aug or {}) if large else {},
        class_map=class_to_idx, class_map_file=class_map or '', sample_view=sample_view,
        rngs=('torch',) if not large and not sample_view else ('torch', 'random', 'numpy'),
        loader_extras=(('view_input',) if sample_view else ()) + (('index',) if needs_index else ()))


def data_config(args: argparse.Namespace, explicit: Dict[str, Any]) -> DataConfig:
    """``resolve_data_config`` of train_kd's flags; timm's ImageNet augmentation flags and --crop-pct, given for
    inputs below 128 px, are refused (that recipe is pad + crop + flip)."""
    dc = resolve_data_config(
        args.dataset, data_dir=args.data_dir, num_classes=args.num_classes, class_map=args.class_map or None,
        input_size=args.input_size, img_size=args.img_size, in_chans=args.in_chans, mean=args.mean, std=args.std,
        crop_padding=args.crop_padding, std_aug='none' if args.no_aug else args.std_aug,
        interpolation=args.interpolation, train_interpolation=args.train_interpolation, crop_pct=args.crop_pct,
        timm_aug=dict(scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip,
                      # 0 = off: timm would still add a ColorJitter that changes nothing (~0.8 ms an image)
                      color_jitter=args.color_jitter or None, auto_augment=args.aa, re_prob=args.reprob,
                      re_mode=args.remode, re_count=args.recount),
        sample_view=args.tl_aug if tl_aug_on(args) else None, needs_index=METHODS[args.distill].needs_index)
    if dc.size < SMALL_INPUT_LIMIT:
        defaults = build_parser().parse_args([])
        changed = [k for k in LARGE_INPUT_AUG_FLAGS if k in explicit and explicit[k] != getattr(defaults, k)]
        if changed:
            raise UsageError(f'--{changed[0].replace("_", "-")} is a timm ImageNet augmentation for inputs >= '
                             f'{SMALL_INPUT_LIMIT} px; the {dc.size} px recipe is pad + crop + flip (see --std-aug).')
        if args.crop_pct is not None:
            raise UsageError(f'--crop-pct applies to inputs >= {SMALL_INPUT_LIMIT} px; {dc.size} px eval images are '
                             f'used whole.')
    return dc


def _set_norm_cfg(model: torch.nn.Module, dc: DataConfig, input_size: bool = True) -> None:
    """Record the normalisation the data really has in the model's pretrained_cfg (tasks and Hub export read it)."""
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    cfg.update(mean=dc.mean, std=dc.std)
    if input_size:
        cfg.update(input_size=(dc.in_chans, dc.size, dc.size), num_classes=dc.num_classes)
    model.pretrained_cfg = cfg
    if hasattr(model, 'default_cfg'):
        model.default_cfg = cfg


def _check_forward(model: torch.nn.Module, dc: DataConfig, what: str, size: Optional[ImageSize] = None) -> None:
    """One tiny eval-mode forward at ``size`` (default: the data's): catches input-size and class-count mismatches
    before any data is read."""
    height, width = size or (dc.size, dc.size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, dc.in_chans, height, width, device=next(model.parameters()).device))
    except Exception as e:  # noqa: BLE001 - any failure here is an incompatible model / input pair
        raise UsageError(f'The {what} cannot take {dc.in_chans}x{height}x{width} inputs: {first_line(e)}.') from e
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[-1] != dc.num_classes:
        raise UsageError(f'The {what} predicts {tuple(out.shape[1:])} outputs but the dataset has '
                         f'{dc.num_classes} classes: pass a model / checkpoint for {dc.num_classes} classes.')


def create_student_model(
        name: str,
        data: DataConfig,
        *,
        pretrained: bool = False,
        initial_checkpoint: Optional[str] = None,
        drop_rate: float = 0.,
        drop_path_rate: Optional[float] = None,
        global_pool: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        grad_checkpointing: bool = False,
) -> torch.nn.Module:
    """The student ``name`` for ``data`` (its classes and channels), from ``initial_checkpoint`` if given, its
    ``pretrained_cfg`` carrying the data's normalisation; one tiny forward checks it takes the data's images."""
    kw: Dict[str, Any] = dict(pretrained=pretrained, num_classes=data.num_classes, in_chans=data.in_chans)
    if drop_rate:
        kw['drop_rate'] = drop_rate
    if drop_path_rate is not None:
        kw['drop_path_rate'] = drop_path_rate
    if global_pool is not None:
        kw['global_pool'] = global_pool
    kw.update(model_kwargs or {})
    try:
        model = timm.create_model(name, **kw)
    except Exception as e:  # noqa: BLE001 - unknown kwargs (TypeError), missing weights (RuntimeError/OSError) ...
        raise UsageError(f'Could not create student {name!r}: {first_line(e)}.') from e
    if initial_checkpoint:
        try:
            timm_kd.load_kd_checkpoint(model, initial_checkpoint)
        except Exception as e:  # noqa: BLE001 - KDCheckpointError / unreadable file
            raise UsageError(f'--initial-checkpoint {initial_checkpoint!r} does not fit {name!r}: '
                             f'{first_line(e)}.') from e
    if grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    _set_norm_cfg(model, data)
    _check_forward(model, data, f'student {name!r}')
    return model


def create_student(args: argparse.Namespace, dc: DataConfig) -> torch.nn.Module:
    """``create_student_model`` of train_kd's flags; with a teacher, --distill must be able to train it (token
    distillation needs a distillation token), which is asked before the teacher is built."""
    model = create_student_model(
        args.model, dc, pretrained=args.pretrained, initial_checkpoint=args.initial_checkpoint or None,
        drop_rate=args.drop, drop_path_rate=args.drop_path, global_pool=args.gp, model_kwargs=args.model_kwargs,
        grad_checkpointing=args.grad_checkpointing)
    if args.teacher:
        try:
            METHODS[args.distill].check_student(model)
        except ValueError as e:
            raise UsageError(str(e)) from e
    return model


def check_teacher_source(name: str, *, checkpoint: Optional[str] = None) -> None:
    """The teacher's weights must be found before any data is read: a missing teacher is one command away, while
    the data may be a long download. At most one quick Hub request; the teacher is built later."""
    try:
        teacher_lib.check_teacher(name, checkpoint=checkpoint)
    except teacher_lib.TeacherLoadError as e:
        raise UsageError(str(e).rstrip('.') + '.') from e


def create_teacher_model(name: str, data: DataConfig, *, checkpoint: Optional[str] = None,
                         input_size: Optional[Sequence[int]] = None) -> torch.nn.Module:
    """``timm_kd.distill.teacher.create_teacher`` for ``data``: its load errors become usage errors, and a teacher
    for other classes or other inputs is refused. The size it takes (:func:`teacher_input_size`, ``input_size`` if
    given) is checked with one forward and recorded as ``teacher.kd_teacher_info['input_size']`` ([C, H, W])."""
    try:
        teacher = teacher_lib.create_teacher(name, checkpoint=checkpoint, num_classes=data.num_classes)
    except teacher_lib.TeacherLoadError as e:
        raise UsageError(str(e).rstrip('.') + '.') from e
    t_classes = getattr(teacher, 'num_classes', None)
    if isinstance(t_classes, int) and t_classes != data.num_classes:
        raise UsageError(f'Teacher {name!r} predicts {t_classes} classes but the dataset and the student have '
                         f'{data.num_classes}: use a teacher trained on the same classes.')
    if checkpoint is not None:
        # Weights from a checkpoint come with the architecture's default mean/std, not necessarily the ones they
        # were trained with; KD teachers are trained on the student's dataset with its normalisation. Weights that
        # come with their own config (hf-hub:, local-dir:, a registered name's pretrained weights or the local
        # teacher store) keep it, and the task re-normalises for them (an ImageNet or ViT teacher of a CIFAR student).
        _set_norm_cfg(teacher, data, input_size=False)
    size = teacher_input_size(teacher, data, given=input_size, checkpoint=checkpoint)
    _check_forward(teacher, data, f'teacher {name!r}' + (' at --teacher-input-size' if input_size else ''), size)
    teacher.kd_teacher_info = dict(getattr(teacher, 'kd_teacher_info', None) or {},
                                   input_size=[data.in_chans, *size])
    return teacher


def teacher_input_size(teacher: torch.nn.Module, data: DataConfig, *, given: Optional[Sequence[int]] = None,
                       checkpoint: Optional[str] = None) -> ImageSize:
    """(H, W) the teacher takes: ``given`` (--teacher-input-size); else the size in its pretrained config when its
    weights come with that config (hf-hub:, local-dir:, a registered name's own weights); else, for weights from a
    ``checkpoint`` (whose config is the architecture's default, not the checkpoint's), the data's."""
    if given:
        return image_size(list(given), '--teacher-input-size')
    own = None if checkpoint else pretrained_input_size(teacher)
    return own or (data.size, data.size)


def build_teacher(args: argparse.Namespace, dc: DataConfig) -> torch.nn.Module:
    """``create_teacher_model`` of --teacher / --teacher-checkpoint / --teacher-input-size; sets
    ``args.teacher_input_size`` to the [H, W] the teacher takes (args.yaml records it)."""
    teacher = create_teacher_model(args.teacher, dc, checkpoint=args.teacher_checkpoint,
                                   input_size=args.teacher_input_size)
    args.teacher_input_size = teacher.kd_teacher_info['input_size'][1:]
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


def create_data_splits(
        dataset: str,
        data: DataConfig,
        *,
        data_dir: Optional[str] = None,
        train_split: str = 'train',
        val_split: str = 'validation',
        download: bool = False,
        input_key: Optional[str] = None,
        target_key: Optional[str] = None,
        train_num_samples: Optional[int] = None,
        val_num_samples: Optional[int] = None,
        seed: int = 0,
) -> List[Any]:
    """[train, eval] datasets of ``dataset`` with ``data``'s transforms (the train split yields the per-sample view
    beside each image when ``data.sample_view`` is set); ``*_num_samples`` take a subset seeded by ``seed``."""
    kw: Dict[str, Any] = {}
    if data.class_map is not None:
        kw['class_map'] = data.class_map  # the map as read: timm's readers would look for a bare name per split folder
    if input_key:
        kw['input_key'] = input_key
    if target_key:
        kw['target_key'] = target_key
    common = dict(input_size=data.size, mean=data.mean, std=data.std, crop_padding=data.crop_padding)
    train_tf = create_kd_transform(is_training=True, std_aug=data.std_aug, interpolation=data.train_interpolation,
                                   **common, **data.timm_kwargs)
    if data.sample_view:  # the teacher-labelled per-sample view, made from the original's crop / flip
        spec = ImageSpec(data.size, data.mean, data.std, data.crop_padding, data.interpolation)
        try:
            train_tf = PairedTransform(train_tf, *create_view_transform(data.sample_view, spec))
        except ValueError as e:
            raise UsageError(f'--tl-aug: {e}') from e
    eval_kw = {'crop_pct': data.crop_pct} if data.crop_pct is not None else {}
    eval_tf = create_kd_transform(is_training=False, interpolation=data.interpolation, **common, **eval_kw)
    out = []
    synthetic = dataset.lower().startswith('synthetic/')
    for split, training, tf, num in ((train_split, True, train_tf, train_num_samples),
                                     (val_split, False, eval_tf, val_num_samples)):
        try:
            ds = create_kd_dataset(dataset, root=data_dir, split=split, is_training=training, download=download,
                                   transform=tf, **kw, **({'num_samples': num} if synthetic and num else {}))
        except (DatasetNotFoundError, ValueError, OSError, RuntimeError) as e:
            raise UsageError(str(e).rstrip('.') + '.') from e
        if data.class_map is not None:
            _check_class_map(dataset or data_dir, data, ds, split, training)
        if len(ds) == 0:
            raise UsageError(f'The {split!r} split of dataset {dataset!r} is empty.')
        n, exact = _dataset_classes(ds)
        if n is not None and (n > data.num_classes or (exact and n != data.num_classes)):
            raise UsageError(f'The {split!r} split of dataset {dataset!r} has {n} classes but the models have '
                             f'{data.num_classes}: fix --num-classes or the dataset.')
        if num and len(ds) > num:
            ds = torch.utils.data.Subset(ds, subset_indices(ds, num, seed))
        out.append(ds)
    if data.class_map is None:
        check_split_classes(*out, train_split, val_split)
    return out


def create_datasets(args: argparse.Namespace, dc: DataConfig) -> List[Any]:
    """``create_data_splits`` of train_kd's flags."""
    return create_data_splits(
        args.dataset, dc, data_dir=args.data_dir, train_split=args.train_split, val_split=args.val_split,
        download=args.dataset_download, input_key=args.input_key, target_key=args.target_key,
        train_num_samples=args.train_num_samples, val_num_samples=args.val_num_samples, seed=args.seed)


def _check_class_map(source: str, data: DataConfig, ds, split: str, training: bool) -> None:
    """The dataset applies the class map (timm's folder, tar and Hub readers do; torchvision and our own datasets
    would ignore it), and in the training split every class of the map has images (a misspelt name would leave
    one out silently)."""
    reader = getattr(ds, 'reader', None)
    if not any(getattr(reader, attr, None) == data.class_map for attr in ('class_to_idx', 'class_name_to_idx')):
        raise UsageError(f'Dataset {source!r} does not apply --class-map (timm applies it to '
                         f'image folders, tar files and hfds/ datasets): drop the flag or use such a dataset.')
    targets = _targets(ds) if training else None
    if targets is not None:
        names = {i: name for name, i in data.class_map.items()}
        empty = sorted(set(names) - set(targets))
        if empty:
            raise UsageError(f'--class-map {data.class_map_file!r} names classes without images in the {split!r} '
                             f'split ({", ".join(repr(names[i]) for i in empty[:5])}): check them against the class '
                             f'folders.')


def create_mixer(args: argparse.Namespace, dc: DataConfig) -> Optional['timm_kd.DistillMixup']:
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
                label_smoothing=args.smoothing if hard else 0., num_classes=dc.num_classes,
                pairing=args.mix_pairing, label_mode='hard' if hard else 'teacher',
                cutout=(True if args.cutout == -1 else args.cutout) if args.cutout else False,
                mix_fraction=args.mix_fraction, n_candidates=args.pick_candidates if pick else None,
                pick=pick, pick_ratio=args.pick_ratio)
        except ValueError as e:
            raise UsageError(str(e)) from e
    return mixer


@dataclass(frozen=True)
class DistillSetup:
    """The distillation of a run, resolved once from train_kd's flags: the method and the hyper-parameters of its
    flags, the view loss, the temperature T and the loss weights (γ on CE(x), α on the logit term, w: the views
    get α·w). The task is built from it and results.json records it (``timm_kd.train.record``)."""
    method: str
    method_kwargs: Mapping[str, Any]
    view_loss: str
    temperature: float
    task_loss_weight: float
    distill_loss_weight: float
    mixed_kd_weight: float
    teacher_input_size: Optional[ImageSize] = None  # None: the teacher takes the student's input as it is


def distill_setup(args: argparse.Namespace) -> Optional[DistillSetup]:
    """The ``DistillSetup`` of train_kd's flags (None without --teacher): the one place the loss weights of
    --kd-alpha / --task-loss-weight / --distill-loss-weight are resolved for a run."""
    if not args.teacher:
        return None
    gamma, alpha = resolve_loss_weights(args)
    size = tuple(args.teacher_input_size) if args.teacher_input_size else None  # resolved by build_teacher
    return DistillSetup(method=args.distill, method_kwargs=METHODS[args.distill].kwargs_from_args(args),
                        view_loss=args.view_loss, temperature=args.kd_temperature, task_loss_weight=gamma,
                        distill_loss_weight=alpha, mixed_kd_weight=args.mixed_kd_weight, teacher_input_size=size)


def create_task(args: argparse.Namespace, dc: DataConfig, student, teacher, device, train_ds=None,
                distill: Optional[DistillSetup] = None) -> Tuple[Any, Any]:
    """(task, timm Mixup or None): DistillationTask with a teacher (from ``distill``, by default the flags'), timm's
    ClassificationTask without."""
    from timm.data import Mixup
    timm_mix = args.mixup > 0 or args.cutmix > 0 or (args.cutmix_minmax is not None and not kd_view_modes(args))
    mixup_fn = None
    if timm_mix:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=dc.num_classes)
    criterion_kwargs = dict(smoothing=args.smoothing, soft_targets=timm_mix)
    if teacher is None:
        from timm.task import ClassificationTask
        return ClassificationTask(student, criterion_kwargs=criterion_kwargs, device=device, verbose=False), mixup_fn
    distill = distill or distill_setup(args)
    try:
        task = timm_kd.DistillationTask(
            student, teacher, mixup=create_mixer(args, dc), method=distill.method,
            method_kwargs=_method_kwargs(distill, args.dataset, train_ds), view_loss=distill.view_loss,
            temperature=distill.temperature, task_loss_weight=distill.task_loss_weight,
            distill_loss_weight=distill.distill_loss_weight, mixed_kd_weight=distill.mixed_kd_weight,
            criterion_kwargs=criterion_kwargs, teacher_input_size=distill.teacher_input_size, device=device)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return task, mixup_fn


def _method_kwargs(distill: DistillSetup, dataset: str, train_ds) -> Dict[str, Any]:
    """The hyper-parameters of the method: its flags', and for a method with a row per training sample (CRD's
    memory bank) the size of the training set, whose loader then yields sample indices."""
    kwargs = dict(distill.method_kwargs)
    if METHODS[distill.method].needs_index:
        if isinstance(train_ds, torch.utils.data.IterableDataset) or not hasattr(train_ds, '__len__'):
            raise UsageError(f'--distill {distill.method} keeps one memory row per training sample and needs sample '
                             f'indices, which the stream {dataset!r} does not have: use a map-style dataset.')
        kwargs['num_samples'] = len(train_ds)
    return kwargs


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
