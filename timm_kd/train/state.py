"""What a ``train_kd`` checkpoint holds (``TrainState``), how it is captured, verified, found and restored.

A checkpoint file is ``torch.save`` of ``TrainState.to_dict()``: a plain dict of tensors and Python values
(timm's ``arch`` / ``state_dict`` / ``epoch`` / ``metric`` keys first, so ``timm.create_model(...,
checkpoint_path=...)`` reads it), loadable with ``weights_only=True`` (nothing in it unpickles code). It
carries ``version`` (``CHECKPOINT_VERSION``) and ``content_sha256``, a SHA-256 over every value in it
(tensor dtype, shape and bytes; Python values by type and repr): a bit flip anywhere in the tensor data
or the values is detected on load. Readers refuse versions they do not know, with one sentence.

Resuming a run folder picks the most advanced checkpoint (by ``next_epoch, next_step``) among
``recovery.pth.tar``, ``last.pth.tar``, ``checkpoint-<epoch>.pth.tar`` and ``model_best.pth.tar`` that
verifies and holds finite weights, and says in one line which ones it skipped and why.
"""
import glob
import hashlib
import logging
import os
import random
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from timm.models import clean_state_dict
from timm.utils import unwrap_model

from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import atomic_copy, atomic_save
from timm_kd.utils.messages import first_line
from .build import DataConfig, load_weights
from .loop import EpochMeters, NonFiniteLossError

__all__ = ['CHECKPOINT_VERSION', 'CheckpointError', 'TrainState', 'LiveRun', 'Training', 'content_sha256',
           'non_finite_tensors', 'load_checkpoint', 'find_resume_checkpoint', 'checkpoint_candidates',
           'capture_rng_state', 'restore_rng_state']

_logger = logging.getLogger('train_kd')

# 1: the first format (no checksum, no distiller entry). 2: adds content_sha256 and distiller.
CHECKPOINT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
RECOVERY, LAST, BEST = 'recovery.pth.tar', 'last.pth.tar', 'model_best.pth.tar'


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
        if version >= 2 and d.get('content_sha256') != content_sha256(d):
            raise CheckpointError(f'{path} fails its checksum (the file is damaged)')
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is not None
                   and f.name not in ('version', 'distiller')]
        if missing:
            raise CheckpointError(f'{path} lacks the train_kd entries {missing[:4]}')
        return cls(**{k: v for k, v in d.items() if k in known})

    def non_finite(self) -> List[str]:
        return non_finite_tensors(self.state_dict, self.state_dict_ema, self.distiller)

    @classmethod
    def capture(cls, run: 'LiveRun', epoch: int, next_epoch: int, next_step: int,
                metric: Optional[float]) -> Optional['TrainState']:
        """Collective: every process contributes its RNG, meters (mid-epoch) and buffers (world > 1); the
        main process gets the state, the others None. Raises NonFiniteLossError on every process (the
        weights are the same everywhere) when the weights are not finite: such a state is never written."""
        from accelerate.utils import gather_object
        acc, student = run.accelerator, run.student
        bad = non_finite_tensors(student.state_dict())
        if bad:
            raise NonFiniteLossError(
                f'the student weights became non-finite ({len(bad)} tensors, e.g. {bad[0]}) by epoch {epoch} step '
                f'{next_step if next_epoch == epoch else "end"}; no checkpoint was written, the ones in the run '
                f'folder hold the last finite weights: resume from them with a lower --lr')
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
            distiller=distiller.state_dict() if distiller is not None and distiller.state_dict() else None)

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

    def export_data_config(self) -> Dict[str, Any]:
        """The eval-time data config of the student (timm's pretrained_cfg keys), for export."""
        dc = self.data_config
        return dict(input_size=[dc.in_chans, dc.size, dc.size], mean=list(dc.mean), std=list(dc.std),
                    crop_pct=dc.crop_pct or 1.0, interpolation=dc.interpolation, num_classes=dc.num_classes)

    def save_recovery(self, epoch: int, next_step: int) -> None:
        """Collective: recovery.pth.tar after ``next_step`` steps of ``epoch``."""
        state = TrainState.capture(self, epoch, epoch, next_step, None)
        if state is not None:
            atomic_save(state.to_dict(), os.path.join(self.run_dir, RECOVERY))

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


def load_checkpoint(path: str) -> TrainState:
    """Read and verify a train_kd checkpoint (weights_only, version, checksum). Raises CheckpointError."""
    try:
        d = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling / IO failure means "not a usable checkpoint"
        raise CheckpointError(f'{path} cannot be read as a checkpoint ({type(e).__name__}: '
                              f'{(str(e).strip().splitlines() or [""])[0][:200]})') from e
    return TrainState.from_dict(d, path)


def checkpoint_candidates(run_dir: str) -> List[str]:
    """The checkpoint files of a run folder, in the order ties in progress are broken."""
    hist = sorted(glob.glob(os.path.join(glob.escape(run_dir), 'checkpoint-*.pth.tar')), reverse=True)
    named = [os.path.join(run_dir, n) for n in (RECOVERY, LAST)] + hist + [os.path.join(run_dir, BEST)]
    return [p for p in named if os.path.isfile(p)]


def find_resume_checkpoint(path: str) -> Tuple[str, TrainState, List[str]]:
    """(file, state, skipped) to resume from ``path``: the file itself (which must verify and be finite), or for a
    run folder the most advanced checkpoint that verifies and is finite; ``skipped`` says which were passed
    over and why. Raises CheckpointError when there is none."""
    if not os.path.isdir(path):
        state = load_checkpoint(path)
        bad = state.non_finite()
        if bad:
            raise CheckpointError(f'{path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); pass its run '
                                  f'folder to resume from the newest finite checkpoint')
        return path, state, []
    best: Optional[Tuple[Tuple[int, int], str, TrainState]] = None
    skipped = []
    for p in checkpoint_candidates(path):
        try:
            state = load_checkpoint(p)
        except CheckpointError as e:
            skipped.append(f'{os.path.basename(p)} ({str(e).replace(p, "it")})')
            continue
        bad = state.non_finite()
        if bad:
            skipped.append(f'{os.path.basename(p)} (non-finite weights, e.g. {bad[0]})')
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
