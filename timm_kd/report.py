"""``timm_kd.report`` is :mod:`timm_kd.experiments.report` (tables of runs); this name keeps ``python -m
timm_kd.report`` and its imports working."""
import sys

if __name__ == '__main__':
    import runpy
    runpy.run_module('timm_kd.experiments.report', run_name='__main__', alter_sys=True)
else:
    from timm_kd.experiments import report as _module
    sys.modules[__name__] = _module
