"""A stateful fake of the Slack Web API on 127.0.0.1, for end-to-end tests through slack_sdk.

It answers like Slack (HTTP 200 with `{"ok": true, ...}`, or `{"ok": false, "error": ...}`;
HTTP 429 with Retry-After for `ratelimited`), keeps channels, threads, reactions, ephemeral
messages, App Home views and files, records every call, and checks each call against Slack's
published contract (`slack_contract.py`). Faults are injected per method with `inject()`.

Besides the Web API it serves the external-upload URL used by `files_upload_v2`, `url_private`
downloads (bot token required, like Slack) and `response_url` endpoints for slash commands.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes import slack_contract

BOT_TOKEN = "xoxb-test-token"
BOT_USER_ID = "UBOT00001"
BOT_ID = "BBOT00001"
TEAM_ID = "T00000001"
MAX_TEXT_CHARS = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000


class _LoopbackServer(ThreadingHTTPServer):
    # Real Slack and OpenAI never drop a connection because a burst arrived at once; the
    # stdlib default backlog of 5 would (a dropped SYN costs the client a 1 s retransmit).
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up early
            super().handle_error(request, client_address)


@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    params: dict[str, Any]
    token: str | None
    http_method: str


@dataclass
class Fault:
    method: str
    error: str
    times: int
    status: int = 200
    retry_after: float | None = None
    match: dict[str, Any] = field(default_factory=dict)
    when: Any = None  # optional predicate on the call's params


class SlackError(Exception):
    def __init__(self, error: str, status: int = 200, headers: dict | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = headers or {}


def _section_texts(blocks: list[dict]) -> list[str]:
    texts: list[str] = []
    for block in blocks:
        text = block.get("text")
        if isinstance(text, dict):
            texts.append(text.get("text", ""))
        for item in block.get("fields", []) or []:
            texts.append(item.get("text", ""))
    return texts


def _check_blocks(blocks: object, limit: int = MAX_BLOCKS) -> list[dict]:
    """Slack rejects more than 50 blocks (100 in a view) or section texts over 3,000 chars."""
    if blocks in (None, ""):
        return []
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except ValueError:
            raise SlackError("invalid_blocks_format") from None
    if not isinstance(blocks, list):
        raise SlackError("invalid_blocks_format")
    if len(blocks) > limit:
        raise SlackError("invalid_blocks")
    for block in blocks:
        if not isinstance(block, dict) or "type" not in block:
            raise SlackError("invalid_blocks")
        if block["type"] == "header" and len(block.get("text", {}).get("text", "")) > 150:
            raise SlackError("invalid_blocks")
    if any(len(text) > MAX_SECTION_TEXT for text in _section_texts(blocks)):
        raise SlackError("invalid_blocks")
    return blocks


class FakeSlack:
    """The fake server. Use as a context manager; `base_url` is what WebClient needs."""

    def __init__(self, *, bot_token: str = BOT_TOKEN, lifetime_seconds: float = 600) -> None:
        self.bot_token = bot_token
        self.bot_user_id = BOT_USER_ID
        self.calls: list[Call] = []
        self.violations: list[slack_contract.Violation] = []
        self.messages: dict[str, list[dict]] = {}
        self.ephemerals: list[dict] = []
        self.views: dict[str, dict] = {}
        self.responses: list[dict] = []
        self.files: dict[str, dict] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.users: dict[str, dict] = {}
        self.not_member: set[str] = set()
        self.faults: list[Fault] = []
        self.downloads: list[tuple[str, str | None]] = []
        # Streaming messages (chat.startStream & co.): set to an error code (as a workspace
        # without AI streaming answers) to refuse them; the bot must fall back to chat.update.
        self.refuse_streaming: str | None = None
        # Called with (method, params) before a call is handled, outside the fake's lock,
        # so a test can hold calls (e.g. on a Barrier) to observe concurrency.
        self.before_call: Any = None
        self._lock = threading.RLock()
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._lifetime = lifetime_seconds
        self._server: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # --- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> FakeSlack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                return

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self, "POST")

        self._server = _LoopbackServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        # A forgotten fake must not outlive the test run.
        self._timer = threading.Timer(self._lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def root_url(self) -> str:
        assert self._server is not None, "FakeSlack is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/api/"

    def response_url(self, name: str = "cmd") -> str:
        return f"{self.root_url}/response/{name}"

    # --- test helpers ---------------------------------------------------------------
    def next_ts(self) -> str:
        n = next(self._ts)
        return f"{1763000000 + n}.{n:06d}"

    def inject(
        self, method: str, error: str, *, times: int = 1, status: int | None = None,
        retry_after: float | None = None, when: Any = None, **match: Any,
    ) -> None:
        """Make the next `times` calls of `method` fail with `error`; only calls whose params
        equal `match` (and satisfy the `when(params)` predicate, if given) count."""
        if status is None:
            status = 429 if error == "ratelimited" else 200
        if error == "ratelimited" and retry_after is None:
            retry_after = 0
        with self._lock:
            self.faults.append(Fault(method, error, times, status, retry_after, match, when))

    def add_usergroup(self, group_id: str, users: list[str]) -> None:
        self.usergroups[group_id] = list(users)

    def add_user(self, user_id: str, name: str) -> None:
        self.users[user_id] = {"id": user_id, "name": name, "real_name": name,
                               "profile": {"real_name": name, "display_name": name}}

    def add_file(
        self, name: str, content: bytes, *, user: str = "UHUMAN1", title: str | None = None,
    ) -> dict:
        """A file as if a person uploaded it; attach it with `user_posts(files=[...])`."""
        with self._lock:
            file_id = f"F{next(self._file_ids):08d}"
            self.files[file_id] = self._file_object(file_id, name, title or name, user, content)
            return self.files[file_id]["public"]

    def user_posts(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None,
        files: list[dict] | None = None,
    ) -> str:
        """A person posts a message (optionally in a thread, optionally with files); its ts."""
        message: dict[str, Any] = {"type": "message", "user": user, "text": text}
        if files:
            message["files"] = files
        return self._store_message(channel, message, thread_ts)

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def message(self, channel: str, ts: str) -> dict | None:
        with self._lock:
            return next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)

    def thread(self, channel: str, thread_ts: str) -> list[dict]:
        """The root message and its replies, oldest first."""
        with self._lock:
            return [m for m in self.messages.get(channel, [])
                    if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts]

    def replies(self, channel: str, thread_ts: str) -> list[dict]:
        return [m for m in self.thread(channel, thread_ts) if m["ts"] != thread_ts]

    def top_level(self, channel: str) -> list[dict]:
        with self._lock:
            return [m for m in self.messages.get(channel, [])
                    if m.get("thread_ts") in (None, m["ts"])]

    def ephemerals_for(self, user: str) -> list[dict]:
        with self._lock:
            return [e for e in self.ephemerals if e["user"] == user]

    def assert_contract_ok(self) -> None:
        with self._lock:
            problems = [str(v) for v in self.violations]
        assert not problems, "Slack contract violations:\n" + "\n".join(problems)

    # --- HTTP plumbing --------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, verb: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        auth = handler.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else None
        path = parts.path
        if path.startswith("/upload/"):
            return self._send(handler, 200, self._upload(path.rsplit("/", 1)[-1], body),
                              content_type="text/plain")
        if path.startswith("/files-pri/"):
            return self._download(handler, path, token)
        if path.startswith("/response/"):
            with self._lock:
                self.responses.append({"name": path.rsplit("/", 1)[-1], **json.loads(body)})
            return self._send(handler, 200, "ok", content_type="text/plain")
        if not path.startswith("/api/"):
            return self._send(handler, 404, {"ok": False, "error": "unknown_method"})
        method = path[len("/api/"):]
        params = self._params(parts.query, body, handler.headers.get("Content-Type") or "")
        token = token or params.get("token")
        with self._lock:
            self.calls.append(Call(method, params, token, verb))
            self.violations.extend(
                slack_contract.check_call(method, params, has_token=token is not None)
            )
        if self.before_call is not None:
            self.before_call(method, params)
        try:
            app_token_call = method == "apps.connections.open"
            if app_token_call and not (token or "").startswith("xapp-"):
                raise SlackError("invalid_auth" if token else "not_authed")
            if token != self.bot_token and not app_token_call:
                raise SlackError("invalid_auth" if token else "not_authed")
            self._maybe_fault(method, params)
            result = self._dispatch(method, params)
            self._send(handler, 200, {"ok": True, **result})
        except SlackError as exc:
            self._send(handler, exc.status, {"ok": False, "error": exc.error}, exc.headers)

    @staticmethod
    def _params(query: str, body: bytes, content_type: str) -> dict[str, Any]:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        if not body:
            return params
        if "application/json" in content_type:
            params.update(json.loads(body))
        elif "multipart/form-data" in content_type:
            raise SlackError("invalid_form_data")
        else:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return params

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, payload: object,
        headers: dict | None = None, content_type: str = "application/json",
    ) -> None:
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        )
        handler.send_response(status)
        handler.send_header("Content-Type", f"{content_type}; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, str(value))
        handler.end_headers()
        handler.wfile.write(data)

    def _maybe_fault(self, method: str, params: dict) -> None:
        with self._lock:
            for fault in self.faults:
                if fault.method != method or fault.times <= 0:
                    continue
                if any(str(params.get(k)) != str(v) for k, v in fault.match.items()):
                    continue
                if fault.when is not None and not fault.when(params):
                    continue
                fault.times -= 1
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(int(fault.retry_after))
                raise SlackError(fault.error, fault.status, headers)

    # --- Web API methods ------------------------------------------------------------
    def _dispatch(self, method: str, params: dict) -> dict:
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            raise SlackError("unknown_method")
        with self._lock:
            return handler(params)

    socket_mode_url: str | None = None  # set by a test that runs a fake Socket Mode server

    def _m_apps_connections_open(self, params: dict) -> dict:
        if not self.socket_mode_url:
            raise SlackError("socket_mode_not_enabled")
        return {"url": self.socket_mode_url}

    def _m_auth_test(self, params: dict) -> dict:
        return {"url": "https://fake.slack.com/", "team": "Fake Plant", "user": "sop-bot",
                "team_id": TEAM_ID, "user_id": self.bot_user_id, "bot_id": BOT_ID}

    def _channel(self, params: dict, key: str = "channel") -> str:
        channel = params.get(key)
        if not channel or not re.match(r"^[CGD][A-Z0-9]+$", str(channel)):
            raise SlackError("channel_not_found")
        return str(channel)

    def _require_member(self, channel: str) -> None:
        if channel in self.not_member:
            raise SlackError("not_in_channel")

    @staticmethod
    def _text_and_blocks(params: dict) -> tuple[str, list[dict]]:
        text = params.get("text") or ""
        blocks = _check_blocks(params.get("blocks"))
        if not text and not blocks and not params.get("attachments"):
            raise SlackError("no_text")
        if len(text) > MAX_TEXT_CHARS:
            raise SlackError("msg_too_long")
        return text, blocks

    def _store_message(self, channel: str, message: dict, thread_ts: str | None) -> str:
        with self._lock:
            ts = self.next_ts()
            message = {**message, "ts": ts}
            if thread_ts:
                root = self.message(channel, thread_ts)
                if root is None:
                    raise SlackError("thread_not_found")
                root_ts = root.get("thread_ts") or root["ts"]
                message["thread_ts"] = root_ts
                root = self.message(channel, root_ts)
                root["thread_ts"] = root_ts
                root["reply_count"] = root.get("reply_count", 0) + 1
            self.messages.setdefault(channel, []).append(message)
            return ts

    def _m_chat_postMessage(self, params: dict) -> dict:
        channel = self._channel(params)
        self._require_member(channel)
        text, blocks = self._text_and_blocks(params)
        message = {"type": "message", "user": self.bot_user_id, "bot_id": BOT_ID, "text": text}
        if blocks:
            message["blocks"] = blocks
        ts = self._store_message(channel, message, params.get("thread_ts"))
        return {"channel": channel, "ts": ts, "message": self.message(channel, ts)}

    def _m_chat_update(self, params: dict) -> dict:
        channel = self._channel(params)
        message = self.message(channel, str(params.get("ts")))
        if message is None:
            raise SlackError("message_not_found")
        if message.get("user") != self.bot_user_id:
            raise SlackError("cant_update_message")
        text, blocks = self._text_and_blocks(params)
        message["text"] = text
        message["edited"] = {"user": self.bot_user_id, "ts": self.next_ts()}
        if blocks or "blocks" in params:
            message["blocks"] = blocks
        return {"channel": channel, "ts": message["ts"], "text": text, "message": message}

    # --- streaming messages (docs.slack.dev: chat.startStream / appendStream / stopStream) ---
    def _stream_text(self, params: dict) -> str:
        if self.refuse_streaming:
            raise SlackError(self.refuse_streaming)
        text = params.get("markdown_text") or ""
        for chunk in params.get("chunks") or []:
            if not isinstance(chunk, dict) or chunk.get("type") != "markdown_text":
                raise SlackError("invalid_chunks")
            text += chunk.get("text") or ""
        if len(text) > slack_contract.STREAM_TEXT_LIMIT:
            raise SlackError("msg_too_long")
        return text

    def _m_chat_startStream(self, params: dict) -> dict:  # noqa: N802
        channel = self._channel(params)
        self._require_member(channel)
        text = self._stream_text(params)
        if not channel.startswith("D") and not (
                params.get("recipient_user_id") and params.get("recipient_team_id")):
            raise SlackError("invalid_arguments")  # required when streaming to channels
        message = {"type": "message", "user": self.bot_user_id, "bot_id": BOT_ID,
                   "text": text, "streaming": True, "appends": [text] if text else []}
        ts = self._store_message(channel, message, params.get("thread_ts"))
        return {"channel": channel, "ts": ts}

    def _streamed(self, params: dict) -> dict:
        message = self.message(self._channel(params), str(params.get("ts")))
        if message is None:
            raise SlackError("message_not_found")
        if not message.get("streaming"):
            raise SlackError("message_not_in_streaming_state")
        return message

    def _m_chat_appendStream(self, params: dict) -> dict:  # noqa: N802
        text = self._stream_text(params)
        message = self._streamed(params)
        if not text:
            raise SlackError("no_text")
        message["text"] += text
        message["appends"].append(text)
        return {"channel": params["channel"], "ts": message["ts"]}

    def _m_chat_stopStream(self, params: dict) -> dict:  # noqa: N802
        text = self._stream_text(params)
        message = self._streamed(params)
        message["text"] += text
        if text:
            message["appends"].append(text)
        if params.get("blocks"):
            message["blocks"] = _check_blocks(params["blocks"])
        message["streaming"] = False
        return {"channel": params["channel"], "ts": message["ts"], "message": message}

    def _m_chat_postEphemeral(self, params: dict) -> dict:
        channel = self._channel(params)
        self._require_member(channel)
        if not params.get("user"):
            raise SlackError("user_not_found")
        text, blocks = self._text_and_blocks(params)
        ts = self.next_ts()
        self.ephemerals.append({"channel": channel, "user": params["user"], "text": text,
                                "blocks": blocks, "thread_ts": params.get("thread_ts"),
                                "ts": ts})
        return {"message_ts": ts}

    def _window(self, messages: list[dict], params: dict) -> list[dict]:
        inclusive = str(params.get("inclusive", "0")).lower() in ("1", "true")
        latest = params.get("latest")
        oldest = params.get("oldest")

        def keep(m: dict) -> bool:
            ts = float(m["ts"])
            if latest is not None:
                if ts > float(latest) or (ts == float(latest) and not inclusive):
                    return False
            if oldest is not None:
                if ts < float(oldest) or (ts == float(oldest) and not inclusive):
                    return False
            return True

        return [m for m in messages if keep(m)]

    def _m_conversations_history(self, params: dict) -> dict:
        channel = self._channel(params)
        self._require_member(channel)
        messages = list(reversed(self._window(self.top_level(channel), params)))
        limit = int(params.get("limit") or 100)
        return {"messages": messages[:limit], "has_more": len(messages) > limit}

    def _m_conversations_replies(self, params: dict) -> dict:
        channel = self._channel(params)
        self._require_member(channel)
        target = self.message(channel, str(params.get("ts")))
        if target is None:
            raise SlackError("thread_not_found")
        root_ts = target.get("thread_ts") or target["ts"]
        thread = self.thread(channel, root_ts)
        root, rest = thread[0], self._window(thread[1:], params)
        limit = int(params.get("limit") or 1000)
        return {"messages": ([root] + rest)[:limit], "has_more": len(rest) + 1 > limit}

    def _m_reactions_add(self, params: dict) -> dict:
        channel = self._channel(params)
        self._require_member(channel)
        message = self.message(channel, str(params.get("timestamp")))
        if message is None:
            raise SlackError("message_not_found")
        name = str(params.get("name", "")).strip(":")
        reactions = message.setdefault("reactions", [])
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None:
            entry = {"name": name, "users": [], "count": 0}
            reactions.append(entry)
        if self.bot_user_id in entry["users"]:
            raise SlackError("already_reacted")
        entry["users"].append(self.bot_user_id)
        entry["count"] += 1
        return {}

    def _m_reactions_remove(self, params: dict) -> dict:
        channel = self._channel(params)
        message = self.message(channel, str(params.get("timestamp")))
        if message is None:
            raise SlackError("message_not_found")
        name = str(params.get("name", "")).strip(":")
        entry = next((r for r in message.get("reactions", []) if r["name"] == name), None)
        if entry is None or self.bot_user_id not in entry["users"]:
            raise SlackError("no_reaction")
        entry["users"].remove(self.bot_user_id)
        entry["count"] -= 1
        message["reactions"] = [r for r in message["reactions"] if r["count"] > 0]
        return {}

    def _m_views_publish(self, params: dict) -> dict:
        user = params.get("user_id")
        view = params.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not user:
            raise SlackError("invalid_arguments")
        if not isinstance(view, dict) or view.get("type") != "home":
            raise SlackError("invalid_arguments")
        view["blocks"] = _check_blocks(view.get("blocks"), limit=100)
        self.views[str(user)] = view
        return {"view": {"id": f"V{len(self.views):08d}", **view}}

    def _m_usergroups_users_list(self, params: dict) -> dict:
        group = params.get("usergroup")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _m_users_info(self, params: dict) -> dict:
        user = self.users.get(str(params.get("user")))
        if user is None:
            raise SlackError("user_not_found")
        return {"user": user}

    # --- files ------------------------------------------------------------------------
    def _file_object(
        self, file_id: str, name: str, title: str, user: str, content: bytes | None,
    ) -> dict:
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else "binary"
        mimetypes = {"txt": "text/plain", "md": "text/markdown", "png": "image/png",
                     "docx": "application/vnd.openxmlformats-officedocument"
                             ".wordprocessingml.document"}
        public = {
            "id": file_id, "name": name, "title": title, "user": user, "filetype": ext,
            "mimetype": mimetypes.get(ext, "application/octet-stream"),
            "size": len(content or b""),
            "url_private": f"{self.root_url}/files-pri/{TEAM_ID}-{file_id}/{name}",
            "url_private_download":
                f"{self.root_url}/files-pri/{TEAM_ID}-{file_id}/download/{name}",
            "permalink": f"{self.root_url}/files/{user}/{file_id}/{name}",
        }
        return {"public": public, "content": content, "complete": content is not None}

    def _upload(self, file_id: str, body: bytes) -> str:
        with self._lock:
            entry = self.files.get(file_id)
            if entry is None:
                return "unknown file"
            entry["content"] = body
            entry["public"]["size"] = len(body)
        return f"OK - {len(body)}"

    def _download(self, handler: BaseHTTPRequestHandler, path: str, token: str | None) -> None:
        with self._lock:
            self.downloads.append((path, token))
            match = re.match(rf"^/files-pri/{TEAM_ID}-(F\w+)/", path)
            entry = self.files.get(match.group(1)) if match else None
        if token != self.bot_token:
            # Slack answers unauthenticated downloads with its sign-in page, not the file.
            return self._send(handler, 200, "<html>Sign in to Slack</html>",
                              content_type="text/html")
        if entry is None or entry["content"] is None:
            return self._send(handler, 404, "not found", content_type="text/plain")
        return self._send(handler, 200, entry["content"],
                          content_type=entry["public"]["mimetype"])

    def _m_files_getUploadURLExternal(self, params: dict) -> dict:  # noqa: N802
        if not params.get("filename") or not str(params.get("length", "")).isdigit():
            raise SlackError("invalid_arguments")
        file_id = f"F{next(self._file_ids):08d}"
        self.files[file_id] = self._file_object(
            file_id, str(params["filename"]), str(params["filename"]), self.bot_user_id, None
        )
        return {"upload_url": f"{self.root_url}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, params: dict) -> dict:  # noqa: N802
        items = params.get("files")
        items = json.loads(items) if isinstance(items, str) else items
        if not items:
            raise SlackError("invalid_arguments")
        done = []
        for item in items:
            entry = self.files.get(item.get("id"))
            if entry is None or entry["content"] is None:
                raise SlackError("file_not_found")
            if item.get("title"):
                entry["public"]["title"] = item["title"]
            entry["complete"] = True
            done.append(entry["public"])
        channel = params.get("channel_id")
        if channel:
            channel = self._channel(params, "channel_id")
            self._require_member(channel)
            message = {"type": "message", "user": self.bot_user_id, "bot_id": BOT_ID,
                       "text": params.get("initial_comment") or "", "files": done,
                       "upload": True}
            self._store_message(channel, message, params.get("thread_ts"))
        return {"files": [{"id": f["id"], "title": f["title"]} for f in done]}

    def _m_files_info(self, params: dict) -> dict:
        entry = self.files.get(str(params.get("file")))
        if entry is None or not entry["complete"]:
            raise SlackError("file_not_found")
        return {"file": entry["public"], "content": ""}

    def uploaded_file(self, file_id: str) -> tuple[dict, bytes]:
        """A file's public object and its bytes (for asserting on what the bot uploaded)."""
        with self._lock:
            entry = self.files[file_id]
            return entry["public"], entry["content"]


# --- driving the bot as Slack would -------------------------------------------------------------

SIGNING_SECRET = "test-signing-secret"


@dataclass
class HttpResult:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class SlackTestClient:
    """Sends correctly signed slash commands, events and interactions to the bot over HTTP,
    the way Slack does (v0 HMAC-SHA256 over "v0:<timestamp>:<body>")."""

    def __init__(self, bot_url: str, signing_secret: str = SIGNING_SECRET, *,
                 response_url: str | None = None, team_id: str = TEAM_ID,
                 clock: Any = None) -> None:
        import time

        self.bot_url = bot_url
        self.signing_secret = signing_secret
        self.response_url = response_url or "http://127.0.0.1:9/response"
        self.team_id = team_id
        self.clock = clock or time.time
        self._ids = itertools.count(1)

    def sign(self, body: str, timestamp: int, secret: str | None = None) -> str:
        import hashlib
        import hmac

        base = f"v0:{timestamp}:{body}".encode()
        key = (secret or self.signing_secret).encode()
        return "v0=" + hmac.new(key, base, hashlib.sha256).hexdigest()

    def headers_for(self, body: str, content_type: str, *, signed: bool = True,
                    timestamp: int | None = None, secret: str | None = None,
                    headers: dict[str, str] | None = None) -> dict[str, str]:
        """The headers Slack would send with `body` (signed unless `signed` is False)."""
        ts = int(self.clock()) if timestamp is None else timestamp
        all_headers = {"Content-Type": content_type, **(headers or {})}
        if signed:
            all_headers["X-Slack-Request-Timestamp"] = str(ts)
            all_headers["X-Slack-Signature"] = self.sign(body, ts, secret)
        return all_headers

    def post(self, body: str, content_type: str, *, signed: bool = True,
             timestamp: int | None = None, secret: str | None = None,
             headers: dict[str, str] | None = None) -> HttpResult:
        import urllib.error
        import urllib.request

        all_headers = self.headers_for(body, content_type, signed=signed, timestamp=timestamp,
                                       secret=secret, headers=headers)
        request = urllib.request.Request(self.bot_url, data=body.encode(), method="POST",
                                         headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return HttpResult(response.status, response.read().decode())
        except urllib.error.HTTPError as exc:
            return HttpResult(exc.code, exc.read().decode())

    def command(self, command: str, text: str = "", *, user: str = "UREQ00001",
                channel: str = "CSOP00001", **kwargs: Any) -> HttpResult:
        from urllib.parse import urlencode

        n = next(self._ids)
        form = {
            "token": "legacy-verification-token", "team_id": self.team_id,
            "channel_id": channel, "channel_name": "quality", "user_id": user,
            "user_name": user.lower(), "command": command, "text": text,
            "api_app_id": "A00000001", "response_url": f"{self.response_url}{n}",
            # unique like Slack's: a bot restarted in a test gets a new client, not old ids
            "trigger_id": kwargs.pop("trigger_id", None) or f"{n}.{uuid.uuid4().hex}",
        }
        return self.post(urlencode(form), "application/x-www-form-urlencoded", **kwargs)

    def event(self, event: dict, *, event_id: str | None = None, retry_num: int | None = None,
              **kwargs: Any) -> HttpResult:
        import time

        envelope = {
            "token": "legacy-verification-token", "team_id": self.team_id,
            "api_app_id": "A00000001", "type": "event_callback", "event": event,
            "event_id": event_id or f"Ev{next(self._ids):08d}", "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team_id, "user_id": BOT_USER_ID,
                                "is_bot": True}],
        }
        headers = kwargs.pop("headers", {}) or {}
        if retry_num is not None:
            headers.update({"X-Slack-Retry-Num": str(retry_num),
                            "X-Slack-Retry-Reason": "http_timeout"})
        return self.post(json.dumps(envelope), "application/json", headers=headers, **kwargs)

    def reaction(self, kind: str, *, user: str, channel: str, ts: str,
                 reaction: str = "white_check_mark", item_user: str | None = None,
                 **kwargs: Any) -> HttpResult:
        event = {"type": kind, "user": user, "reaction": reaction,
                 "item": {"type": "message", "channel": channel, "ts": ts},
                 "item_user": item_user or "UHUMAN1", "event_ts": f"{self.clock():.6f}"}
        return self.event(event, **kwargs)

    def action(self, action_id: str, value: str, *, user: str, channel: str,
               message_ts: str, thread_ts: str | None = None, **kwargs: Any) -> HttpResult:
        from urllib.parse import urlencode

        n = next(self._ids)
        message = {"type": "message", "ts": message_ts, "user": BOT_USER_ID}
        if thread_ts:
            message["thread_ts"] = thread_ts
        payload = {
            "type": "block_actions", "team": {"id": self.team_id},
            "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": "A00000001", "token": "legacy-verification-token",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                          "is_ephemeral": False, "thread_ts": thread_ts},
            "trigger_id": f"trigger.{n}", "channel": {"id": channel, "name": "quality"},
            "message": message, "response_url": f"{self.response_url}{n}",
            "actions": [{"action_id": action_id, "block_id": f"b{n}", "value": value,
                         "type": "button", "action_ts": f"{self.clock():.6f}.{n}",
                         "text": {"type": "plain_text", "text": action_id}}],
        }
        return self.post(urlencode({"payload": json.dumps(payload)}),
                         "application/x-www-form-urlencoded", **kwargs)


def user_reacts(fake: FakeSlack, channel: str, ts: str, user: str,
                name: str = "white_check_mark") -> None:
    """Record a person's reaction on a message (what Slack stores before sending the event)."""
    with fake._lock:
        message = fake.message(channel, ts)
        assert message is not None, f"no message {ts} in {channel}"
        reactions = message.setdefault("reactions", [])
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None:
            entry = {"name": name, "users": [], "count": 0}
            reactions.append(entry)
        if user not in entry["users"]:
            entry["users"].append(user)
            entry["count"] += 1


def user_unreacts(fake: FakeSlack, channel: str, ts: str, user: str,
                  name: str = "white_check_mark") -> None:
    with fake._lock:
        message = fake.message(channel, ts) or {}
        for entry in message.get("reactions", []):
            if entry["name"] == name and user in entry["users"]:
                entry["users"].remove(user)
                entry["count"] -= 1
        message["reactions"] = [r for r in message.get("reactions", []) if r["count"] > 0]


# --- the bot under test ---------------------------------------------------------------------


class ManualClock:
    """A monotonic clock tests move by hand (streaming update throttle, group cache)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class BotHarness:
    """The bot running in HTTP mode on 127.0.0.1 against a FakeSlack."""

    app: Any
    ctx: Any
    server: Any
    slack: SlackTestClient
    sleeps: list[float]

    def wait(self, timeout: float = 20.0) -> None:
        """Block until every acknowledged request has finished its background work."""
        assert self.ctx.wait_idle(timeout), "the bot did not finish its work in time"


def settings_overrides(fake: FakeSlack, **extra: Any) -> dict[str, Any]:
    """What a test's Settings need to talk to the fake (pass into make_settings)."""
    values: dict[str, Any] = {
        "slack_api_url": fake.base_url, "slack_bot_token": fake.bot_token,
        "slack_signing_secret": SIGNING_SECRET,
    }
    values.update(extra)
    return values


class running_bot:  # noqa: N801 - used like a function: `with running_bot(...) as bot:`
    """Build the real app with the real WebClient pointed at the fake, serve it over HTTP."""

    def __init__(self, services: Any, fake: FakeSlack, *, monotonic: Any = None) -> None:
        self.services = services
        self.fake = fake
        self.monotonic = monotonic

    def __enter__(self) -> BotHarness:
        import time

        from bot.app import build_app, build_context, make_client
        from bot.serve import Server, SlackAndProbes

        sleeps: list[float] = []
        client = make_client(self.services, sleep=sleeps.append)
        ctx = build_context(self.services, client=client,
                            monotonic=self.monotonic or time.monotonic)
        app = build_app(self.services, context=ctx)
        server = Server(SlackAndProbes(app, ready=lambda: None)).start()
        slack = SlackTestClient(server.url, response_url=self.fake.response_url("r"))
        self.harness = BotHarness(app, ctx, server, slack, sleeps)
        return self.harness

    def __exit__(self, *exc: object) -> None:
        self.harness.server.stop()
        self.harness.ctx.wait_idle(20)
        for pool in self.harness.ctx.pools:
            pool.shutdown(wait=True, cancel_futures=True)


class BotFactory:
    """Starts bots against one FakeSlack (and FakeOpenAI) with per-test settings; several
    bots on one database behave like several instances of the service."""

    def __init__(self, database_url: str, data_dir: Any, fake_openai: Any, fake: FakeSlack,
                 notifier: Any) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.fake_openai = fake_openai
        self.fake = fake
        self.notifier = notifier
        self._running: list[tuple[running_bot, Any]] = []

    def settings(self, **overrides: Any) -> Any:
        from tests.conftest import make_settings

        return make_settings(self.database_url, self.data_dir,
                             openai_base_url=self.fake_openai.base_url,
                             **settings_overrides(self.fake, **overrides))

    def start(self, clock: ManualClock | None = None, **overrides: Any) -> BotHarness:
        from sop_pipeline.services import build_services

        services = build_services(self.settings(**overrides), notifier=self.notifier)
        runner = running_bot(services, self.fake, monotonic=clock or ManualClock())
        harness = runner.__enter__()
        self._running.append((runner, services))
        return harness

    def close(self) -> None:
        for runner, services in self._running:
            runner.__exit__(None, None, None)
            services.engine.dispose()
