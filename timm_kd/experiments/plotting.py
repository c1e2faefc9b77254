"""The look and the writing of every experiment figure: matplotlib without a display, one style, PNG and SVG
written atomically (a killed tool leaves the old figure or the new one)."""
import io
import os
from typing import List

from timm_kd.utils.files import atomic_write_bytes

__all__ = ['STYLE', 'pyplot', 'save_figure']

STYLE = {'font.size': 9, 'axes.titlesize': 9, 'axes.labelsize': 9, 'legend.fontsize': 7.5, 'xtick.labelsize': 8,
         'ytick.labelsize': 8, 'lines.linewidth': 1.4, 'axes.grid': True, 'grid.alpha': 0.3, 'svg.fonttype': 'none'}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out_dir: str, stem: str) -> List[str]:
    """Write ``fig`` as ``<out_dir>/<stem>.png`` and ``.svg``, close it; returns the paths."""
    paths = []
    for ext in ('png', 'svg'):
        path = os.path.join(out_dir, f'{stem}.{ext}')
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=200, bbox_inches='tight')
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    pyplot().close(fig)
    return paths
