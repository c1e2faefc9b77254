"""Data rules of ``train_kd.py``: class maps and class folders that would train silently wrong are refused.

timm numbers the class folders of each split on its own (sorted names), and reads a class map as given: a map that
names a class twice, skips an index or holds one class, and a validation split whose folders differ from the
training split's, all train and score without a word (a 'd' folder scored as class 'c', a 1-class model at 100 %
top-1). Each is one sentence here, before any training.
"""
import os
from collections import Counter
from typing import Any, Dict, List, Optional

from timm_kd.utils.errors import UsageError

__all__ = ['check_class_map', 'check_split_classes']


def _txt_lines(path: str, root: str) -> Optional[List[str]]:
    """The stripped lines of a .txt class map, found as timm finds it (as given, else under the dataset root)."""
    if not path.lower().endswith('.txt'):
        return None
    with open(path if os.path.exists(path) else os.path.join(root, path), encoding='utf-8') as f:
        return [line.strip() for line in f]


def check_class_map(class_to_idx: Dict[Any, Any], flag_value: str, root: str) -> None:
    """A --class-map (as timm read it) gives at least two classes an index each and no index to two classes: in a
    .txt file every line names a class and no class twice; a .pkl dict maps names to whole numbers >= 0, one class
    an index. A .pkl may leave indices out (ImageNet classes under their ImageNet indices, so a 1000-class teacher's
    outputs stay in place): the model's outputs are the largest index + 1 either way. Raises UsageError."""
    where = f'--class-map {flag_value!r}'
    lines = _txt_lines(flag_value, root)
    if lines is not None:
        empty = [i for i, name in enumerate(lines, 1) if not name]
        if empty:
            raise UsageError(f'{where}: line {empty[0]} is empty; every line names one class (its line number - 1 is '
                             f'the class index).')
        twice = [name for name, n in Counter(lines).items() if n > 1]
        if twice:
            at = [i for i, name in enumerate(lines, 1) if name == twice[0]]
            raise UsageError(f'{where} names {twice[0]!r} twice (lines {" and ".join(map(str, at[:2]))}); name each '
                             f'class once.')
    indices = list(class_to_idx.values())
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise UsageError(f'{where} must map class names to whole-number indices 0, 1, 2, ...')
    if len(set(indices)) < 2:
        raise UsageError(f'{where} names {len(set(indices))} class; a classifier needs at least 2 classes.')
    by_index: Dict[int, List[Any]] = {}
    for name, i in class_to_idx.items():
        by_index.setdefault(i, []).append(name)
    shared = next((names for names in by_index.values() if len(names) > 1), None)
    if shared is not None:
        raise UsageError(f'{where} gives {shared[0]!r} and {shared[1]!r} the same index {class_to_idx[shared[0]]}; '
                         f'give each class its own index.')


def _folder_classes(ds) -> Optional[Dict[str, int]]:
    """The class folder -> index map a timm image-folder / tar reader built for a split (None for other datasets,
    whose classes do not depend on the split)."""
    reader = getattr(getattr(ds, 'dataset', ds), 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None)
    return dict(class_to_idx) if isinstance(class_to_idx, dict) and class_to_idx else None


def check_split_classes(train_ds, eval_ds, train_split: str, eval_split: str) -> None:
    """Without a class map, the validation split's class folders are the training split's: the same names give the
    same indices. Raises UsageError naming the folders only one split has."""
    train, val = _folder_classes(train_ds), _folder_classes(eval_ds)
    if train is None or val is None or train == val:
        return
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    parts = [f'only {split!r} has {", ".join(repr(c) for c in names[:5])}'
             for split, names in ((train_split, only_train), (eval_split, only_val)) if names]
    raise UsageError(f'The class folders of the {train_split!r} and {eval_split!r} splits differ ({"; ".join(parts)}): '
                     f'timm numbers each split\'s folders on its own, so images would be scored as another class; give '
                     f'both splits the same class folders, or a --class-map naming the classes.')
