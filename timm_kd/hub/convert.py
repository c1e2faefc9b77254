"""Teachers in: RepDistiller / CRD, mdistiller, Good-DA and timm checkpoints -> timm Hub folders.

A converted folder is exactly what a registered name resolves to (``<org>/<arch>.<tag>``), so once
pushed, ``timm.create_model('resnet32x4', pretrained=True)`` and ``train_kd.py --teacher resnet32x4`` use it.
"""
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import timm

from timm_kd.data.datasets import dataset_defaults
from timm_kd.models import (
    arch_from_path, checkpoint_accuracy, checkpoint_num_classes, hub_org, load_kd_checkpoint, map_arch,
    read_kd_checkpoint)
from .archive import extract_checkpoints, is_archive
from .cards import KNOWN_DATASETS, teacher_card
from .io import save_model_folder, sha256_file, timm_kd_version, verify_folder

__all__ = ['find_teacher_checkpoints', 'convert_teacher', 'TEACHER_DATASETS']

#: data sets the KD literature released teachers for (``--dataset`` of timm-kd-convert) -> train_kd.py's name
TEACHER_DATASETS = {'cifar100': 'torch/cifar100', 'cifar10': 'torch/cifar10', 'tinyimagenet': 'tinyimagenet'}
_EPOCH = re.compile(r'ckpt_epoch_(\d+)\.pth$')


def _final_epochs(names: List[str]) -> List[str]:
    """Per folder only the last ``ckpt_epoch_N.pth`` (the released teachers are the final epoch)."""
    by_dir: Dict[str, List[str]] = {}
    for n in names:
        by_dir.setdefault(n.rsplit('/', 1)[0] if '/' in n else '', []).append(n)
    chosen = []
    for _, files in sorted(by_dir.items()):
        epochs = [(int(m.group(1)), f) for f in files if (m := _EPOCH.search(f))]
        chosen += [max(epochs)[1]] if epochs else sorted(files)
    return chosen


def find_teacher_checkpoints(src: Union[str, os.PathLike],
                             extract_dir: Union[str, os.PathLike]) -> List[Tuple[Path, str, Optional[str]]]:
    """Teacher checkpoints in a file, a folder (e.g. an extracted ``cifar_teachers.tar``) or an archive (``.tar``,
    ``.zip``, see :mod:`.archive`).

    Returns ``[(local_path, label, arch_or_None)]``; ``label`` is what the card calls the source. Archive
    members are copied one by one into ``extract_dir`` under new names (never ``extractall``: no path tricks).
    """
    src = Path(src)
    if src.is_dir():
        names = [p.relative_to(src).as_posix() for p in src.rglob('*')
                 if p.is_file() and p.name.endswith(('.pth', '.pth.tar', '.pt', '.safetensors'))]
        return [(src / n, f'{src.name}/{n}', arch_from_path(n)) for n in _final_epochs(names)]
    if not src.is_file():
        raise FileNotFoundError(f'{src} does not exist.')
    if is_archive(src):
        return [(path, f'{src.name}:{name}', arch_from_path(name))
                for path, name in extract_checkpoints(src, extract_dir, select=_final_epochs)]
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
        provenance: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Convert one KD teacher checkpoint into the timm Hub folder ``<out_dir>/<arch>.<tag>``.

    Args:
        checkpoint: a RepDistiller / mdistiller / Good-DA / timm checkpoint file.
        arch: RepDistiller or timm_kd architecture name; default: read from the path (``<arch>_vanilla/...``).
        org: Hub organisation of the repo id (default: ``TIMM_KD_HUB_ORG`` or ``timm-kd``), so the result
            is exactly what a registered name resolves to.
        tag: repo suffix after the arch (default: the dataset, e.g. ``cifar100``).
        dataset: what the teacher was trained on (one of :data:`TEACHER_DATASETS`): its card name and
            preprocessing (input size, mean, std).
        accuracy: reported top-1; default: the checkpoint's own ``accuracy`` entry.
        source: how the card names the source file (default: the file path).
        origin: who released it, for the card (e.g. ``mdistiller cifar_teachers.tar``).
        verify: reload the folder through ``local-dir:`` and require identical logits.
        provenance: more of the source's record for config.json's ``timm_kd`` entry (e.g. the archive's URL and
            sha256).

    Returns:
        dict(folder, repo_id, arch, original_arch, accuracy, sha256, epoch).
    """
    checkpoint = Path(checkpoint)
    key = dataset.split('/')[-1].lower().replace('_', '').replace('-', '')
    if key not in TEACHER_DATASETS:
        raise ValueError(f'Unknown teacher dataset {dataset!r}: expected one of {", ".join(TEACHER_DATASETS)}.')
    original = arch or arch_from_path(source or checkpoint) or arch_from_path(checkpoint)
    if not original:
        raise ValueError(f'Cannot tell the architecture of {source or checkpoint}: pass --arch '
                         f'(e.g. resnet32x4, vgg13, ResNet50, MobileNetV2, ShuffleV1, ShuffleV2, wrn_40_2).')
    ours = map_arch(original)
    tag = tag or key
    state_dict, meta = read_kd_checkpoint(checkpoint)
    model = timm.create_model(ours, pretrained=False)
    nc = num_classes or checkpoint_num_classes(state_dict, model)
    if nc is not None and nc != model.num_classes:
        model = timm.create_model(ours, pretrained=False, num_classes=nc)
    load_kd_checkpoint(model, state_dict, strict=True)
    model.eval()
    accuracy = accuracy if accuracy is not None else checkpoint_accuracy(meta)
    epoch = meta.get('epoch')
    digest = sha256_file(checkpoint)
    repo_id = f'{(org or hub_org()).strip("/")}/{ours}.{tag}'
    label = source or str(checkpoint)
    readme = teacher_card(model, repo_id, arch=ours, original_arch=original, source=label, sha256=digest,
                          accuracy=accuracy, epoch=epoch, dataset=key, license=license, origin=origin)
    lineage = {'kind': 'teacher', 'repo_id': repo_id, 'original_arch': original, 'source': label,
               'source_sha256': digest, 'origin': origin, 'reported_top1': accuracy, 'epoch': epoch,
               'dataset': KNOWN_DATASETS[key][0], 'timm_kd_version': timm_kd_version(), **(provenance or {})}
    recipe = dataset_defaults(TEACHER_DATASETS[key])  # the preprocessing its teachers were trained with
    side = recipe['input_size']
    folder = save_model_folder(
        model, Path(out_dir) / f'{ours}.{tag}', readme,
        model_config={'pretrained_cfg': {'tag': tag, 'license': license}, 'timm_kd': lineage},
        data_config=dict(input_size=(3, side, side), mean=recipe['mean'], std=recipe['std']))
    if verify:
        verify_folder(model, folder)
    return dict(folder=folder, repo_id=repo_id, arch=ours, original_arch=original, accuracy=accuracy,
                sha256=digest, epoch=epoch)
