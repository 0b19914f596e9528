"""SIGTERM (a deploy, a container stop): the bot stops taking requests, lets drafts in progress
finish within SHUTDOWN_GRACE_SECONDS, and marks the rest failed with a sentence in their thread.
The real bot process in HTTP mode against the fake Slack and fake OpenAI."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from sop_pipeline.db import make_engine
from sop_pipeline.generation.recovery import ABANDONED_SENTENCE
from sop_pipeline.models import Generation
from tests.fakes.slack_fake import FakeSlack
from tests.support.bot_process import BotProcess, bot_env, free_port
from tests.support.waiting import wait_until

CHANNEL = "CSOP00001"
USER = "UREQ00001"
REQUEST = "Write an SOP for cleaning of the tablet compression machine"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def _bot(tmp_path: Path, fake_slack: FakeSlack, fake_openai, grace: str) -> BotProcess:  # noqa: ANN001
    env = bot_env(database_url=f"sqlite:///{tmp_path / 'bot.db'}", data_dir=tmp_path / "data",
                  slack_url=fake_slack.base_url, bot_token=fake_slack.bot_token,
                  openai_url=fake_openai.base_url, port=free_port(),
                  shutdown_grace_seconds=grace, slack_update_interval_seconds="1000")
    return BotProcess(env, tmp_path / "run")


def _generations(bot: BotProcess) -> list[Generation]:
    engine = make_engine(bot.env["DATABASE_URL"])
    try:
        with Session(engine) as session:
            return list(session.exec(select(Generation)))
    finally:
        engine.dispose()


def _draft_in_flight(bot: BotProcess, fake_slack: FakeSlack, fake_openai, hold: float):  # noqa: ANN001, ANN202
    held = fake_openai.inject("POST", "/chat/completions", kind="timeout", hold=hold, times=1)
    assert bot.client(fake_slack.response_url("r")).command(
        "/sop", REQUEST, user=USER, channel=CHANNEL).status == 200
    wait_until(lambda: fake_openai.requests_to("/chat/completions"),
               what="the provider call of the draft")
    return held, fake_slack.top_level(CHANNEL)[-1]


def _sigterm(bot: BotProcess, timeout: float) -> int:
    assert bot.proc is not None
    bot.proc.send_signal(signal.SIGTERM)
    return bot.proc.wait(timeout=timeout)


def test_sigterm_lets_a_draft_in_progress_finish(tmp_path, fake_slack, fake_openai) -> None:  # noqa: ANN001
    bot = _bot(tmp_path, fake_slack, fake_openai, grace="30").start()
    try:
        held, parent = _draft_in_flight(bot, fake_slack, fake_openai, hold=60)
        assert bot.proc is not None
        bot.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "SOP Bot stopping" in bot.output(), what="the shutdown to begin")
        held.release()  # the provider answers while the bot is shutting down
        assert bot.proc.wait(timeout=30) == 0, bot.output()
    finally:
        bot.kill9()
    [row] = _generations(bot)
    assert row.status == "completed", (row.status, row.error)
    replies = fake_slack.replies(CHANNEL, parent["ts"])
    assert any(m.get("blocks") for m in replies), replies  # the finished draft reached Slack


def test_sigterm_marks_a_draft_still_running_after_the_grace_period_failed(
    tmp_path, fake_slack, fake_openai  # noqa: ANN001
) -> None:
    bot = _bot(tmp_path, fake_slack, fake_openai, grace="0").start()
    try:
        held, parent = _draft_in_flight(bot, fake_slack, fake_openai, hold=60)
        assert _sigterm(bot, timeout=30) == 0, bot.output()
    finally:
        held.release()
        bot.kill9()
    [row] = _generations(bot)
    assert (row.status, row.error) == ("failed", ABANDONED_SENTENCE)
    texts = [m.get("text", "") for m in fake_slack.replies(CHANNEL, parent["ts"])]
    assert any(ABANDONED_SENTENCE in t for t in texts), texts
