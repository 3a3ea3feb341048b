"""A local HTTP file server on 127.0.0.1 for testing download code without internet.

Usage in a test::

    from http_server import serve_directory

    with serve_directory(tmp_path / "site", drop_after=1000) as server:
        download(server.url("file.bin"), dest)        # fails after 1000 bytes (once)
        download(server.url("file.bin"), dest)        # resumes with a Range request
        assert server.requests[-1].range == "bytes=1000-"

Features: an ephemeral port (parallel tests never clash), HTTP Range requests (``bytes=a-`` and
``bytes=a-b``, answered with 206 + Content-Range, or 416 when unsatisfiable) unless
``support_range=False`` (then Range is ignored and the whole file is sent with 200, like servers
without Range support), and a simulated interrupted transfer: ``drop_after=N`` (or
``server.drop_next(N)``) makes the next file response announce its full length, send N body bytes
and close the connection. Missing files get 404. Every request is recorded in ``server.requests``.
"""
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional
from urllib.parse import quote, unquote, urlsplit


@dataclass
class RecordedRequest:
    """One request the server saw: method, path (URL-decoded), Range header (or None), status sent."""

    method: str
    path: str
    range: Optional[str]
    status: int = 0


class LocalServer:
    """Handle returned by :func:`serve_directory`."""

    def __init__(self, root: Path, support_range: bool):
        self.root = Path(root)
        self.support_range = support_range
        self.requests: List[RecordedRequest] = []
        self._drop_after: Optional[int] = None
        self._lock = threading.Lock()
        self.port = 0

    def url(self, name: str) -> str:
        """http://127.0.0.1:<port>/<name> for a file ``name`` (relative to the served directory)."""
        return f"http://127.0.0.1:{self.port}/{quote(name)}"

    def drop_next(self, n_bytes: int) -> None:
        """Make the next file response close the connection after ``n_bytes`` body bytes (once)."""
        with self._lock:
            self._drop_after = n_bytes

    def _take_drop(self) -> Optional[int]:
        with self._lock:
            value, self._drop_after = self._drop_after, None
            return value

    @property
    def range_requests(self) -> List[str]:
        """The Range headers received, in order."""
        return [r.range for r in self.requests if r.range is not None]


def _make_handler(server: LocalServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(send_body=False)

        def do_GET(self):
            self._serve(send_body=True)

        def _reply_empty(self, record: RecordedRequest, status: int, headers=()):
            record.status = status
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, send_body: bool):
            rel = unquote(urlsplit(self.path).path).lstrip("/")
            record = RecordedRequest(self.command, rel, self.headers.get("Range"))
            server.requests.append(record)
            file_path = (server.root / rel).resolve()
            root = server.root.resolve()
            if root not in file_path.parents or not file_path.is_file():
                self._reply_empty(record, 404)
                return
            data = file_path.read_bytes()
            size = len(data)
            start, end, status = 0, size - 1, 200
            if server.support_range and record.range:
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", record.range.strip())
                if match is None or int(match.group(1)) >= size:
                    self._reply_empty(record, 416, [("Content-Range", f"bytes */{size}")])
                    return
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                status = 206
            body = data[start:end + 1]
            record.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if server.support_range:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            drop = server._take_drop() if send_body else None
            if drop is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if not send_body:
                return
            if drop is not None:
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.close_connection = True  # the client sees the stream end early
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serve_directory(root: "str | os.PathLike", support_range: bool = True,
                    drop_after: Optional[int] = None) -> Iterator[LocalServer]:
    """Serve the files under ``root`` on 127.0.0.1 (ephemeral port) for the duration of the block.

    support_range: honour Range requests (False: ignore them, always 200 + whole file);
    drop_after: if given, the first file response is cut after this many body bytes.
    Yields a :class:`LocalServer` (``.url(name)``, ``.requests``, ``.range_requests``, ``.drop_next``).
    """
    server = LocalServer(Path(root), support_range)
    if drop_after is not None:
        server.drop_next(drop_after)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
