#!/usr/bin/env python3
"""Knowledge distillation training script for timm models (timm train.py's interface, accelerate underneath).

    accelerate launch train_kd.py --config configs/<recipe>.yaml --model resnet8x4 --teacher resnet32x4 \\
        --teacher-checkpoint t.pth --dataset torch/cifar100 --data-dir data --dataset-download --tl-cutmix --pick kld
    python train_kd.py --model resnet20 --dataset torch/cifar100 --data-dir data ...    # no teacher: plain CE

One process or N (``accelerate launch --multi_gpu --num_processes N``; on a CPU-only machine add
``--main_process_port 0``): only the student is data-parallel, the teacher is frozen on every device,
eval metrics are gathered over all processes and only the main process writes. Shared flags mean what
they mean in timm's train.py; the KD group, ``--std-aug``, ``--epoch-scale``, ``--sched multistep_torch``,
``--wd-all-params`` and ``--checkpoint-every`` are ours (``--help``). Output: ``output/train/<experiment>/``
with args.yaml, summary.csv, log.txt, last.pth.tar, model_best.pth.tar, results.json. ``--resume RUN_DIR``
continues a run bit-for-bit from its last (or mid-epoch recovery) checkpoint.

The same command is installed as ``timm-kd-train``. This file is only the script: the training lives in
``timm_kd/train/`` (``main.py`` reads top to bottom; the distillation step is ``timm_kd.DistillationTask``
with ``timm_kd.DistillMixup``). ``main(argv)`` returns the results dict. Flags, checkpoint format, resume
rules and fault behaviour: docs/training.md.
"""
from timm_kd.train.main import console_main, main

__all__ = ['main']

if __name__ == '__main__':
    console_main()
