"""A GitHub-release-like file server on 127.0.0.1 for offline download tests.

``/<owner>/<repo>/releases/download/<tag>/<file>`` answers ``302`` to ``/objects/<n>`` as GitHub does (its assets
live on another host), and ``/objects/<n>`` serves the bytes with ``Content-Length``, ``Accept-Ranges`` and
``Range`` requests (``206`` + ``Content-Range``, ``416`` past the end). Faults for tests:

* ``cut(path, after, count)``: the next ``count`` answers for ``path`` announce the whole file and close the
  connection after ``after`` bytes of the body (an interrupted transfer);
* ``ignore_range``: answer every request with the whole file (a server without resume);
* ``status(path, code, count)``: answer with an error status.

Every request is logged as ``(path, Range header or None)``. The server stops itself after ``lifetime`` seconds.
"""
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Dict, List, Optional, Tuple

from hub_server import LocalServer  # a client that hangs up prints nothing

__all__ = ['ReleaseServer']


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server: 'ReleaseServer'

    def log_message(self, fmt, *args):
        pass

    def _head(self, status: int, headers: Dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self):
        srv = self.server
        path = self.path.split('?', 1)[0]
        with srv.lock:
            srv.log.append((path, self.headers.get('Range')))
            status = srv.take(srv.statuses, path)
            if status is not None:
                return self._head(status, {'Content-Length': '0', 'Connection': 'close'})
            if path in srv.releases:
                return self._head(302, {'Location': f'/objects/{srv.releases[path]}', 'Content-Length': '0'})
            m = re.fullmatch(r'/objects/(\d+)', path)
            if m is None or int(m.group(1)) >= len(srv.blobs):
                return self._head(404, {'Content-Length': '0'})
            release = next(p for p, n in srv.releases.items() if n == int(m.group(1)))
            data = srv.blobs[int(m.group(1))]
            cut = srv.take(srv.cuts, release)
            ignore_range = srv.ignore_range
        start = 0
        rng = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range') or '')
        if rng and not ignore_range:
            start = int(rng.group(1))
            if start >= len(data):
                return self._head(416, {'Content-Range': f'bytes */{len(data)}', 'Content-Length': '0'})
            self._head(206, {'Content-Range': f'bytes {start}-{len(data) - 1}/{len(data)}',
                             'Content-Length': str(len(data) - start), 'Accept-Ranges': 'bytes'})
        else:
            self._head(200, {'Content-Length': str(len(data)), 'Accept-Ranges': 'bytes'})
        body = data[start:]
        if cut is not None:  # announce it all, send part of it, hang up
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class ReleaseServer(LocalServer):

    def __init__(self, lifetime: float = 300.0):
        super().__init__(('127.0.0.1', 0), _Handler)
        self.endpoint = f'http://127.0.0.1:{self.server_address[1]}'
        self.lock = threading.RLock()
        self.releases: Dict[str, int] = {}  # release path -> blob index
        self.blobs: List[bytes] = []
        self.log: List[Tuple[str, Optional[str]]] = []
        self.cuts: Dict[str, List[int]] = {}  # release path -> [bytes to send, answers left (< 0: all)]
        self.statuses: Dict[str, List[int]] = {}
        self.ignore_range = False
        self._thread = threading.Thread(target=self.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def publish(self, path: str, data: bytes) -> str:
        """Serve ``data`` at the release path ``path`` (replacing what was there); returns its URL."""
        with self.lock:
            self.blobs.append(bytes(data))
            self.releases[path] = len(self.blobs) - 1
        return self.endpoint + path

    def cut(self, path: str, after: int, count: int = 1) -> None:
        with self.lock:
            self.cuts[path] = [after, count]

    def status(self, path: str, code: int, count: int = 1) -> None:
        with self.lock:
            self.statuses[path] = [code, count]

    def clear(self) -> None:
        with self.lock:
            self.cuts.clear()
            self.statuses.clear()
            self.ignore_range = False
            self.log.clear()

    @staticmethod
    def take(faults: Dict[str, List[int]], path: str) -> Optional[int]:
        fault = faults.get(path)
        if fault is None or fault[1] == 0:
            return None
        fault[1] -= 1 if fault[1] > 0 else 0
        return fault[0]

    def start(self) -> 'ReleaseServer':
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()

    def __enter__(self) -> 'ReleaseServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
