"""Datasets of the KD recipes: timm's dataset names plus two that need no download.

``create_kd_dataset`` returns a map-style ``torch.utils.data.Dataset`` of ``(image, target)`` whose
``transform`` is ours (timm's ``create_loader`` would overwrite ``dataset.transform`` with an
ImageNet-style one, so KD recipes build their own DataLoader). Names:

* timm names, via ``timm.data.create_dataset``: ``torch/cifar100``, ``torch/cifar10`` (with
  ``download``), an image folder (any name without a prefix, e.g. ``tinyimagenet``, plus ``root``),
  ``hfds/<repo>`` (pass ``input_key`` / ``target_key``, e.g. ``img`` / ``fine_label`` for CIFAR-100);
* the raw ``tiny-imagenet-200`` layout (``train/<wnid>/images``, ``val/val_annotations.txt``), which
  an image folder reader mislabels (every train image sits in a folder called ``images``);
* ``sklearn/digits``: scikit-learn's 1797 8x8 grey digits, offline, as 32x32 RGB PIL images;
* ``synthetic/<classes>x<size>``, e.g. ``synthetic/10x32``: random class-structured images for
  tests and benchmarks.

A dataset that is not there raises ``DatasetNotFoundError`` before any training starts.
"""
import functools
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from timm_kd.models._builder import CIFAR100_MEAN, CIFAR100_STD

__all__ = [
    'DatasetNotFoundError', 'dataset_defaults', 'create_kd_dataset', 'DigitsDataset', 'SyntheticDataset',
    'TinyImageNetFolder', 'CIFAR10_MEAN', 'CIFAR10_STD', 'DIGITS_MEAN', 'DIGITS_STD', 'DIGITS_SIZE',
]

# CIFAR-10 per-channel statistics of the 50k train images (the true std, not the often copied 0.2023...).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# sklearn digits: 8x8 grey images (0..16) scaled to 0..255, upsampled bilinearly to 32x32 and copied to
# 3 channels, so CIFAR models and the pad-4 crop recipe apply unchanged. Mean/std of the train split
# below (tests recompute them).
DIGITS_SIZE = 32
DIGITS_MEAN = (0.3050, 0.3050, 0.3050)
DIGITS_STD = (0.3232, 0.3232, 0.3232)
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)

_TRAIN_SPLITS = ('train', 'training')
_EVAL_SPLITS = ('val', 'valid', 'validation', 'eval', 'evaluation', 'test')
_IMG_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.ppm', '.tif', '.tiff')


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing or cannot be fetched; the message says what was looked for and the fix."""


def _is_train(split: str) -> bool:
    s = split.split('[')[0].lower()
    if s in _TRAIN_SPLITS:
        return True
    if s in _EVAL_SPLITS:
        return False
    raise ValueError(f'Unknown split {split!r}: use one of {_TRAIN_SPLITS + _EVAL_SPLITS}.')


def _parse_synthetic(name: str) -> Tuple[int, int]:
    m = re.fullmatch(r'synthetic/(\d+)x(\d+)', name.strip().lower())
    if not m:
        raise ValueError(f'Synthetic dataset names are synthetic/<classes>x<size>, e.g. synthetic/10x32, got {name!r}.')
    num_classes, size = int(m.group(1)), int(m.group(2))
    if num_classes < 2:
        raise ValueError(f'{name!r} has {num_classes} classes; a classifier needs at least 2 classes.')
    if size < 8:
        raise ValueError(f'{name!r} has {size} px images; synthetic images are at least 8 px.')
    return num_classes, size


def _prefix(name: str) -> str:
    p, sep, _ = name.partition('/')
    return p.lower() if sep else ''


def _is_raw_tiny(root: Optional[str]) -> bool:
    """True for the layout of the original tiny-imagenet-200 archive."""
    return bool(root) and (
        os.path.isfile(os.path.join(root, 'wnids.txt'))
        or os.path.isfile(os.path.join(root, 'val', 'val_annotations.txt')))


def _split_dir(root: str, split: str) -> str:
    """timm's split search: root/<split>, then its synonyms, else root itself."""
    names = (split,) + (_TRAIN_SPLITS if _is_train(split) else _EVAL_SPLITS)
    for n in names:
        d = os.path.join(root, n)
        if os.path.isdir(d):
            return d
    return root


def _probe_folder(root: str) -> Tuple[Optional[int], Optional[int]]:
    """(number of class folders, side of the first image) of an image folder, None where unknown."""
    if _is_raw_tiny(root):
        wnids = os.path.join(root, 'wnids.txt')
        if os.path.isfile(wnids):
            with open(wnids) as f:
                return sum(1 for w in f if w.strip()), 64
        return len([e for e in os.scandir(os.path.join(root, 'train')) if e.is_dir()]) or None, 64
    d = _split_dir(root, 'train')
    classes = sorted(e.name for e in os.scandir(d) if e.is_dir()) if os.path.isdir(d) else []
    side = None
    for cdir in classes[:1]:
        for dirpath, _, files in os.walk(os.path.join(d, cdir)):
            imgs = sorted(f for f in files if f.lower().endswith(_IMG_EXT))
            if imgs:
                first = os.path.join(dirpath, imgs[0])
                try:
                    with Image.open(first) as im:
                        w, h = im.size
                except OSError as e:  # PIL's UnidentifiedImageError too
                    raise ValueError(f'{first} cannot be read as an image ({type(e).__name__}); replace or remove '
                                     f'it.') from e
                side = w if w == h else None
                break
    return (len(classes) or None), side


def dataset_defaults(name: str, root: Optional[str] = None) -> Dict[str, Any]:
    """Recipe defaults of a dataset: ``dict(num_classes, input_size, mean, std, crop_padding)``.

    ``input_size`` is the square side in pixels; ``crop_padding`` the random-crop padding (size // 8:
    4 at 32 px, 8 at 64 px; 0 for ImageNet-size inputs, which use timm's transforms). Tiny ImageNet is
    recognised by 'tiny' in the name or root path, or by 64x64 images in an image folder; any other
    small-image folder gets its image size, ImageNet mean/std and its class-folder count.
    ``num_classes`` is None where it cannot be known without loading (e.g. ``hfds/`` datasets that are
    not CIFAR).
    """
    lname = name.lower()
    prefix = _prefix(name)

    def small(num_classes, size, mean, std):
        return dict(num_classes=num_classes, input_size=size, mean=tuple(mean), std=tuple(std),
                    crop_padding=size // 8)

    if prefix == 'sklearn':
        if lname != 'sklearn/digits':
            raise ValueError(f'Unknown sklearn dataset {name!r}: only sklearn/digits is supported.')
        return small(10, DIGITS_SIZE, DIGITS_MEAN, DIGITS_STD)
    if prefix == 'synthetic':
        num_classes, size = _parse_synthetic(name)
        return small(num_classes, size, SYNTHETIC_MEAN, SYNTHETIC_STD)
    if prefix in ('torch', 'hfds', 'hfids', 'tfds', 'wds'):
        if 'cifar100' in lname or 'cifar-100' in lname:
            return small(100, 32, CIFAR100_MEAN, CIFAR100_STD)
        if 'cifar10' in lname or 'cifar-10' in lname:
            return small(10, 32, CIFAR10_MEAN, CIFAR10_STD)
    if 'tiny' in lname or (root and 'tiny' in os.path.abspath(root).lower()):
        num_classes = _probe_folder(root)[0] if root and os.path.isdir(root) else None
        return small(num_classes or 200, 64, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    if prefix in ('', 'folder') or lname in ('torch/folder', 'torch/image_folder'):
        if root and os.path.isdir(root):
            num_classes, side = _probe_folder(root)
            if side is not None and side < 128:
                return small(num_classes, side, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
            return dict(num_classes=num_classes, input_size=224, mean=IMAGENET_DEFAULT_MEAN,
                        std=IMAGENET_DEFAULT_STD, crop_padding=0)
    return dict(num_classes=None, input_size=224, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                crop_padding=0)


class _ArrayImageDataset(torch.utils.data.Dataset):
    """(N, H, W, 3) uint8 images + int targets, served as PIL images through ``transform``."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None):
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def _load_digits() -> Tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in 0..16, targets) of scikit-learn's digits.

    Reads the ``digits.csv.gz`` that scikit-learn ships (as ``load_digits`` does) without importing
    sklearn, whose import (scipy.stats ...) costs seconds per process; falls back to ``load_digits``.
    """
    import importlib.util
    spec = importlib.util.find_spec('sklearn')
    if spec is None:  # the demo extra
        raise DatasetNotFoundError(
            'sklearn/digits needs scikit-learn, which is not installed: pip install scikit-learn '
            '(or timm-kd[demo]).')
    for loc in spec.submodule_search_locations or []:
        path = os.path.join(loc, 'datasets', 'data', 'digits.csv.gz')
        if os.path.isfile(path):
            data = np.loadtxt(path, delimiter=',')
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _digits_arrays(size: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, targets), 'val': ...} of sklearn digits at ``size`` px (cached: read-only arrays)."""
    images, y = _load_digits()
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    rank = np.zeros(len(y), dtype=np.int64)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rank[idx] = np.arange(len(idx))
    out = {}
    for split, keep in (('train', rank % 3 != 2), ('val', rank % 3 == 2)):
        imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in x[keep]])
        imgs = np.ascontiguousarray(np.repeat(imgs[..., None], 3, axis=-1))
        imgs.setflags(write=False)
        out[split] = (imgs, y[keep])
    return out


class DigitsDataset(_ArrayImageDataset):
    """scikit-learn's digits (1797 images, 10 classes), offline, as ``size`` x ``size`` RGB images.

    Deterministic stratified split without a random generator: within each class (in file order)
    every third image is validation, the rest train -> 1201 train / 596 val images. Pixels 0..16 are
    scaled to 0..255, upsampled with PIL bilinear from 8x8 to ``size`` (default 32, so CIFAR models and
    the pad-4 crop recipe apply unchanged) and repeated over 3 channels. ``DIGITS_MEAN`` / ``DIGITS_STD``
    are the statistics of the 32 px train split.
    """
    classes = [str(i) for i in range(10)]

    def __init__(self, split: str = 'train', transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, size: int = DIGITS_SIZE):
        images, targets = _digits_arrays(int(size))['train' if _is_train(split) else 'val']
        super().__init__(images, targets, transform, target_transform)
        self.split = split


class SyntheticDataset(_ArrayImageDataset):
    """Random class-structured images: ``synthetic/<classes>x<size>``.

    Each class has a fixed smooth colour prototype (a shared 4x4x3 random grid plus a class-specific
    one of amplitude 0.5, upsampled to ``size``); a sample is its class prototype, circularly shifted
    by up to size // 4 pixels, plus Gaussian pixel noise (std 0.3). Prototypes depend only on ``seed``;
    samples also on the split, so train and val differ. Default sizes: 64 train / 16 val images per
    class (``num_samples`` overrides the total). Not trivial (a nearest-class-mean classifier gets
    about 54 % on synthetic/10x32) but learnable by a small CNN; made for tests and speed benchmarks.
    """

    def __init__(self, num_classes: int = 10, size: int = 32, split: str = 'train',
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None,
                 num_samples: Optional[int] = None, seed: int = 0):
        train = _is_train(split)
        n = int(num_samples) if num_samples else num_classes * (64 if train else 16)
        g = torch.Generator().manual_seed(seed)
        protos = torch.rand(1, 3, 4, 4, generator=g) + 0.5 * (torch.rand(num_classes, 3, 4, 4, generator=g) - 0.5)
        protos = torch.nn.functional.interpolate(protos, size=(size, size), mode='bilinear', align_corners=False)
        g.manual_seed(seed * 1000003 + (1 if train else 2))
        targets = torch.arange(n) % num_classes
        targets = targets[torch.randperm(n, generator=g)]
        shift = max(size // 4, 1)
        dx, dy = (torch.randint(-shift, shift + 1, (2, n), generator=g)).tolist()
        imgs = torch.empty(n, 3, size, size)
        for i in range(n):  # roll is cheap; images are small
            imgs[i] = torch.roll(protos[targets[i]], shifts=(dy[i], dx[i]), dims=(1, 2))
        imgs += 0.3 * torch.randn(imgs.shape, generator=g)
        imgs = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        super().__init__(imgs, targets.numpy(), transform, target_transform)
        self.classes = [str(i) for i in range(num_classes)]
        self.split = split


class TinyImageNetFolder(torch.utils.data.Dataset):
    """The original ``tiny-imagenet-200`` archive layout, labelled correctly.

    train: ``train/<wnid>/images/*.JPEG``; val: ``val/images/*.JPEG`` labelled by
    ``val/val_annotations.txt``. Class indices follow the sorted wnids, the same order an image folder
    with one directory per wnid gives (so teachers trained on either layout agree). The test split has
    no labels and is refused.
    """

    def __init__(self, root: str, split: str = 'train', transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None):
        if split.lower() == 'test':
            raise ValueError('Tiny ImageNet test images have no labels; evaluate on the val split.')
        train_dir = os.path.join(root, 'train')
        if os.path.isfile(os.path.join(root, 'wnids.txt')):
            with open(os.path.join(root, 'wnids.txt')) as f:
                wnids = sorted(w.strip() for w in f if w.strip())
        else:
            wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
        self.classes = wnids
        self.class_to_idx = {w: i for i, w in enumerate(wnids)}
        samples: List[Tuple[str, int]] = []
        if _is_train(split):
            for w in wnids:
                d = os.path.join(train_dir, w, 'images')
                d = d if os.path.isdir(d) else os.path.join(train_dir, w)
                samples += [(os.path.join(d, f), self.class_to_idx[w])
                            for f in sorted(os.listdir(d)) if f.lower().endswith(_IMG_EXT)]
        else:
            val_dir = os.path.join(root, 'val')
            with open(os.path.join(val_dir, 'val_annotations.txt')) as f:
                for line in f:
                    parts = line.split('\t')
                    if len(parts) >= 2:
                        samples.append((os.path.join(val_dir, 'images', parts[0]), self.class_to_idx[parts[1]]))
        if not samples:
            raise DatasetNotFoundError(
                f'No Tiny ImageNet {split} images were found under {root}: pass --data-dir pointing at the '
                f'unpacked tiny-imagenet-200 directory.')
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        with Image.open(path) as im:
            img = im.convert('RGB')
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def _ensure_size_of(transform: Optional[Callable]):
    from .transforms import EnsureSize
    for t in getattr(transform, 'transforms', None) or []:
        if isinstance(t, EnsureSize):
            return t
    return None


_TORCH_ARCHIVE_DIRS = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}
_FIX = 'pass --dataset-download to fetch it, or --data-dir pointing at a directory that contains it'


def create_kd_dataset(
        name: str,
        root: Optional[str] = None,
        split: str = 'train',
        is_training: bool = False,
        download: bool = False,
        transform: Optional[Callable] = None,
        **kwargs: Any,
) -> torch.utils.data.Dataset:
    """A dataset of ``(image, target)`` that applies ``transform`` (see the module docstring for names).

    ``split`` follows timm: 'train'/'training' or 'validation'/'val'/'test' (CIFAR's eval split is its
    test set, as in timm and the KD literature). ``kwargs`` go to ``timm.data.create_dataset``
    (e.g. ``input_key``, ``target_key``, ``class_map``), except ours: ``input_size`` sets the side of
    sklearn/digits images (default: the size of ``transform``, else 32; other datasets ignore it, their
    transform resizes where needed); synthetic data takes ``num_samples`` and ``data_seed`` (default 0,
    independent of the run's seed). Raises ``DatasetNotFoundError`` when the data is not there (checked
    before loading).
    """
    prefix = _prefix(name)
    lname = name.lower()
    if prefix == 'sklearn':
        if lname != 'sklearn/digits':
            raise ValueError(f'Unknown sklearn dataset {name!r}: only sklearn/digits is supported.')
        # images at the transform's size (its EnsureSize) spare a resize per sample and epoch
        size = kwargs.get('input_size') or getattr(_ensure_size_of(transform), 'size', None) or DIGITS_SIZE
        return DigitsDataset(split=split, transform=transform, size=size)
    if prefix == 'synthetic':
        num_classes, size = _parse_synthetic(name)
        # the data seed is NOT the run's --seed: teacher and student runs must see the same images
        return SyntheticDataset(num_classes, size, split=split, transform=transform,
                                num_samples=kwargs.get('num_samples'), seed=kwargs.get('data_seed') or 0)

    if prefix == 'torch':
        base = lname.split('/', 1)[1]
        if root is None:
            raise DatasetNotFoundError(
                f'Dataset {name!r} needs a directory: pass --data-dir DIR (and --dataset-download to fetch it there).')
        archive = _TORCH_ARCHIVE_DIRS.get(base)
        if archive and not download and not os.path.isdir(os.path.join(root, archive)):
            raise DatasetNotFoundError(
                f'{name!r} was not found: looked for {os.path.join(os.path.abspath(root), archive)}; {_FIX}.')
    elif prefix in ('', 'folder'):
        if root is None or not os.path.exists(root):
            raise DatasetNotFoundError(
                f'Image folder dataset {name!r} was not found: looked for directory {root!r}; pass --data-dir '
                f'pointing at a folder with one sub-folder per class (split folders train/ and val/ optional).')
        if _is_raw_tiny(root):
            return TinyImageNetFolder(root, split=split, transform=transform)
        if not _is_train(split) and os.path.isdir(os.path.join(root, 'train')) and _split_dir(root, split) == root:
            # timm would fall back to root itself and silently evaluate on the train images
            raise DatasetNotFoundError(
                f'No {split!r} split folder was found in {os.path.abspath(root)} (looked for '
                f'{split}/ and {"/, ".join(_EVAL_SPLITS)}/ next to train/); pass --data-dir pointing at a '
                f'dataset with a validation folder, or --val-split naming it.')

    from timm.data import create_dataset
    kwargs.pop('input_size', None)  # ours (digits); timm's readers would reject it
    kwargs.pop('data_seed', None)
    try:
        ds = create_dataset(name, root=root, split=split, is_training=is_training, download=download, **kwargs)
    except ImportError as e:  # timm imports a reader's package when it is first used (hfds/: datasets)
        if not e.name:
            raise
        raise DatasetNotFoundError(f'{name!r} needs the Python package {e.name!r}, which is not installed: '
                                   f'pip install {e.name}.') from e
    except (RuntimeError, OSError) as e:
        if prefix != 'torch':
            raise
        # torchvision: "Dataset not found or corrupted", or a failed download (no network)
        where = os.path.abspath(root)
        if download:
            raise DatasetNotFoundError(
                f'Downloading {name!r} into {where} failed ({e}); check the network, or fetch the archive '
                f'yourself and pass --data-dir pointing at the directory that contains it.') from e
        raise DatasetNotFoundError(f'{name!r} could not be loaded from {where} ({e}); {_FIX}.') from e
    ds.transform = transform
    return ds
