"""Hugging Face Hub tools: students out, teachers in.

* :mod:`.export` turns a ``train_kd.py`` run folder into a timm Hub folder and uploads it
  (:func:`publish_student`, console script ``timm-kd-publish``);
* :mod:`.convert` turns published KD teacher checkpoints into timm Hub folders (:func:`convert_teacher`,
  console script ``timm-kd-convert``);
* :mod:`.cards` writes their model cards; :mod:`.io` writes folders atomically and uploads them with
  timeouts and bounded retries; :mod:`.cli` holds the two console scripts.

Building a teacher from the Hub lives with the distillation task (:mod:`timm_kd.distill.teacher`), the
RepDistiller name table with the models (:mod:`timm_kd.models`); both are re-exported here under the names
this module always had.
"""
from timm_kd.distill.teacher import TeacherLoadError, create_teacher, resolve_checkpoint
from timm_kd.models import RD_ARCH_MAP, arch_from_path, map_arch
from .cards import DatasetInfo, card_header, identify_dataset, student_card, teacher_card, usage_snippet
from .convert import convert_teacher, find_teacher_checkpoints
from .export import RunFolderError, export_student, publish_student, read_run
from .io import HubPublishError, check_repo_id, hub_endpoint, push_folder, save_model_folder, sha256_file

__all__ = [
    'TeacherLoadError', 'HubPublishError', 'RunFolderError', 'create_teacher', 'resolve_checkpoint', 'hub_endpoint',
    'check_repo_id', 'save_model_folder', 'push_folder', 'teacher_card', 'student_card', 'usage_snippet',
    'card_header', 'DatasetInfo', 'identify_dataset', 'read_run', 'export_student', 'publish_student',
    'RD_ARCH_MAP', 'map_arch', 'arch_from_path', 'find_teacher_checkpoints', 'convert_teacher', 'sha256_file',
]
