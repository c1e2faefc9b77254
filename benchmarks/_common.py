"""Shared helpers of the timm-kd speed benchmarks: timing statistics, machine facts, JSON output.

The benchmarks report ratios measured in one run (our step / hand loop, mixup share, pick / TLCutMix):
absolute numbers on a shared machine are noisy, ratios of interleaved measurements much less so.
"""
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

SCHEMA_VERSION = 1


def sync(device: torch.device) -> None:
    """Wait for queued device work: the only host/device sync of a timed block, at its end."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """Median and spread of repeated measurements (seconds or ratios)."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return {'n': 0}
    med = statistics.median(vals)
    q = statistics.quantiles(vals, n=4, method='inclusive') if len(vals) > 1 else [vals[0]] * 3
    return {
        'n': len(vals),
        'median': med,
        'min': vals[0],
        'max': vals[-1],
        'iqr': q[2] - q[0],
        # relative spread: robust (IQR) version of the coefficient of variation
        'rel_iqr': (q[2] - q[0]) / med if med else 0.0,
    }


def load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(device: torch.device) -> Dict[str, Any]:
    """What a reader needs to judge the figures: versions, threads, cores, device, machine load."""
    env = {
        'python': platform.python_version(),
        'torch': torch.__version__,
        'platform': platform.platform(),
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'device': str(device),
        'load_average_start': load_average(),
        'time': time.strftime('%Y-%m-%d %H:%M:%S %z'),
    }
    try:
        import timm
        env['timm'] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == 'cuda':
        env['cuda_device'] = torch.cuda.get_device_name(device)
    return env


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc, psutil elsewhere)."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError):
        import psutil
        return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # Linux reports KiB


def write_json(path: Optional[str], result: Dict[str, Any]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write('\n')


def fmt_ratio(value: Optional[float], goal: Optional[float] = None, lower_is_better: bool = True) -> str:
    if value is None:
        return 'n/a'
    s = f'{value:.3f}'
    if goal is not None:
        met = value <= goal if lower_is_better else value >= goal
        s += f' (goal {"<=" if lower_is_better else ">="} {goal:.3g}: {"met" if met else "MISSED"})'
    return s
