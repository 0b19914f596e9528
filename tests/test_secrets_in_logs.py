"""Secrets never reach the logs: a whole flow (a /sop draft, an approval, a retrain start) runs
with every logger at DEBUG (ours, Bolt, slack_sdk, openai, httpx2, httpcore2, urllib3) and
recognisable fake secrets; no log record may contain any of them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.fakes.slack_fake import BotFactory, FakeSlack, user_reacts

BOT_TOKEN = "xoxb-SECRET-1111-2222-bottokenvalue"
OPENAI_KEY = "sk-SECRET-openai-key-3333"
SIGNING_SECRET = "SECRET-signing-4444-5555"
SECRETS = (BOT_TOKEN, OPENAI_KEY, SIGNING_SECRET)
FRAGMENTS = ("SECRET-1111", "SECRET-openai", "SECRET-signing")  # partial leaks count too
LOGGERS = ("", "bot", "bot.bolt", "sop_pipeline", "slack_sdk", "slack_bolt", "openai", "httpx",
           "httpx2", "httpcore", "httpcore2", "urllib3", "sqlalchemy", "apscheduler")
CHANNEL = "CSOP00001"
ADMIN = "UADMIN001"
APPROVER = "UAPPROVE1"
AUTHOR = "UAUTHOR01"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(bot_token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _rendered(record: logging.LogRecord) -> str:
    """Everything a log handler could write for this record (message, args, traceback)."""
    text = logging.Formatter("%(name)s %(message)s").format(record)
    return f"{text} {record.args!r} {record.__dict__!r}"


def test_a_full_flow_at_debug_logs_no_secret(
    database_url, tmp_path, fake_openai, fake_slack, notifier, debug_logs  # noqa: ANN001
) -> None:
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    try:
        bot = factory.start(openai_api_key=OPENAI_KEY, slack_signing_secret=SIGNING_SECRET,
                            sop_approvers=[APPROVER], sop_admins=[ADMIN],
                            sop_admin_channel="CADMIN001", log_level="DEBUG",
                            retrain_min_new_examples=1, sop_min_examples=10)
        bot.slack.signing_secret = SIGNING_SECRET
        from tests.test_training_helpers import approve, sop_texts

        approve(bot.ctx.services, 10)

        # a draft
        assert bot.slack.command("/sop", "Write an SOP for cleaning of the mixer",
                                 user=AUTHOR, channel=CHANNEL).status == 200
        bot.wait()
        # an approval of a human-written SOP
        ts = fake_slack.user_posts(CHANNEL, AUTHOR, sop_texts(11)[10])
        user_reacts(fake_slack, CHANNEL, ts, APPROVER)
        assert bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL,
                                  ts=ts).status == 200
        bot.wait()
        # a retrain start
        assert bot.slack.command("/sop-retrain", "", user=ADMIN, channel=CHANNEL).status == 200
        bot.wait()
        from sop_pipeline.training import scheduler

        scheduler.poll_active_runs(bot.ctx.services, sleep=lambda _seconds: None)
        # and a forged request, which Bolt logs when it refuses it
        assert bot.slack.command("/sop", "x", secret="wrong").status == 401
    finally:
        factory.close()

    assert fake_openai.requests_to("/chat/completions")
    assert fake_openai.requests_to("/fine_tuning/jobs", "POST"), "the retrain did not start"
    assert fake_slack.replies(CHANNEL, ts)[0]["text"].startswith("Added as training example")
    names = {r.name for r in debug_logs.records}
    assert any(n.startswith("slack_") for n in names) and "httpx2" in names, names

    leaks = [(r.name, r.levelname, r.getMessage()[:300]) for r in debug_logs.records
             if any(f in _rendered(r) for f in FRAGMENTS + SECRETS)]
    assert leaks == [], "secrets in log records (logger, level, message):\n" + "\n".join(
        map(str, leaks))
