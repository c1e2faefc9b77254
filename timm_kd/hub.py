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
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm
from timm.models import get_pretrained_cfg, parse_model_name

from .models import hub_org
from .models._convert import load_kd_checkpoint, read_kd_checkpoint

__all__ = [
    'TeacherLoadError', 'HubPublishError', 'create_teacher', 'resolve_checkpoint', 'hub_endpoint',
    'save_model_folder', 'push_folder', 'teacher_card', 'student_card', 'usage_snippet', 'read_run',
    'export_student', 'publish_student', 'RD_ARCH_MAP', 'map_arch', 'arch_from_path', 'find_teacher_checkpoints',
    'convert_teacher', 'sha256_file',
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

    def _is(e: BaseException, name: str) -> bool:  # by name: some classes are missing in older clients
        cls = getattr(hf_errors, name, None)
        return cls is not None and isinstance(e, cls)

    chain, e = [], err
    while e is not None and len(chain) < 8:  # look through wrappers (timm re-raises some errors)
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if _is(e, 'GatedRepoError'):
            return 'the repository is gated: accept its conditions on the Hub and log in'
        if _is(e, 'RepositoryNotFoundError'):
            return 'the repository does not exist (or is private and no valid token was found)'
        if _is(e, 'RevisionNotFoundError'):
            return 'the requested revision does not exist'
        if _is(e, 'LocalEntryNotFoundError') or _is(e, 'OfflineModeIsEnabled'):
            if constants.HF_HUB_OFFLINE:
                return (f'HF_HUB_OFFLINE=1 is set and the files are not in the local cache ({constants.HF_HUB_CACHE}); '
                        'download them once online or unset HF_HUB_OFFLINE')
            return f'the Hub at {constants.ENDPOINT} could not be reached and the files are not in the local cache'
        if _is(e, 'EntryNotFoundError'):
            return 'the repository exists but does not contain the expected file (config.json / model.safetensors)'
        if _is(e, 'HfHubHTTPError'):
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
            _probe_hub(repo_id + (f'@{revision}' if revision else ''), filename)
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


def _classifier_rows(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Optional[int]:
    """Output classes of a checkpoint, read from its classifier weight (our name or RepDistiller's)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(dict(state_dict), model)
        except Exception:  # a checkpoint of another family: load_kd_checkpoint reports it properly
            pass
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
            probe = (hub_id, eff.get('hf_hub_filename') or 'model.safetensors')
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
    repo_id, _, revision = hub_id.partition('@')
    revision = revision or None
    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
        return
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    except hf_errors.EntryNotFoundError:
        pass  # the repo is there; timm may still find another weight file (pytorch_model.bin)


def _teacher_from_checkpoint(name: str, checkpoint, num_classes: Optional[int], info: Dict[str, Any],
                             **kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    path = resolve_checkpoint(checkpoint)
    try:
        state_dict, meta = read_kd_checkpoint(path)
    except Exception as e:
        raise TeacherLoadError(f'Could not read teacher checkpoint {str(checkpoint)!r}: {_first_line(e)}') from e
    try:
        source, model_id = parse_model_name(name)
        if source == 'hf-hub':
            _probe_hub(model_id, 'config.json')
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
        load_kd_checkpoint(model, state_dict, strict=True)
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


# ---------------------------------------------------------------------------------------------------------
# Hub folders: config.json + model.safetensors + README.md (+ provenance files), written atomically
# ---------------------------------------------------------------------------------------------------------

def save_model_folder(
        model: nn.Module,
        folder: Union[str, os.PathLike],
        readme: str,
        model_config: Optional[Dict[str, Any]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        extra_files: Optional[Dict[str, Union[str, bytes]]] = None,
) -> Path:
    """Write a timm Hub folder: ``config.json``, ``model.safetensors`` (only), ``README.md`` and extras.

    The folder is built next to its destination and renamed into place, so a crash never leaves a
    half-written export, and an older export of the same name is replaced as a whole.
    """
    from timm.models import save_for_hf
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    try:
        save_for_hf(model, tmp, model_config=model_config, data_config=data_config, safe_serialization=True)
        (tmp / 'README.md').write_text(readme, encoding='utf-8')
        for rel, content in (extra_files or {}).items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (dst.write_bytes if isinstance(content, bytes) else dst.write_text)(content)
        umask = os.umask(0)
        os.umask(umask)
        for p in [tmp, *tmp.rglob('*')]:  # mkdtemp makes 0700: give the export the user's normal permissions
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
        old = None
        if folder.exists():
            old = folder.with_name(f'.{folder.name}.old-{os.getpid()}')
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def push_folder(
        folder: Union[str, os.PathLike],
        repo_id: str,
        private: bool = False,
        token: Optional[str] = None,
        commit_message: str = 'Upload model with timm-kd',
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the repo URL.

    An existing repo is updated in place (unchanged files are skipped by the client). The token comes
    from ``token``, else ``HF_TOKEN`` or a prior ``hf auth login``; it is never logged.
    Raises :class:`HubPublishError` with one clear sentence; the local folder is only read.
    """
    from huggingface_hub import HfApi
    folder = Path(folder)
    endpoint = hub_endpoint()
    if not (folder / 'config.json').is_file():
        raise HubPublishError(f'{folder} is not a model folder (no config.json); nothing was uploaded.')
    try:
        api = HfApi(endpoint=endpoint, token=token, library_name='timm-kd', library_version=_version())
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), commit_message=commit_message,
                          ignore_patterns=['.*', '**/.*'])
    except Exception as e:
        raise HubPublishError(
            f"Could not publish {folder} to '{repo_id}' at {endpoint}: {_publish_reason(e)}; nothing local was "
            f"changed, so fix that and run the same command again (the upload is one commit, a rerun "
            f"updates the repo).") from e
    return f'{endpoint}/{url.repo_id}'


def _publish_reason(err: BaseException) -> str:
    status = getattr(getattr(err, 'response', None), 'status_code', None)
    if status in (401, 403):
        return (f'the Hub refused the write (HTTP {status}): log in with `hf auth login` or set HF_TOKEN to a '
                'token with write access to that namespace')
    if status == 404:
        return 'the Hub answered 404 (does the namespace exist, and may your token write to it?)'
    if status is not None and status >= 500:
        return f'the Hub had a server error (HTTP {status}); try again later'
    return _hub_reason(err)


def _version() -> str:
    from . import __version__
    return __version__


# ---------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------

_DATASETS = {  # our dataset names -> (HF dataset id, pretty name)
    'cifar100': ('cifar100', 'CIFAR-100'), 'cifar10': ('cifar10', 'CIFAR-10'),
    'tinyimagenet': ('tiny-imagenet', 'Tiny ImageNet'), 'tiny-imagenet': ('tiny-imagenet', 'Tiny ImageNet'),
}

CITATION = '''@inproceedings{wang2022gooddakd,
  title={What Makes a "Good" Data Augmentation in Knowledge Distillation -- A Statistical Perspective},
  author={Wang, Huan and Lohit, Suhas and Jones, Michael and Fu, Yun},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022},
  note={arXiv:2012.02909}
}'''


TEACHER_CITATION = '''@inproceedings{tian2020crd,
  title={Contrastive Representation Distillation},
  author={Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},
  booktitle={International Conference on Learning Representations},
  year={2020}
}'''


def dataset_ids(dataset: Optional[str]) -> Tuple[str, str]:
    """(Hub dataset id, pretty name) of a dataset name such as ``torch/cifar100`` or ``tinyimagenet``."""
    key = (dataset or 'cifar100').split('/')[-1].lower().replace('_', '')
    return _DATASETS.get(key, (key, dataset or key))


def _front_matter(repo_id: str, tags, dataset: Optional[str], license: str, metrics, split: str = 'test') -> str:
    """YAML metadata, with a model-index built by huggingface_hub so the Hub accepts it."""
    from huggingface_hub import EvalResult, ModelCardData
    ds_id, ds_name = dataset_ids(dataset)
    evals = [EvalResult(task_type='image-classification', task_name='Image Classification', dataset_type=ds_id,
                        dataset_name=ds_name, dataset_split=split, metric_type=t, metric_value=round(float(v), 4),
                        metric_name=n) for t, n, v in metrics if v is not None]
    data = ModelCardData(model_name=repo_id.split('/')[-1], license=license, library_name='timm',
                         pipeline_tag='image-classification', tags=list(tags), datasets=[ds_id],
                         eval_results=evals or None)
    return f'---\n{data.to_yaml()}\n---\n'


def usage_snippet(model_ref: str, extra: str = '') -> str:
    """Card usage block; it must start with ``import timm_kd``: timm cannot build our models without it."""
    return f'''```python
import timm_kd  # registers timm-kd's CIFAR models in timm; without it create_model fails ("Unknown model")
import timm
import torch

model = timm.create_model('{model_ref}', pretrained=True).eval()
data_cfg = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**data_cfg)  # resize/crop/normalize for this model
with torch.no_grad():
    probs = model(transform(img).unsqueeze(0)).softmax(-1)  # img: a PIL image
```
{extra}'''


def _fmt(v, nd: int = 2) -> str:
    return '–' if v is None else (f'{v:.{nd}f}' if isinstance(v, float) else str(v))


def _params(model: nn.Module) -> str:
    return f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M'


def _input(size) -> str:
    return 'x'.join(map(str, size))


def teacher_card(
        model: nn.Module,
        repo_id: str,
        *,
        arch: str,
        original_arch: str,
        source: str,
        sha256: str,
        accuracy: Optional[float],
        epoch: Optional[int] = None,
        dataset: str = 'cifar100',
        license: str = 'other',
        origin: str = 'RepDistiller / CRD teacher zoo',
) -> str:
    """Model card of a converted KD teacher (provenance, checksum, reported accuracy, usage)."""
    _, ds_name = dataset_ids(dataset)
    org = repo_id.split('/')[0]
    default_org = ' (it is the default organisation)' if org == 'timm-kd' else ''
    at_epoch = f' (epoch {epoch})' if epoch is not None else ''
    size = _input(model.pretrained_cfg.get('input_size', (3, 32, 32)))
    text = _front_matter(
        repo_id, ['image-classification', 'timm', 'timm-kd', 'knowledge-distillation', 'teacher'], dataset, license,
        [('accuracy', 'Top-1 accuracy (reported by the source checkpoint)', accuracy)])
    text += f'''# Model card for {repo_id.split('/')[-1]}

A {ds_name} **{arch}** classifier, converted unchanged from the {origin} checkpoint of `{original_arch}`,
for use as a knowledge-distillation teacher with timm-kd (`pip install timm-kd`) and timm.

## Model details
- **Architecture:** `{arch}` (RepDistiller name `{original_arch}`), {_params(model)} parameters, registered by `timm_kd`
- **Dataset:** {ds_name}, {model.num_classes} classes, input {size}
- **Top-1 accuracy:** {_fmt(accuracy)} % as stored in the checkpoint by its training code{at_epoch};
  not re-evaluated during conversion
- **Weights:** `model.safetensors`, converted by timm-kd {_version()} (timm {timm.__version__});
  the logits equal the original checkpoint's

## Provenance
- **Source file:** `{source}`
- **Source sha256:** `{sha256}`
- **Original code:** RepDistiller (https://github.com/HobbitLong/RepDistiller); key names are unchanged.
- **License:** the weights were trained and released by the original authors; check their license before
  redistributing them.

## Usage
{usage_snippet('hf-hub:' + repo_id)}
The registered name resolves to this repo when `TIMM_KD_HUB_ORG={org}` is set before `import timm_kd`{default_org}:

```python
import timm_kd, timm
teacher = timm.create_model('{arch}', pretrained=True)  # or: timm_kd.hub.create_teacher('{arch}')
```
and `train_kd.py --teacher {arch}` uses it as the default teacher weights.

## Citation
The teacher zoo was released with RepDistiller:
```bibtex
{TEACHER_CITATION}
```
'''
    return text


def student_card(
        model: nn.Module,
        repo_id: str,
        *,
        results: Dict[str, Any],
        args: Dict[str, Any],
        which: str,
        epoch: Optional[int],
        summary_rows: Optional[list] = None,
        license: str = 'apache-2.0',
        ema: bool = False,
) -> str:
    """Model card of a distilled student: lineage, recipe, best and last results, usage."""
    arch = results.get('model') or args.get('model')
    teacher = results.get('teacher') or args.get('teacher')
    dataset = results.get('dataset') or args.get('dataset') or 'cifar100'
    ds_id, ds_name = dataset_ids(dataset)
    r = {k: results.get(k) for k in ('best_top1', 'best_top5', 'best_epoch', 'last_top1', 'last_top5', 'last_epoch',
                                     'teacher_top1')}
    # timm's 'validation' split of the torchvision CIFAR datasets is their test set
    split = 'test' if ds_id in ('cifar10', 'cifar100') else (args.get('val_split') or 'test')
    metrics = [('accuracy', 'Top-1 accuracy (best epoch)', r['best_top1']),
               ('top_5_accuracy', 'Top-5 accuracy (best epoch)', r['best_top5']),
               ('accuracy', 'Top-1 accuracy (last epoch)', r['last_top1']),
               ('top_5_accuracy', 'Top-5 accuracy (last epoch)', r['last_top5'])]
    text = _front_matter(repo_id, ['image-classification', 'timm', 'timm-kd', 'knowledge-distillation'], dataset,
                         license, metrics, split=split)

    t_src = _public_path(results.get('teacher_source') or results.get('teacher_checkpoint')
                         or args.get('teacher_checkpoint'))
    t_src = f' (weights: `{t_src}`)' if t_src else ' (its default pretrained weights)'
    t_acc = f', top-1 {_fmt(r["teacher_top1"])} %' if r['teacher_top1'] is not None else ''
    teacher_line = f'`{teacher}`{t_acc}{t_src}' if teacher else 'none (plain training)'
    from_teacher = f' from a **{teacher}** teacher' if teacher else ''
    size = _input((results.get('data_config') or {}).get('input_size')
                  or model.pretrained_cfg.get('input_size', (3, 32, 32)))
    published = f'{which} epoch' + (f' (epoch {epoch})' if epoch is not None else '')
    published += ', exponential moving average (EMA) of the weights, which is what was evaluated' if ema else ''
    best_at = f" ({r['best_epoch']})" if r['best_epoch'] is not None else ''
    last_at = f" ({r['last_epoch']})" if r['last_epoch'] is not None else ''
    recipe = '\n'.join(f'- **{k}:** `{v}`' for k, v in (results.get('recipe') or {}).items()) or '- (see below)'
    text += f'''# Model card for {repo_id.split('/')[-1]}

A {ds_name} **{arch}** student trained with knowledge distillation{from_teacher} using timm-kd
(`pip install timm-kd`): KD with teacher-labelled data augmentation (TLmixup / TLCutMix / TLCutMix+pick).

## Model details
- **Architecture:** `{arch}`, {_params(model)} parameters, registered by `timm_kd`
- **Dataset:** {ds_name}, {model.num_classes} classes, input {size}
- **Teacher:** {teacher_line}
- **Published weights:** {published}; `model.safetensors` only
- **Software:** timm-kd {_version()}, timm {timm.__version__}, torch {torch.__version__}

## Results ({ds_name}, {split} split)
| weights | top-1 (%) | top-5 (%) |
|---|---|---|
| best epoch{best_at} | {_fmt(r['best_top1'])} | {_fmt(r['best_top5'])} |
| last epoch{last_at} | {_fmt(r['last_top1'])} | {_fmt(r['last_top5'])} |
| teacher `{teacher}` | {_fmt(r['teacher_top1'])} | |

## Distillation recipe
{recipe}

The full arguments are below and in `training/args.yaml`; `training/summary.csv` has the per-epoch log.
Reproduce with `accelerate launch train_kd.py --config training/args.yaml --data-dir <your data>`.

## Usage
{usage_snippet('hf-hub:' + repo_id)}
'''
    if summary_rows:
        head = list(summary_rows[0].keys())
        step = max(1, len(summary_rows) // 10)
        picked = summary_rows[::step] + ([summary_rows[-1]] if (len(summary_rows) - 1) % step else [])
        text += '\n## Training log (`summary.csv`{})\n| {} |\n|{}\n'.format(
            f', every {step}th epoch' if step > 1 else '', ' | '.join(head), '---|' * len(head))
        text += ''.join('| ' + ' | '.join(_short(row.get(h)) for h in head) + ' |\n' for row in picked)
    if args:
        import yaml
        text += f"\n## Training arguments\n```yaml\n{yaml.safe_dump(args, sort_keys=True).strip()}\n```\n"
    text += f'\n## Citation\n```bibtex\n{CITATION}\n```\n'
    return text


def _public_path(path: Optional[str]) -> Optional[str]:
    """A checkpoint reference fit for a public card: Hub references as they are, local files by name only."""
    if not path:
        return None
    path = str(path)
    return path if path.startswith(('hf-hub:', 'hf_hub:', 'http://', 'https://')) else Path(path).name


def _short(v) -> str:
    try:
        f = float(v)
        return f'{f:.4g}' if not f.is_integer() else str(int(f))
    except (TypeError, ValueError):
        return str(v)


# ---------------------------------------------------------------------------------------------------------
# Students out
# ---------------------------------------------------------------------------------------------------------

_SECRET_WORDS = ('token', 'secret', 'password', 'api_key')
# where a run wrote / pushed / read its files: local or one-off, not recipe (and a reproduction from the
# published args must not push to this repo again)
_LOCAL_ARGS = ('push_to_hub', 'hub_private', 'resume', 'config', 'output', 'experiment', 'data_dir')


def _clean_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """Training args fit for a public card: no secrets, plain YAML types."""
    out = {}
    for k, v in (args or {}).items():
        if any(w in str(k).lower() for w in _SECRET_WORDS) or k in _LOCAL_ARGS:
            continue
        if isinstance(v, tuple):
            v = list(v)
        out[str(k)] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return out


def read_run(run_dir: Union[str, os.PathLike]) -> Tuple[Dict[str, Any], Dict[str, Any], list]:
    """(results.json, args.yaml, summary.csv rows) of a train_kd.py run folder; missing files give empties."""
    import csv
    import yaml
    run_dir = Path(run_dir)
    results = json.loads((run_dir / 'results.json').read_text()) if (run_dir / 'results.json').is_file() else {}
    args = {}
    if (run_dir / 'args.yaml').is_file():
        args = yaml.safe_load((run_dir / 'args.yaml').read_text()) or {}
    rows = []
    if (run_dir / 'summary.csv').is_file():
        with open(run_dir / 'summary.csv', newline='') as f:
            rows = list(csv.DictReader(f))
    return results, args, rows


def export_student(
        run_dir: Union[str, os.PathLike],
        repo_id: str,
        which: str = 'best',
        out_dir: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Write the Hub folder of a trained student (no network). Default destination: ``<run_dir>/hub/<name>``."""
    run_dir = Path(run_dir)
    if which not in ('best', 'last'):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f'Run folder {run_dir} does not exist.')
    ckpt = run_dir / ('model_best.pth.tar' if which == 'best' else 'last.pth.tar')
    if not ckpt.is_file():
        raise FileNotFoundError(
            f'{ckpt} not found: the run folder has no {which} checkpoint'
            + (" (try --which last)" if which == 'best' and (run_dir / 'last.pth.tar').is_file() else '') + '.')
    results, args, rows = read_run(run_dir)
    state_dict, meta = read_kd_checkpoint(ckpt)
    ckpt_args = meta.get('args') if isinstance(meta.get('args'), dict) else {}
    args = _clean_args(args or ckpt_args)
    ema = bool(args.get('model_ema'))
    if ema:  # with --model-ema, train_kd.py reports (and picks the best epoch by) the EMA weights: publish those
        state_dict, ema = _ema_state_dict(ckpt, state_dict)
    if args.get('teacher_checkpoint'):
        args['teacher_checkpoint'] = _public_path(args['teacher_checkpoint'])
    arch = meta.get('arch') or results.get('model') or args.get('model')
    if not arch:
        raise ValueError(f'Cannot tell the architecture of {ckpt}: no arch in the checkpoint, results.json or '
                         f'args.yaml.')
    results = dict(results, model=results.get('model') or arch)
    num_classes = results.get('num_classes') or args.get('num_classes')
    kwargs = {k: args[k] for k in ('in_chans',) if args.get(k) is not None}
    model = timm.create_model(arch, pretrained=False, **({'num_classes': num_classes} if num_classes else {}), **kwargs)
    load_kd_checkpoint(model, state_dict, strict=True)
    model.eval()

    # the preprocessing the student was trained with: train_kd.py records it in results.json (data_config);
    # older runs only have the args, where None means the model's default
    trained = results.get('data_config') or meta.get('data_config') or args
    data_config = {k: trained[k] for k in ('input_size', 'img_size', 'mean', 'std', 'interpolation', 'crop_pct')
                   if isinstance(trained, dict) and trained.get(k) is not None}
    epoch = meta.get('epoch')
    epoch = results.get('best_epoch') if which == 'best' and results.get('best_epoch') is not None else epoch
    readme = student_card(model, repo_id, results=results, args=args, which=which, epoch=epoch, summary_rows=rows,
                          ema=ema)
    name = repo_id.split('/')[-1]
    cfg_overrides = {'tag': name.split('.', 1)[1]} if '.' in name else {}
    lineage = {
        'kind': 'student', 'repo_id': repo_id, 'weights': which + (' (EMA)' if ema else ''), 'epoch': epoch,
        'checkpoint': ckpt.name,
        'checkpoint_sha256': sha256_file(ckpt), 'teacher': results.get('teacher') or args.get('teacher'),
        'teacher_top1': results.get('teacher_top1'), 'dataset': results.get('dataset') or args.get('dataset'),
        'results': {k: results.get(k) for k in ('best_top1', 'best_top5', 'best_epoch', 'last_top1', 'last_top5')},
        'recipe': results.get('recipe') or {}, 'timm_kd_version': _version(),
    }
    import yaml
    # local paths and push outcomes stay local
    public = {k: v for k, v in results.items() if k not in ('run_dir', 'hub_url', 'hub_error')}
    if public.get('teacher_checkpoint'):
        public['teacher_checkpoint'] = _public_path(public['teacher_checkpoint'])
    extra = {'training/results.json': json.dumps(public, indent=2, default=str)}
    if args:  # the cleaned args, not the file: a secret that slipped into args.yaml is never republished
        extra['training/args.yaml'] = yaml.safe_dump(args, sort_keys=True)
    if (run_dir / 'summary.csv').is_file():
        extra['training/summary.csv'] = (run_dir / 'summary.csv').read_bytes()
    folder = Path(out_dir) if out_dir is not None else run_dir / 'hub' / repo_id.split('/')[-1]
    return save_model_folder(model, folder, readme, model_config={'pretrained_cfg': cfg_overrides, 'timm_kd': lineage},
                             data_config=data_config or None, extra_files=extra)


def _ema_state_dict(ckpt: Path, state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], bool]:
    """The checkpoint's ``state_dict_ema`` (cleaned like the main weights), or the main weights if it has none."""
    from .models._convert import _torch_load, clean_kd_state_dict  # the same safe reader, EMA entry
    raw = _torch_load(os.fspath(ckpt))
    ema_sd = raw.get('state_dict_ema') if isinstance(raw, dict) else None
    if not isinstance(ema_sd, dict) or not ema_sd:
        _logger.warning(f'{ckpt} has no state_dict_ema although the run used --model-ema: publishing the raw weights.')
        return state_dict, False
    return clean_kd_state_dict(ema_sd), True


def publish_student(
        run_dir: Union[str, os.PathLike],
        repo_id: str,
        private: bool = False,
        dry_run: bool = False,
        token: Optional[str] = None,
        which: str = 'best',
        out_dir: Optional[Union[str, os.PathLike]] = None,
) -> Union[str, Path]:
    """Publish a trained student from its ``train_kd.py`` output folder.

    Writes ``<run_dir>/hub/<repo name>/`` (config.json, model.safetensors, README.md model card,
    training/{args.yaml, summary.csv, results.json}) and, unless ``dry_run``, uploads it to ``repo_id``
    (created if missing, updated in place if it exists).

    Returns:
        The repo URL after an upload, or the local folder (a ``Path``) for a dry run.

    Raises:
        FileNotFoundError / ValueError for a bad run folder (before anything is written),
        HubPublishError when the upload fails (the local folder stays for a rerun).
    """
    folder = export_student(run_dir, repo_id, which=which, out_dir=out_dir)
    if dry_run:
        _logger.info(f'Dry run: wrote {folder}, nothing uploaded.')
        return folder
    return push_folder(folder, repo_id, private=private, token=token,
                       commit_message=f'Upload {Path(run_dir).name} ({which} weights) with timm-kd')


# ---------------------------------------------------------------------------------------------------------
# Teachers in: convert RepDistiller / mdistiller / Good-DA checkpoints to timm Hub folders
# ---------------------------------------------------------------------------------------------------------

#: RepDistiller / CRD / mdistiller architecture names -> timm_kd names.
RD_ARCH_MAP: Dict[str, str] = {
    **{n: n for n in ('resnet8', 'resnet14', 'resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110',
                      'resnet8x4', 'resnet32x4', 'wrn_16_1', 'wrn_16_2', 'wrn_40_1', 'wrn_40_2')},
    **{f'vgg{d}': f'vgg{d}_cifar' for d in (8, 11, 13, 16, 19)},
    **{f'vgg{d}_bn': f'vgg{d}_cifar' for d in (8, 11, 13, 16, 19)},
    'ResNet18': 'resnet18_cifar', 'ResNet50': 'resnet50_cifar',
    'MobileNetV2': 'mobilenetv2_cifar', 'ShuffleV1': 'shufflenetv1_cifar', 'ShuffleV2': 'shufflenetv2_cifar',
}

_DATA_CONFIGS = {  # preprocessing of the datasets whose teachers the KD literature released
    'cifar100': None,  # our models' default cfg is CIFAR-100 already
    'tinyimagenet': dict(input_size=(3, 64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


def map_arch(name: str) -> str:
    """Our registered name for a RepDistiller architecture name (or one of ours)."""
    if name in RD_ARCH_MAP:
        return RD_ARCH_MAP[name]
    lower = {k.lower(): v for k, v in RD_ARCH_MAP.items()}
    if name.lower() in lower:
        return lower[name.lower()]
    if timm.is_model(name):
        return name
    raise ValueError(f'Unknown teacher architecture {name!r}: expected a RepDistiller name '
                     f'({", ".join(sorted(RD_ARCH_MAP))}) or a registered timm model; pass --arch.')


def arch_from_path(path: Union[str, os.PathLike]) -> Optional[str]:
    """The architecture a checkpoint path names: ``<arch>_vanilla/ckpt_epoch_240.pth``, ``<arch>_best.pth``, ..."""
    parts = str(path).replace('\\', '/').rstrip('/').split('/')
    if len(parts) > 1 and '_vanilla' in parts[-2]:
        return parts[-2].split('_vanilla')[0]
    stem = parts[-1]
    for ext in ('.pth.tar', '.safetensors', '.pth', '.pt', '.bin'):
        if stem.endswith(ext):
            stem = stem[:-len(ext)]
            break
    for suffix in ('_best', '_last', '_vanilla', '.cifar100'):
        stem = stem.split(suffix)[0]
    return stem if (stem in RD_ARCH_MAP or stem.lower() in {k.lower() for k in RD_ARCH_MAP}) else None


def find_teacher_checkpoints(src: Union[str, os.PathLike], extract_dir: Union[str, os.PathLike]) -> list:
    """Teacher checkpoints in a file, a folder (e.g. an extracted ``cifar_teachers.tar``) or a ``.tar``.

    Returns ``[(local_path, label, arch_or_None)]``; ``label`` is what the card calls the source. Per
    folder only the last ``ckpt_epoch_N.pth`` counts (the released teachers are the final epoch). Archive
    members are extracted one by one into ``extract_dir`` (never ``extractall``: no path tricks).
    """
    import re
    import tarfile
    src = Path(src)
    epoch_re = re.compile(r'ckpt_epoch_(\d+)\.pth$')

    def _pick(names):
        by_dir: Dict[str, list] = {}
        for n in names:
            by_dir.setdefault(n.rsplit('/', 1)[0] if '/' in n else '', []).append(n)
        chosen = []
        for d, files in sorted(by_dir.items()):
            epochs = [(int(m.group(1)), f) for f in files if (m := epoch_re.search(f))]
            chosen += [max(epochs)[1]] if epochs else sorted(files)
        return chosen

    if src.is_dir():
        names = [p.relative_to(src).as_posix() for p in src.rglob('*')
                 if p.is_file() and p.name.endswith(('.pth', '.pth.tar', '.pt', '.safetensors'))]
        return [(src / n, f'{src.name}/{n}', arch_from_path(n)) for n in _pick(names)]
    if not src.is_file():
        raise FileNotFoundError(f'{src} does not exist.')
    if src.name.endswith('.tar') and not src.name.endswith('.pth.tar') and tarfile.is_tarfile(src):
        out = []
        with tarfile.open(src) as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile() and m.name.endswith(('.pth', '.pt'))}
            for i, name in enumerate(_pick(sorted(members))):
                dst = Path(extract_dir) / f'{i:03d}_{Path(name).name}'
                with tf.extractfile(members[name]) as fin, open(dst, 'wb') as fout:
                    shutil.copyfileobj(fin, fout)
                out.append((dst, f'{src.name}:{name}', arch_from_path(name)))
        if not out:
            raise ValueError(f'{src} holds no .pth checkpoints.')
        return out
    return [(src, src.name if src.parent == Path('.') else str(src), arch_from_path(src))]


def convert_teacher(
        checkpoint: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        arch: Optional[str] = None,
        org: Optional[str] = None,
        tag: Optional[str] = None,
        dataset: str = 'cifar100',
        num_classes: Optional[int] = None,
        accuracy: Optional[float] = None,
        source: Optional[str] = None,
        license: str = 'other',
        origin: str = 'RepDistiller / CRD teacher zoo',
        verify: bool = True,
) -> Dict[str, Any]:
    """Convert one KD teacher checkpoint into the timm Hub folder ``<out_dir>/<arch>.<tag>``.

    Args:
        checkpoint: a RepDistiller / mdistiller / Good-DA / timm checkpoint file.
        arch: RepDistiller or timm_kd architecture name; default: read from the path (``<arch>_vanilla/...``).
        org: Hub organisation of the repo id (default: ``TIMM_KD_HUB_ORG`` or ``timm-kd``), so the result
            is exactly what a registered name resolves to.
        tag: repo suffix after the arch (default: the dataset, e.g. ``cifar100``).
        accuracy: reported top-1; default: the checkpoint's own ``accuracy`` entry.
        source: how the card names the source file (default: the file path).
        origin: who released it, for the card (e.g. ``mdistiller cifar_teachers.tar``).
        verify: reload the folder through ``local-dir:`` and require identical logits.

    Returns:
        dict(folder, repo_id, arch, original_arch, accuracy, sha256, epoch).
    """
    checkpoint = Path(checkpoint)
    original = arch or arch_from_path(source or checkpoint) or arch_from_path(checkpoint)
    if not original:
        raise ValueError(f'Cannot tell the architecture of {source or checkpoint}: pass --arch '
                         f'(e.g. resnet32x4, vgg13, ResNet50, MobileNetV2, ShuffleV1, ShuffleV2, wrn_40_2).')
    ours = map_arch(original)
    key = dataset.split('/')[-1].lower().replace('_', '').replace('-', '')
    tag = tag or key
    state_dict, meta = read_kd_checkpoint(checkpoint)
    model = timm.create_model(ours, pretrained=False)
    rows = _classifier_rows(state_dict, model)
    nc = num_classes or rows
    if nc is not None and nc != model.num_classes:
        model = timm.create_model(ours, pretrained=False, num_classes=nc)
    load_kd_checkpoint(model, state_dict, strict=True)
    model.eval()
    accuracy = accuracy if accuracy is not None else _as_float(meta.get('accuracy') or meta.get('best_acc'))
    epoch = meta.get('epoch')
    digest = sha256_file(checkpoint)
    repo_id = f'{(org or hub_org()).strip("/")}/{ours}.{tag}'
    label = source or str(checkpoint)
    readme = teacher_card(model, repo_id, arch=ours, original_arch=original, source=label, sha256=digest,
                          accuracy=accuracy, epoch=epoch, dataset=key, license=license, origin=origin)
    lineage = {'kind': 'teacher', 'repo_id': repo_id, 'original_arch': original, 'source': label,
               'source_sha256': digest, 'reported_top1': accuracy, 'epoch': epoch, 'timm_kd_version': _version()}
    folder = save_model_folder(
        model, Path(out_dir) / f'{ours}.{tag}', readme,
        model_config={'pretrained_cfg': {'tag': tag, 'license': license}, 'timm_kd': lineage},
        data_config=_DATA_CONFIGS.get(key))
    if verify:
        _verify_folder(model, folder)
    return dict(folder=folder, repo_id=repo_id, arch=ours, original_arch=original, accuracy=accuracy,
                sha256=digest, epoch=epoch)


def _verify_folder(model: nn.Module, folder: Path) -> None:
    """The exported folder must rebuild the same network: same logits through timm's own loader."""
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, *model.pretrained_cfg.get('input_size', (3, 32, 32)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(model(x), reloaded(x)):
            raise RuntimeError(f'{folder} does not reproduce the source logits; the export is broken.')
