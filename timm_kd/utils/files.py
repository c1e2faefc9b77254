"""Atomic, symlink-safe file writes and stale temp-file cleanup, for every file timm-kd writes.

Every file a run or a tool writes (checkpoints, args.yaml, summary.csv, results.json) goes to a temporary file
created in the target's folder with an unpredictable name (``tempfile.mkstemp``: ``O_CREAT | O_EXCL |
O_NOFOLLOW``, so a planted file or symlink is never opened), is fsynced and renamed over the target
(``rename`` replaces a symlink at the target instead of writing through it) and the folder is fsynced:
a kill at any moment leaves either the old file or the new one. Temp files carry ``TEMP_PREFIX``; the
ones a killed run left behind are removed by ``remove_stale_temp_files`` when a run starts in the folder.
A write that fails (read-only or full disk) raises ``OutputError`` with one sentence, the target unchanged.
"""
import errno
import os
import shutil
import tempfile
from typing import IO, Any, Callable, List

import torch

from .errors import UsageError

__all__ = ['TEMP_PREFIX', 'OutputError', 'output_error', 'atomic_save', 'atomic_write_text', 'atomic_write_bytes',
           'atomic_copy', 'remove_stale_temp_files']

TEMP_PREFIX = '.timm-kd-tmp-'


class OutputError(UsageError):
    """A file of the run could not be written (read-only or full disk, a file where a folder should be)."""


def output_error(path: str, e: OSError) -> OutputError:
    """The one sentence for a failed write of ``path``."""
    hint = {errno.ENOSPC: 'free some space and continue with --resume', errno.EDQUOT: 'free some space and continue '
            'with --resume', errno.EROFS: 'use a writable --output', errno.EACCES: 'use a writable --output',
            errno.EPERM: 'use a writable --output'}.get(e.errno, 'check --output')
    return OutputError(f'Cannot write {path}: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)}); {hint} '
                       f'(a file there before is unchanged).')


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str, data: Any, mode: str, write: Callable[[Any, IO], None]) -> None:
    """Write to a fresh temp file beside ``path``, fsync, rename over ``path`` and fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
        with os.fdopen(fd, mode) as f:
            write(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__  # torch.save reports a failed write as RuntimeError
        if not isinstance(cause, OSError):
            raise
        raise output_error(path, cause) from e
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to ``path`` atomically."""
    _atomic_write(path, obj, 'wb', torch.save)


def atomic_write_text(path: str, text: str) -> None:
    """Write text to ``path`` atomically."""
    _atomic_write(path, text, 'w', lambda t, f: f.write(t))


def atomic_copy(src: str, dst: str) -> None:
    """Make ``dst`` a separate copy of ``src`` (not a hard link: damage to one must not reach the other)."""
    with open(src, 'rb') as f:
        _atomic_write(dst, f, 'wb', shutil.copyfileobj)


def remove_stale_temp_files(folder: str) -> List[str]:
    """Remove the temp files (``TEMP_PREFIX``) killed runs left in ``folder``; returns their names. Call it only
    where no other process writes (the main process of the run that owns the folder)."""
    removed = []
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if name.startswith(TEMP_PREFIX) and (os.path.islink(p) or os.path.isfile(p)):
            os.remove(p)
            removed.append(name)
    return removed


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write bytes (e.g. a rendered figure) to ``path`` atomically."""
    _atomic_write(path, data, 'wb', lambda d, f: f.write(d))
