"""``timm_kd.da_score`` is :mod:`timm_kd.experiments.da_score` (the teacher-only augmentation score); this name
keeps ``python -m timm_kd.da_score`` and its imports working."""
import sys

if __name__ == '__main__':
    import runpy
    runpy.run_module('timm_kd.experiments.da_score', run_name='__main__', alter_sys=True)
else:
    from timm_kd.experiments import da_score as _module
    sys.modules[__name__] = _module
