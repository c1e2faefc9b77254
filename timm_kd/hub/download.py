"""Released teacher archives onto this machine: resumable downloads, checked by sha256 before anything reads them.

:func:`download` fetches a URL into ``<file>.part`` with a progress bar, every read bounded by a timeout, and
resumes a ``.part`` left by an interrupted transfer with an HTTP ``Range`` request (a server that ignores it
sends the whole file again). Only a complete file is renamed into place.

:func:`fetch_source` does that for an archive of :data:`~timm_kd.models.TEACHER_SOURCES` and checks its sha256:
against the digest pinned in the catalogue when the publisher gives one, otherwise against the digest recorded
on this machine when the archive was first downloaded (trust on first use; the first digest is recorded and
shown). A file that does not match is deleted and refused in one sentence: it is never unpacked or converted.
"""
import datetime
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Tuple, Union

from timm_kd.models import TEACHER_SOURCES, downloads_dir
from timm_kd.utils.files import FileReadError, FolderLocked, atomic_write_text, lock_folder, read_json
from .io import sha256_file, timm_kd_version

__all__ = ['DownloadError', 'ChecksumError', 'download', 'fetch_source', 'DEFAULT_TIMEOUT', 'MAX_DOWNLOAD_BYTES']

#: seconds a connection may stay silent before the attempt counts as failed
DEFAULT_TIMEOUT = 30.0
#: attempts per download; each one resumes from what the previous ones received
ATTEMPTS = 3
#: seconds between attempts
RETRY_WAIT = 2.0
#: far above a teacher archive (six CIFAR checkpoints with optimizer state: a few hundred MB); more is refused
MAX_DOWNLOAD_BYTES = 8 << 30
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed or was refused; the message is one sentence with the way out."""


class ChecksumError(DownloadError):
    """The downloaded file does not match its expected sha256; it has been deleted."""


class _Retry(Exception):
    """A failure worth another attempt (the connection, the server's 5xx / 429, an early end)."""


def _total_of(content_range: Optional[str]) -> Optional[int]:
    m = re.search(r'/(\d+)\s*$', content_range or '')
    return int(m.group(1)) if m else None


def _open(url: str, have: int, timeout: float):
    headers = {'User-Agent': f'timm-kd/{timm_kd_version()}', 'Accept-Encoding': 'identity'}
    if have:
        headers['Range'] = f'bytes={have}-'
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is complete, or not a prefix of this file
            return e
        if e.code == 429 or e.code >= 500:
            raise _Retry(f'the server answered HTTP {e.code}') from e
        raise DownloadError(f'Could not download {url}: the server answered HTTP {e.code} ({e.reason}).') from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(_reason(e)) from e


def _reason(err: BaseException) -> str:
    err = getattr(err, 'reason', None) or err  # URLError wraps the socket error
    if isinstance(err, (socket.timeout, TimeoutError)):
        return 'no answer in time'
    return f'{type(err).__name__}: {err}' if str(err) else type(err).__name__


def _attempt(url: str, part: Path, timeout: float, progress: bool, max_bytes: int) -> None:
    """One request: append to ``part`` from where it ends, or rewrite it when the server sends the whole file."""
    from huggingface_hub.utils import tqdm  # huggingface_hub's bar: HF_HUB_DISABLE_PROGRESS_BARS turns it off
    have = part.stat().st_size if part.exists() else 0
    resp = _open(url, have, timeout)
    if isinstance(resp, urllib.error.HTTPError):  # 416 to a resume
        resp.close()
        if _total_of(resp.headers.get('Content-Range')) == have:
            return
        part.unlink()
        raise _Retry(f'the {have} bytes kept from before do not fit the file on the server')
    with resp:
        if resp.status == 206:
            start = re.match(r'bytes\s+(\d+)-', resp.headers.get('Content-Range') or '')
            if start is None or int(start.group(1)) != have:
                raise DownloadError(f'Could not download {url}: the server resumed at another byte than asked.')
            total, mode = _total_of(resp.headers.get('Content-Range')), 'ab'
        else:
            length = resp.headers.get('Content-Length')
            have, total, mode = 0, (int(length) if length and length.isdigit() else None), 'wb'
        if total is not None and total > max_bytes:
            raise DownloadError(f'Refusing to download {url}: it is {total} bytes, more than any teacher archive '
                                f'({max_bytes} at most).')
        with open(part, mode) as f, tqdm(total=total, initial=have, unit='B', unit_scale=True, unit_divisor=1024,
                                         desc=part.name[:-len('.part')], disable=not progress or None) as bar:
            try:
                for block in iter(lambda: resp.read(_CHUNK), b''):
                    have += len(block)
                    if have > (total if total is not None else max_bytes):
                        raise DownloadError(f'Refusing {url}: the server sent more than the {total or max_bytes} '
                                            f'bytes it announced.')
                    f.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise _Retry(_reason(e)) from e
    if total is not None and have < total:
        raise _Retry(f'the connection ended after {have} of {total} bytes')


def download(url: str, dest: Union[str, Path], timeout: float = DEFAULT_TIMEOUT, attempts: int = ATTEMPTS,
             progress: bool = True, max_bytes: Optional[int] = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` an earlier run left.

    Transient failures (no answer within ``timeout`` seconds, a lost connection, HTTP 429 / 5xx, an early end)
    are retried up to ``attempts`` times in all, each resuming; then :class:`DownloadError` says how many bytes
    are kept for the next run. A file bigger than ``max_bytes`` (default :data:`MAX_DOWNLOAD_BYTES`) is refused.
    ``dest`` appears only complete.
    """
    max_bytes = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
    dest = Path(dest)
    part = dest.with_name(dest.name + '.part')
    reason = ''
    for attempt in range(1, attempts + 1):
        try:
            _attempt(url, part, timeout, progress, max_bytes)
            os.replace(part, dest)
            return dest
        except _Retry as e:
            reason = str(e)
            if attempt < attempts:
                time.sleep(RETRY_WAIT)
    kept = part.stat().st_size if part.exists() else 0
    raise DownloadError(f'Could not download {url}: {reason} ({attempts} attempts, {timeout:g} s timeout each); '
                        f'{kept} bytes are kept in {part}, so run the same command again to resume.')


def _check_digest(archive: Path, record: Path, pinned: Optional[str], url: str) -> Tuple[str, bool]:
    """``(sha256, recorded now?)`` of a complete archive that matches its pinned or first-seen digest; a mismatch
    deletes it and raises :class:`ChecksumError`."""
    digest = sha256_file(archive)
    if pinned:
        expected, what, fix = pinned.lower(), 'the sha256 its publisher gives', 'download it again'
    else:
        try:
            recorded = read_json(str(record), default=None)
            expected = None if recorded is None else recorded['sha256']
        except (FileReadError, KeyError, TypeError) as e:
            raise DownloadError(f'Cannot read the recorded digest {record} ({e}); delete it to trust the next '
                                f'download afresh.') from e
        what = f'the sha256 recorded at its first download ({record})'
        fix = f'if the release was replaced on purpose, delete {record} and run again'
    if expected is None:
        first = {'file': archive.name, 'url': url, 'sha256': digest, 'size': archive.stat().st_size,
                 'recorded': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
        atomic_write_text(str(record), json.dumps(first, indent=2) + '\n')
        return digest, True
    if digest != expected:
        archive.unlink()
        raise ChecksumError(f'{archive.name} does not match {what}: sha256 {digest}, expected {expected}; the file '
                            f'was deleted and nothing was converted ({fix}).')
    return digest, False


def fetch_source(name: str, url: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                 progress: bool = True) -> Tuple[Path, str, bool]:
    """The archive of teacher source ``name`` on this machine, checked: ``(file, sha256, first download?)``.

    A complete archive from an earlier run is checked again and reused (no request); otherwise it is downloaded
    from ``url`` (a mirror; default: the release URL) into ``downloads_dir()/<name>/``. The folder is locked while
    this runs, so two commands never write the same file.
    """
    source = TEACHER_SOURCES[name]
    url = url or source.url
    folder = downloads_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / source.filename
    try:
        with lock_folder(str(folder)):
            if not archive.is_file():
                download(url, archive, timeout=timeout, progress=progress)
            digest, first = _check_digest(archive, folder / 'sha256.json', source.sha256, url)
    except FolderLocked as e:
        raise DownloadError(f'Another command is fetching {source.filename} into {folder} right now; wait for it '
                            f'to finish and run this one again.') from e
    return archive, digest, first
