"""HTTP mode: Slack posts slash commands, events and interactivity to `/slack/events`.

A small threaded stdlib server hands each request to Bolt, which verifies the request signature
(X-Slack-Signature / X-Slack-Request-Timestamp, 5-minute window) and answers 401 otherwise.
Unlike Bolt's single-threaded development server it serves requests concurrently, can bind
port 0 (tests) and stops cleanly. It tells `AcksFirst` which requests it is answering, so
background work steps aside until they are answered.
"""

from __future__ import annotations

import logging
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from slack_bolt import App, BoltRequest, BoltResponse

from bot.runtime import AcksFirst

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000
CONNECTION_TIMEOUT_SECONDS = 10


class _Server(ThreadingHTTPServer):
    """Requests are answered by a fixed set of threads started up front.

    A thread per connection means the accepting thread waits in `Thread.start()` until the new
    thread has run, which under load (every thread wanting the interpreter lock) puts a delay
    on every accept. Pre-started handlers take accepted connections from a queue instead.
    They are few on purpose: each one needs the interpreter lock to answer, and with 64 of
    them answering 50 requests at once, each waited behind the others for the lock (ack p99
    50-75 ms in the load benchmark; 16 threads: 20-40 ms). Connections wait in the queue.
    """

    # The default backlog of 5 resets connections when Slack sends a burst (50 commands at
    # once in the load benchmark); a reset command is a lost request.
    request_queue_size = 256
    handler_threads = 16
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
        """A request on `connection` waits for its answer (AcksFirst counts it)."""
        if self.acks_first is not None and not self._answering.get(connection):
            self._answering[connection] = True
            self.acks_first.request_started()

    def request_answered(self, connection: object) -> None:
        """Its answer is written. A keep-alive connection waiting for its next request is not
        counted, or an idle connection would hold background work back for seconds."""
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
            # Seconds a connection may stay silent (mid-request, or idle between keep-alive
            # requests) before its handler thread gives up on it and serves the next one.
            timeout = CONNECTION_TIMEOUT_SECONDS

            def parse_request(self) -> bool:
                # The next request on a keep-alive connection: counted again until answered.
                self.server.request_arrived(self.request)  # type: ignore[attr-defined]
                return super().parse_request()

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
