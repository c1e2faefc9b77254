"""``timm_kd.sweep`` is :mod:`timm_kd.experiments.sweep` (grids of train_kd.py runs); this name keeps ``python -m
timm_kd.sweep`` and its imports working."""
import sys

if __name__ == '__main__':
    import runpy
    runpy.run_module('timm_kd.experiments.sweep', run_name='__main__', alter_sys=True)
else:
    from timm_kd.experiments import sweep as _module
    sys.modules[__name__] = _module
