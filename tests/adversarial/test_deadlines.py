"""Deadlines by the wall clock (issue 12.3): a provider that answers 200 and then keeps the
stream alive without text (SSE comments, or chunks with empty content) must not keep a draft
alive. The idle deadline (SOP_STREAM_IDLE_SECONDS) and the overall deadline
(SOP_GENERATION_TIMEOUT_SECONDS) fire on time, the stream is closed, and the thread gets a
sentence. Small deadlines keep these tests short; nothing here sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlmodel import select

from sop_pipeline.generation import generate
from sop_pipeline.models import Generation
from sop_pipeline.services import build_services
from tests.conftest import make_settings
from tests.fakes.slack_fake import FakeSlack

REQUEST = "Write an SOP for cleaning of the tablet compression machine"
CHANNEL = "CSOP00001"
USER = "UREQ00001"
STALLS = [pytest.param("stall", id="sse-comments"), pytest.param("stall_empty", id="empty-chunks")]


@pytest.fixture
def make_services(database_url, tmp_path, fake_openai):  # noqa: ANN001, ANN201
    made = []

    def make(**overrides):  # noqa: ANN003, ANN202
        settings = make_settings(database_url, tmp_path / "d",
                                 openai_base_url=fake_openai.base_url, **overrides)
        services = build_services(settings)
        made.append(services)
        return services

    yield make
    for services in made:
        services.engine.dispose()


@pytest.mark.parametrize("kind", STALLS)
def test_a_stream_without_text_is_given_up_at_the_idle_deadline(
    make_services, fake_openai, kind: str  # noqa: ANN001
) -> None:
    services = make_services(sop_stream_idle_seconds=0.4, sop_generation_timeout_seconds=60)
    stall = fake_openai.inject("POST", "/chat/completions", kind=kind, after_chunks=3, hold=60)

    started = time.monotonic()
    result = generate(services, REQUEST, "U1")
    elapsed = time.monotonic() - started

    assert result.status == "failed"
    assert result.error == (
        "The model provider stopped sending the draft for 0.4 seconds, so SOP Bot gave up on "
        "it. Please try again in a few minutes."
    )
    assert elapsed < 5  # not the 60 s the provider would keep it open
    assert stall.client_gone.wait(5), "the bot left the stalled stream open"
    assert len(fake_openai.requests_to("/chat/completions")) == 1  # a stall is not retried
    with services.session() as session:
        [row] = session.exec(select(Generation)).all()
    assert row.status == "failed" and row.error == result.error and row.draft_text is None


def test_keep_alives_do_not_stretch_the_overall_deadline(make_services, fake_openai) -> None:  # noqa: ANN001
    services = make_services(sop_stream_idle_seconds=60, sop_generation_timeout_seconds=0.5)
    stall = fake_openai.inject("POST", "/chat/completions", kind="stall", after_chunks=3,
                               hold=60, every=0.02)

    started = time.monotonic()
    result = generate(services, REQUEST, "U1")

    assert time.monotonic() - started < 5
    assert result.status == "failed"
    assert result.error == (
        "The model provider did not answer within 0.5 seconds. Please try again in a few "
        "minutes."
    )
    assert stall.client_gone.wait(5)


def test_a_provider_that_never_sends_headers_is_given_up_at_the_overall_deadline(
    make_services, fake_openai  # noqa: ANN001
) -> None:
    # openai_timeout_seconds is long, so only our own deadline can end this one
    services = make_services(sop_generation_timeout_seconds=0.5, openai_timeout_seconds=60,
                             sop_stream_idle_seconds=60)
    held = fake_openai.inject("POST", "/chat/completions", kind="timeout", hold=60)
    try:
        started = time.monotonic()
        result = generate(services, REQUEST, "U1")
        assert time.monotonic() - started < 5
    finally:
        held.release()
    assert result.status == "failed" and "did not answer within 0.5 seconds" in result.error


def test_a_slow_but_steady_stream_completes(make_services, fake_openai) -> None:  # noqa: ANN001
    """The idle deadline counts silence, not the length of the whole answer."""
    services = make_services(sop_stream_idle_seconds=0.5, sop_generation_timeout_seconds=60)
    fake_openai.chunk_delay = 0.01  # ~100 pieces, 1 s in all: longer than the idle deadline

    result = generate(services, REQUEST, "U1")

    assert result.status == "completed", result.error


# --- what reaches Slack ------------------------------------------------------------------------


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.mark.parametrize("kind", STALLS)
def test_the_thread_gets_a_sentence_when_the_provider_stalls(
    factory, fake_slack, fake_openai, kind: str  # noqa: ANN001
) -> None:
    bot = factory.start(sop_stream_idle_seconds=0.4, slack_update_interval_seconds=0)
    stall = fake_openai.inject("POST", "/chat/completions", kind=kind, after_chunks=4, hold=60)

    assert bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL).status == 200
    bot.wait()

    [parent] = fake_slack.top_level(CHANNEL)
    assert parent["text"].startswith("SOP draft requested by")
    [reply] = fake_slack.replies(CHANNEL, parent["ts"])
    assert reply["text"].startswith(":x: I couldn't draft this SOP.")
    assert "stopped sending the draft for 0.4 seconds" in reply["text"]
    assert "Please try again in a few minutes." in reply["text"]
    assert not reply.get("blocks")  # no half draft presented as a draft
    assert stall.client_gone.wait(5)
    with bot.ctx.services.session() as session:
        [row] = session.exec(select(Generation)).all()
    assert row.status == "failed"
