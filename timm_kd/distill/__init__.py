"""Distillation: losses (KD, per-sample KL, entropy), picking criteria, the distillation task."""
from .losses import entropy, kd_loss, per_sample_kl, soft_target_cross_entropy
from .pick import PICK_CRITERIA, batchnorm_modules, frozen_bn_stats, pick_scores, pick_topk
from .task import DistillationTask
