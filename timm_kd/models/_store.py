"""The local teacher store: the released KD teachers, converted to timm folders on this machine.

``timm-kd-convert --download SOURCE`` fetches one of the released teacher archives (:data:`TEACHER_SOURCES`),
checks its sha256 and converts every teacher in it into ``<store>/<arch>.<tag>/`` (``config.json`` +
``model.safetensors``: what a Hub repo of that name would hold). The store is ``$HF_ASSETS_CACHE/timm-kd/teachers``
(``~/.cache/huggingface/assets/timm-kd/teachers`` unless ``HF_HOME`` or ``HF_ASSETS_CACHE`` say otherwise): the
assets cache is the folder huggingface_hub keeps for libraries' own files, while its Hub cache holds Hub repos
only (``hf cache`` reports anything else there as corrupted). Archives and their digests go to
``$HF_ASSETS_CACHE/timm-kd/downloads/<source>/``.

A registered model's pretrained weights come from its Hub repo ``<org>/<arch>.<tag>``. When that repo has no
weights (it does not exist, the Hub cannot be reached, or the files are neither cached nor allowed to be
fetched under ``HF_HUB_OFFLINE=1``), the store's folder of the same name is used instead: that is how
``timm.create_model('resnet32x4', pretrained=True)``, ``create_teacher('resnet32x4')`` and
``train_kd.py --teacher resnet32x4`` find downloaded teachers (:func:`store_weights`).
"""
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from timm.models import PretrainedCfg

from timm_kd.utils.files import FileReadError, read_json
from timm_kd.utils.hub_access import explain_hub_error, hub_file_error
from ._names import map_arch

__all__ = ['TeacherSource', 'TEACHER_SOURCES', 'store_dir', 'downloads_dir', 'store_folder', 'teacher_record',
           'list_teachers', 'store_name', 'fetch_command', 'store_weights', 'missing_weights_message']

_logger = logging.getLogger(__name__)

#: the library folder of timm-kd in the Hugging Face assets cache
ASSETS_LIBRARY = 'timm-kd'
#: the weights file of a store folder (and of a timm Hub repo)
WEIGHTS_FILE = 'model.safetensors'


@dataclass(frozen=True)
class TeacherSource:
    """A released archive of KD teachers that ``timm-kd-convert --download`` knows."""
    url: str
    sha256: Optional[str]  # the digest its publisher gives; None: none is published, trust the first download
    teachers: Tuple[str, ...]  # the architectures it holds (its own names)
    origin: str  # who released it, as model cards say it
    dataset: str = 'cifar100'

    @property
    def filename(self) -> str:
        return self.url.rsplit('/', 1)[-1]


#: Neither release publishes a digest of its archive (GitHub shows none for assets of that age), so both are
#: trusted on first use. mdistiller's teachers are the entries of its model table that name a file
#: (``mdistiller/models/cifar/__init__.py``); Good-DA's are the RepDistiller / CRD teachers its set-up and
#: training scripts load from the unzipped ``models/<arch>_vanilla/`` folders.
TEACHER_SOURCES: Dict[str, TeacherSource] = {
    'mdistiller': TeacherSource(
        url='https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar',
        sha256=None,
        teachers=('resnet56', 'resnet110', 'resnet32x4', 'ResNet50', 'wrn_40_2', 'vgg13'),
        origin='mdistiller release "checkpoints", cifar_teachers.tar (the RepDistiller / CRD teachers)'),
    'good-da': TeacherSource(
        url='https://github.com/MingSun-Tse/Good-DA-in-KD/releases/download/v0.1/teachers_cifar100.zip',
        sha256=None,
        teachers=('resnet56', 'resnet110', 'resnet32x4', 'ResNet50', 'wrn_40_2', 'vgg13'),
        origin='Good-DA-in-KD release v0.1, teachers_cifar100.zip (the RepDistiller / CRD teachers)'),
}


def _assets_dir() -> Path:
    from huggingface_hub import constants  # read at call time: HF_HOME / HF_ASSETS_CACHE as the client sees them
    return Path(constants.HF_ASSETS_CACHE) / ASSETS_LIBRARY


def store_dir() -> Path:
    """The local teacher store (it may not exist yet)."""
    return _assets_dir() / 'teachers'


def downloads_dir() -> Path:
    """Where downloaded archives and their recorded digests are kept."""
    return _assets_dir() / 'downloads'


def store_folder(name: str, store: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """``<store>/<name>`` (e.g. ``resnet32x4.cifar100``) when it holds a converted teacher, else None."""
    folder = Path(store if store is not None else store_dir()) / name
    return folder if (folder / 'config.json').is_file() and (folder / WEIGHTS_FILE).is_file() else None


def teacher_record(folder: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """What a store folder says about its teacher: name, architecture, classes, data set, the top-1 accuracy its
    source reports, where it came from (archive member, release, archive sha256), the folder, and the
    ``pretrained_cfg_overlay`` that loads it as timm loads a ``local-dir:`` folder (its weights file and the
    pretrained cfg saved with them: classes, input size, normalisation); None when the folder holds no readable
    teacher."""
    folder = Path(folder)
    if folder.name.startswith('.') or store_folder(folder.name, folder.parent) is None:
        return None  # a hidden temporary export, or weights missing
    try:
        cfg = read_json(str(folder / 'config.json'))
    except FileReadError:
        return None
    if not isinstance(cfg, dict):
        return None
    lineage = cfg.get('timm_kd') if isinstance(cfg.get('timm_kd'), dict) else {}
    top1 = lineage.get('reported_top1')
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    overlay = {k: v for k, v in (cfg.get('pretrained_cfg') or {}).items() if k in known}
    overlay.update(num_classes=cfg.get('num_classes', overlay.get('num_classes')), file=str(folder / WEIGHTS_FILE))
    return dict(name=folder.name, architecture=cfg.get('architecture'), num_classes=cfg.get('num_classes'),
                dataset=lineage.get('dataset'), reported_top1=float(top1) if isinstance(top1, (int, float)) else None,
                source=lineage.get('source'), origin=lineage.get('origin'),
                archive_sha256=lineage.get('archive_sha256'), folder=folder, pretrained_cfg_overlay=overlay)


def list_teachers(store: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """The teachers in the local store (or ``store``), by name, as :func:`teacher_record` describes them."""
    root = Path(store if store is not None else store_dir())
    records = (teacher_record(config.parent) for config in sorted(root.glob('*/config.json')))
    return [r for r in records if r is not None]


def store_name(hub_id: str) -> str:
    """The store folder that stands in for Hub repo ``org/<arch>.<tag>[@rev]``: ``<arch>.<tag>``."""
    return hub_id.partition('@')[0].rsplit('/', 1)[-1]


def fetch_command(name: str) -> Optional[str]:
    """The command that puts the store teacher ``name`` (``<arch>.<tag>``, e.g. ``resnet32x4.cifar100``; the arch
    in our spelling or the original) into the store, when a release provides it."""
    arch, _, tag = name.partition('.')
    try:
        ours = map_arch(arch)
    except ValueError:
        return None
    for key, source in TEACHER_SOURCES.items():
        if tag == source.dataset and ours in {map_arch(t) for t in source.teachers}:
            return f'timm-kd-convert --download {key}'
    return None


def store_weights(hub_id: str, filename: Optional[str] = None) -> Tuple[Optional[Dict[str, Any]], Optional[Exception]]:
    """Where a registered model's weights are: ``(None, None)`` when its Hub repo has them (cached or online),
    ``(store teacher's record, hub error)`` when the Hub has none but the store folder of the repo's name does
    (:func:`teacher_record`), and ``(None, hub error)`` when neither has them."""
    error = hub_file_error(hub_id, filename or WEIGHTS_FILE)
    if error is None:
        return None, None
    return teacher_record(store_dir() / store_name(hub_id)), error


def missing_weights_message(model: str, hub_id: str, hub_reason: str, command: str, hub_note: str = '') -> str:
    """One sentence (without its period) for a released teacher that is neither on the Hub nor in the store,
    naming the command that fetches it; ``hub_note`` follows the repo id (e.g. where its organisation comes from)."""
    return (f"No trained weights for {model!r}: the Hub repo '{hub_id}'{hub_note} has none ({hub_reason}) and the "
            f"local teacher store ({store_dir()}) has no {store_name(hub_id)}; get it with `{command}`")


def pretrained_kwargs(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``build_model_with_cfg`` kwargs that load ``variant``'s pretrained weights from the store when its Hub repo
    has none. An explicit choice (a file or state dict, a ``hf-hub:`` / ``local-dir:`` name) is left to timm, and
    so is a model that no release provides and the store does not hold (nothing is requested for it)."""
    from timm.models import resolve_pretrained_cfg
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')).to_dict()
    hub_id = cfg.get('hf_hub_id')
    if cfg.get('source') or cfg.get('state_dict') is not None or cfg.get('file') or not hub_id:
        return kwargs
    command = fetch_command(store_name(hub_id))
    if store_folder(store_name(hub_id)) is None and command is None:
        return kwargs
    stored, error = store_weights(hub_id, cfg.get('hf_hub_filename'))
    if error is None or (stored is None and command is None):  # the Hub has them, or timm reports its error
        return kwargs
    if stored is None:
        raise RuntimeError(missing_weights_message(variant, hub_id, explain_hub_error(error), command) + '.') from error
    overlay = stored['pretrained_cfg_overlay']
    _logger.info(f"{variant}: the Hub repo '{hub_id}' has no weights ({explain_hub_error(error)}); loading "
                 f"{overlay['file']} from the local teacher store.")
    return dict(kwargs, pretrained_cfg_overlay=dict(overlay, **(kwargs.get('pretrained_cfg_overlay') or {})))
