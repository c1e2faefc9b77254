"""Hub folders on disk and on the Hub: write them atomically, upload them with bounded waits.

A model folder (``config.json``, ``model.safetensors``, ``README.md`` and extras) is built in a fresh
temporary folder beside its destination and renamed into place, so a crash never leaves half an export.
An existing destination is only replaced when it is empty or when timm-kd wrote it and nothing else: its
:data:`EXPORT_MARKER` lists the files the export wrote with their sha256, so a user's folder, or a file a user
added to or changed in an export, is never overwritten or removed.

Every upload request has a timeout and the upload is retried a bounded number of times on transient
failures (no answer, connection lost, HTTP 429 / 5xx); a failure ends in one :class:`HubPublishError`
sentence naming the endpoint and the way out. Tokens come only from ``token=``, ``HF_TOKEN`` or a prior
``hf auth login``; they are never logged or written.
"""
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm

from timm_kd.utils.files import FileReadError, is_regular_file, read_json
from timm_kd.utils.hub_access import explain_hub_error, http_status, hub_endpoint

__all__ = ['HubPublishError', 'hub_endpoint', 'explain_hub_error', 'check_repo_id', 'save_model_folder',
           'push_folder', 'verify_folder', 'sha256_file', 'timm_kd_version', 'EXPORT_MARKER', 'DEFAULT_TIMEOUT',
           'DEFAULT_ATTEMPTS']

_logger = logging.getLogger(__name__)

#: hidden file that marks a folder written by timm-kd (never uploaded: hidden files are skipped)
EXPORT_MARKER = '.timm-kd-export'
#: seconds one Hub request may stay silent before it counts as failed
DEFAULT_TIMEOUT = 30.0
#: uploads tried at most this often when the failure is transient
DEFAULT_ATTEMPTS = 2
#: seconds between two upload attempts
RETRY_WAIT = 2.0


class HubPublishError(RuntimeError):
    """Uploading to the Hub failed; local files are left as they were. ``reason`` is the short cause."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason or message


def timm_kd_version() -> str:
    from timm_kd import __version__
    return __version__


def check_repo_id(repo_id: str, what: str = '--repo-id', owner: bool = True) -> str:
    """``repo_id`` if it is a valid Hub id (``owner/name``; a bare ``name`` too when ``owner`` is False), else
    ``ValueError`` with one sentence naming ``what``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
        valid = repo_id.count('/') == 1 or (not owner and '/' not in repo_id)
    except HFValidationError:
        valid = False
    if not valid:
        form = '"owner/name"' if owner else '"owner/name" or "name"'
        raise ValueError(f'{what} needs a Hub id {form} (letters, digits, "-", "_", "."), got {repo_id!r}.')
    return repo_id


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------------------

#: what an export written before its marker listed its files holds (an older timm-kd's marker is trusted for these)
_EXPORT_FILES = ('config.json', 'model.safetensors', 'README.md', 'training/args.yaml', 'training/results.json',
                 'training/summary.csv')


def _read_marker(folder: Path) -> Dict[str, Any]:
    """The :data:`EXPORT_MARKER` of ``folder`` ({} when there is none, or it is a link, not a file or not ours)."""
    try:
        writer = read_json(str(folder / EXPORT_MARKER), limit=1 << 20, default={})
    except FileReadError:
        return {}
    return writer if isinstance(writer, dict) else {}


def _entries(folder: Path) -> Iterator[Tuple[str, Path]]:
    """(relative posix path, path) of everything below ``folder`` that is not a folder (links not followed)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            yield path.relative_to(folder).as_posix(), path


def _foreign(folder: Path) -> List[str]:
    """What in ``folder`` timm-kd did not write: everything, unless the marker of a finished export proves which
    files it wrote (by name and sha256; an older timm-kd's marker by the names an export has)."""
    writer = _read_marker(folder)
    files = writer.get('files')
    if isinstance(files, dict):
        def ours(rel: str, path: Path) -> bool:
            return files.get(rel) == sha256_file(path)
    elif writer.get('host') and 'temporary' not in writer:
        def ours(rel: str, path: Path) -> bool:
            return rel in _EXPORT_FILES
    else:  # no marker, or a temporary folder (perhaps of an export still running): nothing in it is an export's
        return sorted(rel for rel, _ in _entries(folder))
    return sorted(rel for rel, path in _entries(folder)
                  if rel != EXPORT_MARKER and not (is_regular_file(str(path)) and ours(rel, path)))


def _check_destination(folder: Path, protect: Optional[Path]) -> None:
    """Refuse a destination that holds something timm-kd did not write (or the protected run folder)."""
    if protect is not None:
        protect = protect.resolve()
        dest = folder.resolve()
        if dest == protect or dest in protect.parents:
            raise FileExistsError(f'{folder} is (or contains) the run folder {protect}; choose another output '
                                  f'folder (nothing was changed).')
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(f'{folder} exists and is not a folder; choose another output folder (nothing was '
                              f'changed).')
    foreign = _foreign(folder) if folder.is_dir() else []
    if foreign:
        names = ', '.join(foreign[:3]) + (f' and {len(foreign) - 3} more' if len(foreign) > 3 else '')
        raise FileExistsError(f'{folder} holds files timm-kd did not write ({names}); move them away or pass a new '
                              f'or empty output folder (nothing was changed).')


def _mark(folder: Path, files: Optional[Dict[str, str]] = None) -> None:
    """Write :data:`EXPORT_MARKER`, timm-kd's proof of what it wrote: without ``files``, that ``folder`` is a
    temporary folder of this process at exactly this path (a copy or a renamed folder is never taken for it);
    with ``files`` (relative path -> sha256), that it is a finished export of exactly these files."""
    writer: Dict[str, Any] = {'written_by': f'timm-kd {timm_kd_version()}', 'host': socket.gethostname(),
                              'pid': os.getpid()}
    writer.update({'temporary': str(folder.resolve())} if files is None else {'files': files})
    (folder / EXPORT_MARKER).write_text(json.dumps(writer) + '\n')


def _process_gone(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False  # cannot tell: keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process
        return False
    return False


def _remove_stale_temps(folder: Path) -> None:
    """Remove the temporary folders that exports to ``folder`` left when they were killed: hidden sibling folders
    ``.<name>.*`` whose marker says they are a temporary folder at that very path, made by a process of this host
    that no longer runs. Anything else (a user's file or folder, a copy of an export or of a temporary folder) is
    not ours and stays."""
    for tmp in folder.parent.glob(f'.{folder.name}.*'):
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        writer = _read_marker(tmp)
        if writer.get('temporary') == str(tmp.resolve()) and writer.get('host') == socket.gethostname() and \
                _process_gone(writer.get('pid')):
            shutil.rmtree(tmp, ignore_errors=True)


def save_model_folder(
        model: nn.Module,
        folder: Union[str, os.PathLike],
        readme: str,
        model_config: Optional[Dict[str, Any]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        extra_files: Optional[Dict[str, Union[str, bytes]]] = None,
        protect: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Write a timm Hub folder: ``config.json``, ``model.safetensors`` (only), ``README.md`` and extras.

    The folder is built next to its destination and renamed into place: a crash leaves the old folder or
    the new one, and the next export to the same place removes what the crash left. An existing destination
    is replaced only when it is empty or an earlier timm-kd export holding nothing but the files its marker
    lists, unchanged; anything else (a user's folder or a file a user added to or changed in an export, a file,
    ``protect`` or a folder containing it) raises ``FileExistsError`` before anything is written.
    """
    from timm.models import save_for_hf
    folder = Path(folder)
    _check_destination(folder, Path(protect) if protect is not None else None)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))  # unique, created by us only
    try:
        _mark(tmp)  # first, so a kill from here on leaves a folder the next export can recognise and remove
        save_for_hf(model, tmp, model_config=model_config, data_config=data_config, safe_serialization=True)
        files = {'README.md': readme, **(extra_files or {})}
        for rel, content in files.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (dst.write_bytes if isinstance(content, bytes) else dst.write_text)(content)
        umask = os.umask(0)
        os.umask(umask)
        for p in [tmp, *tmp.rglob('*')]:  # mkdtemp makes 0700: give the export the user's normal permissions
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
            if p.is_file():
                with open(p, 'rb') as f:
                    os.fsync(f.fileno())
        _mark(tmp, {rel: sha256_file(p) for rel, p in _entries(tmp) if rel != EXPORT_MARKER})
        old = None
        if folder.exists():  # empty, or our own earlier export (checked above; again now, in case it changed since)
            _check_destination(folder, None)
            old = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.old-', dir=folder.parent))
            _mark(old)
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def verify_folder(model: nn.Module, folder: Path) -> None:
    """The exported folder must rebuild the same network: same logits through timm's own loader."""
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, *model.pretrained_cfg.get('input_size', (3, 32, 32)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(model(x), reloaded(x)):
            raise RuntimeError(f'{folder} does not reproduce the source logits; the export is broken.')


# ---------------------------------------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------------------------------------

@contextmanager
def _request_timeout(seconds: float) -> Iterator[None]:
    """Give huggingface_hub's shared HTTP client a timeout for the duration of the block.

    The client is created with ``timeout=None`` and HfApi's repo and commit calls pass no timeout of
    their own, so a server that accepts the connection but never answers would block forever.
    """
    from huggingface_hub import get_session
    client = get_session()
    before = client.timeout
    client.timeout = seconds
    try:
        yield
    finally:
        client.timeout = before


def _transient(err: BaseException) -> bool:
    """Worth another attempt: no answer, a lost connection, or a busy / failing server."""
    status = http_status(err)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(err, (ConnectionError, TimeoutError)) or type(err).__module__.startswith(('httpx', 'httpcore'))


def push_folder(
        folder: Union[str, os.PathLike],
        repo_id: str,
        private: bool = False,
        token: Optional[str] = None,
        commit_message: str = 'Upload model with timm-kd',
        timeout: Optional[float] = None,
        attempts: Optional[int] = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the repo URL.

    An existing repo is updated in place (unchanged files are skipped by the client). Each request may
    stay silent for ``timeout`` seconds (default :data:`DEFAULT_TIMEOUT`); transient failures are retried
    up to ``attempts`` times in all (default :data:`DEFAULT_ATTEMPTS`). Raises :class:`HubPublishError`
    with one sentence; the local folder is only read.
    """
    from huggingface_hub import HfApi
    folder = Path(folder)
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    attempts = max(1, DEFAULT_ATTEMPTS if attempts is None else int(attempts))
    endpoint = hub_endpoint()
    if not (folder / 'config.json').is_file():
        raise HubPublishError(f'{folder} is not a model folder (no config.json); nothing was uploaded.')
    api = HfApi(endpoint=endpoint, token=token, library_name='timm-kd', library_version=timm_kd_version())
    for attempt in range(1, attempts + 1):
        try:
            with _request_timeout(timeout):
                url = api.create_repo(repo_id, private=private, exist_ok=True)
                api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), commit_message=commit_message,
                                  ignore_patterns=['.*', '**/.*'])
            return f'{endpoint}/{url.repo_id}'
        except Exception as e:
            if attempt < attempts and _transient(e):
                _logger.warning(f'Upload to {endpoint} failed ({explain_hub_error(e)}); attempt {attempt + 1} of '
                                f'{attempts} in {RETRY_WAIT:g} s.')
                time.sleep(RETRY_WAIT)
                continue
            reason = _publish_reason(e) + (f' ({attempts} attempts, {timeout:g} s timeout each)'
                                           if _transient(e) else '')
            raise HubPublishError(
                f"Could not publish {folder} to '{repo_id}' at {endpoint}: {reason}; nothing local was changed, so "
                f"fix that and run the same command again (the upload is one commit, a rerun updates the repo).",
                reason=f'{endpoint}: {reason}') from e


def _publish_reason(err: BaseException) -> str:
    status = http_status(err)
    if status in (401, 403):
        return (f'the Hub refused the write (HTTP {status}): log in with `hf auth login` or set HF_TOKEN to a '
                'token with write access to that namespace')
    if status == 404:
        return 'the Hub answered 404 (does the namespace exist, and may your token write to it?)'
    if status is not None and status >= 500:
        return f'the Hub had a server error (HTTP {status}); try again later'
    return explain_hub_error(err)
