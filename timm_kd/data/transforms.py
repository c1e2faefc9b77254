"""Input transforms of the CIFAR / Tiny ImageNet KD recipes.

The KD literature (CRD/RepDistiller, Good-DA-in-KD) trains small-image models with the classic
recipe, which timm's ``create_transform`` does not offer (its train crops are RandomResizedCrop
variants):

* train: ``RandomCrop(size, padding=crop_padding)`` (zero fill) -> ``RandomHorizontalFlip(0.5)``
  -> ``ToTensor`` -> ``Normalize(mean, std)``; CIFAR 32 px with padding 4, Tiny ImageNet 64 px
  with padding 8;
* eval: ``ToTensor`` -> ``Normalize(mean, std)`` (no resize, no crop).

``std_aug`` selects the standard augmentation for the paper's Fig. 1 / Fig. 3 study (Wang et al.):
``'none'`` (no crop, no flip), ``'flip'``, ``'crop'`` or ``'crop_flip'`` (the default, the recipe).

Inputs of 128 px and more are ImageNet-style: the transform is timm's ``create_transform`` with
timm's defaults (RandomResizedCrop + flip + colour jitter 0.4 for train, resize + centre crop for
eval); ``timm_kwargs`` pass through to it and ``std_aug='none'`` maps to ``no_aug=True``.
"""
from typing import Any, Sequence, Tuple, Union

from PIL import Image
from torchvision import transforms as T

__all__ = ['create_kd_transform', 'EnsureSize', 'STD_AUG_MODES', 'SMALL_INPUT_LIMIT']

STD_AUG_MODES = ('none', 'flip', 'crop', 'crop_flip')
SMALL_INPUT_LIMIT = 128  # inputs below this size use the CIFAR-style recipe

_PIL_INTERP = {
    'nearest': Image.NEAREST,
    'bilinear': Image.BILINEAR,
    'bicubic': Image.BICUBIC,
    'lanczos': Image.LANCZOS,
}


class EnsureSize:
    """Resize (shorter side) + centre crop to ``size`` only when a PIL image is not already size x size.

    CIFAR (32 px) and Tiny ImageNet (64 px) images pass untouched, so the recipe is exactly the
    literature's; an image folder of another size still yields ``size`` x ``size`` tensors instead of
    a crop of a random part of a large image.
    """

    def __init__(self, size: int, interpolation: str = 'bilinear'):
        self.size = size
        self.interpolation = interpolation
        self._resize = T.Compose([T.Resize(size, interpolation=_PIL_INTERP[interpolation]), T.CenterCrop(size)])

    def __call__(self, img):
        if isinstance(img, Image.Image) and img.size == (self.size, self.size):
            return img
        return self._resize(img)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(size={self.size}, interpolation={self.interpolation})'


def _side(input_size: Union[int, Sequence[int]]) -> int:
    if isinstance(input_size, int):
        return input_size
    size = tuple(input_size)
    if len(size) >= 2 and size[-1] != size[-2]:
        raise ValueError(f'create_kd_transform needs a square input size, got {size}.')
    return int(size[-1])


def create_kd_transform(
        input_size: Union[int, Tuple[int, ...]],
        is_training: bool,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 4,
        std_aug: str = 'crop_flip',
        interpolation: str = 'bilinear',
        normalize: bool = True,
        **timm_kwargs: Any,
):
    """Transform of a KD recipe for PIL images.

    Args:
        input_size: side in pixels, or timm's (C, H, W) with H == W.
        is_training: train (random) or eval transform.
        mean, std: per-channel normalisation (dataset statistics, see ``dataset_defaults``).
        crop_padding: zero padding of the random crop (CIFAR 4, Tiny ImageNet 8); 0 = flip only.
        std_aug: 'none' | 'flip' | 'crop' | 'crop_flip' (train only; eval is never augmented).
        interpolation: used only when an image must be resized (see ``EnsureSize``) and for large inputs.
        normalize: False returns float tensors in [0, 1] so normalisation can run on the device.
        **timm_kwargs: passed to ``timm.data.create_transform`` for inputs >= 128 px
            (e.g. ``crop_pct``, ``auto_augment``, ``scale``, ``color_jitter``); rejected otherwise.
    """
    size = _side(input_size)
    if std_aug not in STD_AUG_MODES:
        raise ValueError(f'std_aug must be one of {STD_AUG_MODES}, got {std_aug!r}.')
    if size >= SMALL_INPUT_LIMIT:
        from timm.data import create_transform
        return create_transform(
            input_size=size,
            is_training=is_training,
            no_aug=is_training and std_aug == 'none',
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            normalize=normalize,
            **timm_kwargs,
        )
    if timm_kwargs:
        raise TypeError(
            f'create_kd_transform: {sorted(timm_kwargs)} only apply to inputs >= {SMALL_INPUT_LIMIT} px '
            f'(timm create_transform); the {size} px recipe is crop + flip only.')

    if interpolation not in _PIL_INTERP:
        interpolation = 'bilinear'  # timm's 'random' only means something for RandomResizedCrop
    tfl = [EnsureSize(size, interpolation)]
    if is_training:
        if std_aug in ('crop', 'crop_flip') and crop_padding > 0:
            tfl.append(T.RandomCrop(size, padding=crop_padding))  # zero fill, as torchvision's default
        if std_aug in ('flip', 'crop_flip'):
            tfl.append(T.RandomHorizontalFlip())
    tfl.append(T.ToTensor())
    if normalize:
        tfl.append(T.Normalize(mean=tuple(mean), std=tuple(std)))
    return T.Compose(tfl)
