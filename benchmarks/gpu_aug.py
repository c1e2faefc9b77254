""" On-device augmentation for the data-loading benchmark: pad + random crop + horizontal flip on a batch

The CIFAR / Tiny ImageNet recipe (``RandomCrop(size, padding)`` with zero fill, ``RandomHorizontalFlip``,
``ToTensor``, ``Normalize``) costs a PIL round trip per image in the data loader workers. Here the
same augmentation runs on a whole batch tensor wherever it lives (CPU or CUDA), with an independent
crop offset and flip decision per sample, as one gather: no per-sample Python loop, no host/device
sync. Given the same offsets and flips the result equals torchvision's per-image transforms exactly.

Typical use: keep the uint8 training set on the device, draw batches by index and call
``DeviceAugment`` on them (or let the loader collate uint8 tensors without transforms).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['random_pad_crop_flip', 'pad_crop_flip', 'DeviceAugment']


def pad_crop_flip(
        x: torch.Tensor,
        offset_y: torch.Tensor,
        offset_x: torch.Tensor,
        flip: Optional[torch.Tensor],
        padding: int,
        fill: float = 0.,
) -> torch.Tensor:
    """Crop each sample of ``x`` (B, C, H, W) at the given offsets of its ``padding``-padded copy, then
    mirror the samples where ``flip`` is True.

    Offsets are in [0, 2 * padding] (torchvision's ``RandomCrop`` convention: offset ``padding`` is the
    identity). Returns a (B, C, H, W) tensor of x's dtype in x's memory layout (channels_last or NCHW).
    """
    B, C, H, W = x.shape
    dev = x.device
    Hp, Wp = H + 2 * padding, W + 2 * padding
    rows = offset_y.to(dev).view(B, 1) + torch.arange(H, device=dev)  # (B, H) rows of the padded image
    cols = torch.arange(W, device=dev).expand(B, W)
    if flip is not None:
        # flipping the crop reads its columns backwards: out[j] = crop[W - 1 - j]
        cols = torch.where(flip.to(dev).view(B, 1), (W - 1) - cols, cols)
    cols = offset_x.to(dev).view(B, 1) + cols  # (B, W)
    pix = rows.view(B, H, 1) * Wp + cols.view(B, 1, W)  # (B, H, W) pixel index in the padded image
    # One gather over pixels in the memory layout x already has (an advanced-index x[b, :, r, c] is
    # several times slower on CPU).
    if C > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding), value=fill)  # NHWC
        pix = pix + torch.arange(B, device=dev).view(B, 1, 1) * (Hp * Wp)
        out = xp.reshape(B * Hp * Wp, C).index_select(0, pix.view(-1))
        return out.view(B, H, W, C).permute(0, 3, 1, 2)  # NCHW view, channels_last memory
    xp = F.pad(x.contiguous(), (padding, padding, padding, padding), value=fill)
    out = xp.view(B, C, Hp * Wp).gather(2, pix.view(B, 1, H * W).expand(B, C, H * W))
    return out.view(B, C, H, W)


def random_pad_crop_flip(
        x: torch.Tensor,
        padding: int = 4,
        flip: bool = True,
        fill: float = 0.,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random crop with ``padding`` (uniform offset per sample, as ``RandomCrop(size, padding)``) and a
    random horizontal flip with probability 0.5 per sample, for a batch (B, C, H, W) of any dtype.

    ``generator`` must live on x's device when given (random draws happen there: no sync).
    """
    B = x.shape[0]
    dev = x.device
    off = torch.randint(0, 2 * padding + 1, (2, B), device=dev, generator=generator)
    flips = torch.rand(B, device=dev, generator=generator) < 0.5 if flip else None
    return pad_crop_flip(x, off[0], off[1], flips, padding, fill)


class DeviceAugment(nn.Module):
    """uint8 images -> augmented, normalized float batch, on the batch's device.

    Equals ``RandomCrop(size, padding)`` (zero fill) -> ``RandomHorizontalFlip()`` -> ``ToTensor()`` ->
    ``Normalize(mean, std)`` applied per image. Crop and flip run on the uint8 data (a quarter of the
    bytes of float), then one fused convert + normalize.

    Args:
        mean, std: per-channel normalisation in [0, 1] units (e.g. CIFAR-100's).
        padding: crop padding (CIFAR 4, Tiny ImageNet 8); 0 disables the crop.
        flip: random horizontal flip.
        channels_last: return channels_last memory (what the gather yields; free) or NCHW contiguous.
        dtype: output dtype.

    ``forward(x)`` takes (B, C, H, W) or (B, H, W, C) uint8 (``channels_first`` decides; default: a
    last dimension of 1 or 3 with a larger second dimension means HWC, as numpy CIFAR arrays) and
    returns (B, C, H, W). In eval mode (``.eval()``) only the conversion runs.
    """

    def __init__(
            self,
            mean: Sequence[float],
            std: Sequence[float],
            padding: int = 4,
            flip: bool = True,
            channels_last: bool = True,
            dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.padding = int(padding)
        self.flip = flip
        self.channels_last = channels_last
        self.dtype = dtype
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self.register_buffer('scale', 1. / (255. * std_t), persistent=False)
        self.register_buffer('shift', -mean_t / std_t, persistent=False)

    @staticmethod
    def _nchw(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] > x.shape[-1]:
            return x.permute(0, 3, 1, 2)  # NHWC numpy layout -> an NCHW view (channels_last memory)
        return x

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = self._nchw(x)
        if self.training and (self.padding > 0 or self.flip):
            if self.padding > 0:
                x = random_pad_crop_flip(x, self.padding, self.flip, 0, generator)
            else:
                flips = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
                x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        out = torch.addcmul(self.shift, x.to(torch.float32), self.scale).to(self.dtype)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)

    def extra_repr(self) -> str:
        return f'padding={self.padding}, flip={self.flip}, channels_last={self.channels_last}, dtype={self.dtype}'
