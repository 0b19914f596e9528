"""Serving: Bolt's own ASGI adapter on uvicorn, the health probes, and Socket Mode's client.

* HTTP mode: Slack posts to `/slack/events`; `/healthz` and `/readyz` answer on the same port.
* Socket Mode: Slack's events arrive over the WebSocket; the same server answers only the
  probes, on PROBE_PORT when it is set.

Why uvicorn: it reads every connection on one asyncio loop, so slow or idle clients cost a
coroutine each, not a worker (probed with 256 of them in issue 14; gunicorn's sync and gthread
workers fell to 4-16 without a buffering proxy in front). Malformed requests are refused by
its HTTP parser (h11); there is no HTTP code of our own. Bolt's `App` is synchronous, so its
`dispatch` (signature check and the listener's quick `ack` part) runs in a thread while the
loop keeps reading other connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.adapter.asgi import SlackRequestHandler
from slack_bolt.adapter.asgi.http_request import AsgiHttpRequest

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000  # Slack's payloads are far smaller; a bigger body is refused
Ready = Callable[[], str | None]  # None when ready, else the reason it is not


class ThreadedBoltHandler(SlackRequestHandler):
    """Bolt's ASGI adapter for a sync `App`: the body is read on the loop, `dispatch` runs in
    a worker thread (the stock adapter runs it on the loop, where one slow `ack` would hold up
    every other connection and the probes)."""

    async def dispatch(self, request: AsgiHttpRequest) -> BoltResponse:
        body = await _read_body(request)
        if body is None:
            return BoltResponse(status=413, body="The request body is too large.")
        try:  # Bolt parses the body as its content type says, before checking the signature
            bolt_request = BoltRequest(body=body.decode("utf-8"), query=request.query_string,
                                       headers=request.get_headers())
        except (ValueError, AttributeError, TypeError, KeyError):  # not JSON, form data,
            # UTF-8, or a JSON object: Bolt's parser fails on its first look at the fields
            return BoltResponse(status=400, body="The request body could not be read.")
        return await asyncio.to_thread(self.app.dispatch, bolt_request)


async def _read_body(request: AsgiHttpRequest) -> bytes | None:
    """The whole body, or None as soon as it passes MAX_BODY_BYTES (declared or sent)."""
    declared = dict(request.raw_headers).get(b"content-length", b"0")
    if int(declared or b"0") > MAX_BODY_BYTES:  # h11 has already refused a non-numeric one
        return None
    body = bytearray()
    while True:
        message = await request.receive()
        body.extend(message.get("body", b""))
        if len(body) > MAX_BODY_BYTES:
            return None
        if not message.get("more_body", False):
            return bytes(body)


class SlackAndProbes:
    """The ASGI app: `/healthz` (process alive), `/readyz` (database reachable and, in Socket
    Mode, connected), everything else to Bolt (or 404 when Slack talks over Socket Mode)."""

    def __init__(self, app: App | None, *, ready: Ready) -> None:
        self.slack = ThreadedBoltHandler(app, path=EVENTS_PATH) if app is not None else None
        self.ready = ready

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and path == "/healthz":
            await _plain(send, 200, "ok")
        elif scope["type"] == "http" and path == "/readyz":
            problem = await asyncio.to_thread(self.ready)
            await _plain(send, 200 if problem is None else 503, problem or "ready")
        elif self.slack is not None:
            await self.slack(scope, receive, send)
        else:
            await _plain(send, 404, "Not Found")


async def _plain(send: Callable, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})


def database_ready(engine: Any) -> str | None:
    """None when the database answers a trivial query, else a sentence for /readyz."""
    from sqlalchemy import text

    try:
        # DEFERRED: a probe must not queue for SQLite's write lock
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its reason
        return f"database unreachable: {type(exc).__name__}"
    return None


class Server:
    """uvicorn serving `asgi` from a thread, on a socket bound before it starts: the port is
    known at once (port 0 in tests) and early connections wait in the backlog, not refused."""

    def __init__(self, asgi: Any, *, host: str = "127.0.0.1", port: int = 0,
                 graceful_seconds: int = 10) -> None:
        import uvicorn

        self.host = host
        self.socket = socket.create_server((host, port), backlog=2048)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(asgi, http="h11", ws="none", lifespan="off", log_config=None,
                                access_log=False, timeout_graceful_shutdown=graceful_seconds)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}{EVENTS_PATH}"

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="sop-bot-http", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop accepting, let requests in flight be answered (uvicorn's graceful shutdown)."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.socket.close()


# --- Socket Mode --------------------------------------------------------------------------------

_STALE = re.compile(r"reason: (disconnected for \d+\+ seconds)")


class ReconnectLog(logging.Filter):
    """slack_sdk logs one reconnect in four to six INFO lines; keep one, with its reason."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.sessions = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("A new session has been established"):
            self.sessions += 1
            if self.sessions == 1:
                return False  # the first connection: "SOP Bot listening" says so
            record.msg = "Socket Mode reconnected (reason: %s)"
            record.args = (self.reason or "the connection was lost",)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            self.reason = None
            return True
        if "seems to be stale" in message:
            found = _STALE.search(message)
            self.reason = "no pong from Slack, " + (found.group(1) if found else "stale")
            return False
        if message.startswith("Received CLOSE event"):
            self.reason = "Slack closed the connection"
            return False
        if message.startswith("on_error invoked"):
            self.reason = message.split("error: ", 1)[-1].rstrip(")")
            return False
        return record.levelno >= logging.WARNING or record.levelno < logging.INFO


def socket_mode_handler(app: App, settings: Any) -> Any:
    """Bolt's Socket Mode handler with a short ping interval: slack_sdk replaces a connection
    that answered no ping for four intervals, so 2 s notices a silently cut one in about 10 s
    (the default of 10 s took about a minute)."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    sdk_log = logging.getLogger("bot.socket_mode")
    if not any(isinstance(f, ReconnectLog) for f in sdk_log.filters):
        sdk_log.addFilter(ReconnectLog())
    return SocketModeHandler(app, settings.secret("slack_app_token"), logger=sdk_log,
                             ping_interval=settings.socket_mode_ping_interval_seconds)
