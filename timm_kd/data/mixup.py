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
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ['DistillMixup', 'MixedViews', 'PICK_CRITERIA', 'PAIRINGS', 'MIX_MODES', 'LABEL_MODES']

PICK_CRITERIA = ('kld', 't_ent', 's_ent', 'random')
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
            pool: 'kld' (per-sample KL(teacher || student) at T, the paper's best), 't_ent' / 's_ent'
            (teacher / student entropy at T=1) or 'random' (the control).
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
            raise ValueError(f"Unknown pick criterion '{pick}', expected one of {PICK_CRITERIA} or None.")
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
        if self.mode == 'pair':
            order = np.arange(n) if self.pairing == 'flip' else rng.permutation(n)
            a, b = (order[:n // 2], order[::-1][:n // 2]) if self.pairing == 'flip' else (order[0::2], order[1::2])
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

    def _draw_lam(self, count: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
        """Lambda and view kind (_NONE/_MIXUP/_CUTMIX/_CUTOUT) for a batch (count=None) or per element."""
        rng = self._rng
        size = 1 if count is None else count
        kind = np.full(size, _NONE, dtype=np.int64)
        lam = np.ones(size, dtype=np.float64)
        on = rng.rand(size) < self.mix_prob
        if self.cutout:
            kind[on] = _CUTOUT
            return lam, kind
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.rand(size) < self.switch_prob
            lam_mix = np.where(
                use_cutmix,
                rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=size),
                rng.beta(self.mixup_alpha, self.mixup_alpha, size=size))
        elif self.mixup_alpha > 0:
            use_cutmix = np.zeros(size, dtype=bool)
            lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=size)
        else:
            use_cutmix = np.ones(size, dtype=bool)
            lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=size)
        kind[on] = np.where(use_cutmix[on], _CUTMIX, _MIXUP)
        lam[on] = lam_mix[on]
        return lam, kind

    def _draw_boxes(self, img_hw: Tuple[int, int], lam: np.ndarray, kind: np.ndarray):
        """Boxes (yl, yh, xl, xh) for CutMix / Cutout rows; corrected lambda. Empty box elsewhere."""
        rng = self._rng
        h, w = img_hw
        size = len(lam)
        if self.cutout:
            cut_h, cut_w = _cutout_hw(self.cutout, h, w)
            cut_h, cut_w = np.full(size, cut_h), np.full(size, cut_w)
        elif self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            cut_h = rng.randint(int(h * lo), max(int(h * hi), int(h * lo) + 1), size=size)
            cut_w = rng.randint(int(w * lo), max(int(w * hi), int(w * lo) + 1), size=size)
        else:
            ratio = np.sqrt(1. - lam)
            cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
        if self.cutmix_minmax is not None and not self.cutout:
            # minmax: a box that lies inside the image (timm's rand_bbox_minmax)
            yl = rng.randint(0, h - cut_h + 1, size=size)
            xl = rng.randint(0, w - cut_w + 1, size=size)
            yh, xh = yl + cut_h, xl + cut_w
        else:
            # centre uniform over the image, box clipped at the border (CutMix, Cutout, timm's rand_bbox)
            cy, cx = rng.randint(0, h, size=size), rng.randint(0, w, size=size)
            yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
            xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
        boxed = (kind == _CUTMIX) | (kind == _CUTOUT)
        box = np.stack([yl, yh, xl, xh], axis=1).astype(np.int64)
        box[~boxed] = 0
        kept = 1. - (yh - yl) * (xh - xl) / float(h * w)
        if self.cutout or self.correct_lam or self.cutmix_minmax is not None:
            lam = np.where(boxed, kept, lam)
        return box, lam

    def _mixed_rows(self, batch_size: int) -> np.ndarray:
        """Partial mixup: bool mask of the rows that are mixed (without replacement)."""
        if self.mix_fraction >= 1.:
            return np.ones(batch_size, dtype=bool)
        rng = self._rng
        mask = np.zeros(batch_size, dtype=bool)
        k = min(batch_size, max(1, int(round(self.mix_fraction * batch_size))))
        mask[rng.choice(batch_size, k, replace=False)] = True
        return mask

    # ---- the call ----
    def __call__(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> Optional[MixedViews]:
        """Build the pool of views for batch ``x`` (B, C, H, W). Returns None when mixing is switched off."""
        if not self.mixup_enabled:
            return None
        if x.ndim != 4:
            raise ValueError(f'DistillMixup expects a batch of images (B, C, H, W), got shape {tuple(x.shape)}.')
        batch_size, _, h, w = x.shape
        if not self.cutout:
            if batch_size < 2:
                raise ValueError(f'Mixing needs a batch of at least 2 images to pair, got {batch_size}.')
            if (self.pairing == 'flip' or self.mode == 'pair') and batch_size % 2:
                need = "pairing='flip'" if self.pairing == 'flip' else "mode='pair'"
                raise ValueError(
                    f'{need} needs an even batch size, got {batch_size}: use the default '
                    f"pairing='derangement' with mode='batch' or 'elem', or drop the last batch (drop_last=True).")
        if self.label_mode == 'hard':
            if target is None or target.ndim != 1:
                raise ValueError("label_mode='hard' needs class-index targets of shape (B,).")

        n, device = self.n_candidates, x.device
        pool = n * batch_size
        per_elem = self.mode != 'batch'

        partners, lams, kinds, boxes, mixed = [], [], [], [], []
        for _ in range(n):
            if self.cutout:
                partner = np.arange(batch_size, dtype=np.int64)
            else:
                partner = self._partners(batch_size)
            if self.mode == 'pair':
                first = np.flatnonzero(np.arange(batch_size) < partner)  # one index per pair
                lam, kind = self._draw_lam(len(first))
                box, lam = self._draw_boxes((h, w), lam, kind)
                lam_e, kind_e = np.ones(batch_size), np.zeros(batch_size, dtype=np.int64)
                box_e = np.zeros((batch_size, 4), dtype=np.int64)
                for idx in (first, partner[first]):
                    lam_e[idx], kind_e[idx], box_e[idx] = lam, kind, box
                mix = np.ones(batch_size, dtype=bool)
                if self.mix_fraction < 1.:
                    k = min(len(first), max(1, int(round(self.mix_fraction * len(first)))))
                    chosen = first[self._rng.choice(len(first), k, replace=False)]
                    mix[:] = False
                    mix[chosen] = mix[partner[chosen]] = True
                lam, kind, box = lam_e, kind_e, box_e
            else:
                lam, kind = self._draw_lam(batch_size if per_elem else None)
                box, lam = self._draw_boxes((h, w), lam, kind)
                mix = self._mixed_rows(batch_size)
                if not per_elem:
                    lam, kind, box = (np.repeat(lam, batch_size), np.repeat(kind, batch_size),
                                      np.repeat(box, batch_size, axis=0))
            mix &= kind != _NONE
            lam = np.where(mix, lam, 1.)
            kind = np.where(mix, kind, _NONE)
            partners.append(partner)
            lams.append(lam)
            kinds.append(kind)
            boxes.append(box)
            mixed.append(mix)

        partner_np = np.concatenate(partners)
        lam_np = np.concatenate(lams).astype(np.float32)
        kind_np = np.concatenate(kinds)
        box_np = np.concatenate(boxes)
        mixed_np = np.concatenate(mixed)
        num_pick = self.num_pick(batch_size)
        pick_np = None
        if self.pick == 'random':
            pick_np = self._rng.choice(pool, num_pick, replace=False).astype(np.int64)

        # one int copy and one float copy to the device
        ints = [partner_np, mixed_np.astype(np.int64)]
        if per_elem:
            ints += [kind_np, box_np.reshape(-1)]
        if pick_np is not None:
            ints.append(pick_np)
        ints_t = _to_device(np.concatenate(ints), device)
        lam_t = _to_device(lam_np, device)
        partner_t = ints_t[:pool]
        mixed_t = ints_t[pool:2 * pool].bool()
        pick_t = ints_t[-num_pick:] if pick_np is not None else None
        source_t = torch.arange(batch_size, device=device).repeat(n)

        if per_elem:
            kind_t = ints_t[2 * pool:3 * pool]
            box_t = ints_t[3 * pool:7 * pool].view(pool, 4)
            x_mix = self._mix_elem(x, source_t, partner_t, lam_t, kind_t, box_t)
        else:
            x_mix = self._mix_batch(x, partner_np, partner_t, lam_np, kind_np, box_np, mixed_np)

        soft_target = None
        if self.label_mode == 'hard':
            soft_target = self._soft_target(target, source_t, partner_t, lam_t)
        return MixedViews(
            x=x, target=target, x_mix=x_mix, source=source_t, partner=partner_t, lam=lam_t, mixed=mixed_t,
            soft_target=soft_target, pick=self.pick, num_pick=num_pick, pick_index=pick_t)

    def _mix_batch(self, x, partner_np, partner_t, lam_np, kind_np, box_np, mixed_np) -> torch.Tensor:
        """One lambda / box per candidate set: slices and a few kernels per set, no per-sample work."""
        batch_size = x.shape[0]
        x_mix = _empty_pool(x, self.n_candidates)
        for c in range(self.n_candidates):
            lo = c * batch_size
            dst = x_mix[lo:lo + batch_size]
            rows = mixed_np[lo:lo + batch_size]
            kind = int(kind_np[lo:lo + batch_size].max())
            if kind == _NONE:
                dst.copy_(x)
                continue
            lam = float(lam_np[lo + int(np.argmax(rows))])
            yl, yh, xl, xh = (int(v) for v in box_np[lo + int(np.argmax(rows))])
            if rows.all():
                part = partner_t[lo:lo + batch_size]
                if kind == _MIXUP:
                    torch.mul(x, lam, out=dst)
                    dst.add_(x[part], alpha=1. - lam)
                else:
                    dst.copy_(x)
                    if kind == _CUTMIX:
                        dst[:, :, yl:yh, xl:xh] = x[part, :, yl:yh, xl:xh]
                    else:
                        dst[:, :, yl:yh, xl:xh] = 0
            else:
                # partial mixup: the chosen rows only (indices built on the host, so no sync)
                sel_np = np.flatnonzero(rows)
                sel = _to_device(sel_np, x.device)
                part = _to_device(partner_np[lo + sel_np], x.device)
                dst.copy_(x)
                if kind == _MIXUP:
                    dst[sel] = x[sel] * lam + x[part] * (1. - lam)
                elif kind == _CUTMIX:
                    dst[sel, :, yl:yh, xl:xh] = x[part, :, yl:yh, xl:xh]
                else:
                    dst[sel, :, yl:yh, xl:xh] = 0
        return x_mix

    def _mix_elem(self, x, source_t, partner_t, lam_t, kind_t, box_t) -> torch.Tensor:
        """Per-element / per-pair lambda and box, vectorized with a per-row pixel weight."""
        _, _, h, w = x.shape
        dev = x.device
        hh = torch.arange(h, device=dev)
        ww = torch.arange(w, device=dev)
        in_y = (hh >= box_t[:, 0:1]) & (hh < box_t[:, 1:2])  # (N, H)
        in_x = (ww >= box_t[:, 2:3]) & (ww < box_t[:, 3:4])  # (N, W)
        in_box = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
        boxed = (kind_t == _CUTMIX) | (kind_t == _CUTOUT)
        # weight of the source pixel: 0 inside a box, lambda for mixup rows, 1 for unmixed rows
        weight = torch.where(boxed[:, None, None], (~in_box).to(x.dtype), lam_t.to(x.dtype)[:, None, None])
        weight = weight.unsqueeze(1)
        if self.cutout:
            return x[source_t] * weight
        # exact copies where weight is 0 or 1 (a * 1 + b * 0 == a for finite b)
        return x[source_t] * weight + x[partner_t] * (1. - weight)

    def _soft_target(self, target, source_t, partner_t, lam_t) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        on = 1. - self.label_smoothing + off
        # scatter, not F.one_hot: one_hot checks the label range on the host (a sync on GPU)
        one_hot = torch.full((target.shape[0], self.num_classes), off, device=target.device)
        one_hot.scatter_(1, target.long().view(-1, 1), on)
        lam = lam_t[:, None]
        return one_hot[source_t] * lam + one_hot[partner_t] * (1. - lam)


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
