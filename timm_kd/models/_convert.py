"""Read and load checkpoints of the CIFAR KD literature safely.

Formats: RepDistiller / CRD teachers (``{'epoch', 'model', 'accuracy', 'optimizer'}``), mdistiller
(same layout; its full ``latest`` checkpoints hold ``student.*`` and ``teacher.*``), Good-DA students
(``module.`` prefix from DataParallel), timm (``{'state_dict', ...}``), a raw state dict, ``.safetensors``.

Files are read with ``torch.load(weights_only=True)``: nothing but tensors, plain containers and an
allow-list of harmless types (numpy scalars and dtypes, which old checkpoints store as metrics, and
``argparse.Namespace``) is unpickled, so a checkpoint can never run code.
"""
import argparse
import os
import pickle
import struct
import sys
import tarfile
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm_kd.utils.messages import first_line

__all__ = ['KDCheckpointError', 'read_kd_checkpoint', 'load_kd_checkpoint', 'clean_kd_state_dict', 'checkpoint_filter_fn',
           'checkpoint_num_classes', 'checkpoint_accuracy']

# wrapper keys that hold the weights, in order of preference
_STATE_DICT_KEYS = ('state_dict', 'model', 'model_state_dict', 'net')
# big or binary entries that are not worth returning as metadata
_SKIP_META_KEYS = ('optimizer', 'scheduler', 'scaler', 'lr_scheduler', 'rng', 'state_dict_ema', 'model_ema')
_PREFIXES = ('module.', '_orig_mod.')  # DataParallel / DDP, torch.compile
_MAX_LISTED = 8


class KDCheckpointError(RuntimeError, ValueError):
    """A checkpoint that cannot be read safely, or does not fit the model."""


def _safe_globals() -> List[Any]:
    """Harmless globals old pickles need: numpy scalars (+ dtypes), ``argparse.Namespace`` (timm args)."""
    allowed: List[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch in practice
        return allowed
    allowed.append(np.dtype)
    allowed += [type(np.dtype(c)) for c in '?bBhHiIlLqQefdgFDGSUV']  # the dtype classes of numpy >= 1.25
    scalar = None
    for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            scalar = getattr(__import__(mod, fromlist=['scalar']), 'scalar')
            break
        except (ImportError, AttributeError):
            continue
    if scalar is not None:
        # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core: accept both spellings
        allowed += [(scalar, 'numpy.core.multiarray.scalar'), (scalar, 'numpy._core.multiarray.scalar')]
    return allowed


def _strip_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, stripped = k[len(p):], True
        out[k] = v
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def clean_kd_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint dict or state dict, with wrapper prefixes removed.

    Unwraps ``state_dict`` / ``model`` entries, strips ``module.`` / ``_orig_mod.`` and, for a distiller
    checkpoint holding ``student.*`` and ``teacher.*`` weights (mdistiller), keeps the student's.
    """
    sd = checkpoint
    for _ in range(2):  # a wrapper may hold another wrapper, e.g. {'model': {'state_dict': ...}}
        if _is_state_dict(sd) or not isinstance(sd, Mapping):
            break
        key = next((k for k in _STATE_DICT_KEYS if isinstance(sd.get(k), Mapping)), None)
        if key is None:
            break
        sd = sd[key]
    if not isinstance(sd, Mapping):
        raise KDCheckpointError(f'expected a state dict, got {type(sd).__name__}')
    sd = _strip_prefixes({k: v for k, v in sd.items() if torch.is_tensor(v)})
    if any(k.startswith('student.') for k in sd) and any(k.startswith('teacher.') for k in sd):
        sd = {k[len('student.'):]: v for k, v in sd.items() if k.startswith('student.')}
    return sd


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn`` for every family: our modules keep RepDistiller's names, so RepDistiller /
    CRD / mdistiller / Good-DA checkpoints only need unwrapping and ``module.`` prefixes stripped."""
    return clean_kd_state_dict(state_dict)


def _to_meta(value: Any) -> Any:
    """Metrics as plain Python: 0-d tensors and numpy scalars become numbers, Namespaces dicts."""
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value
    if isinstance(value, argparse.Namespace):
        return vars(value)
    if type(value).__module__ == 'numpy' and hasattr(value, 'item'):
        return value.item()
    return value


def _checkpoint_meta(checkpoint: Any) -> Dict[str, Any]:
    if not isinstance(checkpoint, Mapping) or _is_state_dict(checkpoint):
        return {'format': 'state_dict'}
    key = next((k for k in _STATE_DICT_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
    meta = {k: _to_meta(v) for k, v in checkpoint.items() if k != key and k not in _SKIP_META_KEYS}
    meta['format'] = {'state_dict': 'timm', 'model': 'repdistiller'}.get(key, key or 'unknown')
    return meta


def _torch_load(path: str) -> Any:
    if os.path.getsize(path) == 0:
        raise KDCheckpointError(f'{path} is empty (0 bytes): it was not written completely; use another copy')
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            members = [m.name for m in tf.getmembers() if m.name.endswith(('.pth', '.pt', '.pth.tar'))]
        if members:  # mdistiller's cifar_teachers.tar is an archive of checkpoints, not a checkpoint
            raise KDCheckpointError(
                f'{path} is an archive of {len(members)} checkpoints (e.g. {members[0]}): '
                'extract it and pass one checkpoint file.')
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # random bytes can look like a pickle of another protocol: torch warns before it fails
            warnings.filterwarnings('ignore', message='Detected pickle protocol', category=UserWarning)
            return torch.load(path, map_location='cpu', weights_only=True)
    except EOFError as e:  # a legacy (non-zip) pickle cut short
        raise KDCheckpointError(f'{path} ends before the checkpoint does (a truncated file?)') from e
    except (IndexError, KeyError, UnicodeDecodeError, struct.error, OverflowError, TypeError, ValueError,
            RuntimeError) as e:  # bytes that are no checkpoint: the unpickler or torch's reader trips over them
        raise KDCheckpointError(
            f'{path} is not a checkpoint: torch cannot unpickle it ({type(e).__name__}: {first_line(e)})') from e
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        names = ', '.join(unsafe) or 'objects that are not tensors'
        raise KDCheckpointError(
            f'refusing to load {path}: it contains {names}, and loading it could run arbitrary code. '
            'Only tensors, plain containers and numpy scalars are accepted; if you trust the file, load it '
            'with torch.load(weights_only=False) yourself and save its state_dict.') from e


def read_kd_checkpoint(
        path: Union[str, os.PathLike],
        entry: Optional[str] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint file safely.

    Args:
        path: A RepDistiller / CRD / mdistiller / Good-DA / timm checkpoint, a raw state dict or a
            ``.safetensors`` file.
        entry: read the weights from this entry of a checkpoint dict (e.g. timm's ``state_dict_ema``)
            instead of the usual one; a missing or empty entry raises :class:`KDCheckpointError`.

    Returns:
        ``(state_dict, meta)``: the weights with ``module.`` prefixes removed, and the remaining small
        entries (e.g. ``epoch``, ``accuracy`` as Python numbers) plus ``format``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KDCheckpointError(f'checkpoint file not found: {path}')
    if path.endswith('.safetensors'):
        import safetensors
        import safetensors.torch
        with safetensors.safe_open(path, framework='pt') as f:
            meta = dict(f.metadata() or {})
        meta['format'] = 'safetensors'
        return clean_kd_state_dict(safetensors.torch.load_file(path, device='cpu')), meta
    checkpoint = _torch_load(path)
    if entry is not None:
        weights = checkpoint.get(entry) if isinstance(checkpoint, Mapping) else None
        if not isinstance(weights, Mapping) or not weights:
            raise KDCheckpointError(f'{path} has no {entry!r} entry')
        return clean_kd_state_dict(weights), _checkpoint_meta(checkpoint)
    return clean_kd_state_dict(checkpoint), _checkpoint_meta(checkpoint)


def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Optional[int]:
    """Output classes of a checkpoint for ``model``'s family, read from its classifier weight (the model's
    ``pretrained_cfg['classifier']`` or a common name); None when no classifier weight is found."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(dict(state_dict), model)
        except Exception:  # a checkpoint of another family: loading it reports that properly
            pass
    names = [getattr(model, 'pretrained_cfg', {}).get('classifier'), 'fc', 'linear', 'classifier', 'classifier.0',
             'head.fc']
    for name in filter(None, names):
        w = state_dict.get(f'{name}.weight')
        if isinstance(w, torch.Tensor) and w.ndim == 2:
            return int(w.shape[0])
    return None


def checkpoint_accuracy(meta: Mapping[str, Any]) -> Optional[float]:
    """The top-1 accuracy a checkpoint reports about itself (RepDistiller ``accuracy``, others ``best_acc``)."""
    value = meta.get('accuracy', meta.get('best_acc'))
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _listed(keys: List[str]) -> str:
    shown = ', '.join(keys[:_MAX_LISTED])
    return shown + (f', ... (+{len(keys) - _MAX_LISTED} more)' if len(keys) > _MAX_LISTED else '')


def load_kd_checkpoint(
        model: nn.Module,
        path_or_state_dict: Union[str, os.PathLike, Mapping[str, Any]],
        strict: bool = True,
) -> Dict[str, Any]:
    """Load a KD-literature checkpoint into ``model`` (in place) and return its metadata.

    The model module's ``checkpoint_filter_fn`` maps the checkpoint's keys to the model's. A checkpoint
    that does not fit raises :class:`KDCheckpointError` naming the missing and unexpected keys
    (ignored when ``strict=False``) and any shape mismatch (always an error).
    """
    if isinstance(path_or_state_dict, Mapping):
        state_dict, meta = clean_kd_state_dict(path_or_state_dict), _checkpoint_meta(path_or_state_dict)
        source = 'state dict'
    else:
        state_dict, meta = read_kd_checkpoint(path_or_state_dict)
        source = os.fspath(path_or_state_dict)
    filter_fn = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)

    own = model.state_dict()
    # BatchNorm fills in num_batches_tracked for checkpoints of torch < 0.4.1, which lack it
    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f'{k} {tuple(v.shape)} in checkpoint vs {tuple(own[k].shape)} in model'
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        arch = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
        parts = []
        if missing and strict:
            parts.append(f'{len(missing)} missing keys: {_listed(missing)}')
        if unexpected and strict:
            parts.append(f'{len(unexpected)} unexpected keys: {_listed(unexpected)}')
        if mismatched:
            parts.append(f'{len(mismatched)} shape mismatches: {_listed(mismatched)}')
        raise KDCheckpointError(
            f'checkpoint ({source}) does not fit {arch}; is it another architecture or class count? '
            + '; '.join(parts))
    model.load_state_dict(state_dict, strict=strict)
    return meta
