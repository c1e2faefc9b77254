"""``timm_kd.features`` is :mod:`timm_kd.experiments.feature_space` (the feature-space analysis); this name keeps
``python -m timm_kd.features`` and its imports working."""
import sys

if __name__ == '__main__':
    import runpy
    runpy.run_module('timm_kd.experiments.feature_space', run_name='__main__', alter_sys=True)
else:
    from timm_kd.experiments import feature_space as _module
    sys.modules[__name__] = _module
