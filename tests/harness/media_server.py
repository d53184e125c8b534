"""A local HTTP server for downloads that serves real files and misbehaves on purpose per path.

Routes (`rel` is a path under the served root):

| path                                 | behaviour                                                      |
|--------------------------------------|----------------------------------------------------------------|
| /files/<rel>                         | the file, with its content type and length                     |
| /status/<code>/<rel>                 | that status (404, 403, 500, ...) with a small HTML body        |
| /retry-after/<n>/<seconds>/<rel>     | 429 with `Retry-After: <seconds>` for the first n requests     |
| /slow/<seconds>/<rel>                | waits <seconds> before answering (past a client's timeout)     |
| /cut/<rel>                           | full Content-Length, half the body, then the connection closes |
| /html-as-video/<rel>                 | an HTML page served as `video/mp4`                             |
| /html-as-image/<rel>                 | an HTML page served as `image/jpeg`                            |
| /truncated/<rel>                     | the first third of the file, length consistent: a broken mp4   |
| /huge/<gigabytes>/<rel>              | claims <gigabytes> GB and streams zeros until the client quits |
| /huge-chunked/<rel>                  | no length at all (chunked), zeros until the client quits       |
| /redirect/<rel>                      | 302 to /files/<rel>                                            |

Every response closes its connection, so open connections equal requests in flight; the server
counts them (`peak_connections`) so tests can check a client's concurrency limit from the
server's side. `latency` delays every /files answer, to make concurrency observable.
"""

from __future__ import annotations

import mimetypes
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 64 * 1024
HTML_PAGE = b"<!doctype html><html><head><title>Video removed</title></head><body>Not here.</body></html>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


class MediaServer:
    """Serve `root` on `host`:<free port> in a background thread; use as a context manager."""

    def __init__(self, root: Path, host: str = "127.0.0.1", latency: float = 0.0):
        self.root = Path(root).resolve()
        self.latency = latency
        self.requests: Counter[str] = Counter()  # request path -> count
        self.connections = 0
        self.peak_connections = 0
        self._lock = threading.Lock()
        self._httpd = _Server((host, 0), _make_handler(self))
        self.host, self.port = self._httpd.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name=f"media-{self.port}")

    def url(self, rel: str, route: str = "files") -> str:
        """URL of `rel` under `route` (e.g. route="status/404" or "retry-after/2/1")."""
        return f"{self.base_url}/{route.strip('/')}/{rel.lstrip('/')}"

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.peak_connections = self.connections

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # connection accounting, called from handler threads
    def _opened(self, path: str) -> None:
        with self._lock:
            self.requests[path] += 1
            self.connections += 1
            self.peak_connections = max(self.peak_connections, self.connections)

    def _closed(self) -> None:
        with self._lock:
            self.connections -= 1


def _make_handler(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            server._opened(self.path)
            try:
                _route(self, server)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up: expected for /huge and timeouts
            finally:
                self.close_connection = True
                server._closed()

    return Handler


def _route(h: BaseHTTPRequestHandler, server: MediaServer) -> None:
    parts = h.path.split("?", 1)[0].strip("/").split("/")
    route, args = parts[0], parts[1:]
    handlers = {
        "files": lambda: _send_file(h, server, args),
        "status": lambda: _send_status(h, int(args[0])),
        "retry-after": lambda: _retry_after(h, server, args),
        "slow": lambda: (time.sleep(float(args[0])), _send_file(h, server, args[1:])),
        "cut": lambda: _cut(h, server, args),
        "html-as-video": lambda: _send(h, 200, HTML_PAGE, "video/mp4"),
        "html-as-image": lambda: _send(h, 200, HTML_PAGE, "image/jpeg"),
        "truncated": lambda: _truncated(h, server, args),
        "huge": lambda: _stream_zeros(h, declared=int(float(args[0]) * 1e9)),
        "huge-chunked": lambda: _stream_zeros(h, declared=None),
        "redirect": lambda: _redirect(h, "/files/" + "/".join(args)),
    }
    handlers.get(route, lambda: _send_status(h, 404))()


def _resolve(server: MediaServer, args: list[str]) -> Path | None:
    path = (server.root / "/".join(args)).resolve()
    if server.root not in path.parents or not path.is_file():
        return None
    return path


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Connection", "close")
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def _send_status(h: BaseHTTPRequestHandler, code: int, headers: dict | None = None) -> None:
    body = f"<html><body><h1>{code}</h1></body></html>".encode()
    _send(h, code, body, "text/html", headers)


def _send_file(h: BaseHTTPRequestHandler, server: MediaServer, args: list[str]) -> None:
    path = _resolve(server, args)
    if path is None:
        return _send_status(h, 404)
    if server.latency:
        time.sleep(server.latency)
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    _send(h, 200, path.read_bytes(), ctype)


def _retry_after(h: BaseHTTPRequestHandler, server: MediaServer, args: list[str]) -> None:
    times, seconds = int(args[0]), args[1]
    if server.requests[h.path] <= times:
        return _send_status(h, 429, {"Retry-After": seconds})
    _send_file(h, server, args[2:])


def _cut(h: BaseHTTPRequestHandler, server: MediaServer, args: list[str]) -> None:
    path = _resolve(server, args)
    if path is None:
        return _send_status(h, 404)
    data = path.read_bytes()
    h.send_response(200)
    h.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    h.send_header("Content-Length", str(len(data)))
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(data[: len(data) // 2])
    h.wfile.flush()
    h.connection.shutdown(2)  # hang up mid-body


def _truncated(h: BaseHTTPRequestHandler, server: MediaServer, args: list[str]) -> None:
    path = _resolve(server, args)
    if path is None:
        return _send_status(h, 404)
    data = path.read_bytes()
    _send(h, 200, data[: len(data) // 3], mimetypes.guess_type(path.name)[0] or "application/octet-stream")


def _stream_zeros(h: BaseHTTPRequestHandler, declared: int | None) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "video/mp4")
    h.send_header("Connection", "close")
    if declared is None:
        h.send_header("Transfer-Encoding", "chunked")
    else:
        h.send_header("Content-Length", str(declared))
    h.end_headers()
    zeros = bytes(CHUNK)
    frame = f"{CHUNK:x}\r\n".encode() + zeros + b"\r\n" if declared is None else zeros
    sent = 0
    while declared is None or sent < declared:  # until the client gives up
        h.wfile.write(frame)
        sent += CHUNK


def _redirect(h: BaseHTTPRequestHandler, location: str) -> None:
    h.send_response(302)
    h.send_header("Location", location)
    h.send_header("Content-Length", "0")
    h.send_header("Connection", "close")
    h.end_headers()
