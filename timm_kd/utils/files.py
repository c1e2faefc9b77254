"""Safe file reads and atomic, symlink-safe file writes, for every file timm-kd reads or writes.

Reads. Every record and config a tool reads (args.yaml, results.json, summary.csv, sweep.json, a --config) is
opened without following a link (``O_NOFOLLOW``) and without waiting (``O_NONBLOCK``: a FIFO given as a file
never blocks), and is read only when it is a regular file of at most a size limit. JSON and YAML are parsed
with depth limits, YAML with the safe loader and a limit on the values its aliases expand to (a small alias
bomb is refused before anything walks it). Every failure is one :class:`FileReadError` sentence naming the
file; ``default=`` turns a missing file into a value instead.

Writes. Every file a run or a tool writes (checkpoints, args.yaml, summary.csv, results.json) goes to a temporary
file created in the target's folder with an unpredictable name (``tempfile.mkstemp``: ``O_CREAT | O_EXCL |
O_NOFOLLOW``, so a planted file or symlink is never opened), is fsynced and renamed over the target
(``rename`` replaces a symlink at the target instead of writing through it) and the folder is fsynced:
a kill at any moment leaves either the old file or the new one. Temp files carry ``TEMP_PREFIX``; the
ones a killed run left behind are removed by ``remove_stale_temp_files`` when a run starts in the folder.
A write that fails (read-only or full disk) raises ``OutputError`` with one sentence, the target unchanged.
"""
import errno
import fcntl
import json
import os
import socket
import shutil
import stat
import tempfile
import sys
import time
from typing import IO, Any, Callable, Dict, List, Optional

import torch
import yaml

from .errors import UsageError
from .messages import first_line

__all__ = ['TEMP_PREFIX', 'OutputError', 'output_error', 'atomic_save', 'atomic_write_text', 'atomic_write_bytes',
           'atomic_copy', 'remove_stale_temp_files', 'FileReadError', 'MAX_FILE_BYTES', 'MAX_DEPTH', 'MAX_YAML_VALUES',
           'is_regular_file', 'open_regular', 'read_bytes', 'read_text', 'read_json', 'read_yaml', 'read_yaml_mapping',
           'parse_json', 'parse_yaml', 'LOCK_NAME', 'FolderLocked', 'lock_folder', 'folder_lock_holder']

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


# ---------------------------------------------------------------------------------------------------------
# safe reads
# ---------------------------------------------------------------------------------------------------------

#: bytes a record or config may have (timm-kd's largest, a long run's summary.csv, is well below it)
MAX_FILE_BYTES = 64 << 20
#: nesting levels of lists / mappings a JSON or YAML file may have (timm-kd's records have at most five)
MAX_DEPTH = 64
#: values (scalars, lists, mappings) a YAML document may stand for once its aliases are expanded
MAX_YAML_VALUES = 200_000
_MISSING = object()
_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_KINDS = ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a named pipe (FIFO)'), (stat.S_ISSOCK, 'a socket'),
          (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'))


class FileReadError(UsageError):
    """A file that cannot be read safely (missing, a link, not a regular file, too large, not text, malformed
    or nested too deeply); the message is one sentence naming the file."""


def is_regular_file(path: str) -> bool:
    """``path`` is a regular file itself (not a link to one, not a FIFO or device)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _not_regular(path: str, mode: int) -> FileReadError:
    kind = next((name for test, name in _KINDS if test(mode)), 'not a regular file')
    return FileReadError(f'{path} is {kind}, not a regular file; timm-kd reads only regular files there (put the file '
                         f'itself in its place).')


def open_regular(path: str, mode: str = 'rb') -> IO:
    """Open ``path`` for reading (``'rb'`` / ``'r'``) or appending (``'ab'`` / ``'a'``, created if missing) only if
    it is a regular file, never through a symbolic link at ``path`` and never waiting (a FIFO is refused at once).

    Raises ``FileNotFoundError`` when a file to read is missing, :class:`FileReadError` for a link or a file
    that is not regular and ``OSError`` for other failures."""
    if mode not in ('rb', 'r', 'ab', 'a'):
        raise ValueError(f'open_regular: mode must be rb, r, ab or a, got {mode!r}')
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT) if mode[0] == 'a' else os.O_RDONLY
    try:
        fd = os.open(path, flags | _NOFOLLOW | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0), 0o666)
    except OSError:  # O_NOFOLLOW on a link: ELOOP (EMLINK on FreeBSD); a FIFO without reader to append to: ENXIO
        try:
            mode_now = os.lstat(path).st_mode
        except OSError:
            mode_now = None
        if mode_now is not None and stat.S_ISLNK(mode_now):
            raise FileReadError(f'{path} is a symbolic link; timm-kd never reads or writes run files through a link '
                                f'(put the file itself in its place).') from None
        if mode_now is not None and not stat.S_ISREG(mode_now):
            raise _not_regular(path, mode_now) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        return os.fdopen(fd, mode, **({} if 'b' in mode else {'encoding': 'utf-8'}))
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str, limit: int = MAX_FILE_BYTES, default: Any = _MISSING) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), at most ``limit`` of them; ``default``
    when the file does not exist (if given), else :class:`FileReadError`."""
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > limit:
                raise FileReadError(f'{path} is larger than {limit} bytes, more than timm-kd reads from such a file '
                                    f'(is it the right file?).')
            data = f.read(limit + 1)
    except FileNotFoundError:
        if default is not _MISSING:
            return default
        raise FileReadError(f'{path} does not exist.') from None
    except FileReadError:
        raise
    except OSError as e:
        raise FileReadError(f'{path} cannot be read: {e.strerror or e}.') from None
    if len(data) > limit:  # it grew while we read it
        raise FileReadError(f'{path} is larger than {limit} bytes, more than timm-kd reads from such a file.')
    return data


def read_text(path: str, limit: int = MAX_FILE_BYTES, default: Any = _MISSING) -> str:
    """:func:`read_bytes` as UTF-8 text; a binary file (not UTF-8, or holding NUL bytes) is a
    :class:`FileReadError`."""
    data = read_bytes(path, limit, default=_MISSING if default is _MISSING else None)
    if data is None:
        return default
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is None or '\x00' in text:
        raise FileReadError(f'{path} is not UTF-8 text (a binary file?); fix or remove it.')
    return text


def _depth(value: Any) -> int:
    """Nesting levels of lists / tuples / mappings in ``value`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = [*v.keys(), *v.values()]
        if isinstance(v, (list, tuple)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in v)
    return deepest


def _too_deep(name: str, max_depth: int) -> FileReadError:
    return FileReadError(f'{name} nests lists or mappings deeper than {max_depth} levels, more than any timm-kd file '
                         f'has; fix or remove it.')


def parse_json(text: str, name: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON ``text`` (from the file or flag ``name``) nested at most ``max_depth`` levels; else
    :class:`FileReadError`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(name, max_depth) from None
    except ValueError as e:
        raise FileReadError(f'{name} is not valid JSON: {first_line(e)}.') from None
    if _depth(value) > max_depth:
        raise _too_deep(name, max_depth)
    return value


def read_json(path: str, limit: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH, default: Any = _MISSING) -> Any:
    """The JSON value of the regular file ``path`` (:func:`read_text`, :func:`parse_json`); ``default`` when it
    does not exist (if given)."""
    text = read_text(path, limit, default=_MISSING if default is _MISSING else None)
    return default if text is None else parse_json(text, path, max_depth)


class _Refused(yaml.YAMLError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: tags that would build Python objects are errors) that also refuses
    documents nested deeper than ``max_depth`` or standing for more than ``max_values`` values once aliases are
    expanded (each node's expanded size and depth are kept while composing, so a bomb is refused before it is
    built or walked), and aliases that refer to a node containing them."""
    max_depth, max_values = MAX_DEPTH, MAX_YAML_VALUES

    def __init__(self, stream):
        super().__init__(stream)
        self._open = 0  # nodes being composed, i.e. the current depth
        self._sizes = {}  # id(node) -> (values it stands for, levels), for every node composed so far

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise yaml.MarkedYAMLError(problem='an alias refers to a node that contains it', problem_mark=mark)
            return node
        self._open += 1
        if self._open > self.max_depth + 1:  # composing recurses: stop before Python's stack ends (+1: scalars)
            raise _Refused('depth')
        node = super().compose_node(parent, index)
        self._open -= 1
        if isinstance(node, yaml.ScalarNode):
            size = (1, 0)
        else:
            children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
            sizes = [self._sizes[id(c)] for c in children]
            size = (1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0))
        if size[0] > self.max_values:
            raise _Refused('values')
        if size[1] > self.max_depth:
            raise _Refused('depth')
        self._sizes[id(node)] = size
        return node


def parse_yaml(text: str, name: str, max_depth: int = MAX_DEPTH, max_values: int = MAX_YAML_VALUES) -> Any:
    """Plain YAML ``text`` (from the file or flag ``name``) within the limits of :class:`_BoundedLoader`; else
    :class:`FileReadError`."""
    loader = type('Loader', (_BoundedLoader,), {'max_depth': max_depth, 'max_values': max_values})
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        if str(e) == 'depth':
            raise _too_deep(name, max_depth) from None
        raise FileReadError(f'{name} stands for more than {max_values} values once its YAML aliases are expanded '
                            f'(an alias bomb?); fix or remove it.') from None
    except RecursionError:
        raise _too_deep(name, max_depth) from None
    except yaml.YAMLError as e:
        raise FileReadError(f'{name} is not valid YAML: {_yaml_reason(e)}.') from None


def _yaml_reason(e: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, on one line."""
    problem, mark = getattr(e, 'problem', None), getattr(e, 'problem_mark', None)
    if not problem:
        return first_line(e)
    return problem.rstrip('.') + (f' (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else '')


def read_yaml(path: str, limit: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH, max_values: int = MAX_YAML_VALUES,
              default: Any = _MISSING) -> Any:
    """The plain YAML value of the regular file ``path`` (:func:`read_text`, :func:`parse_yaml`); ``default`` when
    it does not exist (if given)."""
    text = read_text(path, limit, default=_MISSING if default is _MISSING else None)
    return default if text is None else parse_yaml(text, path, max_depth, max_values)


def read_yaml_mapping(path: str, what: str, holds: str) -> Dict[str, Any]:
    """The YAML mapping in the file ``path`` (:func:`read_yaml`; an empty file is an empty mapping). A file that
    cannot be read or holds no mapping is one UsageError sentence: ``what`` names the file, ``holds`` says what
    it must hold."""
    try:
        data = read_yaml(path) or {}
    except FileReadError as e:
        raise UsageError(f'{what}: {e}') from None
    if not isinstance(data, dict):
        raise UsageError(f'{what} {path!r} must hold {holds}.')
    return data


# ---------------------------------------------------------------------------------------------------------
# folder locks
# ---------------------------------------------------------------------------------------------------------

#: the lock file of a folder a process works in (a run folder while train_kd trains in it)
LOCK_NAME = '.timm-kd-lock'


class FolderLocked(UsageError):
    """Another process holds the folder's lock; ``holder`` says which (pid, host, since, command)."""

    def __init__(self, message: str, holder: Dict[str, Any]):
        super().__init__(message)
        self.holder = holder


def _holder_text(holder: Dict[str, Any]) -> str:
    since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['since'])) if isinstance(
        holder.get('since'), (int, float)) else 'an unknown time'
    return f'process {holder.get("pid", "?")} on {holder.get("host", "an unknown host")} (since {since})'


def _lock_file(folder: str) -> IO:
    return open_regular(os.path.join(folder, LOCK_NAME), 'a')


def lock_folder(folder: str) -> IO:
    """Take the lock of ``folder`` for this process: an exclusive ``flock`` on :data:`LOCK_NAME` (made if missing,
    never through a link), which records who holds it. The lock lasts until the returned file is closed or the
    process ends in any way (the kernel drops it even after SIGKILL), so a lock left by a killed process is
    simply taken over. Raises :class:`FolderLocked` (one sentence) while another process holds it."""
    f = _lock_file(folder)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = folder_lock_holder(folder) or {}
        raise FolderLocked(f'{folder} is in use by {_holder_text(holder)}; wait for it to end or stop it (a folder is '
                           f'worked on by one process at a time).', holder) from None
    os.ftruncate(f.fileno(), 0)
    f.write(json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'since': time.time(),
                        'command': ' '.join(sys.argv)[:500]}) + '\n')
    f.flush()
    return f


def folder_lock_holder(folder: str) -> Optional[Dict[str, Any]]:
    """Who holds the lock of ``folder`` (the record :func:`lock_folder` wrote: pid, host, since, command), or None
    when no process holds it. Takes the lock for an instant to tell, so it never waits."""
    if not os.path.lexists(os.path.join(folder, LOCK_NAME)):
        return None
    with _lock_file(folder) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        else:
            return None  # free: the lock file of a process that has ended
    try:
        holder = parse_json(read_text(os.path.join(folder, LOCK_NAME), limit=1 << 16), LOCK_NAME)
    except FileReadError:
        holder = None
    return holder if isinstance(holder, dict) else {}
