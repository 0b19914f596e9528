"""What the OpenAI fake records and answers with: the models it knows, recorded requests,
scheduled faults, error bodies, responses and the route table."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.contract import (
    MultipartPart,
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
#: Embedding models POST /embeddings accepts (vectors: see `fake_embedding`).
EMBEDDING_MODELS: tuple[str, ...] = ("text-embedding-3-small", "text-embedding-3-large")
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
    every: float = 0.05  # stall: seconds between keep-alives
    client_gone: threading.Event = field(default_factory=threading.Event)  # stall: peer left

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
        {"retry-after-ms": "5"},  # keeps the openai client's own retry wait tiny in tests
    ),
    "overloaded": (
        503,
        openai_error(
            "The engine is currently overloaded, please try again later.", type="server_error"
        ),
        {"retry-after-ms": "5"},
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
    # OpenAI's answer on job creation once an organisation is closed to self-serve
    # fine-tuning (May 2026 wind-down: a permission-denied 403; the exact wording is not
    # documented, so SOP Bot keys on the 403 from POST /fine_tuning/jobs, not on the text).
    "fine_tuning_not_allowed": (
        403,
        openai_error(
            "Your organization does not have access to fine-tuning. Self-serve fine-tuning "
            "is no longer available to this organization.",
            code="permission_denied",
        ),
        {},
    ),
}
_STATUS_PRESET = {
    429: "rate_limit",
    500: "server_error",
    503: "overloaded",
    401: "invalid_api_key",
    404: "model_not_found",
    400: "bad_request",
}
_BEHAVIOURS = ("timeout", "disconnect", "stream_error", "stall", "stall_empty")


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
        ("POST", r"/embeddings", "create_embeddings"),
    ]
]
