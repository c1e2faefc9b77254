"""CIFAR-style architectures of the KD literature, registered in timm's model registry on import."""
from ._builder import CIFAR100_MEAN, CIFAR100_STD, DEFAULT_HUB_ORG, cifar_cfg, hub_org
from ._convert import (
    KDCheckpointError, checkpoint_accuracy, checkpoint_num_classes, clean_kd_state_dict, load_kd_checkpoint,
    read_kd_checkpoint)
from ._names import arch_from_path, map_arch, original_names
from ._store import (
    TEACHER_SOURCES, TeacherSource, downloads_dir, fetch_command, list_teachers, store_dir, store_folder)
from .cifar_resnet import *
from .cifar_wrn import *
from .cifar_vgg import *
from .cifar_resnetv2 import *
from .cifar_mobilenetv2 import *
from .cifar_shufflenet import *

# the RepDistiller-name table of the families above (map_arch reads the registry, so later families count too)
RD_ARCH_MAP = original_names()
