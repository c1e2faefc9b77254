"""Paper-style figures of grouped ``train_kd.py`` runs (``timm_kd.report --figures DIR``), PNG and SVG.

- ``accuracy.{png,svg}``: eval top-1 per epoch, mean ± std over seeds per group;
- ``epoch_scaling.{png,svg}`` (Wang et al. Fig. 1/3): test error of the last epoch against the total number
  of epochs, one line per setting, mean ± std band, the lowest mean marked; drawn when the runs differ in
  ``--epochs`` or ``--epoch-scale``;
- ``pick_diagnostics.{png,svg}`` (Fig. 4): the KL ratio r (``train_kl_ratio``) and the label-disagreement
  rate (``train_label_disagreement``) per epoch over normalised training progress; drawn when summary.csv
  has them (runs with a teacher-labelled view);
- ``t_stddev.{png,svg}``: the teacher-only augmentation score of ``python -m timm_kd.da_score`` (lower is
  better, as the authors argue), when its JSON is given.
"""
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from timm_kd.experiments.plotting import STYLE, pyplot, save_figure
from timm_kd.utils.files import read_json

__all__ = ['write_figures', 'plot_accuracy', 'epoch_scaling_series', 'plot_epoch_scaling', 'plot_pick_diagnostics', 'plot_t_stddev',
           'read_da_score', 'group_label']

SCALE_KEYS = ('epochs', 'epoch_scale')
def group_label(settings: Dict[str, Any], keys: Sequence[str]) -> str:
    return ', '.join(f'{k}={settings.get(k)}' for k in keys) or 'all runs'


def _band(ax, x: Sequence[float], curves: List[List[float]], label: str, color=None) -> None:
    """Mean line with a ±1 std band over the runs (curves of unequal length are cut to the shortest)."""
    n = min(len(c) for c in curves)
    y = np.array([c[:n] for c in curves], dtype=float)
    mean = np.nanmean(y, axis=0)
    line, = ax.plot(x[:n], mean, label=f'{label} (n={len(curves)})', color=color)
    if len(curves) > 1:
        std = np.nanstd(y, axis=0, ddof=1)
        ax.fill_between(x[:n], mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def plot_accuracy(groups, keys: Sequence[str], out_dir: str) -> List[str]:
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for g in groups:
            curves = [r.curve('eval_top1') for r in g.runs]
            _band(ax, list(range(1, max(map(len, curves)) + 1)), curves, group_label(g.settings, keys))
        ax.set(xlabel='epoch', ylabel='eval top-1 (%)', title='Accuracy per epoch (mean ± std over seeds)')
        ax.legend(loc='lower right')
        return save_figure(fig, out_dir, 'accuracy')


def _total_epochs(settings: Dict[str, Any]) -> int:
    return int(float(settings.get('epochs') or 0) * float(settings.get('epoch_scale') or 1))


def epoch_scaling_series(groups, keys: Sequence[str]) -> Dict[str, List[Tuple[int, float, float, int]]]:
    """Per combination of the settings other than the epoch budget: (total epochs, mean and std (n-1) of the test
    error = 100 - last top-1, n) at each budget, sorted by epochs."""
    series: Dict[str, List[Tuple[int, float, float, int]]] = {}
    others = [k for k in keys if k not in SCALE_KEYS]
    for g in groups:
        errors = [100.0 - v for v in g.values('last_top1')]
        std = float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0
        series.setdefault(group_label(g.settings, others), []).append(
            (_total_epochs(g.settings), float(np.mean(errors)), std, len(errors)))
    return {label: sorted(points) for label, points in series.items()}


def plot_epoch_scaling(groups, keys: Sequence[str], out_dir: str) -> List[str]:
    """Test error against total epochs, one line per combination of the other settings, the optimum starred."""
    plt = pyplot()
    series = epoch_scaling_series(groups, keys)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for label, points in series.items():
            x, mean, std, n = (np.array(v) for v in zip(*points))
            line, = ax.plot(x, mean, marker='o', ms=3.5, label=f'{label} (n={n.min()})')
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
            best = int(np.argmin(mean))
            ax.plot([x[best]], [mean[best]], marker='*', ms=11, color=line.get_color(), mec='black', mew=0.6,
                    ls='none')
        ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
        ax.set(xlabel='total epochs', ylabel='test error, last epoch (%)',
               title='Test error vs training length (★ = lowest mean)')
        ax.legend()
        return save_figure(fig, out_dir, 'epoch_scaling')


def _has_column(run, column: str) -> bool:
    return any(not math.isnan(v) for v in run.curve(column)) if run.rows and column in run.rows[0] else False


def plot_pick_diagnostics(groups, keys: Sequence[str], out_dir: str) -> List[str]:
    plt = pyplot()
    panels = (('train_kl_ratio', 'KL ratio r (picked / pool)'),
              ('train_label_disagreement', 'label disagreement (share)'))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.0))
        for ax, (column, ylabel) in zip(axes, panels):
            for g in groups:
                runs = [r for r in g.runs if _has_column(r, column)]
                if runs:
                    curves = [r.curve(column) for r in runs]
                    n = min(map(len, curves))
                    _band(ax, [(i + 1) / n for i in range(n)], curves, group_label(g.settings, keys))
            ax.set(xlabel='normalised training progress', ylabel=ylabel)
            if column == 'train_kl_ratio':
                ax.axhline(1.0, color='gray', lw=0.8, ls=':')
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.suptitle('Teacher-labelled views during training (mean ± std over seeds)', fontsize=9)
        return save_figure(fig, out_dir, 'pick_diagnostics')


def read_da_score(path: str) -> Optional[List[Tuple[str, float, float]]]:
    """(augmentation, T-stddev, its std over seeds or 0) of a ``python -m timm_kd.da_score`` scores.json (its
    ``ranking`` rows: ``view``, ``stddev_mean``, ``stddev_sd``). Also read: a list (or ``{"results": ...}``) of
    objects with a name (``view``/``name``/``augmentation``) and ``t_stddev``, or a mapping name -> number.
    None when the file has none of these shapes; a file that cannot be read safely is a ``FileReadError``."""
    data = read_json(path)
    if isinstance(data, dict):
        data = next((data[k] for k in ('ranking', 'results') if isinstance(data.get(k), (list, dict))), data)
    items = data.items() if isinstance(data, dict) else [(None, d) for d in data] if isinstance(data, list) else []
    out = []
    for name, d in items:
        sd = 0.0
        if isinstance(d, dict):
            name = d.get('view') or d.get('name') or d.get('augmentation') or name
            sd = d.get('stddev_sd') if isinstance(d.get('stddev_sd'), (int, float)) else 0.0
            d = d.get('stddev_mean', d.get('t_stddev'))
        if name is None or not isinstance(d, (int, float)) or isinstance(d, bool):
            return None
        out.append((str(name), float(d), 0.0 if math.isnan(sd) else float(sd)))
    return out or None


def plot_t_stddev(scores: List[Tuple[str, float, float]], out_dir: str, stem: str = 't_stddev',
                  title: str = 'Teacher-only augmentation score', colors: Optional[Sequence[str]] = None) -> List[str]:
    """Horizontal bars of the T. stddev per augmentation, lowest on top, error bars = its std over seeds.

    ``scores``: (augmentation, T. stddev, std) triples; ``colors``: one bar colour per triple (default one
    colour). ``report --figures`` draws ``t_stddev``, ``python -m timm_kd.da_score`` its ``scores``."""
    plt = pyplot()
    order = sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i][1]), scores[i][1]))
    scores = [scores[i] for i in order]
    colors = [colors[i] for i in order] if colors is not None else 'tab:blue'
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 0.5 + 0.28 * len(scores)))
        ax.barh(range(len(scores)), [s[1] for s in scores], xerr=[s[2] for s in scores], color=colors,
                error_kw=dict(lw=0.8, capsize=2))
        ax.set_yticks(range(len(scores)), [s[0] for s in scores])
        ax.invert_yaxis()
        ax.set(xlabel='T. stddev (lower = better augmentation for KD)', title=title)
        ax.grid(axis='y', visible=False)
        return save_figure(fig, out_dir, stem)


def write_figures(groups, keys: Sequence[str], out_dir: str, da_score: Optional[str] = None) -> List[str]:
    """Every figure that the runs support; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = plot_accuracy(groups, keys, out_dir)
    if any(k in SCALE_KEYS for k in keys):
        paths += plot_epoch_scaling(groups, keys, out_dir)
    if any(_has_column(r, c) for g in groups for r in g.runs for c in ('train_kl_ratio', 'train_label_disagreement')):
        paths += plot_pick_diagnostics(groups, keys, out_dir)
    if da_score:
        scores = read_da_score(da_score)
        if scores:
            paths += plot_t_stddev(scores, out_dir)
        else:
            print(f'timm_kd.figures: {da_score} holds no (augmentation, t_stddev) pairs; no T-stddev figure.',
                  file=sys.stderr)
    return paths
