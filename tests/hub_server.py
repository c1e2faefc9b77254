"""A small Hugging Face Hub-compatible HTTP server for offline tests.

It implements the slice of the Hub API that ``huggingface_hub`` (2.x) uses to create a model repo, upload
files as regular (non-LFS, non-Xet) blobs, read repo metadata and download files:

    POST /api/repos/create                              (409 + "url" when the repo exists)
    GET  /api/models/{repo}[/revision/{rev}]            (model_info / repo_info)
    GET  /api/models/{repo}/tree/{rev}[/{path}]         (list_repo_tree)
    POST /api/models/{repo}/paths-info/{rev}            (get_paths_info)
    POST /api/validate-yaml                             (README.md metadata check)
    POST /api/models/{repo}/preupload/{rev}             (always answers uploadMode "regular")
    POST /api/models/{repo}/commit/{rev}                (NDJSON: header, file, deletedFile, deletedFolder)
    HEAD/GET /{repo}/resolve/{rev}/{path}               (X-Repo-Commit, ETag, Content-Length, Range)
    GET  /api/whoami-v2

404s carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) so the client raises its usual
typed errors. State lives in memory; every commit keeps a full snapshot so old revisions stay readable.

Safety: binds to 127.0.0.1 only, speaks HTTP/1.1 with Content-Length on every response, drains every
request body, and shuts itself down after ``lifetime`` seconds even if a test forgets to stop it.
Faults for tests: ``server.add_fault(method, path_regex, status, count)``.

Run standalone: ``python tests/hub_server.py [--port 0] [--lifetime 600]`` prints the endpoint URL.
"""
import argparse
import base64
import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ['HubServer', 'point_client']

_API_REPO = re.compile(r'^/api/models/([^/]+)/([^/]+)(?:/(.*))?$')
_RESOLVE = re.compile(r'^/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$')


def git_blob_oid(data: bytes) -> str:
    """The git blob id of ``data``: what the Hub reports as the oid of a regular (non-LFS) file."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: List[Tuple[str, Dict[str, bytes]]] = field(default_factory=list)  # (oid, snapshot), oldest first
    created_at: str = ''

    @property
    def head(self) -> Tuple[str, Dict[str, bytes]]:
        return self.commits[-1]

    def snapshot(self, rev: str) -> Optional[Tuple[str, Dict[str, bytes]]]:
        if rev in ('main', 'refs/heads/main'):
            return self.head
        for oid, files in self.commits:
            if len(rev) >= 7 and oid.startswith(rev):
                return oid, files
        return None


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    count: int  # how many more requests it answers; < 0 means forever


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server: 'HubServer'

    def log_message(self, fmt, *args):  # keep pytest output clean; requests are recorded in server.log
        pass

    # ---- plumbing -------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        """Read (drain) the whole request body so the connection stays usable for the next request."""
        if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return b''.join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else b''

    def _send(self, status: int, body: bytes = b'', content_type: str = 'application/json',
              headers: Optional[Dict[str, str]] = None, head_only: bool = False, length: Optional[int] = None):
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and not (head_only or self.command == 'HEAD'):  # a HEAD answer never carries a body
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[Dict[str, str]] = None, head_only: bool = False):
        self._send(status, json.dumps(obj).encode(), headers=headers, head_only=head_only)

    def _error(self, status: int, message: str, code: Optional[str] = None, head_only: bool = False,
               extra: Optional[Dict[str, str]] = None):
        headers = {'X-Error-Message': message, **(extra or {})}
        if code:
            headers['X-Error-Code'] = code
        self._json(status, {'error': message}, headers=headers, head_only=head_only)

    def _dispatch(self, method: str):
        body = self._read_body()
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        srv = self.server
        srv.record(method, path, self.headers)
        fault = srv.take_fault(method, path)
        if fault is not None:
            return self._error(fault, f'injected fault {fault}', head_only=method == 'HEAD')
        try:
            with srv.lock:
                self._route(method, path, query, body)
        except Exception as e:  # a bug in the server must show up as a 500, not as a hung client
            self._error(500, f'hub_server error: {type(e).__name__}: {e}', head_only=method == 'HEAD')

    do_GET = lambda self: self._dispatch('GET')  # noqa: E731
    do_HEAD = lambda self: self._dispatch('HEAD')  # noqa: E731
    do_POST = lambda self: self._dispatch('POST')  # noqa: E731
    do_PUT = lambda self: self._dispatch('PUT')  # noqa: E731
    do_DELETE = lambda self: self._dispatch('DELETE')  # noqa: E731

    # ---- routes ---------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query, body: bytes):
        srv = self.server
        head = method == 'HEAD'
        if method == 'POST' and path == '/api/repos/create':
            return self._create_repo(json.loads(body or b'{}'))
        if method == 'POST' and path == '/api/validate-yaml':
            return self._json(200, {'errors': [], 'warnings': []})
        if method == 'GET' and path == '/api/whoami-v2':
            return self._json(200, {'type': 'user', 'name': srv.user, 'orgs': [], 'auth': {}})
        m = _API_REPO.match(path)
        if m:
            repo_id, rest = f'{m.group(1)}/{m.group(2)}', m.group(3) or ''
            repo = srv.repos.get(repo_id)
            if repo is None:
                return self._error(404, 'Repository not found', 'RepoNotFound')
            return self._repo_api(method, repo, rest, query, body)
        m = _RESOLVE.match(path)
        if m and method in ('GET', 'HEAD'):
            repo = srv.repos.get(f'{m.group(1)}/{m.group(2)}')
            if repo is None:
                return self._error(404, 'Repository not found', 'RepoNotFound', head_only=head)
            snap = repo.snapshot(m.group(3))
            if snap is None:
                return self._error(404, 'Invalid rev id', 'RevisionNotFound', head_only=head)
            oid, files = snap
            data = files.get(m.group(4))
            if data is None:
                return self._error(404, 'Entry not found', 'EntryNotFound', head_only=head,
                                   extra={'X-Repo-Commit': oid})
            return self._file(data, oid, head)
        self._error(404, f'hub_server: no route for {method} {path}')

    def _create_repo(self, payload):
        srv = self.server
        if payload.get('type') not in (None, 'model'):
            return self._error(400, 'hub_server only hosts model repos')
        repo_id = f"{payload.get('organization') or srv.user}/{payload['name']}"
        url = f'{srv.endpoint}/{repo_id}'
        if repo_id in srv.repos:
            return self._json(409, {'error': 'You already created this model repo', 'url': url})
        repo = Repo(repo_id, private=payload.get('visibility') == 'private' or bool(payload.get('private')),
                    created_at=time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime()))
        initial = {'.gitattributes': b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n'}
        repo.commits.append((srv.new_oid(repo_id, 'init'), initial))
        srv.repos[repo_id] = repo
        self._json(200, {'url': url, 'name': repo_id, 'id': repo_id})

    def _repo_api(self, method: str, repo: Repo, rest: str, query, body: bytes):
        srv = self.server
        parts = rest.split('/', 1) if rest else []
        kind, tail = (parts[0], parts[1] if len(parts) > 1 else '') if parts else ('', '')
        if method == 'GET' and kind in ('', 'revision'):
            snap = repo.snapshot(tail or 'main')
            if snap is None:
                return self._error(404, 'Invalid rev id', 'RevisionNotFound')
            oid, files = snap
            return self._json(200, {
                'id': repo.repo_id, '_id': repo.repo_id, 'modelId': repo.repo_id, 'author': repo.repo_id.split('/')[0],
                'sha': oid, 'private': repo.private, 'gated': False, 'disabled': False, 'downloads': 0, 'likes': 0,
                'library_name': 'timm', 'tags': [], 'createdAt': repo.created_at, 'lastModified': repo.created_at,
                'siblings': [{'rfilename': p, 'size': len(d), 'blobId': git_blob_oid(d)} for p, d in sorted(files.items())],
            })
        rev_and_path = tail.split('/', 1)
        rev, sub = unquote(rev_and_path[0] or 'main'), (rev_and_path[1] if len(rev_and_path) > 1 else '')
        snap = repo.snapshot(rev)
        if snap is None:
            return self._error(404, 'Invalid rev id', 'RevisionNotFound')
        oid, files = snap
        if method == 'GET' and kind == 'tree':
            recursive = query.get('recursive', ['false'])[0].lower() in ('1', 'true')
            return self._json(200, _tree(files, sub.strip('/'), recursive))
        if method == 'POST' and kind == 'paths-info':
            wanted = json.loads(body or b'{}').get('paths', [])
            return self._json(200, [_entry(p, files[p]) for p in wanted if p in files])
        if method == 'POST' and kind == 'preupload':
            req = json.loads(body or b'{}').get('files', [])
            return self._json(200, {'files': [{
                'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False,
                'oid': git_blob_oid(files[f['path']]) if f['path'] in files else None} for f in req]})
        if method == 'POST' and kind == 'commit':
            if rev not in ('main', 'refs/heads/main') or query.get('create_pr'):
                return self._error(400, 'hub_server only commits to main')
            new = dict(repo.head[1])
            summary = ''
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item['key'], item['value']
                if key == 'header':
                    summary = value.get('summary', '')
                    parent = value.get('parentCommit')
                    if parent and parent != repo.head[0]:
                        return self._error(412, 'parentCommit is not the head of main')
                elif key == 'file':
                    new[value['path']] = base64.b64decode(value['content'])
                elif key == 'deletedFile':
                    new.pop(value['path'], None)
                elif key == 'deletedFolder':
                    prefix = value['path'].rstrip('/') + '/'
                    new = {p: d for p, d in new.items() if not p.startswith(prefix)}
                else:  # lfsFile / copies would need an LFS store: preupload never asks for them
                    return self._error(400, f'hub_server does not support {key!r} operations')
            commit_oid = srv.new_oid(repo.repo_id, summary)
            repo.commits.append((commit_oid, new))
            return self._json(200, {'commitUrl': f'{srv.endpoint}/{repo.repo_id}/commit/{commit_oid}',
                                    'commitOid': commit_oid, 'pullRequestUrl': None, 'success': True})
        self._error(404, f'hub_server: no route for {method} /api/models/{repo.repo_id}/{rest}')

    def _file(self, data: bytes, commit: str, head: bool):
        headers = {'X-Repo-Commit': commit, 'ETag': f'"{git_blob_oid(data)}"', 'Accept-Ranges': 'bytes'}
        rng = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range', '') or '')
        if rng and not head:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self._error(416, 'range not satisfiable')
            headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
            return self._send(206, data[start:end + 1], 'application/octet-stream', headers)
        self._send(200, data, 'application/octet-stream', headers, head_only=head, length=len(data))


def _entry(path: str, data: bytes) -> dict:
    return {'type': 'file', 'path': path, 'size': len(data), 'oid': git_blob_oid(data)}


def _tree(files: Dict[str, bytes], folder: str, recursive: bool) -> list:
    prefix = folder + '/' if folder else ''
    out, dirs = [], set()
    for p in sorted(files):
        if not p.startswith(prefix):
            continue
        rel = p[len(prefix):]
        if '/' in rel and not recursive:
            dirs.add(prefix + rel.split('/', 1)[0])
            continue
        if recursive:  # every parent folder is listed as well
            parts = rel.split('/')[:-1]
            dirs.update(prefix + '/'.join(parts[:i + 1]) for i in range(len(parts)))
        out.append(_entry(p, files[p]))
    return [{'type': 'directory', 'path': d, 'oid': hashlib.sha1(d.encode()).hexdigest(), 'size': 0}
            for d in sorted(dirs)] + out


class LocalServer(ThreadingHTTPServer):
    """A threaded test server on 127.0.0.1 whose clients may hang up: the tests' fault cases (timeouts, refused
    answers) close connections on purpose, and socketserver would print a traceback into the stderr they read."""
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HubServer(LocalServer):
    """In-memory Hub on ``127.0.0.1``; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, port: int = 0, lifetime: float = 600.0, user: str = 'user'):
        super().__init__(('127.0.0.1', port), _Handler)
        self.endpoint = f'http://127.0.0.1:{self.server_address[1]}'
        self.user = user
        self.lifetime = lifetime
        self.repos: Dict[str, Repo] = {}
        self.log: List[Tuple[str, str, bool]] = []  # (method, path, had Authorization header)
        self.faults: List[Fault] = []
        self.lock = threading.RLock()
        self._n = 0
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None
        self.closed = threading.Event()  # set once the listening socket is closed

    # ---- test helpers ---------------------------------------------------------------------------------
    def new_oid(self, repo_id: str, msg: str) -> str:
        self._n += 1
        return hashlib.sha1(f'{repo_id}\0{msg}\0{self._n}\0{time.time_ns()}'.encode()).hexdigest()

    def add_repo(self, repo_id: str, files: Dict[str, bytes]) -> None:
        """A model repo whose main holds ``files`` (path -> bytes), as if they had been pushed in one commit."""
        with self.lock:
            repo = Repo(repo_id, created_at=time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime()))
            repo.commits.append((self.new_oid(repo_id, 'add'), dict(files)))
            self.repos[repo_id] = repo

    def record(self, method: str, path: str, headers) -> None:
        with self.lock:
            self.log.append((method, path, 'authorization' in {k.lower() for k in headers.keys()}))

    def add_fault(self, method: str, path_regex: str, status: int, count: int = -1) -> None:
        """Answer matching requests with ``status`` (``count`` times, or forever when negative)."""
        with self.lock:
            self.faults.append(Fault(method.upper(), re.compile(path_regex), status, count))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> Optional[int]:
        with self.lock:
            for f in self.faults:
                if f.count != 0 and f.method in (method, '*') and f.path.search(path):
                    f.count -= 1 if f.count > 0 else 0
                    return f.status
        return None

    def files(self, repo_id: str, rev: str = 'main') -> Dict[str, bytes]:
        with self.lock:
            snap = self.repos[repo_id].snapshot(rev)
            return dict(snap[1]) if snap else {}

    def n_commits(self, repo_id: str) -> int:
        with self.lock:
            return len(self.repos[repo_id].commits)

    # ---- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> 'HubServer':
        self._thread = threading.Thread(target=self.serve_forever, kwargs={'poll_interval': 0.1},
                                        name='hub_server', daemon=True)
        self._thread.start()
        # bounded: stop by itself even when the owner never calls stop()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
        self.server_close()
        self.closed.set()

    def __enter__(self) -> 'HubServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def point_client(monkeypatch, endpoint: str, cache, token: str) -> None:
    """Point this process's huggingface_hub client at ``endpoint`` (it reads HF_ENDPOINT, HF_HUB_CACHE,
    HF_ASSETS_CACHE and HF_HUB_OFFLINE at import, so the constants are patched; subprocesses get environment
    variables instead). The assets cache, which holds timm-kd's local teacher store, goes beside ``cache``."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', endpoint + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_ASSETS_CACHE', f'{cache}-assets')
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_XET', True)
    monkeypatch.setenv('HF_TOKEN', token)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('--lifetime', type=float, default=600.0, help='seconds before the server stops itself')
    args = ap.parse_args()
    srv = HubServer(args.port, args.lifetime).start()
    print(f'HF_ENDPOINT={srv.endpoint}  (stops in {args.lifetime:.0f} s; HF_HUB_DISABLE_XET=1 recommended)',
          flush=True)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == '__main__':
    main()
