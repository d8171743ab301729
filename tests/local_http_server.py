"""A real HTTP server on 127.0.0.1 for download tests (no network needed).

It serves in-memory files, honours ``Range: bytes=N-`` with 206 responses,
records every request, and can misbehave on purpose: close the connection
half-way through a response, ignore Range requests, leave out Content-Length,
stream zeros forever, or send a body slowly.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class ServerBehaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    # path -> byte count: the next response for that path stops after that many
    # body bytes and the connection is closed (one-shot per entry in the list).
    cut_after: dict[str, list[int]] = field(default_factory=dict)
    ignore_range: set[str] = field(default_factory=set)
    redirects: dict[str, str] = field(default_factory=dict)
    # Paths answered without Content-Length (the body ends when the connection closes).
    no_length: set[str] = field(default_factory=set)
    # Paths answered with zeros, without Content-Length, until the client goes away.
    endless: set[str] = field(default_factory=set)
    # path -> seconds over which the body is sent, in 50 pieces (a slow server).
    slow: dict[str, float] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)


def _handler_for(behaviour: ServerBehaviour):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._respond(send_body=False)

        def do_GET(self):
            self._respond(send_body=True)

        def _respond(self, send_body: bool):
            path = self.path
            behaviour.requests.append(RecordedRequest(
                self.command, path, {key.lower(): value for key, value in self.headers.items()}))
            if path in behaviour.redirects:
                self.send_response(302)
                self.send_header("Location", behaviour.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in behaviour.endless:
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    while send_body:
                        self.wfile.write(b"\0" * (1 << 16))
                except OSError:
                    pass  # the client stopped reading
                return
            if path not in behaviour.files:
                self.send_error(404, "Not Found")
                return
            data = behaviour.files[path]
            start = 0
            range_header = self.headers.get("Range")
            if range_header and path not in behaviour.ignore_range:
                spec = range_header.removeprefix("bytes=")
                first = spec.partition("-")[0]
                start = int(first)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
                self.send_header("Accept-Ranges", "none" if path in behaviour.ignore_range else "bytes")
            body = data[start:]
            if path in behaviour.no_length:
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            cuts = behaviour.cut_after.get(path)
            if cuts or path in behaviour.no_length:
                self.send_header("Connection", "close")
            self.end_headers()
            if not send_body:
                return
            if path in behaviour.slow:
                piece = max(1, -(-len(body) // 50))
                try:
                    for offset in range(0, len(body), piece):
                        self.wfile.write(body[offset:offset + piece])
                        self.wfile.flush()
                        time.sleep(behaviour.slow[path] / 50)
                except OSError:
                    pass  # the client went away
                return
            if cuts:
                self.wfile.write(body[:cuts.pop(0)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


class LocalHTTPServer:
    """``with LocalHTTPServer(files={"/a.zip": b"..."}) as server: server.url("/a.zip")``."""

    def __init__(self, **behaviour):
        self.behaviour = ServerBehaviour(**behaviour)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self.behaviour))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.behaviour.requests

    def gets(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.method == "GET" and request.path == path]

    def __enter__(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
