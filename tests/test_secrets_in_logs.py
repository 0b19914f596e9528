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
    assert fake_slack.ephemerals[-1]["text"].startswith("Added as training example")
    names = {r.name for r in debug_logs.records}
    assert any(n.startswith("slack_") for n in names) and "httpx2" in names, names

    leaks = [(r.name, r.levelname, r.getMessage()[:300]) for r in debug_logs.records
             if any(f in _rendered(r) for f in FRAGMENTS + SECRETS)]
    assert leaks == [], "secrets in log records (logger, level, message):\n" + "\n".join(
        map(str, leaks))


REQUEST = "Write an SOP for cleaning of the mixer"


def test_the_whole_loop_at_info_logs_no_message_text_body_user_id_or_token(
    database_url, tmp_path, fake_openai, fake_slack, notifier,  # noqa: ANN001
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At INFO (the default LOG_LEVEL), the log says what happened, never what people wrote:
    no request or SOP text, no model output, no request body, no user id, no token; a forged
    request is logged without its body."""
    for name in LOGGERS:  # as `sop-bot run` configures it (SQLAlchemy keeps its WARNING)
        if not name.startswith("sqlalchemy"):
            caplog.set_level(logging.INFO, logger=name)
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    from tests.test_training_helpers import approve, sop_texts

    sop = sop_texts(11)[10]
    try:
        bot = factory.start(openai_api_key=OPENAI_KEY, slack_signing_secret=SIGNING_SECRET,
                            sop_approvers=[APPROVER], sop_admins=[ADMIN],
                            sop_admin_channel="CADMIN001", retrain_min_new_examples=1,
                            sop_min_examples=10)
        bot.slack.signing_secret = SIGNING_SECRET
        approve(bot.ctx.services, 10)
        assert bot.slack.command("/sop", REQUEST, user=AUTHOR, channel=CHANNEL).status == 200
        bot.wait()
        ts = fake_slack.user_posts(CHANNEL, AUTHOR, sop)
        user_reacts(fake_slack, CHANNEL, ts, APPROVER)
        bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts)
        bot.wait()
        bot.slack.command("/sop-retrain", "", user=ADMIN, channel=CHANNEL)
        bot.wait()
        from sop_pipeline.training import scheduler

        scheduler.poll_active_runs(bot.ctx.services, sleep=lambda _seconds: None)
        # forged: Bolt refuses it and used to log its whole body (user id, command text)
        assert bot.slack.command("/sop", "Write an SOP for FORGED-TEXT handling",
                                 user="UFORGED01", secret="wrong").status == 401
    finally:
        factory.close()

    draft_line = next(line for line in (fake_slack.replies(
        CHANNEL, fake_slack.top_level(CHANNEL)[0]["ts"])[0].get("blocks") or [])
        if line.get("type") == "section")["text"]["text"][:40]
    sop_line = next(line for line in sop.splitlines() if len(line) > 30)[:40]
    forbidden = {
        "request text": "cleaning of the mixer", "forged text": "FORGED-TEXT",
        "SOP text": sop_line, "model output": draft_line, "user id": AUTHOR,
        "approver id": APPROVER, "admin id": ADMIN, "forged user": "UFORGED01",
        "request body": "token=", "bot token": BOT_TOKEN, "openai key": OPENAI_KEY,
        "signing secret": SIGNING_SECRET,
    }
    assert any(r.name.startswith(("bot", "slack_bolt")) for r in caplog.records)
    leaks = [(what, r.name, r.levelname, r.getMessage()[:200]) for r in caplog.records
             if r.levelno >= logging.INFO for what, text in forbidden.items()
             if text in _rendered(r)]
    assert leaks == [], "\n".join(map(str, leaks))


def test_bolt_does_not_warn_that_the_token_is_unused(
    database_url, tmp_path, fake_openai, fake_slack, notifier,  # noqa: ANN001
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SLACK_BOT_TOKEN in the environment (the normal deployment) and our own client: Bolt's
    start-up notice that the token is unused does not reach the log."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    caplog.set_level(logging.INFO)
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    try:
        factory.start()
    finally:
        factory.close()
    assert not [r for r in caplog.records if "unused" in r.getMessage()]


def test_redact_takes_out_bodies_texts_user_ids_and_tokens() -> None:
    from bot.logs import redact

    line = ("Invalid request signature detected (signature: v0=ab, timestamp: 1, body: "
            "token=x&user_id=U0ABC1234&text=Write+an+SOP)")
    assert redact(line).endswith("body: [redacted]")
    assert "U0ABC1234" not in redact("approval by U0ABC1234")
    assert "xoxb-1-2" not in redact("Authorization: Bearer xoxb-1-2")
    assert redact("{'text': 'secret words', 'channel': 'C1'}") == (
        "{'text': [redacted], 'channel': 'C1'}")
    assert "ticket=abc" not in redact("Connecting to wss://x/link/?ticket=abc&app_id=A1")
