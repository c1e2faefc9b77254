#!/usr/bin/env python3
"""Convert KD teacher checkpoints into timm Hub folders: the ``timm-kd-convert`` console script.

    python hfhub/convert_teachers.py cifar_teachers.tar --out hub_teachers [--org me --push]

Run ``--help`` for the flags; needs timm-kd installed (``pip install -e .`` in a checkout).
"""
import sys

from timm_kd.hub.cli import convert_main

if __name__ == '__main__':
    sys.exit(convert_main())
