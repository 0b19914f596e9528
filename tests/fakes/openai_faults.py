"""Fault injection for the OpenAI fake: scheduled errors, timeouts, disconnects, stalls."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.fakes.openai_records import (
    _BEHAVIOURS,
    _PRESETS,
    _STATUS_PRESET,
    Injection,
    _normalize_pattern,
)


class FaultsMixin:
    """`inject` and `clear_injections` of `FakeOpenAI`."""

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
        every: float = 0.05,
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
          stall: streamed chat answers 200, sends `after_chunks` chunks, then only an SSE
            comment (`: keep-alive`) every `every` seconds, for up to `hold` seconds (or until
            released / the fake stops), then drops the connection; `client_gone` is set
            when the client closed its end first.
          stall_empty: like stall, but sends chunks with an empty `delta.content` instead.
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
            every=every,
        )
        with self._lock:
            self.injections.append(inj)
        return inj

    def clear_injections(self) -> None:
        with self._lock:
            for inj in self.injections:
                inj.released.set()
            self.injections.clear()
