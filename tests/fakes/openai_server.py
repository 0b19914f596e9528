"""The OpenAI fake's core: state, start/stop, inspection, the clock, and the HTTP plumbing that
routes a request to an endpoint method (the endpoints live in the mixins next to this file)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.contract import (
    OpenAPIContract,
    nest_fields,
    parse_multipart,
)
from tests.fakes.openai_http import _Handler, _LoopbackServer
from tests.fakes.openai_records import (
    _BEHAVIOURS,
    _ROUTES,
    BASE_MODELS,
    DEFAULT_SPEC,
    FINE_TUNABLE_MODELS,
    Injection,
    RecordedRequest,
    _ApiError,
    _is_stream,
    _normalize_pattern,
    _Response,
    openai_error,
)
from tests.fakes.openai_text import (
    _rid,
)


class FakeOpenAIServer:
    """State and plumbing of `FakeOpenAI` (see `openai_fake`)."""

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
        self.chunk_delay = 0.0  # seconds the server waits before each streamed chunk (slow model)
        self.file_uploaded_retrieves = file_uploaded_retrieves
        self.api_keys = api_keys
        self.base_models = list(base_models)
        self.fine_tunable_models = list(fine_tunable_models)
        self.organization = organization
        self.organization_id = "org-" + re.sub(r"[^a-z0-9]", "", organization.lower())
        self.clock = int(time.time()) if clock is None else clock

        self.chat_responses: deque[str | Callable[[dict[str, Any]], str]] = deque()
        self.requests: list[RecordedRequest] = []
        #: word -> word the fake embeds it as, so tests can make two words "mean" the same
        self.embedding_synonyms: dict[str, str] = {}
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

    def start(self) -> Self:
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

    def __enter__(self) -> Self:
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

    # -- clock ----------------------------------------------------------------------------

    def advance_clock(self, seconds: int) -> int:
        with self._lock:
            self.clock += int(seconds)
            return self.clock

    def _now(self) -> int:
        return self.clock

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
        if inj is not None and inj.kind in ("disconnect", "stream_error", "stall", "stall_empty"):
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
