"""Retries for provider calls: back off on 429/5xx/connection trouble, honour Retry-After,
and never wait past the generation's overall deadline.

The SDK's own retries are off (see `providers.py`) so that one place decides how long a Slack
user waits. `sleep` and `monotonic` are injected so tests drive time instead of sleeping.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import openai

from sop_pipeline.providers import retry_after_seconds

log = logging.getLogger(__name__)
T = TypeVar("T")

BASE_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class DeadlineExceeded(TimeoutError):
    """The overall generation deadline passed (while waiting or while streaming)."""


@dataclass
class Clock:
    """Time as the retry loop and the stream reader see it; fakes replace both in tests."""

    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    jitter: Callable[[float], float] = field(default=lambda delay: random.uniform(0, delay / 4))


@dataclass
class Deadline:
    """An absolute point on the monotonic clock, set once per generation."""

    clock: Clock
    seconds: float
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.clock.monotonic()

    def remaining(self) -> float:
        return self.seconds - (self.clock.monotonic() - self.started)

    def check(self) -> None:
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"deadline of {self.seconds:g} s passed")


def is_quota_error(exc: BaseException) -> bool:
    """429 `insufficient_quota` is a billing problem, not a rate limit: retrying cannot help."""
    return isinstance(exc, openai.RateLimitError) and (
        exc.code == "insufficient_quota" or "quota" in str(exc.code or "")
    )


def is_retryable(exc: BaseException) -> bool:
    """Transient provider trouble: rate limits, server errors, timeouts, dropped streams."""
    if is_quota_error(exc):
        return False
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    # An error event inside an SSE stream (plain APIError) is the server failing mid-answer.
    return type(exc) is openai.APIError


def backoff_delay(attempt: int, exc: BaseException, clock: Clock) -> float:
    """Retry-After when the provider sends it, else exponential backoff with a little jitter."""
    requested = retry_after_seconds(exc)
    if requested is not None:
        return requested
    delay = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * (2**attempt))
    return delay + clock.jitter(delay)


def call_with_retries(
    fn: Callable[[], T],
    *,
    max_retries: int,
    deadline: Deadline,
    before_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run `fn`, retrying transient errors up to `max_retries` times within `deadline`.

    The last error is re-raised when retries run out; `DeadlineExceeded` is raised when the
    wait the provider asks for would end after the deadline (no point waiting to fail).
    """
    attempt = 0
    while True:
        deadline.check()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised if not transient
            if not is_retryable(exc) or attempt >= max_retries:
                raise
            delay = backoff_delay(attempt, exc, deadline.clock)
            if delay >= deadline.remaining():
                raise DeadlineExceeded(f"retry wait of {delay:g} s exceeds the deadline") from exc
            log.info("Provider call failed (%s); retry %d in %.1f s", exc, attempt + 1, delay)
            if before_retry is not None:
                before_retry(exc, delay)
            deadline.clock.sleep(delay)
            attempt += 1
