"""Distillation: losses, pick criteria, the methods table and the distillation task."""
from .losses import entropy, kd_loss, per_sample_kl, soft_target_cross_entropy, standardize_logits
from .pick import PICK_CRITERIA, PickCriterion, batchnorm_modules, frozen_bn_stats, pick_scores, pick_topk
from .methods import METHODS, Distiller, ModelOutputs, create_method, register_method
from .diagnostics import TeacherProbStats
from .task import DistillationTask
