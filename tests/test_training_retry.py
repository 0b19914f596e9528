"""Backoff for provider calls: Retry-After first, exponential otherwise, long waits not slept."""

from __future__ import annotations

import pytest

from sop_pipeline.training.backend import BackendError
from sop_pipeline.training.retry import backoff_delay, call_with_retry
from tests.test_training_helpers import Sleeps


def flaky(*errors: BackendError, result: str = "ok"):  # noqa: ANN201
    """A callable that raises the given errors in turn, then returns `result`."""
    pending = list(errors)
    calls = []

    def fn() -> str:
        calls.append(1)
        if pending:
            raise pending.pop(0)
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def retryable(retry_after: float | None = None) -> BackendError:
    return BackendError("busy", code="rate_limit_exceeded", retryable=True,
                        retry_after=retry_after)


def test_retry_after_is_honoured_and_exponential_backoff_used_without_it() -> None:
    sleeps = Sleeps()
    fn = flaky(retryable(retry_after=3), retryable(), retryable())

    assert call_with_retry(fn, max_attempts=5, sleep=sleeps, base=1.0, cap=60) == "ok"

    assert sleeps.delays == [3.0, 2.0, 4.0]


def test_backoff_is_capped() -> None:
    assert backoff_delay(10, base=1.0, cap=60) == 60
    assert backoff_delay(1, base=2.0, cap=60) == 2.0
    assert backoff_delay(1, retry_after=0, base=5.0) == 0.0


def test_gives_up_after_max_attempts() -> None:
    sleeps = Sleeps()
    fn = flaky(retryable(), retryable(), retryable())

    with pytest.raises(BackendError):
        call_with_retry(fn, max_attempts=2, sleep=sleeps)

    assert len(fn.calls) == 2 and sleeps.delays == [1.0]


def test_non_retryable_errors_are_raised_at_once() -> None:
    sleeps = Sleeps()
    fn = flaky(BackendError("bad key", code="invalid_api_key", retryable=False))

    with pytest.raises(BackendError, match="bad key"):
        call_with_retry(fn, max_attempts=5, sleep=sleeps)

    assert len(fn.calls) == 1 and sleeps.delays == []


def test_a_retry_after_longer_than_the_cap_is_left_to_the_caller() -> None:
    sleeps = Sleeps()
    fn = flaky(retryable(retry_after=3600))

    with pytest.raises(BackendError) as caught:
        call_with_retry(fn, max_attempts=5, sleep=sleeps, cap=60)

    assert caught.value.retry_after == 3600 and sleeps.delays == []


def test_zero_max_attempts_still_calls_once() -> None:
    assert call_with_retry(flaky(), max_attempts=0) == "ok"
