"""The one retry policy for everything SOP Bot sends out (model provider and Slack).

Within one call, the clients retry by themselves: the openai SDK (`max_retries`, honouring
`Retry-After`/`retry-after-ms`) and slack_sdk's `RetryHandler`s, both configured from here
(`bot.app.make_client` for Slack). Around them, one overall deadline per piece of work (a
draft, a Slack call) bounds how long anyone waits, and across scheduler ticks a training run
backs off by `backoff_delay` (stored in its row, so any instance can pick it up).

This module has no client imports: `sop_pipeline` must not import `slack_*`, and the CLI keeps
its quick start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sop_pipeline.settings import Settings

# The longest single wait a Slack call honours; a longer Retry-After fails the call instead
# (a person is looking at the thread).
SLACK_MAX_WAIT_SECONDS = 30.0


class DeadlineExceeded(TimeoutError):
    """The overall deadline for a piece of work passed."""


@dataclass(frozen=True)
class RetryPolicy:
    """How many times a call is retried, the longest single wait honoured, and the overall
    deadline for one piece of work."""

    max_retries: int
    max_wait_seconds: float
    deadline_seconds: float

    @classmethod
    def provider(cls, settings: Settings) -> RetryPolicy:
        """Model provider calls: the openai SDK retries with `max_retries` (honouring
        Retry-After up to its own two minutes); a draft's deadline bounds the whole."""
        return cls(max_retries=settings.provider_max_retries, max_wait_seconds=120.0,
                   deadline_seconds=settings.sop_generation_timeout_seconds)

    @classmethod
    def slack(cls, settings: Settings) -> RetryPolicy:
        """Slack Web API calls (slack_sdk's handlers retry, asking `next_wait`)."""
        return cls(max_retries=min(settings.provider_max_retries, 3),
                   max_wait_seconds=SLACK_MAX_WAIT_SECONDS,
                   deadline_seconds=2 * SLACK_MAX_WAIT_SECONDS)

    def next_wait(self, attempt: int, retry_after: float | None, waited: float = 0.0
                  ) -> float | None:
        """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when it
        sends one, else exponential backoff from half a second. None (fail now, the caller
        says so) when retries are used up, the wait is longer than one wait may be, or it
        would end past the deadline (`waited` seconds have gone into earlier waits)."""
        if attempt >= self.max_retries:
            return None
        delay = backoff_delay(attempt + 1, retry_after=retry_after, base=0.5,
                              cap=self.max_wait_seconds)
        if delay > self.max_wait_seconds or waited + delay > self.deadline_seconds:
            return None
        return delay

    def reask(self, attempt: int, deadline: Deadline) -> bool:
        """Whether to ask again, at once, after a stream broke mid-answer (attempt 0-based):
        the SDK retries only the request, not a stream that dropped or sent an error event."""
        return attempt < self.max_retries and deadline.remaining() > 0


def backoff_delay(
    attempt: int, *, retry_after: float | None = None, base: float = 1.0, cap: float = 60.0
) -> float:
    """Seconds to wait before retry number `attempt` (1-based): the provider's Retry-After
    when given (it knows its own limits), else `base * 2**(attempt-1)` up to `cap`."""
    if retry_after is not None and retry_after >= 0:
        return float(retry_after)
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


@dataclass
class Deadline:
    """An absolute point on the monotonic clock, set once per piece of work."""

    seconds: float
    monotonic: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self.monotonic()

    def remaining(self) -> float:
        return self.seconds - (self.monotonic() - self.started)

    def check(self) -> None:
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"deadline of {self.seconds:g} s passed")


def retry_after_from_headers(headers: object) -> float | None:
    """The wait a response asks for in seconds (`retry-after-ms`, else `Retry-After` in
    seconds), from a headers mapping (slack_sdk gives lists of values); None when absent."""
    items = getattr(headers, "items", None)
    if items is None:
        return None
    found: dict[str, object] = {}
    for name, value in items():
        if isinstance(value, list):
            value = value[0] if value else None
        found[str(name).lower()] = value
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            # a header value of any type; float() raises TypeError/ValueError, handled below
            return max(0.0, float(found[name]) / divisor)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            continue
    return None
