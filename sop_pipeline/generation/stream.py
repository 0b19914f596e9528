"""One streamed chat completion through the SDK's own stream iterator, under two wall-clock
deadlines: the draft's overall deadline and an idle deadline (no text for N seconds).

The request goes through the SDK's documented verb method (`client.post(..., stream=True,
stream_cls=openai.Stream[...])`) with `cast_to=object`: the SDK's own retries, SSE decoding,
Azure deployment routing and mid-stream error events, but each chunk arrives as the JSON the
provider sent instead of a pydantic model built field by field. Building those models was
three quarters of the bot's CPU per streamed chunk (11 ms against 3 ms per 88-chunk answer).

The SDK call and its iteration run in a helper thread that hands chunks over a queue; the
draft's thread waits on that queue with a timeout. So a deadline fires when the clock says so,
whatever the provider sends: keep-alive comments, empty chunks, or a Retry-After the SDK is
sleeping through. On a deadline the helper's socket is shut down (ending its read at once) and
the draft's thread goes on without waiting for it.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import openai

from sop_pipeline.retry_policy import Deadline, DeadlineExceeded

log = logging.getLogger(__name__)

# How often the waiting thread wakes to look at its cancel check (not a deadline).
WAKE_SECONDS = 1.0


class StreamStalled(DeadlineExceeded):
    """The provider sent no text for the idle deadline (its connection may still be open)."""


@dataclass
class Piece:
    """What one chunk carried that a draft needs."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    has_usage: bool = False


@dataclass
class StreamBroken(Exception):
    """The stream failed after the provider had started answering (`cause` says how);
    the SDK retries only the request, so this one may be asked again."""

    cause: BaseException


_OPENED = object()
_DONE = object()


class _Reader(threading.Thread):
    """Sends the request and reads the SDK's stream, putting each chunk on `items`."""

    def __init__(self, client: openai.OpenAI, body: dict[str, Any], timeout: float) -> None:
        super().__init__(daemon=True, name="sop-stream")
        self.client, self.body, self.timeout = client, body, timeout
        self.items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._abandoned = False
        self._stream: Any = None

    def run(self) -> None:
        opened = False
        stream: Any = None
        outcome: object = _DONE
        try:
            stream = self.client.post(
                "/chat/completions", body={**self.body, "stream": True}, cast_to=object,
                stream=True, stream_cls=openai.Stream[object],
                options={"timeout": self.timeout})
            with self._lock:
                if self._abandoned:
                    return
                self._stream = stream
            opened = True
            self.items.put(_OPENED)
            for chunk in stream:
                if self._abandoned:
                    return
                self.items.put(chunk)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome = StreamBroken(exc) if opened else exc
        finally:
            with self._lock:  # detached first: `abandon` never touches a finished connection,
                self._stream = None  # which closing may hand back to the pool for reuse
            if stream is not None:
                stream.close()
        self.items.put(outcome)

    def abandon(self) -> None:
        """Stop reading: shut the socket under a stream still open so a blocked read ends
        now (under the lock, so the reader cannot hand that connection back meanwhile)."""
        with self._lock:
            self._abandoned = True
            stream = self._stream
            if stream is None:
                return
            network = stream.response.extensions.get("network_stream")
            sock = network.get_extra_info("socket") if network is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed: the read has ended anyway


def stream_chat(
    client: openai.OpenAI, body: dict[str, Any], *, timeout: float, deadline: Deadline,
    idle_seconds: float, check: Callable[[], None] | None = None,
) -> Generator[Piece, None, None]:
    """Yield what each chunk of a streamed `POST /chat/completions` with `body` carries
    (`timeout`: the SDK's per-request timeout). Raises `DeadlineExceeded` at the overall
    deadline, `StreamStalled` when the open stream sends no text for `idle_seconds`,
    `StreamBroken` when it fails mid-answer, and the SDK's own error when the request fails.
    `check` runs at every wake-up (cancellation)."""
    deadline.check()
    reader = _Reader(client, body, timeout)
    reader.start()
    now = deadline.monotonic
    last_text: float | None = None  # set when the provider starts answering
    try:
        while True:
            wait = deadline.remaining()
            idle_left = None if last_text is None else idle_seconds - (now() - last_text)
            if idle_left is not None and idle_left <= 0 and idle_left <= wait:
                raise StreamStalled(f"no text for {idle_seconds:g} s")
            if wait <= 0:
                raise DeadlineExceeded(f"deadline of {deadline.seconds:g} s passed")
            try:
                item = reader.items.get(timeout=min(
                    wait, wait if idle_left is None else idle_left, WAKE_SECONDS))
            except queue.Empty:
                if check is not None:
                    check()
                continue
            if item is _DONE:
                return
            if item is _OPENED:
                last_text = now()
                continue
            if isinstance(item, BaseException):
                raise item
            piece = _piece(item)
            if piece.text:
                last_text = now()
            yield piece
            if check is not None:
                check()
    finally:
        reader.abandon()


def _piece(chunk: object) -> Piece:
    """The text, finish reason and usage of one chunk as the provider sent it (JSON); a
    field of an unexpected shape counts as absent, as the SDK's lenient models would read it."""
    piece = Piece()
    if not isinstance(chunk, dict):
        return piece
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        piece.has_usage = True
        piece.prompt_tokens = _count(usage.get("prompt_tokens"))
        piece.completion_tokens = _count(usage.get("completion_tokens"))
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            piece.text += content
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            piece.finish_reason = finish
    return piece


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
