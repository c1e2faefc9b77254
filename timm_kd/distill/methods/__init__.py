""" Distillation methods, chosen by name from one table

``METHODS`` maps a name to its ``Distiller`` class; ``@register_method('name')`` puts a class in it.
Everything else reads the table: ``DistillationTask(method='name')``, ``train_kd.py --distill name`` (its
choices and each method's flags), the benchmark and the tests. Adding a method = one module here
with a registered class, plus its import below.
"""
from typing import Callable, Dict, Type

import torch.nn as nn

from .base import Distiller, FlagRange, ModelOutputs

__all__ = ['METHODS', 'Distiller', 'ModelOutputs', 'register_method', 'create_method', 'method_arg_ranges']

METHODS: Dict[str, Type[Distiller]] = {}


def register_method(name: str) -> Callable[[Type[Distiller]], Type[Distiller]]:
    """Class decorator: register a ``Distiller`` subclass under ``name`` (lower case, unique)."""
    def wrap(cls: Type[Distiller]) -> Type[Distiller]:
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f'register_method({name!r}) expects a Distiller subclass, got {cls!r}.')
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f'Distillation method {name!r} is already registered ({METHODS[name].__name__}).')
        METHODS[name] = cls
        cls.method_name = name
        return cls
    return wrap


def create_method(
        name: str,
        student: nn.Module,
        teacher: nn.Module,
        *,
        num_classes: int,
        temperature: float,
        **hparams,
) -> Distiller:
    """Build the registered method ``name``; an unknown name raises ValueError listing the known ones."""
    cls = METHODS.get(name)
    if cls is None:
        raise ValueError(f'Unknown distillation method {name!r}: choose one of {sorted(METHODS)}.')
    return cls(student, teacher, num_classes=num_classes, temperature=temperature, **hparams)


def method_arg_ranges() -> Dict[str, FlagRange]:
    """The declared ranges of every registered method's flags, by dest (``Distiller.arg_ranges``)."""
    return {dest: r for cls in METHODS.values() for dest, r in cls.arg_ranges().items()}


# the methods: importing a module registers it
from . import kd, dkd, dist, fitnet, at, sp, cc, vid, pkt, crd, feature_mse, token  # noqa: E402,F401
