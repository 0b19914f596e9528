"""The loopback HTTP server and request handler under the OpenAI fake (stdlib, daemon threads)."""

from __future__ import annotations

import json
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.fakes.openai_records import Injection, _Response

if TYPE_CHECKING:
    from tests.fakes.openai_server import FakeOpenAIServer


class _LoopbackServer(ThreadingHTTPServer):
    # Real Slack and OpenAI never drop a connection because a burst arrived at once; the
    # stdlib default backlog of 5 would (a dropped SYN costs the client a 1 s retransmit).
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up early
            super().handle_error(request, client_address)

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    timeout = 30  # idle keep-alive connections die eventually
    disable_nagle_algorithm = True  # else Nagle + delayed ACK add ~40 ms per response
    fake: FakeOpenAIServer

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.fake._lock:
                self.fake._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        try:
            self.fake._handle(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001
            import traceback

            self.fake.internal_errors.append(
                f"{self.command} {self.path}: {exc!r}\n{traceback.format_exc()}"
            )
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch

    def abort(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, response: _Response, fault: Injection | None = None) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.sse is None:
            if response.raw is not None:
                data = response.raw
            else:
                data = json.dumps(response.payload).encode()
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            return
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, event in enumerate(response.sse):
            if fault is not None and i >= fault.after_chunks:
                if fault.kind in ("stall", "stall_empty"):
                    empty = response.sse[0]  # the opening chunk: role, content ""
                    filler = b": keep-alive\n\n" if fault.kind == "stall" else (
                        f"data: {empty}\n\n".encode())
                    self._stall(fault, filler)
                    return
                if fault.kind == "stream_error":
                    self._chunk(f"data: {json.dumps(fault.body)}\n\n".encode())
                    self._chunk(b"")
                    return
                self.abort()
                return
            if self.fake.chunk_delay:
                self.fake._stopping.wait(self.fake.chunk_delay)
            self._chunk(f"data: {event}\n\n".encode())
        self._chunk(b"")

    def _stall(self, fault: Injection, filler: bytes) -> None:
        """Keep the stream open with `filler` and no text until released, `hold` passes,
        the fake stops, or the client goes away."""
        deadline = time.monotonic() + fault.hold
        try:
            while not (fault.released.is_set() or self.fake._stopping.is_set()
                       or time.monotonic() >= deadline):
                self._chunk(filler)
                fault.released.wait(fault.every)
        except OSError:  # BrokenPipe / ConnectionReset: the client closed its end
            fault.client_gone.set()
            self.close_connection = True
            return
        self.abort()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
