"""The frozen teacher of a distillation run, built with trained weights or not at all.

:func:`create_teacher` accepts anything ``timm.create_model`` does (a registered name, ``hf-hub:org/repo``,
``local-dir:PATH``), optionally with a checkpoint in timm, RepDistiller, mdistiller or Good-DA format (a
local path or ``hf-hub:org/repo/file.pth``). It never returns a randomly initialised teacher: every
failure raises :class:`TeacherLoadError` saying what was tried and the ways out. A registered name whose Hub
repo has no weights loads the teacher of the same name from the local teacher store
(``timm-kd-convert --download``), and :func:`check_teacher` finds all this out before any long work.
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch.nn as nn
from huggingface_hub import errors as hf_errors

import timm
from timm.models import get_pretrained_cfg, parse_model_name

from timm_kd.models import (
    checkpoint_accuracy, checkpoint_num_classes, fetch_command, hub_org, load_kd_checkpoint, read_kd_checkpoint)
from timm_kd.models._store import missing_weights_message, store_name, store_weights
from timm_kd.utils.hub_access import explain_hub_error, hub_endpoint, hub_file_error
from timm_kd.utils.messages import first_line

__all__ = ['TeacherLoadError', 'create_teacher', 'check_teacher', 'resolve_checkpoint']

_logger = logging.getLogger(__name__)

_WAYS_OUT = (
    'either convert and publish the teacher (timm-kd-convert CKPT --push, then point TIMM_KD_HUB_ORG at that '
    'organisation) or pass the checkpoint directly (--teacher-checkpoint PATH, or create_teacher(..., '
    'checkpoint=PATH); timm, RepDistiller, mdistiller and Good-DA formats load)'
)


class TeacherLoadError(RuntimeError):
    """The teacher could not be built with trained weights; the message says what was tried and the ways out."""


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


def check_teacher(name: str, checkpoint: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> Dict[str, Any]:
    """Where :func:`create_teacher` will take the teacher's weights from, found without building or downloading
    anything (at most one quick Hub request): the name is known, a local checkpoint exists, a Hub repo answers
    or the local teacher store holds the teacher. Returns the ``kd_teacher_info`` found so far; raises
    :class:`TeacherLoadError` as :func:`create_teacher` would."""
    source, model_id = parse_model_name(name)
    info: Dict[str, Any] = {'name': name, 'checkpoint': None, 'accuracy': None}
    if checkpoint is None:
        _teacher_pretrained(name, source, model_id, info, build=False, **kwargs)
        return info
    if source is None and not timm.is_model(name):
        _create(name, pretrained=False)  # raises the unknown-model TeacherLoadError
    if not str(checkpoint).startswith(('hf-hub:', 'hf_hub:')):
        info['source'] = str(resolve_checkpoint(checkpoint))
    return info


def resolve_checkpoint(checkpoint: Union[str, os.PathLike]) -> Path:
    """A local checkpoint path, or ``hf-hub:org/repo[@rev]/file`` downloaded into the Hub cache."""
    spec = str(checkpoint)
    if spec.startswith(('hf-hub:', 'hf_hub:')):
        repo_id, filename, revision = _split_hub_file(spec.split(':', 1)[1])
        from huggingface_hub import hf_hub_download
        try:
            _probe_hub(repo_id + (f'@{revision}' if revision else ''), filename)
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except Exception as e:
            raise TeacherLoadError(
                f"Could not download teacher checkpoint '{filename}' from the Hub repo '{repo_id}' at "
                f"{hub_endpoint()}: {explain_hub_error(e)}; check the repo and file name, or pass a local "
                f"checkpoint path instead.") from e
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TeacherLoadError(f'Teacher checkpoint {str(path)!r} does not exist or is not a file.')
    return path


def _split_hub_file(spec: str) -> Tuple[str, str, Optional[str]]:
    """``org/repo[@rev]/path/to/file`` -> (repo_id, filename, revision)."""
    parts = spec.strip('/').split('/')
    if len(parts) < 3:
        raise TeacherLoadError(
            f"Hub checkpoint 'hf-hub:{spec}' must name a file inside a repo: 'hf-hub:org/repo/file.pth' "
            f"(or 'hf-hub:org/repo@revision/file.pth').")
    repo, _, rev = parts[1].partition('@')
    return f'{parts[0]}/{repo}', '/'.join(parts[2:]), rev or None


def _create(name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e) and parse_model_name(name)[0] is not None:
            raise TeacherLoadError(
                f'Teacher {name!r} needs an architecture that is not registered ({e}): import the package '
                f'that defines it first (timm_kd registers the CIFAR models of the KD literature).') from e
        if 'Unknown model' in str(e):
            raise TeacherLoadError(
                f"Unknown teacher model {name!r}: it is not registered in timm or timm_kd (see "
                f"timm.list_models('*{name.split('.')[0][:6]}*')), and not an 'hf-hub:org/repo' or "
                f"'local-dir:PATH' name.") from e
        raise


def _teacher_pretrained(name: str, source: Optional[str], model_id: str, info: Dict[str, Any], build: bool = True,
                        **kwargs) -> Optional[nn.Module]:
    probe = None  # (repo_id, file): checked with one quick request before timm's retrying download
    if source is None:  # registered name: its pretrained cfg must point at real weights
        if not timm.is_model(name):
            _create(name, pretrained=False)  # raises the unknown-model TeacherLoadError
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as e:  # e.g. an unknown pretrained tag
            raise TeacherLoadError(f'Teacher {name!r}: {e}') from e
        # the weight source timm will use, in timm's order: state_dict, file, hf_hub_id, url
        eff = {**(cfg.to_dict() if cfg else {}), **(kwargs.get('pretrained_cfg_overlay') or {})}
        if eff.get('state_dict') is not None or eff.get('file'):
            tried = f"its pretrained file {eff.get('file') or '(state dict)'}"
            info['source'] = eff.get('file')
        elif eff.get('hf_hub_id'):
            hub_id = eff['hf_hub_id']
            org_note = (" (organisation from TIMM_KD_HUB_ORG, default 'timm-kd')"
                        if hub_id.startswith(hub_org() + '/') else '')
            tried = f"the Hub repo '{hub_id}'{org_note} at {hub_endpoint()}"
            info['source'] = f'hf-hub:{hub_id}'
            stored, hub_error = store_weights(hub_id, eff.get('hf_hub_filename'))  # one quick Hub request
            command = fetch_command(store_name(hub_id))
            if stored is not None:
                overlay = stored['pretrained_cfg_overlay']
                if build:  # said once, when the teacher is built (check_teacher finds the same file before)
                    _logger.info(f'Teacher {name!r}: {tried} has no weights ({explain_hub_error(hub_error)}); using '
                                 f"{overlay['file']} from the local teacher store.")
                kwargs['pretrained_cfg_overlay'] = dict(overlay, **(kwargs.get('pretrained_cfg_overlay') or {}))
                tried = f"the local teacher store ({overlay['file']})"
                info.update(source=f"local-dir:{stored['folder']}", accuracy=stored['reported_top1'])
            elif hub_error is not None and command:
                raise TeacherLoadError(missing_weights_message(name, hub_id, explain_hub_error(hub_error), command,
                                                               hub_note=org_note)
                                       + ' (or pass --teacher-checkpoint PATH).') from hub_error
            elif hub_error is not None and not isinstance(hub_error, hf_errors.EntryNotFoundError):
                raise _load_error(name, tried, hub_error) from hub_error  # (without model.safetensors timm tries more)
        elif eff.get('url'):
            tried = f"its pretrained weights at {eff['url']}"
            info['source'] = eff['url']
        else:
            raise TeacherLoadError(f'Teacher {name!r} has no pretrained weights registered; {_WAYS_OUT}.')
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
        return _create(name, pretrained=True, **kwargs) if build else None
    except TeacherLoadError:
        raise
    except Exception as e:
        raise _load_error(name, tried, e) from e


def _load_error(name: str, tried: str, err: BaseException) -> TeacherLoadError:
    return TeacherLoadError(f'Could not load pretrained weights for teacher {name!r} from {tried}: '
                            f'{explain_hub_error(err)}; {_WAYS_OUT}.')


def _probe_hub(hub_id: str, filename: str) -> None:
    """Fail fast when a Hub file is neither cached nor reachable.

    ``hf_hub_download`` retries unreachable / 5xx servers with back-off for about 25 s per file (and timm
    tries two weight files), so a missing network would look like a hang. One HEAD without retries, with
    huggingface_hub's metadata timeout, tells the same story at once (``hub_file_error``).
    """
    error = hub_file_error(hub_id, filename)
    if error is not None and not isinstance(error, hf_errors.EntryNotFoundError):
        raise error  # (a repo without that file: timm may still find another weight file, pytorch_model.bin)


def _teacher_from_checkpoint(name: str, checkpoint, num_classes: Optional[int], info: Dict[str, Any],
                             **kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    path = resolve_checkpoint(checkpoint)
    try:
        state_dict, meta = read_kd_checkpoint(path)
    except Exception as e:
        raise TeacherLoadError(f'Could not read teacher checkpoint {str(checkpoint)!r}: {first_line(e)}') from e
    try:
        source, model_id = parse_model_name(name)
        if source == 'hf-hub':
            _probe_hub(model_id, 'config.json')
        model = _create(name, pretrained=False, **kwargs)
    except TeacherLoadError:
        raise
    except Exception as e:  # e.g. hf-hub:/local-dir: config.json unreachable
        raise TeacherLoadError(f'Could not build teacher {name!r}: {explain_hub_error(e)}.') from e
    ckpt_classes = checkpoint_num_classes(state_dict, model)
    if num_classes is not None and ckpt_classes is not None and ckpt_classes != num_classes:
        raise TeacherLoadError(
            f'Teacher checkpoint {str(checkpoint)!r} predicts {ckpt_classes} classes but the student has '
            f'{num_classes}: use a teacher trained on the same classes.')
    if ckpt_classes is not None and ckpt_classes != model.num_classes:
        model = _create(name, pretrained=False, num_classes=ckpt_classes, **kwargs)
    try:
        load_kd_checkpoint(model, state_dict, strict=True)
    except Exception as e:
        raise TeacherLoadError(
            f'Teacher checkpoint {str(checkpoint)!r} does not fit {name!r}: {first_line(e)} '
            f'(is --teacher the architecture the checkpoint was trained with?)') from e
    info.update(checkpoint=str(checkpoint), source=str(checkpoint), accuracy=checkpoint_accuracy(meta or {}),
                epoch=(meta or {}).get('epoch'))
    return model, info
