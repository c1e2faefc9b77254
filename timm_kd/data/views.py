""" Teacher-labelled views: the one table of the second views a student can be distilled on

A *view* x' of a training batch x is an extra input the student is trained on with the teacher's
output as its target (``KL(s(x'), t(x'))``). Views come in two kinds, one table (``VIEWS``) for both:

* ``'sample'`` views are made per image in the data loader from the image the original view came
  from (same random crop / flip), with a policy on top: ``flip``, ``crop``, ``crop_flip``, ``jitter``,
  ``erase``, ``autoaugment``, ``ta_wide`` and timm's ``--aa`` policies (``rand-m9-mstd0.5``,
  ``augmix-m3-w3``, ``original``, ``v0``, ...). ``train_kd.py --tl-aug NAME``. The loader yields them as
  ``view_input`` beside the untouched original (see ``timm_kd/train/data.py``).
* ``'mix'`` views are made on the batch by ``DistillMixup`` (TLmixup, TLCutMix, Cutout, PMU, the
  hard-label CutMix baseline, TLCutMix+pick). ``train_kd.py`` makes them with its KD flags
  (``train_flags``); with ``--tl-aug`` they mix the per-sample view batch instead of the original.

``none`` is the absence of a second view. ``python -m timm_kd.da_score --views a,b,...`` scores any
entry; ``resolve_view`` turns a name (or a timm policy string) into its entry.

Small inputs (< 128 px, the CIFAR recipe) keep PIL images until the tensor conversion, so timm's
auto-augment policies (which operate on PIL images) apply at any size; their hyper-parameters
(translation, fill colour) follow the image size and mean as in timm's ``create_transform``.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from PIL import Image
from torchvision import transforms as T

from timm_kd.utils.ranges import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, FlagRange, in_range, range_text
from .pick import PICK_CRITERIA

__all__ = [
    'View', 'ImageSpec', 'VIEWS', 'VIEW_KINDS', 'resolve_view', 'sample_view_names', 'mix_view_names',
    'create_view_transform', 'PairedTransform', 'PatchShuffle', 'images_per_step', 'describe',
]

VIEW_KINDS = ('none', 'sample', 'mix')


@dataclass(frozen=True)
class ImageSpec:
    """What a per-sample view needs to know about the images: side, normalisation, crop padding."""
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_padding: int = 4
    interpolation: str = 'bilinear'


@dataclass(frozen=True)
class View:
    """One entry of ``VIEWS``.

    Attributes:
        name: table key; for ``family`` entries also the first dash-separated part of a timm policy string.
        kind: 'none', 'sample' (made in the loader) or 'mix' (made by DistillMixup on the batch).
        help: one line for --help, docs and da_score's table.
        default_config: the full policy string used for the bare family name (e.g. 'rand' -> 'rand-m9-mstd0.5').
        family: the name is a prefix of timm policy strings ('rand-m7-n3', 'augmix-m5-w4-d2').
        mixup: DistillMixup keyword arguments of a 'mix' view.
        train_flags: the train_kd.py flags that make a 'mix' view ('sample' views: --tl-aug NAME).
        needs_student: the view's pick criterion scores the pool with the student.
    """
    name: str
    kind: str
    help: str
    default_config: Optional[str] = None
    family: bool = False
    mixup: Mapping[str, Any] = field(default_factory=dict)
    train_flags: Tuple[str, ...] = ()
    needs_student: bool = False

    def flags(self, config: Optional[str] = None) -> List[str]:
        """train_kd.py arguments that train on this view."""
        if self.kind == 'sample':
            return ['--tl-aug', config or self.name]
        return list(self.train_flags)


def _mix(name: str, help: str, flags: Tuple[str, ...], needs_student: bool = False, **mixup) -> View:
    return View(name, 'mix', help, mixup=mixup, train_flags=flags, needs_student=needs_student)


def _sample(name: str, help: str, default_config: Optional[str] = None, family: bool = False) -> View:
    return View(name, 'sample', help, default_config=default_config, family=family)


VIEWS: Dict[str, View] = {v.name: v for v in (
    View('none', 'none', 'no second view: the original batch only (KD)'),
    _sample('identity', 'a copy of the original view (control: same images, twice the KD weight)'),
    _sample('flip', 'random horizontal flip'),
    _sample('crop', 'random crop with zero padding (crop padding of the recipe, else size // 8)'),
    _sample('crop_flip', 'random crop + horizontal flip'),
    _sample('jitter', 'colour jitter: brightness, contrast, saturation 0.4 (timm default)'),
    _sample('erase', "timm random erasing: one box of 2-33 % of the image, per-pixel normal noise ('pixel')"),
    _sample('autoaugment', 'torchvision AutoAugment: CIFAR-10 policy below 128 px, else ImageNet (the authors)'),
    _sample('ta_wide', 'TrivialAugment-wide (torchvision TrivialAugmentWide)'),
    _sample('rand', 'timm RandAugment, e.g. rand-m9-mstd0.5 (timm --aa syntax)', 'rand-m9-mstd0.5', True),
    _sample('augmix', 'timm AugMix, e.g. augmix-m3-w3 (timm --aa syntax)', 'augmix-m3-w3', True),
    _sample('original', 'timm AutoAugment, original policy'),
    _sample('originalr', 'timm AutoAugment, original policy with random rotation fill'),
    _sample('v0', 'timm AutoAugment, policy v0'),
    _sample('v0r', 'timm AutoAugment, policy v0r'),
    _sample('3a', 'timm 3-Augment (grey, solarize, blur; DeiT III)'),
    _sample('patch_shuffle', 'shuffles a 4x4 grid of patches: destroys the object (control, a bad view)'),
    _mix('mixup', 'TLmixup: lambda ~ Beta(1, 1), random partner (the authors)',
         ('--tl-mixup', '1.0', '--mix-pairing', 'random'), mixup_alpha=1.0, pairing='random'),
    _mix('cutmix', 'TLCutMix: lambda ~ Beta(1, 1), partner by derangement (the authors)',
         ('--tl-cutmix', '1.0'), cutmix_alpha=1.0),
    _mix('cutout', 'Cutout: one hole of side size // 4 per batch, set to the mean colour (the authors)',
         ('--cutout',), cutout=True),
    _mix('pmu', 'partial mixup (Choi et al.): mixup on 10 % of the batch, the rest original',
         ('--tl-mixup', '1.0', '--mix-fraction', '0.1'), mixup_alpha=1.0, mix_fraction=0.1),
    _mix('cutmix_hard', 'KD+CutMix baseline: CutMix views trained on hard area-weighted labels (the teacher '
                        'scores the same images as cutmix)', ('--cutmix-hard', '1.0'),
         cutmix_alpha=1.0, label_mode='hard'),
    # one TLCutMix+pick view per pick criterion, named without the criterion's underscore (t_ent -> _tent)
    *(_mix(f'cutmix_pick_{name.replace("_", "")}', f'TLCutMix+pick: 2 x batch CutMix candidates, train on the '
           f'half picked by {name}: {crit.description}', ('--tl-cutmix', '1.0', '--pick', name),
           needs_student=crit.needs_student, cutmix_alpha=1.0, pick=name) for name, crit in PICK_CRITERIA.items()),
)}


def sample_view_names() -> List[str]:
    return [n for n, v in VIEWS.items() if v.kind == 'sample']


def mix_view_names() -> List[str]:
    return [n for n, v in VIEWS.items() if v.kind == 'mix']


def resolve_view(name: str) -> Tuple[View, str]:
    """(entry, full policy string) of a view name or a timm policy string; ValueError names the choices.

    ``'rand-m7-n3'`` resolves to the ``rand`` family with that config, ``'rand'`` to its default config.
    """
    key = name.strip()
    view = VIEWS.get(key)
    if view is not None:
        return view, (view.default_config or key)
    head, *sections = key.split('-')
    family = VIEWS.get(head)
    if family is None or not family.family:
        raise ValueError(
            f"Unknown view {name!r}: use one of {', '.join(VIEWS)} (or a timm policy string such as "
            f"rand-m9-mstd0.5 or augmix-m3-w3).")
    _check_sections(head, sections, name, family.default_config)
    return family, key


# The sections timm's rand_augment_transform / augment_and_mix_transform read: key -> (type, allowed values, meaning).
# timm reads a value only when it starts with a digit, ignores other sections and clips a magnitude above its
# maximum, so a typo, 'nan' or a value out of range would change the policy without a word: each is refused.
_FAMILY_SECTIONS: Dict[str, Dict[str, Tuple[type, FlagRange, str]]] = {
    'rand': {'mstd': (float, NON_NEGATIVE, 'magnitude noise std, > 100: uniform'),
             'mmax': (int, AT_LEAST_ONE, 'magnitude cap'), 'inc': (int, (0, 1, False, False), 'increasing ops'),
             'm': (int, (0, 10, False, False), 'magnitude, up to mmax if given'),
             'n': (int, AT_LEAST_ONE, 'ops per image'), 'p': (float, (0, 1, False, False), 'probability of each op')},
    'augmix': {'mstd': (float, NON_NEGATIVE, 'magnitude noise std'), 'm': (int, (0, 10, False, False), 'magnitude'),
               'w': (int, AT_LEAST_ONE, 'chains mixed'), 'd': (int, AT_LEAST_ONE, 'ops per chain; none: 1-3 at random'),
               'a': (float, POSITIVE, 'Dirichlet / Beta alpha, > 0'), 'b': (int, (0, 1, False, False), 'blended mode')},
}
_RAND_OP_SETS = ('weights', '3aw', '3a')  # rand-t<name>: timm's op sets; another name silently means the default


def _check_sections(head: str, sections: List[str], name: str, example: str) -> None:
    """Every section of a ``rand`` / ``augmix`` policy string is one timm reads, with a value in range."""
    table = _FAMILY_SECTIONS[head]
    keys = sorted(table, key=len, reverse=True)  # 'mstd' before 'm'
    values: Dict[str, Tuple[str, float]] = {}
    for section in sections:
        if head == 'rand' and section.startswith('t'):
            if section[1:] not in _RAND_OP_SETS:
                raise ValueError(f"{name!r}: section {section!r} names no timm RandAugment op set (t followed by "
                                 f"{' / '.join(_RAND_OP_SETS)}).")
            continue
        key = next((k for k in keys if section.startswith(k)), None)
        if key is None:
            raise ValueError(f"{name!r}: unknown section {section!r} of a timm {head} policy string (keys: "
                             f"{', '.join(table)}, each followed by a number, e.g. {example}).")
        kind, _, meaning = table[key]
        if not re.fullmatch(r'\d+' if kind is int else r'\d+(\.\d+)?', section[len(key):]):
            raise ValueError(f"{name!r}: section {section!r} needs {'an integer' if kind is int else 'a number'} "
                             f"after {key!r} ({meaning}).")
        values[key] = section, kind(section[len(key):])
    for key, (section, v) in values.items():
        _, allowed, meaning = table[key]
        if head == 'rand' and key == 'm' and 'mmax' in values:  # timm clips the magnitude at mmax (default 10)
            allowed = (allowed[0], values['mmax'][1], False, False)
        if not in_range(v, allowed):
            raise ValueError(f"{name!r}: section {section!r} is out of range: {key} ({meaning}) must be "
                             f"{range_text(allowed)}.")


class PatchShuffle:
    """Cut a (C, H, W) tensor into a ``grid`` x ``grid`` mosaic and permute the tiles (torch RNG).

    Pixels below / right of the last full tile stay in place. Every pixel of the image survives, only
    the spatial layout is destroyed: a control for the teacher-only score (label-destroying, yet the
    colour statistics of the sample are unchanged).
    """

    def __init__(self, grid: int = 4):
        self.grid = grid

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape
        th, tw = h // self.grid, w // self.grid
        if th < 1 or tw < 1:
            raise ValueError(f'patch_shuffle needs images of at least {self.grid} px, got {h}x{w}')
        g = self.grid
        tiles = x[:, :g * th, :g * tw].reshape(c, g, th, g, tw).permute(1, 3, 0, 2, 4).reshape(g * g, c, th, tw)
        tiles = tiles[torch.randperm(g * g)]
        out = x.clone()
        out[:, :g * th, :g * tw] = tiles.reshape(g, g, c, th, tw).permute(2, 0, 3, 1, 4).reshape(c, g * th, g * tw)
        return out

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(grid={self.grid})'


def _timm_hparams(spec: ImageSpec) -> Dict[str, Any]:
    """timm create_transform's auto-augment hyper-parameters for this image size and mean."""
    from timm.data.transforms import str_to_pil_interp
    return dict(translate_const=int(spec.size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in spec.mean),
                interpolation=str_to_pil_interp(spec.interpolation))


def _policy_ops(view: View, config: str, spec: ImageSpec) -> Tuple[List[Callable], List[Callable]]:
    """(PIL-image ops, normalized-tensor ops) of a per-sample view."""
    name = view.name
    pad = spec.crop_padding or max(1, spec.size // 8)
    crop, flip = T.RandomCrop(spec.size, padding=pad), T.RandomHorizontalFlip()
    if name == 'identity':
        return [], []
    if name in ('flip', 'crop', 'crop_flip'):
        return {'flip': [flip], 'crop': [crop], 'crop_flip': [crop, flip]}[name], []
    if name == 'jitter':
        return [T.ColorJitter(0.4, 0.4, 0.4)], []
    if name == 'erase':
        from timm.data.random_erasing import RandomErasing
        return [], [RandomErasing(probability=1.0, mode='pixel', device='cpu')]
    if name == 'autoaugment':
        policy = T.AutoAugmentPolicy.CIFAR10 if spec.size < 128 else T.AutoAugmentPolicy.IMAGENET
        return [T.AutoAugment(policy)], []
    if name == 'ta_wide':
        return [T.TrivialAugmentWide()], []
    if name == 'patch_shuffle':
        return [], [PatchShuffle()]
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    hparams = _timm_hparams(spec)
    if name == 'rand':
        return [rand_augment_transform(config, hparams)], []
    if name == 'augmix':
        return [augment_and_mix_transform(config, dict(hparams, translate_pct=0.3))], []
    if name in ('original', 'originalr', 'v0', 'v0r', '3a'):
        return [auto_augment_transform(config, hparams)], []
    raise ValueError(f'{name!r} is not a per-sample view (kind {view.kind!r})')


def create_view_transform(name: str, spec: ImageSpec) -> Tuple[Callable, Callable]:
    """(PIL transform, tensor transform) of the per-sample view ``name``; ValueError with one sentence when the
    name is unknown, not a per-sample view, or the policy cannot apply to ``spec.size`` px images (checked
    by applying it to a grey image of that size)."""
    view, config = resolve_view(name)
    if view.kind != 'sample':
        hint = f": train_kd.py makes it with {' '.join(view.train_flags)}" if view.kind == 'mix' else ''
        raise ValueError(f'{name!r} is not a per-sample view{hint}.')
    try:
        pil_ops, tensor_ops = _policy_ops(view, config, spec)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f'{name!r} is not a valid {view.name} policy string ({e or type(e).__name__}).') from e
    pil_tf, tensor_tf = T.Compose(pil_ops), T.Compose(tensor_ops)
    probe = Image.new('RGB', (spec.size, spec.size), (128, 128, 128))
    try:
        out = pil_tf(probe)
        if out.size != probe.size:
            raise ValueError(f'it changes the image size to {out.size}')
        tensor_tf(T.ToTensor()(out))
    except Exception as e:  # noqa: BLE001 - any failure means the policy does not fit this image size
        raise ValueError(f'The view {name!r} cannot apply to {spec.size} px images: {e}.') from e
    return pil_tf, tensor_tf


def _split_at_tensor(transform: Callable) -> Tuple[Callable, Callable]:
    """Split a Compose into its PIL part and the part from the tensor conversion on."""
    ops = list(getattr(transform, 'transforms', []))
    for i, op in enumerate(ops):
        if type(op).__name__ in ('ToTensor', 'MaybeToTensor', 'PILToTensor', 'MaybePILToTensor'):
            return T.Compose(ops[:i]), T.Compose(ops[i:])
    raise ValueError(f'A per-sample view needs a transform that converts PIL images to tensors, got {transform!r}.')


class PairedTransform:
    """The original view of an image and a second view made from the same random crop / flip.

    ``(x, x_view)`` of a PIL image: the base transform's PIL part (e.g. pad + crop + flip) is drawn once
    and shared; ``x`` is exactly what ``base`` alone returns (its random numbers are drawn first, in the
    same order), ``x_view`` = tensor part of ``base`` applied to ``view_pil(image)``, then ``view_tensor``.
    """

    def __init__(self, base: Callable, view_pil: Callable, view_tensor: Callable):
        self.pil, self.to_tensor = _split_at_tensor(base)
        self.view_pil, self.view_tensor = view_pil, view_tensor
        # the base's steps, for code that inspects a dataset's transform (the digits dataset stores its images
        # at the size of the transform's EnsureSize: the same pixels as without a view)
        self.transforms = list(base.transforms)

    def __call__(self, img) -> Tuple[torch.Tensor, torch.Tensor]:
        img = self.pil(img)
        x = self.to_tensor(img)
        return x, self.view_tensor(self.to_tensor(self.view_pil(img)))

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(base={self.pil}, to_tensor={self.to_tensor}, view={self.view_pil}, ' \
               f'{self.view_tensor})'


def images_per_step(batch_size: int, sample_view: bool, mixer=None) -> Dict[str, int]:
    """Images the student trains on and the teacher labels per step (per process).

    The student sees the batch plus the trained views (the pool, or its picked rows); the teacher
    labels the batch and every pool row (picks are scored on the whole pool). A per-sample view alone
    is a pool of ``batch_size``.
    """
    if mixer is None or mixer.label_mode == 'hard':
        views = batch_size if (sample_view or mixer is not None) else 0
        teacher_views = views if mixer is None else 0
        return dict(student=batch_size + views, teacher=batch_size + teacher_views)
    pool = mixer.n_candidates * batch_size
    trained = mixer.num_pick(batch_size) or pool
    labelled = trained if mixer.pick == 'random' else pool
    return dict(student=batch_size + trained, teacher=batch_size + labelled)


def describe(name: str) -> str:
    """One line for a view name or policy string (the entry's help, with the config for families)."""
    view, config = resolve_view(name)
    return view.help if config == view.name else f'{view.help} [{config}]'

