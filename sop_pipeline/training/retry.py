"""Retrying provider calls: exponential backoff that honours the provider's Retry-After.

The SDK's own retries are off (see `providers.py`) so that there is one retry policy, ours,
and so that tests can inject `sleep` and assert exactly which delays were requested.

A Retry-After longer than `cap` (a daily job cap says "come back in an hour") is not slept
through inside one call: the error is raised and the lifecycle records when to try again, so a
scheduler tick never blocks for an hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sop_pipeline.training.backend import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")


def backoff_delay(
    attempt: int, *, retry_after: float | None = None, base: float = 1.0, cap: float = 60.0
) -> float:
    """Seconds to wait before retry number `attempt` (1-based).

    The provider's Retry-After wins when it is given (it knows its own limits); otherwise
    `base * 2**(attempt-1)`, never more than `cap`.
    """
    if retry_after is not None and retry_after >= 0:
        return float(retry_after)
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def call_with_retry(
    fn: Callable[[], T],
    *,
    max_attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    base: float = 1.0,
    cap: float = 60.0,
) -> T:
    """Call `fn`, retrying retryable `BackendError`s up to `max_attempts` calls in total.

    Non-retryable errors are raised at once; so is a retryable one whose wait would exceed
    `cap` or that happened on the last attempt (the caller then records a backoff).
    """
    attempts = max(1, max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except BackendError as exc:
            if not exc.retryable or attempt >= attempts:
                raise
            delay = backoff_delay(attempt, retry_after=exc.retry_after, base=base, cap=cap)
            if delay > cap:
                raise
            log.info("provider call failed (%s); retry %d in %.1fs", exc.code, attempt, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
