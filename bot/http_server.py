"""HTTP mode: Slack posts slash commands, events and interactivity to `/slack/events`.

A small threaded stdlib server hands each request to Bolt, which verifies the request signature
(X-Slack-Signature / X-Slack-Request-Timestamp, 5-minute window) and answers 401 otherwise.
Unlike Bolt's single-threaded development server it serves requests concurrently, can bind
port 0 (tests) and stops cleanly. It tells `AcksFirst` which requests it is answering, so
background work steps aside until they are answered, and reads request headers itself (the
standard library's e-mail parser was a quarter of each acknowledgement's CPU).
"""

from __future__ import annotations

import logging
import queue
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from slack_bolt import App, BoltRequest, BoltResponse

from bot.runtime import AcksFirst

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000
MAX_HEADERS = 100
MAX_HEADER_LINE = 65536
CONNECTION_TIMEOUT_SECONDS = 5


class _Server(ThreadingHTTPServer):
    """Requests are answered by a fixed set of threads started up front.

    A thread per connection means the accepting thread waits in `Thread.start()` until the new
    thread has run, which under load (every thread wanting the interpreter lock) puts a delay
    on every accept. Pre-started handlers take accepted connections from a queue instead.
    They are few on purpose: each one needs the interpreter lock to answer, and with 64 of
    them answering 50 requests at once, each waited behind the others for the lock (ack p99
    50-75 ms in the load benchmark; 8 threads: 20-36 ms). Connections wait in the queue.
    Because they are few, none may sit on an idle connection: every answer closes its
    connection (Slack sends each delivery on its own; a proxy in front reconnects cheaply),
    and a client silent for CONNECTION_TIMEOUT_SECONDS mid-request is dropped.
    """

    # The default backlog of 5 resets connections when Slack sends a burst (50 commands at
    # once in the load benchmark); a reset command is a lost request.
    request_queue_size = 256
    handler_threads = 8
    acks_first: AcksFirst | None = None

    def start_handlers(self) -> None:
        self._accepted: queue.SimpleQueue = queue.SimpleQueue()
        self._answering: dict[object, bool] = {}  # connection -> a request on it is unanswered
        self._handlers = [
            threading.Thread(target=self._handle_accepted, name=f"sop-bot-http-{n}", daemon=True)
            for n in range(self.handler_threads)
        ]
        for thread in self._handlers:
            thread.start()

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        # Counted from the accept on, before a handler picks the connection up.
        self.request_arrived(request)
        self._accepted.put((request, client_address))

    def request_arrived(self, connection: object) -> None:
        """The request on `connection` waits for its answer (AcksFirst counts it)."""
        if self.acks_first is not None and not self._answering.get(connection):
            self._answering[connection] = True
            self.acks_first.request_started()

    def request_answered(self, connection: object) -> None:
        """Its answer is ready (or the connection ended): it no longer holds background work
        back."""
        if self._answering.pop(connection, False) and self.acks_first is not None:
            self.acks_first.request_finished()

    def _handle_accepted(self) -> None:
        if self.acks_first is not None:
            self.acks_first.mark_answering_thread()
        while (item := self._accepted.get()) is not None:
            try:
                self.process_request_thread(*item)
            finally:
                self.request_answered(item[0])

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        # The stdlib prints a traceback to stderr; a client hanging up early is not a bug.
        log.debug("connection from %s ended early", client_address, exc_info=True)

    def stop_handlers(self) -> None:
        for _ in self._handlers:
            self._accepted.put(None)
        for thread in self._handlers:
            thread.join(timeout=5)


class Headers:
    """Request headers, looked up without regard to case (what `do_POST` needs of them)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._first: dict[str, str] = {}
        for name, value in pairs:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def values_of(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self._pairs if key.lower() == lowered]


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def read_headers(rfile) -> Headers:  # noqa: ANN001 - a binary file object
    """Header lines up to the blank line, with the limits `http.client` applies (100 lines
    of at most 64 KiB). The standard library hands them to the e-mail parser, which cost a
    quarter of each acknowledgement's CPU; Slack's headers need none of what it does."""
    pairs: list[tuple[str, str]] = []
    while True:
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
        if line in (b"\r\n", b"\n", b""):
            break
        if len(pairs) >= MAX_HEADERS:
            raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
        if line[:1] in (b" ", b"\t"):  # obsolete line folding (RFC 9112 lets us refuse it)
            raise BadRequest(HTTPStatus.BAD_REQUEST, "Folded header line")
        name, colon, value = line.decode("iso-8859-1").partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(HTTPStatus.BAD_REQUEST, "Malformed header line")
        pairs.append((name, value.strip()))
    headers = Headers(pairs)
    if len(set(headers.values_of("Content-Length"))) > 1:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "Conflicting Content-Length headers")
    return headers


def parse_request(handler: BaseHTTPRequestHandler) -> bool:
    """`BaseHTTPRequestHandler.parse_request` with the same rules for the request line,
    versions, Connection and Expect, and `read_headers` for the headers."""
    handler.command = None  # type: ignore[assignment]
    handler.request_version = "HTTP/1.0"  # errors below get a status line (0.9 would not)
    handler.close_connection = True
    requestline = str(handler.raw_requestline, "iso-8859-1").rstrip("\r\n")
    handler.requestline = requestline
    words = requestline.split()
    if not words:
        return False
    if len(words) != 3:
        handler.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
        return False
    command, path, version = words
    major, dot, minor = version.removeprefix("HTTP/").partition(".")
    if not version.startswith("HTTP/") or not dot or not (major + minor).isdigit():
        handler.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
        return False
    if (int(major), int(minor)) >= (2, 0):
        handler.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                           f"Invalid HTTP version ({version})")
        return False
    keep_alive = (int(major), int(minor)) >= (1, 1)
    handler.close_connection = not keep_alive
    handler.command, handler.request_version = command, version
    handler.path = "/" + path.lstrip("/") if path.startswith("//") else path
    try:
        handler.headers = read_headers(handler.rfile)  # type: ignore[assignment]
    except BadRequest as exc:
        handler.send_error(exc.status, str(exc))
        return False
    connection = (handler.headers.get("Connection") or "").lower()
    if connection == "close":
        handler.close_connection = True
    elif connection == "keep-alive":
        handler.close_connection = False
    if (handler.headers.get("Expect") or "").lower() == "100-continue" and keep_alive:
        return handler.handle_expect_100()
    return True


class BotHTTPServer:
    """Serve a Bolt app over HTTP; `start()` runs in a background thread, `serve_forever()`
    in the caller's."""

    def __init__(
        self, app: App, *, host: str = "127.0.0.1", port: int = 0, path: str = EVENTS_PATH,
        acks_first: AcksFirst | None = None,
    ) -> None:
        self.app = app
        self.path = path
        self._server = _Server((host, port), self._handler_class())
        self._server.daemon_threads = True
        context = getattr(app, "sop_context", None)  # set by bot.app.build_app
        self._server.acks_first = acks_first or getattr(context, "acks_first", None)
        self._server.start_handlers()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}{self.path}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        app, path = self.app, self.path

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Seconds a client may stay silent mid-request before its handler thread gives up
            # on it and serves the next connection.
            timeout = CONNECTION_TIMEOUT_SECONDS

            def parse_request(self) -> bool:
                return parse_request(self)

            def send_error(self, code: int, message: str | None = None,
                           explain: str | None = None) -> None:
                self.server.request_answered(self.request)  # type: ignore[attr-defined]
                super().send_error(code, message, explain)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

            def do_GET(self) -> None:  # noqa: N802 - health check for the platform
                if self.path.split("?", 1)[0] in ("/", "/healthz"):
                    self._send(BoltResponse(status=200, body="ok"))
                else:
                    self._send(BoltResponse(status=404, body="not found"))

            def do_POST(self) -> None:  # noqa: N802
                request_path, _, query = self.path.partition("?")
                if request_path != path:
                    return self._send(BoltResponse(status=404, body="not found"))
                raw_length = (self.headers.get("Content-Length") or "0").strip()
                if not raw_length.isdigit():
                    self.close_connection = True
                    return self._send(BoltResponse(status=400, body="bad Content-Length"))
                length = int(raw_length)
                if length > MAX_BODY_BYTES:
                    self.close_connection = True
                    return self._send(BoltResponse(status=413, body="too large"))
                try:
                    body = self.rfile.read(length).decode("utf-8") if length else ""
                except UnicodeDecodeError:
                    return self._send(BoltResponse(status=400, body="body is not UTF-8"))
                headers = {k.lower(): [v] for k, v in self.headers.items()}
                try:
                    request = BoltRequest(body=body, query=query, headers=headers)
                    response = app.dispatch(request)
                except Exception:  # noqa: BLE001 - a malformed payload is the sender's error
                    log.warning("rejected a malformed Slack request", exc_info=True)
                    response = BoltResponse(status=400, body="malformed request")
                self._send(response)

            def _send(self, response: BoltResponse) -> None:
                body = response.body.encode("utf-8") if isinstance(response.body, str) else (
                    response.body or b""
                )
                self.send_response(response.status)
                for name, values in response.headers.items():
                    if name.lower() == "content-length":
                        continue
                    for value in values:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")  # see _Server: no idle connections
                self.end_headers()
                # Counted as answered once the answer is ready; writing it is one send away.
                self.server.request_answered(self.request)  # type: ignore[attr-defined]
                self.wfile.write(body)

        return Handler

    def start(self) -> BotHTTPServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="sop-bot-http", daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.stop_handlers()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> BotHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
