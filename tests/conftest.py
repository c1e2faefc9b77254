import os


import torch  # noqa: E402

import timm_kd  # noqa: E402,F401  (registers our models before tests collect them)

torch.set_num_threads(min(2, os.cpu_count() or 1))
