"""What a ``train_kd`` checkpoint holds (``TrainState``), how it is captured, verified, found and restored.

A checkpoint file is ``torch.save`` of ``TrainState.to_dict()``: a plain dict of tensors and Python values
(timm's ``arch`` / ``state_dict`` / ``epoch`` / ``metric`` keys first, so ``timm.create_model(...,
checkpoint_path=...)`` reads it), loadable with ``weights_only=True`` (nothing in it unpickles code). It
carries ``version`` (``CHECKPOINT_VERSION``) and ``content_sha256``, a SHA-256 over every other value in it,
``version`` included (tensor dtype, shape and bytes; Python values by type and repr): a bit flip anywhere in the
tensor data or the values is detected on load, and a file that carries a checksum is checked whatever its version
says. Readers refuse versions they do not know, with one sentence.

A checkpoint is *healthy* when its weights are finite and not exploded: the weight norm (``weight_norm``) at most
``EXPLOSION_FACTOR`` times that of the run's last good state (the weights the epoch started from, recorded in the
checkpoint as ``reference_norm``). A huge lr can blow the weights up by orders of magnitude while they stay finite
for a few steps; such a state is never written (``TrainState.capture`` refuses it) and never resumed from. A
checkpoint carries the id of the run that wrote it (``run_id``, recorded in the run folder's ``RUN_ID_FILE`` when the
run is created): a resume takes only checkpoints of the folder's own run.

Resuming a run folder picks the most advanced checkpoint (by ``next_epoch, next_step``) among
``recovery.pth.tar``, ``last.pth.tar``, ``checkpoint-<epoch>.pth.tar`` and ``model_best.pth.tar`` that
verifies, is healthy and belongs to the folder's run, and says in one line which ones it skipped and why.
"""
import glob
import hashlib
import logging
import math
import os
import random
import re
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from timm.models import clean_state_dict
from timm.utils import unwrap_model

from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import FileReadError, atomic_copy, atomic_save, atomic_write_text, open_regular, read_text
from timm_kd.utils.messages import first_line
from .args import run_defining_changes
from .build import DataConfig, load_weights
from .loop import EpochMeters, NonFiniteLossError

__all__ = ['CHECKPOINT_VERSION', 'EXPLOSION_FACTOR', 'RUN_ID_FILE', 'CheckpointError', 'TrainState', 'LiveRun',
           'Training', 'RunIdentity', 'content_sha256', 'non_finite_tensors', 'weight_norm', 'load_checkpoint',
           'find_resume_checkpoint', 'checkpoint_candidates', 'read_run_id', 'record_run_id', 'new_run_id',
           'capture_rng_state', 'restore_rng_state']

_logger = logging.getLogger('train_kd')

# 1: the first format (no checksum, no distiller entry). 2: adds content_sha256 and distiller. 3: adds run_id and
# reference_norm (the identity and health of a checkpoint).
CHECKPOINT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
# A state whose weight norm grew beyond this factor of the norm the epoch started from has exploded. Measured: resnet8
# at --lr 2 (high, yet it trains) grows 2.7x in its first epoch; at --lr 1e6 the first update gives 1e5x.
EXPLOSION_FACTOR = 100.0
RECOVERY, LAST, BEST = 'recovery.pth.tar', 'last.pth.tar', 'model_best.pth.tar'
RUN_ID_FILE = '.timm-kd-run'  # the id of the run a folder holds
_RUN_ID = re.compile(r'[0-9a-f]{32}')


class CheckpointError(ValueError):
    """A file that cannot be resumed from; the message says why in one clause."""


def _digest(h, value: Any) -> None:
    """Feed ``value`` into hash ``h``: containers in order, tensors by dtype, shape and bytes."""
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f'T{t.dtype}{tuple(t.shape)}'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f'D{len(value)}'.encode())
        for k, v in value.items():
            _digest(h, k)
            _digest(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f'{type(value).__name__[0]}{len(value)}'.encode())
        for v in value:
            _digest(h, v)
    else:
        h.update(f'{type(value).__name__}:{value!r};'.encode())


def content_sha256(d: Dict[str, Any]) -> str:
    """SHA-256 of a checkpoint dict's content (without its own ``content_sha256`` entry)."""
    h = hashlib.sha256()
    _digest(h, {k: v for k, v in d.items() if k != 'content_sha256'})
    return h.hexdigest()


def non_finite_tensors(*state_dicts: Optional[Dict[str, Any]]) -> List[str]:
    """Names of the floating-point tensors holding NaN or inf in the given state dicts."""
    return [k for sd in state_dicts if sd for k, v in sd.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


_RUNNING_STATS = ('running_mean', 'running_var')


def weight_norm(state_dict: Dict[str, Any]) -> float:
    """L2 norm of a model's weights: its floating-point tensors but the BatchNorm running statistics, which follow the
    scale of the activations rather than the optimizer's steps (they grow 100x in a healthy first epoch)."""
    return math.sqrt(sum(float(v.detach().double().pow(2).sum()) for k, v in state_dict.items()
                         if torch.is_tensor(v) and v.is_floating_point() and not k.endswith(_RUNNING_STATS)))


def explosion(norm: float, reference: Optional[float]) -> Optional[str]:
    """Why weights of ``norm`` have exploded relative to the ``reference`` norm of the run's last good state (at
    least 1, for a start from tiny weights), or None when they have not (or there is no reference)."""
    if reference is None or norm <= EXPLOSION_FACTOR * max(reference, 1.0):
        return None
    return (f'their norm {norm:.3g} is {norm / max(reference, 1.0):.3g} times the {reference:.3g} of the last good '
            f'state, more than {EXPLOSION_FACTOR:g} times')


@dataclass
class TrainState:
    """Everything a resumed run needs to continue bit for bit, and what a checkpoint file holds."""
    arch: str                                   # student model name (timm key)
    args: Dict[str, Any]                        # the run's flags (as in args.yaml)
    epoch: int                                  # epoch the state was taken in (timm key)
    metric: Optional[float]                     # eval metric of that epoch; None mid-epoch (timm key)
    state_dict: Dict[str, torch.Tensor]         # student weights (timm key)
    next_epoch: int                             # where training continues ...
    next_step: int                              # ... (next_step > 0: inside next_epoch)
    optimizer: Dict[str, Any]
    scheduler: Optional[Dict[str, Any]]
    scaler: Optional[Dict[str, Any]]            # AMP grad scaler
    world_size: int                             # processes that wrote it
    rank_states: List[Dict[str, Any]]           # per process: RNG states, epoch meters, buffers (world > 1)
    num_classes: int
    data_config: Dict[str, Any]                 # input size, mean, std, ... (for export)
    best: Dict[str, Any]                        # best eval so far: metric, epoch, top1, top5
    last: Dict[str, Any]                        # last finished epoch's eval: epoch, top1, top5
    teacher_metrics: Optional[Dict[str, float]]  # teacher eval before training (not measured again)
    checkpoint_hist: List[List]                 # [epoch, metric] of the kept checkpoint-<epoch> files
    state_dict_ema: Optional[Dict[str, torch.Tensor]] = None  # --model-ema (timm key)
    distiller: Optional[Dict[str, torch.Tensor]] = None       # task.distiller state (params + buffers)
    run_id: Optional[str] = None                # the run that wrote it (None: written before version 3)
    reference_norm: Optional[float] = None      # weight norm of the run's last good state when it was taken
    version: int = CHECKPOINT_VERSION

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d['content_sha256'] = content_sha256(d)
        return d

    @classmethod
    def from_dict(cls, d: Any, path: str = 'the checkpoint') -> 'TrainState':
        """Check version, checksum and keys of a loaded checkpoint dict. Raises CheckpointError."""
        if not isinstance(d, dict) or 'state_dict' not in d:
            raise CheckpointError(f'{path} is not a train_kd checkpoint (no state_dict)')
        version = d.get('version', 1)
        if version not in _READABLE_VERSIONS:
            raise CheckpointError(f'{path} has checkpoint format version {version!r}, which this timm-kd does not '
                                  f'know (it reads versions {list(_READABLE_VERSIONS)}): use the timm-kd that '
                                  f'wrote it')
        # the checksum covers the version: a damaged version byte cannot pass the file off as one without a checksum
        if (version >= 2 or 'content_sha256' in d) and d.get('content_sha256') != content_sha256(d):
            raise CheckpointError(f'{path} fails its checksum (the file is damaged)')
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is not None
                   and f.name not in ('version', 'distiller')]
        if missing:
            raise CheckpointError(f'{path} lacks the train_kd entries {missing[:4]}')
        return cls(**{k: v for k, v in d.items() if k in known})

    def problem(self) -> Optional[str]:
        """Why this state is not healthy (non-finite or exploded weights), or None."""
        bad = non_finite_tensors(self.state_dict, self.state_dict_ema, self.distiller)
        if bad:
            return f'non-finite weights, e.g. {bad[0]}'
        exploded = explosion(weight_norm(self.state_dict), self.reference_norm)
        return f'exploded weights: {exploded}' if exploded else None

    @classmethod
    def capture(cls, run: 'LiveRun', epoch: int, next_epoch: int, next_step: int,
                metric: Optional[float]) -> Optional['TrainState']:
        """Collective: every process contributes its RNG, meters (mid-epoch) and buffers (world > 1); the
        main process gets the state, the others None. Raises NonFiniteLossError on every process (the
        weights are the same everywhere) when the weights are not healthy: such a state is never written."""
        from accelerate.utils import gather_object
        acc, student = run.accelerator, run.student
        weights = student.state_dict()
        when = f'by epoch {epoch} step {next_step if next_epoch == epoch else "end"}'
        bad = non_finite_tensors(weights)
        if bad:
            raise NonFiniteLossError(f'the student weights became non-finite ({len(bad)} tensors, e.g. {bad[0]}) '
                                     f'{when}; no checkpoint was written from them')
        exploded = explosion(weight_norm(weights), run.reference_norm)
        if exploded:
            raise NonFiniteLossError(f'the student weights exploded {when}: {exploded}; no checkpoint was written '
                                     f'from them')
        mine = {'rng': capture_rng_state(), 'meters': run.meters.state_dict() if next_step else None}
        if acc.num_processes > 1:  # BatchNorm statistics can differ between processes (--no-ddp-bb); keep each one's
            mine['buffers'] = {k: v.detach().cpu().clone() for k, v in student.named_buffers()}
        rank_states = gather_object([mine]) if acc.num_processes > 1 else [mine]
        if not acc.is_main_process:
            return None
        task, args = run.task, run.args
        ema = task.get_trainable_module(ema=True)
        distiller = getattr(task, 'distiller', None)
        # the student without its DDP / torch.compile wrappers (timm saves the unwrapped model too): the keys carry
        # no 'module.' / '_orig_mod.' prefix, so a checkpoint resumes and exports whether or not a run compiles
        return cls(
            arch=args.model, args=dict(vars(args)), epoch=epoch, metric=metric,
            state_dict=unwrap_model(task.get_trainable_module()).state_dict(),
            next_epoch=next_epoch, next_step=next_step, optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict() if run.scheduler is not None else None,
            scaler=acc.scaler.state_dict() if acc.scaler is not None else None,
            world_size=acc.num_processes, rank_states=rank_states, num_classes=run.data_config.num_classes,
            data_config=run.export_data_config(), best=dict(run.best), last=dict(run.last),
            teacher_metrics=run.teacher_metrics, checkpoint_hist=[list(h) for h in run.checkpoint_hist],
            state_dict_ema=ema.module.state_dict() if ema is not None else None,
            distiller=distiller.state_dict() if distiller is not None and distiller.state_dict() else None,
            run_id=run.run_id, reference_norm=run.reference_norm)

    def restore(self, run: 'LiveRun', updates_per_epoch: int, resume_opt: bool = True,
                resume_schedule: bool = True) -> Tuple[int, int]:
        """Put this state into a built (and accelerate-prepared) run; returns (start_epoch, start_step).

        ``resume_schedule=False`` keeps the freshly built scheduler (schedule flags changed on --resume);
        the caller then positions it with ``set_position``. RNG states come back last, so nothing done while
        building the run changes the random streams of the continued run."""
        acc, task, student = run.accelerator, run.task, run.student
        # clean_state_dict: compiled runs of earlier timm-kd versions wrote '_orig_mod.'-prefixed keys
        load_weights(student, clean_state_dict(self.state_dict), f'--resume checkpoint does not fit {self.arch!r}')
        ema = task.get_trainable_module(ema=True)
        if ema is not None:  # a run that turns EMA on later starts it from the resumed weights
            load_weights(ema.module, clean_state_dict(self.state_dict_ema or self.state_dict), 'EMA weights')
        distiller = getattr(task, 'distiller', None)
        if distiller is None and self.distiller:
            raise UsageError('The checkpoint holds the state of a distillation method with state, but this run has '
                             'none: resume with the --distill method of the run.')
        if distiller is not None and (self.distiller or distiller.state_dict()):
            try:
                distiller.load_state_dict(self.distiller or {}, strict=True)
            except RuntimeError as e:
                raise UsageError(f'The distiller state in the checkpoint does not fit this --distill method: '
                                 f'{first_line(e)}.') from e
        if resume_opt:
            try:
                run.optimizer.load_state_dict(self.optimizer)
            except (ValueError, KeyError, RuntimeError) as e:
                raise UsageError(f'The optimizer state in the checkpoint does not fit --opt {run.args.opt}: '
                                 f'{first_line(e)} (use --no-resume-opt).') from e
        if resume_schedule and run.scheduler is not None and self.scheduler:
            run.scheduler.load_state_dict(self.scheduler)
        if acc.scaler is not None and self.scaler:
            acc.scaler.load_state_dict(self.scaler)
        run.best, run.last = dict(self.best), dict(self.last)
        # the last good state the resumed epoch is measured against: these weights at an epoch's start, else the
        # start the checkpoint recorded (a checkpoint of version 2 has none: its own weights)
        run.reference_norm = self.reference_norm if self.next_step and self.reference_norm is not None else \
            weight_norm(self.state_dict)
        run.teacher_metrics, run.checkpoint_hist = self.teacher_metrics, list(self.checkpoint_hist)

        world, rank = acc.num_processes, acc.process_index
        start_epoch, start_step = int(self.next_epoch), int(self.next_step)
        if self.world_size != world:
            batch = run.args.batch_size
            start_step = min(start_step * batch * self.world_size // (batch * world), updates_per_epoch)
            _logger.warning(f'Resuming a {self.world_size}-process checkpoint with {world} processes: continuing '
                            f'at step {start_step}; the run will not be bit-identical to an uninterrupted one.')
        if start_step >= updates_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
        if len(self.rank_states) != world:
            _logger.warning('The checkpoint has no RNG state for this process count: fresh random streams.')
            return start_epoch, start_step
        mine = self.rank_states[rank]
        if start_step > 0 and mine.get('meters'):
            run.meters.load_state_dict(mine['meters'], acc.device)
        if mine.get('buffers'):
            with torch.no_grad():
                for k, v in student.named_buffers():
                    v.copy_(mine['buffers'][k])
        restore_rng_state(mine['rng'])
        return start_epoch, start_step


@dataclass
class LiveRun:
    """The live objects of a run that a TrainState is captured from and restored into, and its records."""
    args: Any
    accelerator: Any
    task: torch.nn.Module
    student: torch.nn.Module
    optimizer: Any
    scheduler: Optional[Any]
    data_config: DataConfig
    run_dir: Optional[str] = None  # main process only
    meters: EpochMeters = field(default_factory=EpochMeters)
    best: Dict[str, Any] = field(default_factory=lambda: dict(metric=None, epoch=None, top1=None, top5=None))
    last: Dict[str, Any] = field(default_factory=lambda: dict(epoch=None, top1=None, top5=None))
    teacher_metrics: Optional[Dict[str, float]] = None
    checkpoint_hist: List[List] = field(default_factory=list)
    run_id: Optional[str] = None  # the run's identity, written into every checkpoint
    reference_norm: Optional[float] = None  # weight norm of the last good state: the current epoch's start
    resume_point: Optional[Tuple[str, int, int]] = None  # (file, epoch, step) of the last checkpoint written or resumed

    def export_data_config(self) -> Dict[str, Any]:
        """The eval-time data config of the student (timm's pretrained_cfg keys), for export."""
        dc = self.data_config
        return dict(input_size=[dc.in_chans, dc.size, dc.size], mean=list(dc.mean), std=list(dc.std),
                    crop_pct=dc.crop_pct or 1.0, interpolation=dc.interpolation, num_classes=dc.num_classes)

    def save_recovery(self, epoch: int, next_step: int) -> None:
        """Collective: recovery.pth.tar after ``next_step`` steps of ``epoch`` (0 of epoch 0: the run's start)."""
        state = TrainState.capture(self, epoch, epoch, next_step, None)
        if state is not None:
            atomic_save(state.to_dict(), os.path.join(self.run_dir, RECOVERY))
            self.resume_point = (os.path.join(self.run_dir, RECOVERY), epoch, next_step)

    def save_epoch(self, epoch: int, metric: float, improved: bool) -> None:
        """Collective: last.pth.tar at the end of ``epoch``, copied to model_best.pth.tar when it improved and
        to checkpoint-<epoch>.pth.tar while among the ``--checkpoint-hist`` best (separate files, not links:
        one damaged file must not damage the others)."""
        state = TrainState.capture(self, epoch, epoch + 1, 0, metric)
        if state is None:
            return
        args = self.args
        if args.checkpoint_hist:  # timm's CheckpointSaver: keep the N best epochs
            hist = [h for h in self.checkpoint_hist if h[0] != epoch] + [[epoch, metric]]
            hist.sort(key=lambda h: h[1], reverse=args.eval_metric != 'loss')
            state.checkpoint_hist, dropped = hist[:args.checkpoint_hist], hist[args.checkpoint_hist:]
            self.checkpoint_hist = state.checkpoint_hist
        else:
            dropped = []
        last = os.path.join(self.run_dir, LAST)
        atomic_save(state.to_dict(), last)
        if improved:
            atomic_copy(last, os.path.join(self.run_dir, BEST))
        if [epoch, metric] in self.checkpoint_hist:
            atomic_copy(last, os.path.join(self.run_dir, f'checkpoint-{epoch}.pth.tar'))
        for e, _ in dropped:
            p = os.path.join(self.run_dir, f'checkpoint-{e}.pth.tar')
            if os.path.lexists(p):
                os.remove(p)
        self.resume_point = (last, epoch + 1, 0)

    def mark_good_state(self) -> None:
        """The weights now (an epoch's start) are the last good state the next states are measured against."""
        self.reference_norm = weight_norm(self.student.state_dict())

    def resume_advice(self, lr: float) -> str:
        """What to do after the run diverged: the command that continues from its last healthy checkpoint."""
        if self.resume_point is None:
            return (f'the run has no checkpoint yet (--checkpoint-every N also writes one at its start): start it '
                    f'again with a lower --lr than {lr:g}')
        path, epoch, step = self.resume_point
        target = self.run_dir if self.run_dir and os.path.dirname(path) == self.run_dir else path
        return (f'its last healthy checkpoint is {os.path.basename(path)} (epoch {epoch} step {step}): continue from '
                f'it with a lower --lr than {lr:g}: train_kd.py --resume {target} --lr LOWER_LR')


def load_checkpoint(path: str) -> TrainState:
    """Read and verify a train_kd checkpoint (a regular file, not through a link; weights_only, version, checksum).
    Raises CheckpointError."""
    try:
        with open_regular(path) as f:
            d = torch.load(f, map_location='cpu', weights_only=True)
    except FileReadError as e:
        raise CheckpointError(str(e).rstrip('.')) from e
    except Exception as e:  # noqa: BLE001 - any unpickling / IO failure means "not a usable checkpoint"
        raise CheckpointError(f'{path} cannot be read as a checkpoint ({type(e).__name__}: '
                              f'{first_line(e)[:200]})') from e
    return TrainState.from_dict(d, path)


def checkpoint_candidates(run_dir: str) -> List[str]:
    """The checkpoint files of a run folder, in the order ties in progress are broken."""
    hist = sorted(glob.glob(os.path.join(glob.escape(run_dir), 'checkpoint-*.pth.tar')), reverse=True)
    named = [os.path.join(run_dir, n) for n in (RECOVERY, LAST)] + hist + [os.path.join(run_dir, BEST)]
    return [p for p in named if os.path.isfile(p)]


def new_run_id() -> str:
    return uuid.uuid4().hex


def read_run_id(folder: str) -> Optional[str]:
    """The id of the run ``folder`` holds (None: the folder records none, e.g. made by an earlier timm-kd)."""
    text = read_text(os.path.join(folder, RUN_ID_FILE), limit=1024, default='').strip()
    return text if _RUN_ID.fullmatch(text) else None


def record_run_id(folder: str, run_id: str) -> None:
    """Record ``run_id`` as the run ``folder`` holds (by the process that holds the folder's lock)."""
    atomic_write_text(os.path.join(folder, RUN_ID_FILE), run_id + '\n')


@dataclass(frozen=True)
class RunIdentity:
    """What a run folder records about its run: the id in its ``RUN_ID_FILE`` and the flags of its args.yaml; None
    where the folder has none (a folder of an earlier timm-kd, a bare folder of checkpoints)."""
    run_id: Optional[str] = None
    args: Optional[Dict[str, Any]] = None

    def foreign(self, state: TrainState) -> Optional[str]:
        """Why ``state`` is a checkpoint of another run than the folder's, or None. Without ids on both sides (files
        of an earlier timm-kd) the flags that define a run must agree with the folder's args.yaml."""
        if self.run_id and state.run_id:
            return None if state.run_id == self.run_id else f'run {state.run_id}, the folder holds run {self.run_id}'
        changed = run_defining_changes(self.args or {}, state.args)
        return ', '.join(changed) if changed else None


def find_resume_checkpoint(path: str, identity: RunIdentity = RunIdentity()) -> Tuple[str, TrainState, List[str]]:
    """(file, state, skipped) to resume from ``path``: the file itself (which must verify, be healthy and belong to
    the run of ``identity``, the folder the run continues in), or for a run folder the most advanced checkpoint that
    does; ``skipped`` says which were passed over and why. Raises CheckpointError when there is none."""
    if not os.path.isdir(path):
        state = load_checkpoint(path)
        problem = state.problem()
        if problem:
            raise CheckpointError(f'{path} holds {problem}; pass its run folder to resume from the newest healthy '
                                  f'checkpoint')
        foreign = identity.foreign(state)
        if foreign:
            raise CheckpointError(f'{path} is a checkpoint of another run than the folder it would continue in '
                                  f'({foreign}); continue it in a folder of its own with --experiment NAME')
        return path, state, []
    best: Optional[Tuple[Tuple[int, int], str, TrainState]] = None
    skipped = []
    for p in checkpoint_candidates(path):
        try:
            state = load_checkpoint(p)
        except CheckpointError as e:
            skipped.append(f'{os.path.basename(p)} ({str(e).replace(p, "it")})')
            continue
        problem = state.problem()
        foreign = None if problem else identity.foreign(state)
        if problem or foreign:
            skipped.append(f'{os.path.basename(p)} ({problem or "a checkpoint of another run: " + foreign})')
        elif best is None or (state.next_epoch, state.next_step) > best[0]:
            best = ((state.next_epoch, state.next_step), p, state)
    if best is None:
        raise CheckpointError(f'{path} holds no intact checkpoint to resume from'
                              + (f': {"; ".join(skipped)}' if skipped else ' (no *.pth.tar files)'))
    return best[1], best[2], skipped


Training = LiveRun  # the name this class had


# ---------------------------------------------------------------------------------------------------------------
# the RNG states a checkpoint carries per process

def capture_rng_state() -> Dict[str, Any]:
    """RNG states of this process as tensors / plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        'python': random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()  # this process's device
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
