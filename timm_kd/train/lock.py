"""The run-folder lock: one process trains in a run folder at a time, and the folder records which run it holds.

``RUN_FILE`` (``.timm-kd-run``) in a run folder holds the run's id, a random hex string recorded when the run is
created (its checkpoints carry the same id: ``TrainState.run_id``). The process that trains in the folder holds an
exclusive ``flock`` on that file from before it reads or writes anything there until it ends; the kernel drops the
lock when the process ends in any way (a SIGKILL included), so no stale lock is ever left: the next process simply
takes it over. A second train_kd in the same folder, or a sweep that would rerun a live run, finds the folder locked
(``is_locked``) and is refused in one sentence. The file is opened without following a link and only if it is a
regular file; its content is written only by the lock holder, so an empty or garbled file (a kill while it was
first written) just means no id is recorded yet.
"""
import errno
import os
import re
import socket
import stat
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: no flock, so runs there are not locked
    fcntl = None

from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import output_error

__all__ = ['RUN_FILE', 'RunInUseError', 'RunLock', 'is_locked', 'read_run_id', 'new_run_id']

RUN_FILE = '.timm-kd-run'
_ID = re.compile(r'[0-9a-f]{32}')


class RunInUseError(UsageError):
    """Another process trains in the run folder."""


def new_run_id() -> str:
    return os.urandom(16).hex()


def _open(folder: str, create: bool) -> Optional[int]:
    """A descriptor of the folder's run file (None when it is missing and not to be created), never through a link
    and only for a regular file; read-write where it can be, else read-only (flock works on either)."""
    path = os.path.join(folder, RUN_FILE)
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, os.O_RDWR | flags | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f'{path} is a symbolic link; timm-kd never uses a link as a run file (remove it).') \
                from None
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not os.path.lexists(path):
            raise output_error(path, e) from None
        fd = os.open(path, os.O_RDONLY | flags)  # a read-only folder: lock it all the same, a write will say why
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f'{path} is not a regular file; timm-kd keeps the run\'s id and lock there (remove it).')
    return fd


def _read_id(fd: int) -> Optional[str]:
    text = os.pread(fd, 256, 0).decode('ascii', 'replace').split()
    return text[0] if text and _ID.fullmatch(text[0]) else None


def read_run_id(folder: str) -> Optional[str]:
    """The run id recorded in ``folder`` (None: no run file, or no id in it yet). Takes no lock."""
    fd = _open(folder, create=False)
    if fd is None:
        return None
    try:
        return _read_id(fd)
    finally:
        os.close(fd)


def is_locked(folder: str) -> bool:
    """Whether a process trains in ``folder`` right now (holds its lock)."""
    try:
        fd = _open(folder, create=False)
    except UsageError:
        return False
    if fd is None or fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock taken just now


class RunLock:
    """The exclusive lock of a run folder, taken at once or refused (``RunInUseError``), held until ``close``."""

    def __init__(self, folder: str):
        self.folder = folder
        self._fd = _open(folder, create=True)
        self._read_only = os.O_RDONLY == (fcntl.fcntl(self._fd, fcntl.F_GETFL) & os.O_ACCMODE) if fcntl else False
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 256, 0).decode('ascii', 'replace').split()[1:3]
            os.close(self._fd)
            raise RunInUseError(f'{folder} is in use: another train_kd process trains in it'
                                + (f' (process {holder[0]} on {holder[1]})' if len(holder) == 2 else '')
                                + '; wait for it to end, or stop it first.') from None

    @property
    def run_id(self) -> Optional[str]:
        return _read_id(self._fd)

    def record(self, run_id: str) -> None:
        """Record ``run_id`` as the folder's run unless one is recorded already, and who holds the lock (for the
        message a second process gets). A recorded id is rewritten with the same bytes and only then is the rest
        cut, so a kill at any moment keeps it. Not fsynced: an id lost with a power failure only leaves the identity
        check to the run's flags (``RunIdentity``)."""
        if self._read_only:  # nothing can be written in the folder: the run's first write will say so
            return
        text = f'{self.run_id or run_id} {os.getpid()} {socket.gethostname()}\n'.encode()
        try:
            os.pwrite(self._fd, text, 0)
            os.ftruncate(self._fd, len(text))
        except OSError as e:
            raise output_error(os.path.join(self.folder, RUN_FILE), e) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
