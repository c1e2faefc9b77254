"""The values of ``train_kd.py``'s flags: config layering, resume rules, ranges and validation.

The flags themselves (names, defaults, choices, help) are ``timm_kd.train.parser``, whose names are
importable from here too. Exact paper recipes come from ``--config configs/<recipe>.yaml``. Values are
layered, later wins:
parser defaults < the resumed run's ``args.yaml`` (``--resume``) < ``--config`` file < command line.

``validate_args`` checks everything that can be checked without building a model or reading data, so
a wrong flag fails in a second with one sentence, before any long work starts.
"""
import argparse
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm_kd.data.pick import PICK_CRITERIA
from timm_kd.data.views import resolve_view, sample_view_names
from timm_kd.distill.methods import METHODS, method_arg_ranges
from timm_kd.distill.resolution import MIN_IMAGE_SIZE, image_size
from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import read_yaml_mapping
from timm_kd.utils.ranges import NON_NEGATIVE, FlagRange, in_range, range_text
from .parser import (  # noqa: F401 - the parser's names, importable from here as they always were
    LARGE_INPUT_AUG_FLAGS, METHOD_FLAG_DESTS, PEER_REPORT_DELAY, PICK_CHOICES, SCHEDULERS, STD_AUG_MODES,
    TIMM_DISTILL_TYPES, ParseKwargs, build_parser, is_main_process_env, report_error)

__all__ = [
    'UsageError', 'is_main_process_env', 'report_error', 'build_parser', 'parse_args', 'run_args_of', 'validate_args',
    'kd_view_modes', 'resolve_loss_weights', 'tl_aug_on', 'resume_flag_changes', 'run_defining_changes',
    'check_numbers', 'RESUME_SCHEDULE_FLAGS', 'RESUME_RUN_FLAGS', 'load_flag_file', 'STD_AUG_MODES', 'PICK_CHOICES',
    'SCHEDULERS', 'LARGE_INPUT_AUG_FLAGS', 'TIMM_DISTILL_TYPES',
]

# Flags that may differ from the run's own on --resume (docs/training.md). Schedule flags apply from the resumed
# position on (the lr schedule is rebuilt there); run flags change how the run is carried out and recorded, not
# what it computes. Every other flag would change the model, the data or the step and is refused.
RESUME_SCHEDULE_FLAGS = (
    'epochs', 'epoch_scale', 'lr', 'min_lr', 'sched', 'sched_on_updates', 'decay_milestones', 'decay_epochs',
    'decay_rate', 'warmup_epochs', 'warmup_lr', 'warmup_prefix', 'cooldown_epochs', 'lr_cycle_mul',
    'lr_cycle_decay', 'lr_cycle_limit', 'lr_k_decay', 'lr_noise', 'lr_noise_pct', 'lr_noise_std')
RESUME_RUN_FLAGS = (
    'config', 'resume', 'no_resume_opt', 'data_dir', 'dataset_download', 'workers', 'pin_mem', 'log_interval',
    'checkpoint_every', 'checkpoint_hist', 'output', 'experiment', 'push_to_hub', 'hub_private',
    'validation_batch_size', 'torchcompile')


# Allowed values of numeric flags: dest -> (low, high, low_open, high_open); None = unbounded. Every float flag must
# also be finite, and an int flag not listed here must be >= 0.
_RANGES: Dict[str, FlagRange] = {
    **{k: (1, None, False, False) for k in (
        'batch_size', 'validation_batch_size', 'epochs', 'train_num_samples', 'val_num_samples', 'log_interval',
        'lr_base_size', 'lr_cycle_limit', 'pick_candidates', 'in_chans')},
    'teacher_input_size': (MIN_IMAGE_SIZE, None, False, False),
    'num_classes': (2, None, False, False),
    'img_size': (8, None, False, False),  # the smallest recipe (sklearn/digits, 8x8)
    'input_size': (1, None, False, False),
    'cutout': (-1, None, False, False),  # -1: the flag without a value (the mixer's default hole)
    **{k: (0, None, False, False) for k in (
        'lr', 'min_lr', 'warmup_lr', 'weight_decay', 'lr_noise', 'lr_noise_pct', 'lr_noise_std', 'color_jitter',
        'mixup', 'cutmix', 'tl_mixup', 'tl_cutmix', 'cutmix_hard', 'kd_alpha', 'distill_loss_weight',
        'task_loss_weight', 'mixed_kd_weight')},
    **{k: (0, None, True, False) for k in (
        'lr_base', 'decay_rate', 'decay_epochs', 'epoch_scale', 'lr_cycle_mul', 'lr_cycle_decay', 'lr_k_decay',
        'clip_grad', 'layer_decay', 'opt_eps', 'std', 'ratio', 'kd_temperature')},
    **{k: (0, 1, False, False) for k in (
        'momentum', 'hflip', 'vflip', 'reprob', 'mixup_prob', 'mixup_switch_prob', 'model_ema_decay')},
    **{k: (0, 1, False, True) for k in ('drop', 'drop_path', 'smoothing', 'opt_betas')},
    **{k: (0, 1, True, False) for k in ('crop_pct', 'scale', 'cutmix_minmax', 'pick_ratio', 'mix_fraction')},
}


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every numeric flag finite and in its range (``_RANGES``, the methods' ``arg_ranges``; other int flags >= 0).
    Raises UsageError."""
    ranges = {**_RANGES, **method_arg_ranges()}
    for a in parser._actions:
        value = getattr(args, a.dest, None)
        if a.type not in (int, float) or value is None:
            continue
        allowed = ranges.get(a.dest, NON_NEGATIVE if a.type is int else (None, None, False, False))
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if not in_range(v, allowed):
                raise UsageError(f'{a.option_strings[-1]} must be {range_text(allowed)}, got {v:g}.')


def _check_config_value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """A --config value as the command line would have accepted it (argparse only type-converts string
    defaults): lists for nargs flags (a scalar becomes a one-element list), numbers of the flag's type,
    choices, booleans for switches. Raises UsageError naming the key."""
    where = f'Config file {path!r}: {key}: {value!r}'
    if value is None:
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            raise UsageError(f'{where} must be a mapping of keyword arguments.')
        return value
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise UsageError(f'{where} must be true or false.')
        return value
    many = action.nargs in ('+', '*') or isinstance(action.nargs, int)
    items = list(value) if many and isinstance(value, (list, tuple)) else [value]
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise UsageError(f'{where} needs {action.nargs} values.')
    if not many and isinstance(value, (list, tuple, dict)):
        raise UsageError(f'{where} must be a single value, not a list.')
    out = []
    for v in items:
        if action.type in (int, float):
            if isinstance(v, str):
                try:
                    v = action.type(v)
                except ValueError:
                    raise UsageError(f'{where} is not a valid {action.type.__name__}.') from None
            ok = isinstance(v, int) and not isinstance(v, bool) or (action.type is float and isinstance(v, float))
            if not ok:
                raise UsageError(f'{where} must be {"an integer" if action.type is int else "a number"}.')
            v = action.type(v)
        elif action.type in (None, str) and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)  # e.g. `experiment: 2024`
        if action.choices is not None and v not in action.choices:
            raise UsageError(f'{where} is not one of {list(action.choices)}.')
        out.append(v)
    return out if many else out[0]


def load_flag_file(path: str, what: str) -> Dict[str, Any]:
    """A YAML mapping of flag names to values (a --config file, a run's args.yaml), read only from a regular file and
    not through a link (``read_yaml_mapping``: a FIFO never blocks, size and nesting are bounded); ``what`` names it
    in the one-sentence UsageError for a file that cannot be read or holds no mapping."""
    return read_yaml_mapping(path, what, 'a mapping of flag names to values')


def run_args_of(resume: str) -> Dict[str, Any]:
    """The args.yaml of the run a --resume path belongs to ({} when there is none)."""
    d = resume if os.path.isdir(resume) else os.path.dirname(os.path.abspath(resume))
    f = os.path.join(d, 'args.yaml')
    return load_flag_file(f, 'The run arguments') if os.path.lexists(f) else {}


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """Parse ``argv`` with layered defaults. Returns (args, explicit) with ``explicit`` the flags given on the
    command line or in --config (used to tell user choices from defaults, e.g. for lr / resume checks)."""
    parser = build_parser()
    known = {a.dest for a in parser._actions}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    pre.add_argument('--resume', default='')
    first, _ = pre.parse_known_args(argv)

    defaults: Dict[str, Any] = {}
    run_cfg: Dict[str, Any] = {}
    if first.resume and os.path.exists(first.resume):
        run_cfg = run_args_of(first.resume)
        defaults.update({k: v for k, v in run_cfg.items() if k in known and k not in ('config', 'resume')})
    cfg: Dict[str, Any] = {}
    if first.config:
        # a --config is the user's own file: a link they made to it is followed (a run's files never are)
        cfg = load_flag_file(os.path.realpath(first.config) if os.path.islink(first.config) else first.config,
                             'Config file')
        # a run's args.yaml replays as a config: its own config / resume entries must not chain or resume
        cfg = {k: v for k, v in cfg.items() if k not in ('config', 'resume')}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UsageError(f'Config file {first.config!r} has unknown keys {unknown}: keys are flag names with '
                             f'"_" for "-" (e.g. decay_milestones).')
        actions = {a.dest: a for a in parser._actions}
        cfg = {k: _check_config_value(actions[k], k, v, first.config) for k, v in cfg.items()}
        defaults.update(cfg)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)

    # Which dests did the user choose (config or command line), as opposed to parser defaults?
    blank = build_parser()
    blank.set_defaults(**{a.dest: _Unset for a in blank._actions if a.dest != 'help'})
    given = {k for k, v in vars(blank.parse_args(argv)).items() if v is not _Unset}
    # a run's args.yaml is rewritten when a resume starts, its checkpoints only later: schedule flags recorded there
    # (e.g. --epochs of a resume that met a full disk before its first checkpoint) still apply as if given again
    pending = {k for k in RESUME_SCHEDULE_FLAGS if k in run_cfg}
    explicit = {k: getattr(args, k) for k in given | set(cfg) | pending}
    _fold_timm_names(args, explicit)
    if args.teacher_input_size is not None:  # one spelling of a size: [H, W]
        size = args.teacher_input_size
        try:
            if not isinstance(size, list) or len(size) > 2:
                raise ValueError(f'--teacher-input-size takes N or H W, got {size!r}.')
            args.teacher_input_size = list(image_size(size, '--teacher-input-size'))
        except ValueError as e:
            raise UsageError(str(e)) from e
        if 'teacher_input_size' in explicit:
            explicit['teacher_input_size'] = args.teacher_input_size
    return args, explicit


def _fold_timm_names(args: argparse.Namespace, explicit: Dict[str, Any]) -> None:
    """timm's --kd-model-name / --kd-distill-type and our --teacher / --distill are one setting each, spelt two
    ways: the one given (command line or --config) sets both, so args.yaml and resume see one value; both given
    and different is one sentence."""
    to_timm = {v: k for k, v in TIMM_DISTILL_TYPES.items()}
    for timm_dest, ours, what, ours_of, timm_of in (
            ('kd_model_name', 'teacher', 'teachers', lambda v: v, lambda v: v),
            ('kd_distill_type', 'distill', 'methods', TIMM_DISTILL_TYPES.get, to_timm.get)):
        timm_value = explicit.get(timm_dest)
        if timm_value is not None:
            if explicit.get(ours) is not None and ours_of(timm_value) != explicit[ours]:
                timm_flag, our_flag = (f'--{d.replace("_", "-")}' for d in (timm_dest, ours))
                raise UsageError(f'{timm_flag} {timm_value} (timm\'s name for {our_flag} {ours_of(timm_value)}) and '
                                 f'{our_flag} {explicit[ours]} name two different {what}: give one.')
            setattr(args, ours, ours_of(timm_value))
        value = getattr(args, ours)
        setattr(args, timm_dest, None if value is None else timm_of(value))
        if timm_dest in explicit or ours in explicit:
            explicit.update({timm_dest: getattr(args, timm_dest), ours: value})


class _Unset:
    """Sentinel default: marks flags absent from the command line."""


def _same(a: Any, b: Any) -> bool:
    norm = (lambda v: list(v) if isinstance(v, tuple) else v)
    return norm(a) == norm(b)


def resume_flag_changes(args: argparse.Namespace, explicit: Dict[str, Any], saved: Dict[str, Any]) -> List[str]:
    """Reconcile ``args`` with the resumed run's ``saved`` flags (its checkpoint's): flags not given take the
    run's values; given schedule flags that differ are applied and returned (as ``--flag value (was old)``);
    any other given flag that differs raises UsageError listing them."""
    changed = sorted(k for k in explicit
                     if k in saved and k not in RESUME_RUN_FLAGS and not _same(explicit[k], saved[k]))
    refused = [k for k in changed if k not in RESUME_SCHEDULE_FLAGS]
    if 'plateau' in (args.sched, saved.get('sched')):
        refused = changed  # the plateau schedule keeps state of its own that a new schedule would lose
    if refused:
        flags = ', '.join(f'--{k.replace("_", "-")} {explicit[k]} (run: {saved[k]})' for k in refused)
        raise UsageError(f'--resume continues a run with its own settings; {flags} would change what it trains: drop '
                         f'{"it" if len(refused) == 1 else "them"}, or start a new run from its weights with '
                         f'--initial-checkpoint.')
    for k, v in saved.items():
        if hasattr(args, k) and k not in explicit and k not in RESUME_RUN_FLAGS:
            setattr(args, k, v)
    return [f'--{k.replace("_", "-")} {explicit[k]} (was {saved[k]})' for k in changed]


def run_defining_changes(run: Dict[str, Any], other: Dict[str, Any]) -> List[str]:
    """The flags that define what a run trains (all but the schedule and run flags) whose values differ between the
    flag records of a run and of ``other``, as ``--flag other-value (run: value)``; a flag only one record has (added
    by a later timm-kd) is left out."""
    keys = sorted(k for k in set(run) & set(other)
                  if k not in RESUME_SCHEDULE_FLAGS + RESUME_RUN_FLAGS and not _same(run[k], other[k]))
    return [f'--{k.replace("_", "-")} {other[k]} (run: {run[k]})' for k in keys]


def kd_view_modes(args: argparse.Namespace) -> List[str]:
    """The extra-view generators switched on (KD group): names of the flags as given by the user."""
    return [f for f, v in (('--tl-mixup', args.tl_mixup), ('--tl-cutmix', args.tl_cutmix),
                           ('--cutmix-hard', args.cutmix_hard), ('--cutout', args.cutout)) if v]


def tl_aug_on(args: argparse.Namespace) -> bool:
    """A per-sample teacher-labelled view (--tl-aug) is asked for."""
    return getattr(args, 'tl_aug', None) not in (None, '', 'none')


def _validate_tl_aug(args: argparse.Namespace) -> None:
    """--tl-aug names a per-sample view of the VIEWS table (the image-size check comes with the data)."""
    if not tl_aug_on(args):
        return
    try:
        view, _ = resolve_view(args.tl_aug)
    except ValueError as e:
        raise UsageError(f'--tl-aug: {e}') from e
    if view.kind != 'sample':
        raise UsageError(f'--tl-aug {args.tl_aug} is a mixing view, made with {" ".join(view.train_flags)}; '
                         f'--tl-aug takes a per-sample view ({", ".join(sample_view_names())}).')
    if not args.teacher:
        raise UsageError('--tl-aug needs a teacher: add --teacher MODEL (and --teacher-checkpoint PATH).')
    if args.mixup > 0 or args.cutmix > 0:
        raise UsageError("--tl-aug adds a view next to the original batch; timm's --mixup/--cutmix mix the batch "
                         'itself: use one or the other.')


def resolve_loss_weights(args: argparse.Namespace) -> Tuple[float, float]:
    """(task CE weight gamma, logit-term weight alpha) from --kd-alpha / --distill-loss-weight /
    --task-loss-weight. Nothing given: the published weights of --distill (KD: the paper's 0.1 / 0.9).

    Where the method's published weights sum to 1 (KD: loss = (1 − α) CE + α KL), or the method follows timm's
    rule (``complementary_weights``: timm's feature and token distillation), a single weight sets the other as
    1 − it; otherwise the other keeps the method's published value."""
    cls = METHODS[args.distill]
    gamma0, alpha0 = cls.default_loss_weights(args)
    complementary = cls.complementary_weights if cls.complementary_weights is not None else \
        math.isclose(gamma0 + alpha0, 1.0)
    if args.kd_alpha is not None:
        alpha = args.kd_alpha
        gamma = args.task_loss_weight if args.task_loss_weight is not None else (
            1.0 - alpha if complementary else gamma0)
    elif args.distill_loss_weight is not None:  # timm: independent weights, CE weight defaults to 1
        alpha = args.distill_loss_weight
        gamma = args.task_loss_weight if args.task_loss_weight is not None else 1.0
    elif args.task_loss_weight is not None:  # timm: complementary
        gamma = args.task_loss_weight
        alpha = 1.0 - gamma if complementary else alpha0
    else:
        gamma, alpha = gamma0, alpha0
    return gamma, alpha


def _check_loss_weights(args: argparse.Namespace) -> None:
    """The resolved loss weights must both be >= 0: a single weight flag sets the other as 1 - it for methods whose
    published weights sum to 1 (KD), so e.g. --kd-alpha 5 would give the cross-entropy the weight -4."""
    gamma, alpha = resolve_loss_weights(args)
    if gamma >= 0 and alpha >= 0:
        return
    flag, value = next((f, v) for f, v in (('--kd-alpha', args.kd_alpha), ('--task-loss-weight', args.task_loss_weight),
                                           ('--distill-loss-weight', args.distill_loss_weight)) if v is not None)
    term = 'cross-entropy' if gamma < 0 else 'distillation'
    raise UsageError(f'{flag} {value:g} gives the {term} term the weight {min(gamma, alpha):g}: with --distill '
                     f'{args.distill} one weight sets the other as 1 - it, so keep it in [0, 1], or give both '
                     f'--task-loss-weight and --distill-loss-weight.')


def _validate_method(args: argparse.Namespace, explicit: Dict[str, Any], views: List[str], timm_mix: bool) -> None:
    """--distill, --view-loss, --logit-std and the methods' own flags."""
    cls = METHODS[args.distill]
    defaults = build_parser().parse_args([])
    for name, dests in METHOD_FLAG_DESTS.items():
        stray = sorted(d for d in dests & set(explicit) if name != args.distill and explicit[d] != getattr(defaults, d))
        if stray:
            raise UsageError(f'--{stray[0].replace("_", "-")} is a flag of --distill {name}, not of '
                             f'--distill {args.distill}.')
    if args.view_loss == 'method':
        if not cls.logit_method:
            raise UsageError(f'--view-loss method applies a logit method\'s loss to the views; --distill '
                             f'{args.distill} is not a logit method: use --view-loss kl.')
        aug_views = getattr(args, 'tl_aug', None) not in (None, '', 'none')  # the loader's second view (--tl-aug)
        if not aug_views and (not views or '--cutmix-hard' in views):
            raise UsageError('--view-loss method needs teacher-labelled views: add --tl-cutmix, --tl-mixup or --cutout.')
    if args.logit_std and not getattr(cls, 'supports_logit_std', False):
        supported = sorted(n for n, c in METHODS.items() if getattr(c, 'supports_logit_std', False))
        raise UsageError(f'--logit-std works with --distill {" / ".join(supported)}, not {args.distill}.')
    if args.logit_std_temp <= 0:
        raise UsageError(f'--logit-std-temp must be > 0, got {args.logit_std_temp}.')
    if cls.needs_class_target and timm_mix:
        raise UsageError(f'--distill {args.distill} needs the class labels of the batch; timm\'s --mixup/--cutmix '
                         f'replace them with soft labels: use --tl-cutmix / --tl-mixup instead.')


_MAX_NAME_BYTES = 200  # a file name component is at most 255 bytes on common file systems; room for "-N"


def _check_paths(args: argparse.Namespace) -> None:
    """Files and folders named by flags: the output root, the run name, the class map, the compile backend."""
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f'--output {args.output!r} is a file, not a folder: pass a folder for the runs.')
    name = args.experiment
    if name and (name in ('.', '..') or '/' in name or os.sep in name or '\0' in name
                 or len(name.encode('utf-8', 'surrogatepass')) > _MAX_NAME_BYTES):
        raise UsageError(f'--experiment must be a plain folder name (no "/", not "." or "..", at most '
                         f'{_MAX_NAME_BYTES} bytes), got {name!r}.' if len(name) <= 60 else
                         f'--experiment must be a plain folder name of at most {_MAX_NAME_BYTES} bytes, got '
                         f'{len(name.encode("utf-8", "surrogatepass"))} bytes.')
    if args.class_map and not (os.path.isfile(args.class_map)
                               or args.data_dir and os.path.isfile(os.path.join(args.data_dir, args.class_map))):
        # timm reads a class map as given, else under the dataset root
        raise UsageError(f'--class-map {args.class_map!r} is not a file' +
                         (f' (nor is it one in --data-dir {args.data_dir!r}).' if args.data_dir else '.'))
    if args.torchcompile:
        import torch._dynamo
        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.torchcompile not in backends:
            raise UsageError(f'--torchcompile {args.torchcompile!r} is not a torch.compile backend: use one of '
                             f'{", ".join(b for b in backends if "TESTING" not in b)}.')


def validate_args(args: argparse.Namespace, explicit: Optional[Dict[str, Any]] = None) -> None:
    """Flag checks that need no model and no data. Raises UsageError with one sentence."""
    import timm
    explicit = explicit or {}

    def need(cond: bool, msg: str):
        if not cond:
            raise UsageError(msg)

    def known_model(name: str) -> bool:
        return name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')) or timm.is_model(name)

    need(known_model(args.model), f'Unknown model {args.model!r}: use a name from timm.list_models() '
                                  f'(import timm_kd registers the CIFAR models, e.g. resnet8x4) or hf-hub:org/repo.')
    if args.teacher:
        need(known_model(args.teacher), f'Unknown teacher {args.teacher!r}: use a name from timm.list_models(), '
                                        f'hf-hub:org/repo or local-dir:PATH.')
    from timm.optim import list_optimizers
    opt = args.opt.lower()
    opt = opt[len('lookahead_'):] if opt.startswith('lookahead_') else opt
    need(opt in list_optimizers(), f'Unknown optimizer --opt {args.opt!r}: see timm.optim.list_optimizers() '
                                   f'(sgd = Nesterov SGD, momentum = classic SGD).')
    check_numbers(build_parser(), args)
    need(int(args.epochs * args.epoch_scale) >= 1, '--epochs x --epoch-scale must leave at least one epoch.')
    if args.input_size:
        need(args.input_size[1] >= _RANGES['img_size'][0], f'--input-size H W must be >= {_RANGES["img_size"][0]} px, '
                                                          f'got {args.input_size[1]}.')
    _check_paths(args)
    if args.sched in ('multistep', 'multistep_torch'):
        m = list(args.decay_milestones)
        need(all(a < b for a, b in zip(m, m[1:])), f'--decay-milestones must be increasing, got {m}.')
    need(args.mixup_mode in ('batch', 'pair', 'elem'), '--mixup-mode must be batch, pair or elem.')
    if args.resume:
        need(os.path.exists(args.resume), f'--resume {args.resume!r} does not exist: pass a checkpoint file '
                                          f'(last.pth.tar, recovery.pth.tar) or a run directory.')
    if args.initial_checkpoint:
        need(os.path.isfile(args.initial_checkpoint), f'--initial-checkpoint {args.initial_checkpoint!r} is not a file.')
    if args.teacher_checkpoint and not args.teacher_checkpoint.startswith('hf-hub:'):
        need(os.path.exists(args.teacher_checkpoint),
             f'--teacher-checkpoint {args.teacher_checkpoint!r} does not exist.')
    need(args.teacher or not args.teacher_checkpoint, '--teacher-checkpoint needs --teacher (the architecture).')

    _validate_tl_aug(args)
    views = kd_view_modes(args)
    # --cutmix-minmax shapes the boxes of --tl-cutmix / --cutmix-hard when those are on, else timm's batch CutMix
    timm_mix = args.mixup > 0 or args.cutmix > 0 or (args.cutmix_minmax is not None and not views)
    kd_only = views + [f for f, on in (
        (f'--pick {args.pick}', args.pick != 'none'),
        ('--mix-fraction', args.mix_fraction != 1.0),
        ('--kd-alpha', args.kd_alpha is not None),
        ('--distill-loss-weight', args.distill_loss_weight is not None),
        ('--task-loss-weight', args.task_loss_weight is not None),
        ('--mixed-kd-weight', args.mixed_kd_weight != 1.0),
        (f'--distill {args.distill}', args.distill != 'kd'),
        ('--view-loss method', args.view_loss != 'kl'),
        ('--teacher-input-size', args.teacher_input_size is not None),
        ('--logit-std', args.logit_std)) if on]
    if not args.teacher and kd_only:
        raise UsageError(f'{kd_only[0]} needs a teacher: add --teacher MODEL (and --teacher-checkpoint PATH).')
    if args.teacher:
        _check_loss_weights(args)
    if '--cutmix-hard' in views and len(views) > 1:
        raise UsageError(f'--cutmix-hard is the hard-label CutMix baseline and cannot be combined with '
                         f'{[v for v in views if v != "--cutmix-hard"][0]}: choose one view mode.')
    if '--cutout' in views and len(views) > 1:
        raise UsageError(f'--cutout is a view mode of its own and cannot be combined with '
                         f'{[v for v in views if v != "--cutout"][0]}: choose one view mode.')
    if views and timm_mix:
        raise UsageError(f'{views[0]} adds a mixed view next to the original batch; timm\'s --mixup/--cutmix mix '
                         f'the batch itself: use one or the other.')
    if args.pick != 'none':
        need(bool(views), f'--pick {args.pick} needs a mixing mode to pick from: add --tl-cutmix (paper), '
                          f'--tl-mixup or --cutout.')
        need('--cutmix-hard' not in views, f'--pick scores teacher-labelled views; --cutmix-hard trains on hard '
                                           f'labels: use --tl-cutmix --pick {args.pick}.')
    else:
        for flag, dest, default in (('--pick-candidates', 'pick_candidates', 2), ('--pick-ratio', 'pick_ratio', 0.5)):
            if dest in explicit and explicit[dest] != default:
                raise UsageError(f'{flag} has no effect without --pick: add --pick NAME ({" / ".join(PICK_CRITERIA)}).')
    if args.mix_fraction != 1.0:
        need(bool(views), '--mix-fraction needs a mixing mode: add --tl-mixup or --tl-cutmix.')
    if args.kd_alpha is not None and args.distill_loss_weight is not None:
        raise UsageError('--kd-alpha and --distill-loss-weight both set the KL weight: give only one.')
    if timm_mix:
        # timm's Mixup pairs sample i with B-1-i and asserts an even batch.
        need(args.batch_size % 2 == 0, f'--mixup/--cutmix pair sample i with B-1-i and need an even --batch-size, '
                                       f'got {args.batch_size}.')
    if views:
        need(args.batch_size >= 2, f'{views[0]} pairs images within a batch and needs --batch-size >= 2.')
        if args.mix_pairing == 'flip' or args.mixup_mode == 'pair':
            why = '--mix-pairing flip pairs sample i with B-1-i' if args.mix_pairing == 'flip' else \
                '--mixup-mode pair mixes images two by two'
            need(args.batch_size % 2 == 0, f'{why} and needs an even --batch-size, got {args.batch_size}.')
        if args.cutmix_minmax is not None:
            need(args.tl_cutmix or args.cutmix_hard, '--cutmix-minmax shapes CutMix boxes: use it with --tl-cutmix '
                                                     'or --cutmix-hard.')
    _validate_method(args, explicit, views, timm_mix)
    if args.amp_dtype not in ('float16', 'bfloat16'):
        raise UsageError(f'--amp-dtype must be float16 or bfloat16, got {args.amp_dtype!r}.')
    if args.amp and args.amp_dtype == 'float16':
        import torch
        # the device main() gives accelerate; accelerate's CPU "fp16" would silently train in float32 (docs/training.md)
        need(torch.cuda.is_available(), '--amp with --amp-dtype float16 (the default) needs a CUDA GPU: on a CPU '
                                         'accelerate trains in float32 and the run would record fp16, so use '
                                         '--amp-dtype bfloat16 (CPU autocast) or leave out --amp.')
    from timm_kd.hub.io import check_repo_id  # the Hub's own id rules, checked before training, not after
    for flag, repo_id, owner in (('--push-to-hub', args.push_to_hub, True), ('--dataset-id', args.dataset_id, False)):
        if repo_id is not None:
            try:
                check_repo_id(repo_id, what=flag, owner=owner)
            except ValueError as e:
                raise UsageError(str(e)) from e
