"""HTTP mode: Slack posts slash commands, events and interactivity to `/slack/events`.

A small threaded stdlib server hands each request to Bolt, which verifies the request signature
(X-Slack-Signature / X-Slack-Request-Timestamp, 5-minute window) and answers 401 otherwise.
Unlike Bolt's single-threaded development server it serves requests concurrently, can bind
port 0 (tests) and stops cleanly.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from slack_bolt import App, BoltRequest, BoltResponse

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when Slack sends a burst (50 commands at
    # once in the load benchmark); a reset command is a lost request.
    request_queue_size = 256


class BotHTTPServer:
    """Serve a Bolt app over HTTP; `start()` runs in a background thread, `serve_forever()`
    in the caller's."""

    def __init__(
        self, app: App, *, host: str = "127.0.0.1", port: int = 0, path: str = EVENTS_PATH,
    ) -> None:
        self.app = app
        self.path = path
        self._server = _Server((host, port), self._handler_class())
        self._server.daemon_threads = True
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
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> BotHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
