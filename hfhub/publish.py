#!/usr/bin/env python3
"""Publish a student trained with train_kd.py to the Hub: the ``timm-kd-publish`` console script.

    python hfhub/publish.py output/train/<run> --repo-id me/resnet8x4.tlcutmix_pick_cifar100 [--dry-run]

Run ``--help`` for the flags; needs timm-kd installed (``pip install -e .`` in a checkout).
"""
import sys

from timm_kd.hub.cli import publish_main

if __name__ == '__main__':
    sys.exit(publish_main())
