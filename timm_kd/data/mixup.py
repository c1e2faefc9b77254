""" DistillMixup: mixed views for knowledge distillation, kept next to the original batch

Wang et al., "Understanding the success of knowledge distillation -- a data augmentation perspective"
(KD + TLmixup / TLCutMix / TLCutMix+pick) and the partial mixup (PMU) of Choi et al., "Understanding the
role of mixup in knowledge distillation".

Unlike ``timm.data.Mixup`` (which mixes ``x`` in place and returns soft labels), ``DistillMixup`` never
touches the input batch: it returns the original ``x`` together with a pool of ``n_candidates * B``
mixed views and everything needed to label them (partners, per-sample lambda, which rows are mixed).
The teacher labels the views (``label_mode='teacher'``, the paper's TL* methods) or, for the KD+CutMix
baseline, the area-weighted hard labels do (``label_mode='hard'``). ``DistillationTask`` consumes it.

The constructor takes ``timm.data.Mixup``'s arguments with the same meaning; the defaults are the
paper's: CutMix with lambda ~ Beta(1, 1), one lambda and box per batch, pairing by a random
derangement (no image is mixed with itself), no label smoothing.

Randomness is drawn on the host (numpy, like timm) from the global numpy RNG unless ``seed`` is given;
index/lambda tensors then go to the batch's device in one small copy each, so no host/device sync.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .pick import PICK_CRITERIA

__all__ = ['DistillMixup', 'MixedViews', 'PICK_CRITERIA', 'PAIRINGS', 'MIX_MODES', 'LABEL_MODES']

PAIRINGS = ('derangement', 'random', 'flip')
MIX_MODES = ('batch', 'pair', 'elem')
LABEL_MODES = ('teacher', 'hard')

_NONE, _MIXUP, _CUTMIX, _CUTOUT = 0, 1, 2, 3


@dataclass
class MixedViews:
    """What ``DistillMixup`` returns: the untouched batch plus a pool of mixed views.

    Row ``c * B + i`` of the pool (candidate set ``c``) is built on base image ``i`` (``source``) with
    content from image ``partner``. All tensors are on the batch's device.

    Attributes:
        x: The original batch (B, C, H, W): the very tensor that was passed in, never modified.
        target: The labels that were passed in (or None).
        x_mix: The pool of views (N, C, H, W), N = n_candidates * B.
        source: (N,) int64, base image of each row (``arange(B)`` repeated).
        partner: (N,) int64, image the pasted box / blended content comes from (== source for Cutout).
        lam: (N,) float32, share of the row that comes from ``source`` (the kept area for CutMix and
            Cutout, the blend weight for mixup, 1.0 for unmixed rows).
        mixed: (N,) bool, False for rows left unmixed (``prob`` < 1, partial mixup).
        soft_target: (N, num_classes) area-weighted hard labels for ``label_mode='hard'``, else None.
        pick: The pick criterion the task applies to the pool (None: train on the whole pool).
        num_pick: How many pool rows the task trains on when picking, else None (train on all).
        pick_index: (num_pick,) int64, the rows chosen up front for ``pick='random'``, else None.
    """
    x: torch.Tensor
    target: Optional[torch.Tensor]
    x_mix: torch.Tensor
    source: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor
    mixed: torch.Tensor
    soft_target: Optional[torch.Tensor] = None
    pick: Optional[str] = None
    num_pick: Optional[int] = None
    pick_index: Optional[torch.Tensor] = None

    @property
    def pool_size(self) -> int:
        return self.x_mix.shape[0]

    def major_target(self) -> torch.Tensor:
        """Label of the larger-area source of each pool row (source on a tie)."""
        y = self.target
        return torch.where(self.lam >= 0.5, y[self.source], y[self.partner])


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == 'cpu':
        return t
    if device.type == 'cuda':
        # pinned + non_blocking: an async copy, the host does not wait for queued kernels
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class DistillMixup:
    """ Mixup / CutMix / Cutout views for distillation, the original batch kept aside.

    Args:
        mixup_alpha: mixup alpha, mixup is active if > 0 (TLmixup).
        cutmix_alpha: CutMix alpha, CutMix is active if > 0 (TLCutMix). None (default) means 1.0 unless
            ``mixup_alpha`` > 0 or ``cutout`` is set, in which case it means 0.
        cutmix_minmax: CutMix min/max box side ratio; forces cutmix_alpha=1.0 (as timm).
        prob: probability of mixing per batch (per candidate set), per pair or per element.
        switch_prob: probability of CutMix instead of mixup when both are active.
        mode: 'batch' (one lambda / box per candidate set, the paper), 'pair' (per pair, both images of
            a pair share lambda and box; needs an even batch) or 'elem' (per element).
        correct_lam: reset lambda to the kept area after the box is clipped at the border (the paper).
        label_smoothing: smoothing of the hard labels of ``label_mode='hard'`` (timm's default is 0.1,
            KD uses 0).
        num_classes: number of classes, needed for ``label_mode='hard'``.
        pairing: 'derangement' (default, the authors' CutMix: a random permutation without fixed points;
            in 'pair' mode a random perfect matching), 'random' (plain random permutation, fixed points
            allowed: the authors' mixup) or 'flip' (timm: i with B-1-i). 'flip' and mode='pair' need an
            even batch; the others work for any batch of 2 or more.
        label_mode: 'teacher' (the view is labelled by the teacher's KL, TL*) or 'hard' (area-weighted
            CE with the two source labels: the KD+CutMix baseline).
        cutout: make Cutout views instead of mixing: True (hole side = image side // 4: 8 for 32 px,
            16 for 64 px, 56 for 224 px, as the authors) or the hole side in pixels. The hole is set to
            0, i.e. the mean colour of a normalized batch. Does not combine with mixup/CutMix.
        mix_fraction: partial mixup (PMU): share of each candidate set that is mixed, drawn without
            replacement (pairs in 'pair' mode); the other rows are the original images. 1.0 = FMU.
        n_candidates: candidate sets per batch; the pool has ``n_candidates * B`` views, each set with
            its own lambda, box and pairing. None: 2 when picking (the paper), else 1.
        pick: None (train on the whole pool), or the criterion to keep the top ``pick_ratio`` of the
            pool, a name of ``timm_kd.data.pick.PICK_CRITERIA``: 'kld' (per-sample KL(teacher ||
            student) at T, the paper's best), 't_ent' / 's_ent' (teacher / student entropy at T=1) or
            'random' (the control, drawn here up front).
        pick_ratio: share of the pool kept when picking, in (0, 1]. Paper: 0.5 (64 of 128).
        seed: seed a private numpy RNG (reproducible batches); None uses numpy's global RNG, like timm,
            so global seeding and RNG checkpointing cover it.
    """

    def __init__(
            self,
            mixup_alpha: float = 0.,
            cutmix_alpha: Optional[float] = None,
            cutmix_minmax: Optional[Sequence[float]] = None,
            prob: float = 1.0,
            switch_prob: float = 0.5,
            mode: str = 'batch',
            correct_lam: bool = True,
            label_smoothing: float = 0.,
            num_classes: Optional[int] = 1000,
            pairing: str = 'derangement',
            label_mode: str = 'teacher',
            cutout: Union[bool, int] = False,
            mix_fraction: float = 1.0,
            n_candidates: Optional[int] = None,
            pick: Optional[str] = None,
            pick_ratio: float = 0.5,
            seed: Optional[int] = None,
    ):
        cutout_side = _cutout_side(cutout)
        if cutmix_alpha is None:
            cutmix_alpha = 1.0 if (mixup_alpha == 0 and not cutout_side and cutmix_minmax is None) else 0.
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2 or not 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1:
                raise ValueError(f'cutmix_minmax must be (min, max) with 0 < min < max <= 1, got {cutmix_minmax}.')
            cutmix_minmax = tuple(float(v) for v in cutmix_minmax)
            cutmix_alpha = 1.0  # as timm: minmax boxes, alpha only decides that CutMix is on
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f'mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}.')
        mixing = mixup_alpha > 0 or cutmix_alpha > 0
        if pick is not None and pick not in PICK_CRITERIA:
            raise ValueError(f"Unknown pick criterion '{pick}', expected one of {list(PICK_CRITERIA)} or None.")
        if cutout_side and mixing:
            raise ValueError(
                'cutout makes its own view and does not combine with mixup/CutMix: '
                'set mixup_alpha=0 and cutmix_alpha=0 (or cutout=False).')
        if not mixing and not cutout_side:
            what = f"pick='{pick}' needs a mixed view to pick from" if pick else 'DistillMixup has no view to make'
            raise ValueError(f'{what}: set mixup_alpha > 0, cutmix_alpha > 0 (or cutmix_minmax) or cutout.')
        if mode not in MIX_MODES:
            raise ValueError(f"Unknown mode '{mode}', expected one of {MIX_MODES}.")
        if pairing not in PAIRINGS:
            raise ValueError(f"Unknown pairing '{pairing}', expected one of {PAIRINGS}.")
        if mode == 'pair' and cutout_side:
            raise ValueError("mode='pair' pairs images for mixing; Cutout uses mode='batch' or 'elem'.")
        if mode == 'pair' and pairing == 'random':
            raise ValueError(
                "mode='pair' mixes both images of a pair with each other and needs a symmetric pairing: "
                "pairing='derangement' (a random matching) or 'flip'.")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"Unknown label_mode '{label_mode}', expected one of {LABEL_MODES}.")
        if label_mode == 'hard' and pick is not None:
            raise ValueError(
                "pick chooses views for the teacher-labelled loss; label_mode='hard' (KD+CutMix baseline) "
                "does not label views with the teacher. Use pick=None or label_mode='teacher'.")
        if label_mode == 'hard' and (num_classes is None or num_classes < 1):
            raise ValueError("label_mode='hard' builds soft targets and needs num_classes.")
        if not 0 < pick_ratio <= 1:
            raise ValueError(f'pick_ratio must be in (0, 1], got {pick_ratio}.')
        if not 0 < mix_fraction <= 1:
            raise ValueError(f'mix_fraction must be in (0, 1], got {mix_fraction}.')
        if not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise ValueError(f'prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}.')
        if not 0 <= label_smoothing < 1:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}.')
        if n_candidates is None:
            n_candidates = 2 if pick is not None else 1
        if int(n_candidates) != n_candidates or n_candidates < 1:
            raise ValueError(f'n_candidates must be an integer >= 1, got {n_candidates}.')

        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutmix_minmax = cutmix_minmax
        self.mix_prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.mode = mode
        self.correct_lam = correct_lam
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes
        self.pairing = pairing
        self.label_mode = label_mode
        self.cutout = cutout_side  # None, 'auto' (side // 4) or an int side in pixels
        self.mix_fraction = float(mix_fraction)
        self.n_candidates = int(n_candidates)
        self.pick = pick
        self.pick_ratio = float(pick_ratio)
        self.seed = seed
        self._rng = np.random.RandomState(seed) if seed is not None else np.random
        self._source_cache: Dict[Tuple[int, int, str], torch.Tensor] = {}
        self.mixup_enabled = True  # the train loop may switch mixing off (timm's --mixup-off-epoch)

    # ---- state (only a private, seeded RNG has any) ----
    def state_dict(self) -> Dict[str, Any]:
        return {'rng_state': self._rng.get_state()} if self.seed is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.seed is not None and state.get('rng_state') is not None:
            self._rng.set_state(state['rng_state'])

    def __repr__(self) -> str:
        if self.cutout:
            view = f'cutout={self.cutout!r}'
        else:
            view = f'mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}'
        return (
            f'{self.__class__.__name__}({view}, mode={self.mode!r}, pairing={self.pairing!r}, '
            f'label_mode={self.label_mode!r}, prob={self.mix_prob}, mix_fraction={self.mix_fraction}, '
            f'n_candidates={self.n_candidates}, pick={self.pick!r}, pick_ratio={self.pick_ratio})')

    def num_pick(self, batch_size: int) -> Optional[int]:
        """Rows of the pool the task trains on when picking: round(pick_ratio * pool), at least 1."""
        if self.pick is None:
            return None
        pool = self.n_candidates * batch_size
        return min(pool, max(1, int(round(self.pick_ratio * pool))))

    # ---- host-side random draws ----
    def _partners(self, batch_size: int) -> np.ndarray:
        """Partner index per image. 'pair' mode returns an involution (i <-> partner[i])."""
        rng, n = self._rng, batch_size
        if self.cutout:
            return np.arange(n, dtype=np.int64)
        if self.mode == 'pair':
            if self.pairing == 'flip':
                a = np.arange(n // 2)
                b = n - 1 - a
            else:
                order = rng.permutation(n)
                a, b = order[0::2], order[1::2]
            partner = np.empty(n, dtype=np.int64)
            partner[a], partner[b] = b, a
            return partner
        if self.pairing == 'flip':
            return np.arange(n - 1, -1, -1, dtype=np.int64)
        if self.pairing == 'random':
            return rng.permutation(n).astype(np.int64)
        # derangement by rejection (as the authors): uniform over derangements, ~e draws on average
        identity = np.arange(n)
        while True:
            perm = rng.permutation(n)
            if not (perm == identity).any():
                return perm.astype(np.int64)

    def _draw_one(self, h: int, w: int) -> Tuple[int, float, Tuple[int, int, int, int]]:
        """Kind, lambda and box of one candidate set in 'batch' mode (scalars: cheaper than numpy arrays)."""
        rng = self._rng
        if rng.rand() >= self.mix_prob:
            return _NONE, 1., (0, 0, 0, 0)
        if self.cutout:
            kind, lam = _CUTOUT, 1.
            cut_h, cut_w = _cutout_hw(self.cutout, h, w)
        else:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                kind = _CUTMIX if rng.rand() < self.switch_prob else _MIXUP
            else:
                kind = _MIXUP if self.mixup_alpha > 0 else _CUTMIX
            alpha = self.cutmix_alpha if kind == _CUTMIX else self.mixup_alpha
            lam = float(rng.beta(alpha, alpha))
            if kind == _MIXUP:
                return kind, lam, (0, 0, 0, 0)
            if self.cutmix_minmax is not None:
                lo, hi = self.cutmix_minmax
                cut_h = int(rng.randint(int(h * lo), max(int(h * hi), int(h * lo) + 1)))
                cut_w = int(rng.randint(int(w * lo), max(int(w * hi), int(w * lo) + 1)))
                yl, xl = int(rng.randint(0, h - cut_h + 1)), int(rng.randint(0, w - cut_w + 1))
                return kind, 1. - cut_h * cut_w / float(h * w), (yl, yl + cut_h, xl, xl + cut_w)
            ratio = math.sqrt(1. - lam)
            cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.randint(0, h)), int(rng.randint(0, w))
        # [c - cut // 2, c + cut // 2), clipped: the authors' and timm's rand_bbox (an odd side loses a pixel)
        yl, yh = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        xl, xh = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        if self.cutout or self.correct_lam:
            lam = 1. - (yh - yl) * (xh - xl) / float(h * w)
        return kind, lam, (yl, yh, xl, xh)

    def _draw_many(self, count: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kind, lambda and box of ``count`` independent draws ('elem' / 'pair' modes), vectorized."""
        rng = self._rng
        kind = np.full(count, _NONE, dtype=np.int64)
        lam = np.ones(count, dtype=np.float64)
        on = rng.rand(count) < self.mix_prob
        if self.cutout:
            kind[on] = _CUTOUT
            cut_h, cut_w = (np.full(count, v) for v in _cutout_hw(self.cutout, h, w))
        else:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = rng.rand(count) < self.switch_prob
                lam_mix = np.where(
                    use_cutmix,
                    rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=count),
                    rng.beta(self.mixup_alpha, self.mixup_alpha, size=count))
            elif self.mixup_alpha > 0:
                use_cutmix = np.zeros(count, dtype=bool)
                lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=count)
            else:
                use_cutmix = np.ones(count, dtype=bool)
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=count)
            kind[on] = np.where(use_cutmix[on], _CUTMIX, _MIXUP)
            lam[on] = lam_mix[on]
            if self.cutmix_minmax is not None:
                lo, hi = self.cutmix_minmax
                cut_h = rng.randint(int(h * lo), max(int(h * hi), int(h * lo) + 1), size=count)
                cut_w = rng.randint(int(w * lo), max(int(w * hi), int(w * lo) + 1), size=count)
            else:
                ratio = np.sqrt(1. - lam)
                cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
        if self.cutmix_minmax is not None and not self.cutout:
            # minmax: a box that lies inside the image (as timm's rand_bbox_minmax)
            yl = rng.randint(0, h - cut_h + 1, size=count)
            xl = rng.randint(0, w - cut_w + 1, size=count)
            yh, xh = yl + cut_h, xl + cut_w
        else:
            # centre uniform over the image, box clipped at the border (CutMix, Cutout, timm's rand_bbox)
            cy, cx = rng.randint(0, h, size=count), rng.randint(0, w, size=count)
            yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
            xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
        boxed = (kind == _CUTMIX) | (kind == _CUTOUT)
        box = np.stack([yl, yh, xl, xh], axis=1).astype(np.int64)
        box[~boxed] = 0
        if self.cutout or self.correct_lam or self.cutmix_minmax is not None:
            lam = np.where(boxed, 1. - (yh - yl) * (xh - xl) / float(h * w), lam)
        return kind, lam, box

    def _mixed_rows(self, count: int) -> np.ndarray:
        """Partial mixup: sorted indices of the round(mix_fraction * count) mixed rows, without replacement."""
        k = min(count, max(1, int(round(self.mix_fraction * count))))
        return np.sort(self._rng.choice(count, k, replace=False)).astype(np.int64)

    def _source(self, batch_size: int, device: torch.device) -> torch.Tensor:
        key = (batch_size, self.n_candidates, str(device))
        src = self._source_cache.get(key)
        if src is None:
            src = self._source_cache[key] = torch.arange(batch_size, device=device).repeat(self.n_candidates)
        return src

    # ---- the call ----
    def __call__(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> Optional[MixedViews]:
        """Build the pool of views for batch ``x`` (B, C, H, W). Returns None when mixing is switched off."""
        if not self.mixup_enabled:
            return None
        if x.ndim != 4:
            raise ValueError(f'DistillMixup expects a batch of images (B, C, H, W), got shape {tuple(x.shape)}.')
        batch_size = x.shape[0]
        if not self.cutout:
            if batch_size < 2:
                raise ValueError(f'Mixing needs a batch of at least 2 images to pair, got {batch_size}.')
            if (self.pairing == 'flip' or self.mode == 'pair') and batch_size % 2:
                need = "pairing='flip'" if self.pairing == 'flip' else "mode='pair'"
                raise ValueError(
                    f'{need} needs an even batch size, got {batch_size}: use the default '
                    f"pairing='derangement' with mode='batch' or 'elem', or drop the last batch (drop_last=True).")
        if self.label_mode == 'hard' and (target is None or target.ndim != 1):
            raise ValueError("label_mode='hard' needs class-index targets of shape (B,).")

        if self.mode == 'batch':
            x_mix, partner_t, lam_t, mixed_t, pick_t = self._call_batch(x)
        else:
            x_mix, partner_t, lam_t, mixed_t, pick_t = self._call_elem(x)
        source_t = self._source(batch_size, x.device)
        soft_target = None
        if self.label_mode == 'hard':
            soft_target = self._soft_target(target, source_t, partner_t, lam_t)
        return MixedViews(
            x=x, target=target, x_mix=x_mix, source=source_t, partner=partner_t, lam=lam_t, mixed=mixed_t,
            soft_target=soft_target, pick=self.pick, num_pick=self.num_pick(batch_size), pick_index=pick_t)

    def _pick_random(self, pool: int, batch_size: int) -> Optional[np.ndarray]:
        """Rows of a criterion without a score (the 'random' control), drawn with the views."""
        if self.pick is None or PICK_CRITERIA[self.pick].score is not None:
            return None
        return self._rng.choice(pool, self.num_pick(batch_size), replace=False).astype(np.int64)

    def _call_batch(self, x: torch.Tensor):
        """One lambda / box per candidate set: a few whole-batch kernels per set, no per-sample work."""
        batch_size, _, h, w = x.shape
        n = self.n_candidates
        pool = n * batch_size
        partner_np = np.empty(pool, dtype=np.int64)
        lam_np = np.ones(pool, dtype=np.float32)
        mixed_np = np.zeros(pool, dtype=np.int64)
        sets, sel_parts = [], []
        for c in range(n):
            lo = c * batch_size
            partner_np[lo:lo + batch_size] = self._partners(batch_size)
            kind, lam, box = self._draw_one(h, w)
            sel = None
            if kind != _NONE:
                if self.mix_fraction < 1.:
                    sel = self._mixed_rows(batch_size)
                    sel_parts.append(sel)
                    mixed_np[lo + sel], lam_np[lo + sel] = 1, lam
                else:
                    mixed_np[lo:lo + batch_size], lam_np[lo:lo + batch_size] = 1, lam
            sets.append((kind, float(np.float32(lam)), box, sel))
        pick_np = self._pick_random(pool, batch_size)

        # one int copy and one float copy to the device
        ints = [partner_np, mixed_np] + sel_parts + ([pick_np] if pick_np is not None else [])
        ints_t = _to_device(np.concatenate(ints), x.device)
        lam_t = _to_device(lam_np, x.device)
        partner_t, mixed_t = ints_t[:pool], ints_t[pool:2 * pool].bool()
        pick_t = ints_t[-len(pick_np):] if pick_np is not None else None

        x_mix = _empty_pool(x, n)
        offset = 2 * pool
        for c, (kind, lam, (yl, yh, xl, xh), sel) in enumerate(sets):
            lo = c * batch_size
            dst = x_mix[lo:lo + batch_size]
            part = partner_t[lo:lo + batch_size]
            if kind == _NONE:
                dst.copy_(x)
            elif sel is None:
                if kind == _MIXUP:
                    # lam·x + (1−lam)·x[partner], in two kernels and no temporary
                    torch.index_select(x, 0, part, out=dst)
                    dst.lerp_(x, lam)
                else:
                    dst.copy_(x)
                    if yh > yl and xh > xl:
                        box = dst[:, :, yl:yh, xl:xh]
                        if kind == _CUTMIX:
                            box.copy_(x[:, :, yl:yh, xl:xh].index_select(0, part))
                        else:
                            box.zero_()
            else:
                # partial mixup: the chosen rows only (their indices came with the one int copy)
                rows = ints_t[offset:offset + len(sel)]
                offset += len(sel)
                part = part.index_select(0, rows)
                dst.copy_(x)
                if kind == _MIXUP:
                    dst.index_copy_(0, rows, torch.lerp(x.index_select(0, part), x.index_select(0, rows), lam))
                elif yh > yl and xh > xl:
                    box = dst[:, :, yl:yh, xl:xh]
                    if kind == _CUTMIX:
                        box.index_copy_(0, rows, x[:, :, yl:yh, xl:xh].index_select(0, part))
                    else:
                        box.index_fill_(0, rows, 0)
        return x_mix, partner_t, lam_t, mixed_t, pick_t

    def _call_elem(self, x: torch.Tensor):
        """Per-element / per-pair lambda and box, vectorized with a per-row pixel weight."""
        batch_size, _, h, w = x.shape
        n = self.n_candidates
        pool = n * batch_size
        partners, lams, kinds, boxes, mixed = [], [], [], [], []
        for _ in range(n):
            partner = self._partners(batch_size)
            if self.mode == 'pair':
                first = np.flatnonzero(np.arange(batch_size) < partner)  # one index per pair
                kind_p, lam_p, box_p = self._draw_many(len(first), h, w)
                kind, lam = np.zeros(batch_size, dtype=np.int64), np.ones(batch_size)
                box = np.zeros((batch_size, 4), dtype=np.int64)
                for idx in (first, partner[first]):
                    kind[idx], lam[idx], box[idx] = kind_p, lam_p, box_p
                mix = np.ones(batch_size, dtype=bool)
                if self.mix_fraction < 1.:
                    chosen = first[self._mixed_rows(len(first))]
                    mix[:] = False
                    mix[chosen] = mix[partner[chosen]] = True
            else:
                kind, lam, box = self._draw_many(batch_size, h, w)
                mix = np.ones(batch_size, dtype=bool)
                if self.mix_fraction < 1.:
                    mix[:] = False
                    mix[self._mixed_rows(batch_size)] = True
            mix &= kind != _NONE
            partners.append(partner)
            lams.append(np.where(mix, lam, 1.))
            kinds.append(np.where(mix, kind, _NONE))
            boxes.append(np.where(mix[:, None], box, 0))
            mixed.append(mix)
        pick_np = self._pick_random(pool, batch_size)

        ints = [np.concatenate(partners), np.concatenate(mixed).astype(np.int64), np.concatenate(kinds),
                np.concatenate(boxes).reshape(-1)] + ([pick_np] if pick_np is not None else [])
        ints_t = _to_device(np.concatenate(ints), x.device)
        lam_t = _to_device(np.concatenate(lams).astype(np.float32), x.device)
        partner_t, mixed_t = ints_t[:pool], ints_t[pool:2 * pool].bool()
        kind_t, box_t = ints_t[2 * pool:3 * pool], ints_t[3 * pool:7 * pool].view(pool, 4)
        pick_t = ints_t[-len(pick_np):] if pick_np is not None else None

        dev = x.device
        hh, ww = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_y = (hh >= box_t[:, 0:1]) & (hh < box_t[:, 1:2])  # (N, H)
        in_x = (ww >= box_t[:, 2:3]) & (ww < box_t[:, 3:4])  # (N, W)
        in_box = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)  # (N, 1, H, W), empty box for non-box rows
        x_src = x.repeat(n, 1, 1, 1) if n > 1 else x
        if self.cutout:
            return x_src.masked_fill(in_box, 0), partner_t, lam_t, mixed_t, pick_t
        # weight of the source pixel: 0 inside a box, lambda on mixup rows, 1 elsewhere; lerp is exact at 0 and 1
        blend = torch.where(kind_t == _MIXUP, lam_t, torch.ones_like(lam_t)).to(x.dtype).view(-1, 1, 1, 1)
        weight = blend.masked_fill(in_box, 0.)
        x_mix = torch.lerp(x.index_select(0, partner_t), x_src, weight)
        return x_mix, partner_t, lam_t, mixed_t, pick_t

    def _soft_target(self, target, source_t, partner_t, lam_t) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        on = 1. - self.label_smoothing + off
        # scatter, not F.one_hot: one_hot checks the label range on the host (a sync on GPU)
        one_hot = torch.full((target.shape[0], self.num_classes), off, device=target.device)
        one_hot.scatter_(1, target.long().view(-1, 1), on)
        # lam·onehot(y) + (1−lam)·onehot(y[partner]); lerp is exact for unmixed rows (lam = 1)
        return torch.lerp(one_hot.index_select(0, partner_t), one_hot.index_select(0, source_t), lam_t[:, None])


def _cutout_side(cutout: Union[bool, int, None]) -> Union[None, str, int]:
    if cutout is None or cutout is False or (not isinstance(cutout, bool) and cutout == 0):
        return None
    if cutout is True:
        return 'auto'
    if int(cutout) != cutout or cutout < 1:
        raise ValueError(f'cutout must be True/False or the hole side in pixels (>= 1), got {cutout!r}.')
    return int(cutout)


def _cutout_hw(side: Union[str, int], h: int, w: int) -> Tuple[int, int]:
    if side == 'auto':
        return max(1, h // 4), max(1, w // 4)
    return min(side, h), min(side, w)


def _empty_pool(x: torch.Tensor, n: int) -> torch.Tensor:
    fmt = torch.channels_last if (
        x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()) else torch.contiguous_format
    return torch.empty((n * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
