"""Hugging Face Hub helpers: teachers in, students out.

Teachers in: :func:`create_teacher` builds a frozen teacher from anything ``timm.create_model`` accepts
(a registered name, ``hf-hub:org/repo``, ``local-dir:PATH``), optionally with a checkpoint in timm,
RepDistiller, mdistiller or Good-DA format (a local path or ``hf-hub:org/repo/file.pth``). It never returns a
randomly initialised teacher: every failure raises :class:`TeacherLoadError` saying what was tried and the
two ways out.

Students out: :func:`publish_student` turns a ``train_kd.py`` run folder into a timm Hub folder
(``config.json``, ``model.safetensors``, a model card with lineage, recipe and results) and uploads it;
:func:`convert_teacher` does the same for published KD teacher checkpoints. Tokens come only from the
environment or a prior ``hf auth login`` (or an explicit ``token=`` argument); they are never logged or written.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm
from timm.models import get_pretrained_cfg, parse_model_name

__all__ = [
    'TeacherLoadError', 'HubPublishError', 'create_teacher', 'resolve_checkpoint', 'hub_endpoint',
]

_logger = logging.getLogger(__name__)

_WAYS_OUT = (
    'either convert and publish the teacher (python hfhub/convert_teachers.py CKPT --push, then point '
    'TIMM_KD_HUB_ORG at that organisation) or pass the checkpoint directly (--teacher-checkpoint PATH, or '
    'create_teacher(..., checkpoint=PATH); timm, RepDistiller, mdistiller and Good-DA formats load)'
)


class TeacherLoadError(RuntimeError):
    """The teacher could not be built with trained weights; the message says what was tried and the ways out."""


class HubPublishError(RuntimeError):
    """Uploading to the Hub failed; local files are left as they were."""


def hub_endpoint() -> str:
    """The Hub endpoint the client talks to right now (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants
    return constants.ENDPOINT


def _hub_reason(err: BaseException) -> str:
    """One short clause explaining a huggingface_hub / network failure."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf_errors

    def _is(name: str) -> bool:
        cls = getattr(hf_errors, name, None)
        return cls is not None and isinstance(err, cls)

    chain, e = [], err
    while e is not None and len(chain) < 8:  # look through wrappers (timm re-raises some errors)
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        err = e
        if _is('GatedRepoError'):
            return 'the repository is gated: accept its conditions on the Hub and log in'
        if _is('RepositoryNotFoundError'):
            return 'the repository does not exist (or is private and no valid token was found)'
        if _is('RevisionNotFoundError'):
            return 'the requested revision does not exist'
        if _is('LocalEntryNotFoundError') or _is('OfflineModeIsEnabled'):
            if constants.HF_HUB_OFFLINE:
                return (f'HF_HUB_OFFLINE=1 is set and the files are not in the local cache ({constants.HF_HUB_CACHE}); '
                        'download them once online or unset HF_HUB_OFFLINE')
            return f'the Hub at {constants.ENDPOINT} could not be reached and the files are not in the local cache'
        if _is('EntryNotFoundError'):
            return 'the repository exists but does not contain the expected file (config.json / model.safetensors)'
        if _is('HfHubHTTPError'):
            status = getattr(getattr(e, 'response', None), 'status_code', None)
            return f'the Hub answered HTTP {status}' if status else f'the Hub request failed ({_first_line(e)})'
    err = chain[0]
    if isinstance(err, (ConnectionError, TimeoutError)) or type(err).__module__.startswith(('httpx', 'httpcore')):
        return f'the Hub at {constants.ENDPOINT} could not be reached ({type(err).__name__})'
    return f'{type(err).__name__}: {_first_line(err)}'


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _split_hub_file(spec: str) -> Tuple[str, str, Optional[str]]:
    """``org/repo[@rev]/path/to/file`` -> (repo_id, filename, revision)."""
    parts = spec.strip('/').split('/')
    if len(parts) < 3:
        raise TeacherLoadError(
            f"Hub checkpoint 'hf-hub:{spec}' must name a file inside a repo: 'hf-hub:org/repo/file.pth' "
            f"(or 'hf-hub:org/repo@revision/file.pth').")
    repo, _, rev = parts[1].partition('@')
    return f'{parts[0]}/{repo}', '/'.join(parts[2:]), rev or None


def resolve_checkpoint(checkpoint: Union[str, os.PathLike]) -> Path:
    """A local checkpoint path, or ``hf-hub:org/repo[@rev]/file`` downloaded into the Hub cache."""
    spec = str(checkpoint)
    if spec.startswith(('hf-hub:', 'hf_hub:')):
        repo_id, filename, revision = _split_hub_file(spec.split(':', 1)[1])
        from huggingface_hub import hf_hub_download
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except Exception as e:
            raise TeacherLoadError(
                f"Could not download teacher checkpoint '{filename}' from the Hub repo '{repo_id}' at "
                f"{hub_endpoint()}: {_hub_reason(e)}; check the repo and file name, or pass a local checkpoint "
                f"path instead.") from e
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TeacherLoadError(f'Teacher checkpoint {str(path)!r} does not exist or is not a file.')
    return path


def _convert_api():
    # the reader lives with the models (it applies each family's checkpoint_filter_fn)
    from .models import _convert
    return _convert


def _classifier_rows(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Optional[int]:
    """Output classes of a checkpoint, read from its classifier weight (our name or RepDistiller's)."""
    names = [model.pretrained_cfg.get('classifier') or '', 'fc', 'linear', 'classifier', 'classifier.0', 'head.fc']
    for n in names:
        w = state_dict.get(f'{n}.weight') if n else None
        if isinstance(w, torch.Tensor) and w.ndim == 2:
            return int(w.shape[0])
    return None


def _create(name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise TeacherLoadError(
                f"Unknown teacher model {name!r}: it is not registered in timm or timm_kd (see "
                f"timm.list_models('*{name.split('.')[0][:6]}*')), and not an 'hf-hub:org/repo' or "
                f"'local-dir:PATH' name.") from e
        raise


def create_teacher(
        name: str,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        num_classes: Optional[int] = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a frozen teacher (eval mode, ``requires_grad`` off) with trained weights.

    Args:
        name: a registered model (pretrained weights come from its ``hf_hub_id``; for timm_kd's CIFAR models
            that is ``<TIMM_KD_HUB_ORG or 'timm-kd'>/<arch>.cifar100``), ``hf-hub:org/repo[@rev]`` or
            ``local-dir:PATH``.
        checkpoint: weights to load instead of the pretrained ones: a local file or ``hf-hub:org/repo/file.pth``,
            in timm (``state_dict``/safetensors), RepDistiller/mdistiller (``{'model': sd}``) or Good-DA
            (``module.`` prefix) format.
        num_classes: the student's class count. The teacher's head is never resized: a different count raises.
        **kwargs: passed to ``timm.create_model`` (e.g. ``device``, ``pretrained_cfg_overlay``).

    Returns:
        The teacher, with ``teacher.kd_teacher_info`` (name, source, checkpoint, reported accuracy if known).

    Raises:
        TeacherLoadError: unknown name, unreachable / missing Hub repo, offline without cache, a checkpoint
            that does not fit the architecture, or a class-count mismatch.
    """
    source, model_id = parse_model_name(name)
    info: Dict[str, Any] = {'name': name, 'checkpoint': None, 'accuracy': None}
    if checkpoint is not None:
        model, info = _teacher_from_checkpoint(name, checkpoint, num_classes, info, **kwargs)
    else:
        model = _teacher_pretrained(name, source, model_id, info, **kwargs)
        if num_classes is not None and model.num_classes != num_classes:
            raise TeacherLoadError(
                f'Teacher {name!r} predicts {model.num_classes} classes but the student has {num_classes}: '
                f'a resized teacher head would be random, so pick a teacher trained on the same classes '
                f'(or pass a matching --teacher-checkpoint).')
    model.eval()
    model.requires_grad_(False)
    model.kd_teacher_info = info
    return model


def _teacher_pretrained(name: str, source: Optional[str], model_id: str, info: Dict[str, Any], **kwargs) -> nn.Module:
    probe = None  # (repo_id, file): checked with one quick request before timm's retrying download
    if source is None:  # registered name: its pretrained cfg must point at real weights
        if not timm.is_model(name):
            _create(name, pretrained=False)  # raises the unknown-model TeacherLoadError
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as e:  # e.g. an unknown pretrained tag
            raise TeacherLoadError(f'Teacher {name!r}: {e}') from e
        has_weights = cfg is not None and any(getattr(cfg, k, None) for k in ('hf_hub_id', 'url', 'file', 'state_dict'))
        if 'pretrained_cfg_overlay' in kwargs:
            has_weights = has_weights or any(kwargs['pretrained_cfg_overlay'].get(k) for k in ('hf_hub_id', 'url', 'file'))
        if not has_weights:
            raise TeacherLoadError(f'Teacher {name!r} has no pretrained weights registered; {_WAYS_OUT}.')
        overlay = kwargs.get('pretrained_cfg_overlay') or {}
        hub_id = overlay.get('hf_hub_id') or (cfg.hf_hub_id if cfg else None)
        from .models import hub_org
        org_note = (f" (organisation from TIMM_KD_HUB_ORG, default 'timm-kd')"
                    if hub_id and hub_id.startswith(hub_org() + '/') else '')
        tried = (f"the Hub repo '{hub_id}'{org_note} at {hub_endpoint()}" if hub_id and not (overlay.get('file') or overlay.get('url'))
                 else f"its pretrained weights ({overlay.get('file') or overlay.get('url') or (cfg.url if cfg else '')})")
        info['source'] = f'hf-hub:{hub_id}' if hub_id else (overlay.get('file') or overlay.get('url'))
        if hub_id and info['source'].startswith('hf-hub:'):
            probe = (hub_id, (cfg.hf_hub_filename if cfg else None) or 'model.safetensors')
    elif source == 'hf-hub':
        tried = f"the Hub repo '{model_id}' at {hub_endpoint()}"
        info['source'] = name
        probe = (model_id, 'config.json')
    else:
        tried = f'the local folder {model_id!r}'
        info['source'] = name
    try:
        if probe is not None:
            _probe_hub(*probe)
        return _create(name, pretrained=True, **kwargs)
    except TeacherLoadError:
        raise
    except Exception as e:
        raise TeacherLoadError(
            f'Could not load pretrained weights for teacher {name!r} from {tried}: {_hub_reason(e)}; '
            f'{_WAYS_OUT}.') from e


def _probe_hub(hub_id: str, filename: str) -> None:
    """Fail fast when a Hub file is neither cached nor reachable.

    ``hf_hub_download`` retries unreachable / 5xx servers with back-off for about 25 s per file (and timm
    tries two weight files), so a missing network would look like a hang. One HEAD without retries tells
    the same story at once. Offline mode and cached files skip the probe: the download then uses the cache.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub import errors as hf_errors
    from timm.models._hub import hf_split
    repo_id, revision = hf_split(hub_id)
    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
        return
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    except hf_errors.EntryNotFoundError:
        pass  # the repo is there; timm may still find another weight file (pytorch_model.bin)


def _teacher_from_checkpoint(name: str, checkpoint, num_classes: Optional[int], info: Dict[str, Any],
                             **kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    conv = _convert_api()
    path = resolve_checkpoint(checkpoint)
    try:
        state_dict, meta = conv.read_kd_checkpoint(path)
    except Exception as e:
        raise TeacherLoadError(f'Could not read teacher checkpoint {str(checkpoint)!r}: {_first_line(e)}') from e
    try:
        model = _create(name, pretrained=False, **kwargs)
    except TeacherLoadError:
        raise
    except Exception as e:  # e.g. hf-hub:/local-dir: config.json unreachable
        raise TeacherLoadError(f'Could not build teacher {name!r}: {_hub_reason(e)}.') from e
    ckpt_classes = _classifier_rows(state_dict, model)
    if num_classes is not None and ckpt_classes is not None and ckpt_classes != num_classes:
        raise TeacherLoadError(
            f'Teacher checkpoint {str(checkpoint)!r} predicts {ckpt_classes} classes but the student has '
            f'{num_classes}: use a teacher trained on the same classes.')
    if ckpt_classes is not None and ckpt_classes != model.num_classes:
        model = _create(name, pretrained=False, num_classes=ckpt_classes, **kwargs)
    try:
        conv.load_kd_checkpoint(model, state_dict, strict=True)
    except Exception as e:
        raise TeacherLoadError(
            f'Teacher checkpoint {str(checkpoint)!r} does not fit {name!r}: {_first_line(e)} '
            f'(is --teacher the architecture the checkpoint was trained with?)') from e
    info.update(checkpoint=str(checkpoint), source=str(checkpoint), accuracy=_as_float((meta or {}).get('accuracy')),
                epoch=(meta or {}).get('epoch'))
    return model, info


def _as_float(v) -> Optional[float]:
    try:
        return None if v is None else float(v.item() if hasattr(v, 'item') else v)
    except (TypeError, ValueError):
        return None


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()
