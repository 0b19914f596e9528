"""A streamed chat completion read as plain JSON chunks.

The SDK turns every server-sent chunk into pydantic models, about 50 µs each. With 50 drafts
streaming at once, that was a third of the bot's CPU, and it all competed for one interpreter
lock. This sends the same request through the same client, with the SDK's retries, timeouts and
status errors (`with_streaming_response`), and decodes the event stream itself into dicts.
Errors mid-stream are raised as the SDK raises them: an `error` event as `openai.APIError`, a
timeout as `openai.APITimeoutError`, a broken connection as `openai.APIConnectionError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import openai

try:  # the HTTP library under the openai package: httpx2 now, httpx before
    import httpx2 as _http
except ImportError:  # pragma: no cover - older openai releases
    import httpx as _http  # type: ignore[no-redef]


def stream_chat(client: openai.OpenAI, **params: Any) -> Iterator[dict]:
    """Yield each chunk of `client.chat.completions.create(stream=True, **params)` as a dict.

    Close the generator (e.g. `contextlib.closing`) to stop early; that closes the response.
    """
    with client.chat.completions.with_streaming_response.create(stream=True, **params) as response:
        request = response.http_request
        try:
            yield from _chunks(response.iter_lines(), request)
        except _http.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except _http.RequestError as exc:
            raise openai.APIConnectionError(request=request) from exc


def _chunks(lines: Iterable[str], request: _http.Request) -> Iterator[dict]:
    """The `data:` payloads of a text/event-stream, one per event, until `[DONE]`."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
            continue
        if line or not data:  # `event:`, `id:`, comments, or a blank line between events
            continue
        payload, data = "\n".join(data), []
        if payload.startswith("[DONE]"):
            return
        chunk = json.loads(payload)
        if isinstance(chunk, dict) and chunk.get("error"):
            raise _stream_error(chunk["error"], request)
        yield chunk


def _stream_error(error: Any, request: _http.Request) -> openai.APIError:
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"
    return openai.APIError(message=message, request=request, body=error)
