"""Run folder of ``train_kd.py`` (timm's layout): naming, log.txt, summary.csv, results.json.

``output/train/<experiment>/`` holds args.yaml, summary.csv, log.txt, last.pth.tar, model_best.pth.tar
(+ recovery.pth.tar, checkpoint-<epoch>.pth.tar) and results.json. An existing folder is never reused
silently: a new run gets ``<name>-1``, ``<name>-2``, ... as timm does; only ``--resume`` continues in the
folder of its checkpoint.
"""
import argparse
import csv
import io
import json
import logging
import os
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import timm

from timm_kd.utils.messages import public_ref
from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import atomic_write_text, open_regular, read_text

if TYPE_CHECKING:
    from .build import DataConfig

__all__ = ['new_run_dir', 'resume_run_dir', 'choose_run_dir', 'LogFiles', 'write_summary_row', 'keep_summary_rows',
           'write_results', 'RESULTS_VERSION', 'teacher_lineage']


class _Buffer(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _LogFile(logging.FileHandler):
    """log.txt, appended to only if it is a regular file and never through a link (a resumed run's log.txt planted as a
    link would change a file elsewhere); a failed write (full disk) says so once on stderr instead of a traceback per
    line."""

    def _open(self):
        return open_regular(self.baseFilename, 'a')

    def handleError(self, record: logging.LogRecord) -> None:
        if not getattr(self, '_failed', False):
            self._failed = True
            print(f'train_kd.py: warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); the log continues '
                  f'on stdout only.', file=sys.stderr, flush=True)


def new_run_dir(base: str, name: str) -> str:
    """Create ``base/name``, or ``base/name-N`` with the first free N when it exists (timm's get_outdir)."""
    os.makedirs(base, exist_ok=True)
    path, n = os.path.join(base, name), 0
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = os.path.join(base, f'{name}-{n}')


class LogFiles:
    """Handlers of the 'train_kd' and 'timm_kd' loggers: stdout on the main process, plus run_dir/log.txt.

    Removed again by ``close()`` so in-process calls (tests, demos) do not stack handlers.
    """
    names = ('train_kd', 'timm_kd')

    def __init__(self, is_main: bool):
        self.handlers: List[logging.Handler] = []
        self.loggers = [logging.getLogger(n) for n in self.names]
        self._levels = [lg.level for lg in self.loggers]
        self._propagate = [lg.propagate for lg in self.loggers]
        self.is_main = is_main
        for lg in self.loggers:
            lg.setLevel(logging.INFO if is_main else logging.WARNING)
            lg.propagate = False
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter('%(message)s'))
        self._add(h)
        # lines logged before the run folder exists go to log.txt once it does
        self._early = _Buffer()
        self._add(self._early)

    def _add(self, h: logging.Handler) -> None:
        self.handlers.append(h)
        for lg in self.loggers:
            lg.addHandler(h)

    def add_file(self, path: str) -> None:
        if not self.is_main:
            return
        h = _LogFile(path, mode='a')
        h.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S'))
        for record in self._early.records:
            h.handle(record)
        self._remove(self._early)
        self._add(h)

    def _remove(self, h: logging.Handler) -> None:
        for lg in self.loggers:
            lg.removeHandler(h)
        self.handlers.remove(h)
        h.close()

    def close(self) -> None:
        for h in list(self.handlers):
            self._remove(h)
        for lg, lvl, prop in zip(self.loggers, self._levels, self._propagate):
            lg.setLevel(lvl)
            lg.propagate = prop


def write_summary_row(path: str, row: Dict[str, Any]) -> None:
    """Append ``row`` (with an ``epoch`` key) to summary.csv, dropping rows of that epoch and later (left by a
    run that was killed and resumed) and widening the header if new columns appear. Rewritten atomically."""
    _rewrite_summary(path, int(row['epoch']), row)


def keep_summary_rows(path: str, epochs: int) -> None:
    """Keep the rows of the first ``epochs`` epochs of summary.csv (a resumed run's checkpoint saw those only: a row
    written before a checkpoint write that failed is dropped). Rewritten atomically, and only when a row goes."""
    _rewrite_summary(path, epochs)


def _rewrite_summary(path: str, epochs: int, row: Optional[Dict[str, Any]] = None) -> None:
    """summary.csv with the rows of epochs before ``epochs``, then ``row`` (if given)."""
    rows: List[Dict[str, Any]] = []
    fields: List[str] = []
    kept_all = True
    text = read_text(path, default=None)  # a regular file, not read through a link
    if text is not None:
        reader = csv.DictReader(io.StringIO(text, newline=''))
        fields = list(reader.fieldnames or [])
        try:
            for r in reader:
                if int(r['epoch']) < epochs:
                    rows.append(r)
                else:
                    kept_all = False
        except (KeyError, TypeError, ValueError):
            raise UsageError(f'{path} is not a summary.csv train_kd wrote (a row without an epoch number); restore '
                             f'or remove it.') from None
    if row is None and kept_all:
        return
    if row is not None:
        rows.append(row)
    for k in row or {}:
        if k not in fields:
            fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval='')
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def teacher_lineage(teacher: Any) -> Dict[str, Any]:
    """Where the teacher's weights came from and what it was fed, for results.json (``timm_kd.hub.publish_student``
    puts it on the card): ``teacher_source`` (Hub repo, URL or checkpoint file name), ``teacher_checkpoint`` (file
    name or Hub reference), the accuracy the checkpoint itself reports, if any, and ``teacher_input_size`` ([C, H, W]
    of the images the teacher took, ``build.create_teacher_model``)."""
    info = getattr(teacher, 'kd_teacher_info', None) or {}
    return dict(teacher_source=public_ref(info.get('source')), teacher_checkpoint=public_ref(info.get('checkpoint')),
                teacher_checkpoint_accuracy=info.get('accuracy'), teacher_input_size=info.get('input_size'))


RESULTS_VERSION = 1  # layout of results.json; timm_kd.report reads the versions it knows (a file without one is 1)


def write_results(path: str, results: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(results, indent=2, default=str) + '\n')


def resume_run_dir(args: argparse.Namespace, explicit: Dict[str, Any]) -> Optional[str]:
    """The folder a resumed run continues in: the run folder of its checkpoint (a folder with args.yaml), else the
    folder --experiment names; None when it starts a new one."""
    ckpt_dir = os.path.abspath(args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume) or '.')
    if not ('experiment' in explicit or 'output' in explicit) and os.path.isfile(os.path.join(ckpt_dir, 'args.yaml')):
        return ckpt_dir
    if args.experiment:
        return os.path.join(args.output or os.path.join('.', 'output', 'train'), args.experiment)
    return None


def choose_run_dir(args: argparse.Namespace, explicit: Dict[str, Any], dc: 'DataConfig') -> str:
    path = resume_run_dir(args, explicit) if args.resume else None
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    name = args.experiment or '-'.join(
        [datetime.now().strftime('%Y%m%d-%H%M%S'), timm.models.safe_model_name(args.model)]
        + ([timm.models.safe_model_name(args.teacher.split(':')[-1].split('/')[-1])] if args.teacher else [])
        + [str(dc.size)])
    return new_run_dir(args.output or os.path.join('.', 'output', 'train'), name)
