"""The one retry policy (`sop_pipeline.retry_policy`): its numbers, and slack_sdk's handlers
configured from it (`bot.app.make_client`) against the fake Slack Web API."""

from __future__ import annotations

from pathlib import Path

import pytest
from slack_sdk.errors import SlackApiError

from bot.app import make_client
from sop_pipeline.retry_policy import (
    Deadline,
    DeadlineExceeded,
    RetryPolicy,
    backoff_delay,
    retry_after_from_headers,
)
from sop_pipeline.services import build_services
from tests.conftest import make_settings
from tests.fakes.slack_fake import settings_overrides


def test_retry_after_wins_else_exponential_backoff_up_to_the_cap() -> None:
    assert backoff_delay(1, retry_after=3) == 3.0
    assert backoff_delay(1, retry_after=0, base=5.0) == 0.0
    assert [backoff_delay(n, base=1.0, cap=60) for n in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 60.0]


def test_a_wait_is_refused_past_the_retries_the_single_wait_or_the_deadline() -> None:
    policy = RetryPolicy(max_retries=3, max_wait_seconds=30, deadline_seconds=60)
    assert policy.next_wait(0, retry_after=7) == 7.0
    assert policy.next_wait(0, retry_after=None) == 0.5
    assert policy.next_wait(0, retry_after=31) is None  # one wait too long
    assert policy.next_wait(1, retry_after=25, waited=40) is None  # would end past 60 s
    assert policy.next_wait(3, retry_after=1) is None  # retries used up


def test_retry_after_headers_in_every_shape() -> None:
    assert retry_after_from_headers({"Retry-After": ["7"]}) == 7.0  # slack_sdk: lists
    assert retry_after_from_headers({"retry-after-ms": "5", "retry-after": "1"}) == 0.005
    assert retry_after_from_headers({"Retry-After": "soon"}) is None
    assert retry_after_from_headers(None) is None


def test_a_deadline_passes_by_its_clock() -> None:
    now = [0.0]
    deadline = Deadline(10, monotonic=lambda: now[0])
    deadline.check()
    now[0] = 10.0
    assert deadline.remaining() == 0
    with pytest.raises(DeadlineExceeded):
        deadline.check()


@pytest.fixture
def slack_client(database_url: str, tmp_path: Path, fake_slack):  # noqa: ANN001, ANN201
    services = build_services(make_settings(database_url, tmp_path / "d",
                                            **settings_overrides(fake_slack)))
    sleeps: list[float] = []
    yield make_client(services, sleep=sleeps.append), sleeps
    services.engine.dispose()


def test_slack_429s_are_retried_after_retry_after_within_the_deadline(
    slack_client, fake_slack  # noqa: ANN001
) -> None:
    client, sleeps = slack_client
    fake_slack.inject("chat.postMessage", "ratelimited", retry_after=25, times=3)

    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel="C1", text="hello")

    assert caught.value.response.status_code == 429
    assert sleeps == [25.0, 25.0]  # a third wait would end past the 60 s deadline
    assert len(fake_slack.calls_to("chat.postMessage")) == 3


def test_a_slack_retry_after_longer_than_one_wait_may_be_fails_at_once(
    slack_client, fake_slack  # noqa: ANN001
) -> None:
    client, sleeps = slack_client
    fake_slack.inject("chat.postMessage", "ratelimited", retry_after=120, times=1)

    with pytest.raises(SlackApiError):
        client.chat_postMessage(channel="C1", text="hello")

    assert sleeps == []
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
