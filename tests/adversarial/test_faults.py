"""Faults: the bot killed with SIGKILL mid-draft and mid-approval, then restarted; and provider
and Slack errors (429, 5xx, timeouts, dropped connections) at every call site.

The kill tests run the real bot process (`sop-bot run` bound to 127.0.0.1) on a SQLite file
against the fake Slack and fake OpenAI in this process. Training-stage kills are covered in
test_crash_recovery.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline.db import make_engine
from sop_pipeline.models import (
    ApprovalConfirmation,
    Generation,
    ProcessedEvent,
    TrainingExample,
)
from sop_pipeline.services import Services
from tests.fakes.slack_fake import FakeSlack, user_reacts
from tests.support.bot_process import BotProcess, bot_env, free_port
from tests.support.waiting import wait_until

SOPS = Path(__file__).parent.parent / "data" / "sops"
CHANNEL = "CSOP00001"
USER = "UREQ00001"
APPROVER = "UAPPROVE1"
AUTHOR = "UAUTHOR01"
REQUEST = "Write an SOP for cleaning of the tablet compression machine"
NO_WAIT = {"retry-after-ms": "0"}


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


# --- kill -9 and restart -------------------------------------------------------------------------


@pytest.fixture
def bot_process(tmp_path: Path, fake_slack: FakeSlack, fake_openai) -> Iterator[BotProcess]:  # noqa: ANN001
    """The real bot process on a SQLite file; not started yet."""
    env = bot_env(database_url=f"sqlite:///{tmp_path / 'bot.db'}", data_dir=tmp_path / "data",
                  slack_url=fake_slack.base_url, bot_token=fake_slack.bot_token,
                  openai_url=fake_openai.base_url, port=free_port(),
                  sop_approvers=APPROVER, sop_watched_channels=CHANNEL,
                  slack_update_interval_seconds="1000")
    process = BotProcess(env, tmp_path / "run")
    yield process
    process.kill9()


def rows(process: BotProcess, model: type) -> list:
    engine = make_engine(process.env["DATABASE_URL"])
    try:
        from sqlmodel import Session

        with Session(engine) as session:
            return list(session.exec(select(model)))
    finally:
        engine.dispose()


def _start_a_held_draft(bot: BotProcess, fake_slack: FakeSlack, fake_openai) -> tuple:  # noqa: ANN001
    """/sop with the provider's answer held open; returns (injection, parent message)."""
    held = fake_openai.inject("POST", "/chat/completions", kind="timeout", hold=60, times=1)
    assert bot.client(fake_slack.response_url("r")).command(
        "/sop", REQUEST, user=USER, channel=CHANNEL).status == 200
    wait_until(lambda: fake_openai.requests_to("/chat/completions"),
               what="the provider call of the draft")
    parent = fake_slack.top_level(CHANNEL)[-1]
    return held, parent


def test_kill9_during_a_draft_leaves_the_request_and_the_restarted_bot_serves_again(
    bot_process: BotProcess, fake_slack: FakeSlack, fake_openai  # noqa: ANN001
) -> None:
    bot_process.start()
    held, parent = _start_a_held_draft(bot_process, fake_slack, fake_openai)
    bot_process.kill9()
    held.release()

    [row] = rows(bot_process, Generation)
    assert row.request == REQUEST and row.slack_thread_ts == parent["ts"]

    bot_process.start()
    before = len(fake_slack.top_level(CHANNEL))
    assert bot_process.client(fake_slack.response_url("r")).command(
        "/sop", "Write an SOP for calibration of the pH meter", user=USER,
        channel=CHANNEL).status == 200
    wait_until(lambda: len([g for g in rows(bot_process, Generation)
                            if g.status == "completed"]) == 1, what="the second draft")
    assert len(fake_slack.top_level(CHANNEL)) == before + 1


def test_a_draft_interrupted_by_kill9_is_marked_failed_in_its_thread_after_restart(
    bot_process: BotProcess, fake_slack: FakeSlack, fake_openai  # noqa: ANN001
) -> None:
    bot_process.start()
    held, parent = _start_a_held_draft(bot_process, fake_slack, fake_openai)
    bot_process.kill9()
    held.release()
    bot_process.start()

    def told() -> bool:
        texts = [m.get("text", "") for m in fake_slack.replies(CHANNEL, parent["ts"])]
        return any("Drafting" not in t and ("interrupt" in t or "restart" in t or ":x:" in t)
                   for t in texts)

    wait_until(told, timeout=5, what="a failure message in the draft's thread")
    [row] = rows(bot_process, Generation)
    assert row.status == "failed" and row.error


def _hold_first(fake_slack: FakeSlack, held: str) -> tuple[threading.Event, threading.Event]:
    """Block the bot's first `held` Web API call until released (`reached` says it came)."""
    reached, release = threading.Event(), threading.Event()

    def hold(method: str, params: dict) -> None:
        if method == held and not reached.is_set():
            reached.set()
            release.wait(30)

    fake_slack.before_call = hold
    return reached, release


def _hold_history(fake_slack: FakeSlack) -> tuple[threading.Event, threading.Event]:
    """Mid-approval: before the approved message is read."""
    return _hold_first(fake_slack, "conversations.history")


def test_an_acknowledged_and_finished_approval_survives_kill9_and_redelivery(
    bot_process: BotProcess, fake_slack: FakeSlack  # noqa: ANN001
) -> None:
    bot_process.start()
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    client = bot_process.client()
    assert client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                           event_id="Ev0DONE").status == 200
    wait_until(lambda: [c for c in rows(bot_process, ApprovalConfirmation) if c.posted_at],
               what="the confirmation, recorded as posted")
    bot_process.kill9()
    bot_process.start()
    assert client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                           event_id="Ev0DONE", retry_num=1).status == 200
    assert client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                           event_id="Ev0OTHER").status == 200  # a second ✅ delivery
    wait_until(lambda: len(fake_slack.ephemerals_for(APPROVER)) == 2,
               what="the 'already' note")
    assert len(rows(bot_process, TrainingExample)) == 1
    first, already = fake_slack.ephemerals_for(APPROVER)
    assert first["text"].startswith("Added as training example")
    assert "already training example" in already["text"]
    assert fake_slack.replies(CHANNEL, ts) == []


def _hold_confirmation(fake_slack: FakeSlack) -> tuple[threading.Event, threading.Event]:
    """After an approval's commit: its confirmation reaction, the first Slack call then."""
    return _hold_first(fake_slack, "reactions.add")


@pytest.mark.parametrize("redelivered", [True, False], ids=["redelivery", "restart-only"])
def test_kill9_between_the_commit_and_the_confirmation_still_tells_the_approver(
    bot_process: BotProcess, fake_slack: FakeSlack, redelivered: bool  # noqa: ANN001
) -> None:
    bot_process.start()
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    reached, release = _hold_confirmation(fake_slack)
    client = bot_process.client()
    assert client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                           event_id="Ev0CONF").status == 200
    assert reached.wait(20), "the approval never reached its confirmation"
    bot_process.kill9()
    release.set()
    assert len(rows(bot_process, TrainingExample)) == 1  # committed, not yet confirmed
    assert fake_slack.ephemerals_for(APPROVER) == []

    bot_process.start()
    if redelivered:
        assert client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                               event_id="Ev0CONF", retry_num=1).status == 200
    wait_until(lambda: fake_slack.ephemerals_for(APPROVER), what="the owed confirmation")
    [note] = fake_slack.ephemerals_for(APPROVER)
    assert note["text"].startswith("Added as training example #1")
    assert len(rows(bot_process, TrainingExample)) == 1


def test_an_approval_interrupted_by_kill9_is_stored_when_slack_redelivers_it(
    bot_process: BotProcess, fake_slack: FakeSlack  # noqa: ANN001
) -> None:
    bot_process.start()
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    reached, release = _hold_history(fake_slack)
    client = bot_process.client()
    assert client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                           event_id="Ev0KILL").status == 200
    assert reached.wait(20), "the approval never read the message"
    bot_process.kill9()
    release.set()
    # neither the example nor the event's claim was committed: the re-delivery is processed
    assert rows(bot_process, TrainingExample) == []
    assert [e.key for e in rows(bot_process, ProcessedEvent) if e.key.startswith("event:")] == []

    bot_process.start()
    # Slack re-delivers (at least) events whose handling it could not see finish.
    assert client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                           event_id="Ev0KILL", retry_num=1).status == 200
    wait_until(lambda: rows(bot_process, TrainingExample), timeout=5,
               what="the approval to be stored after redelivery")
    assert len(rows(bot_process, TrainingExample)) == 1


# --- provider and Slack errors at each call site ---------------------------------------------


def _draft(bot, fake_slack: FakeSlack) -> tuple[dict, list[dict]]:  # noqa: ANN001
    assert bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL).status == 200
    bot.wait()
    parent = fake_slack.top_level(CHANNEL)[-1]
    return parent, fake_slack.replies(CHANNEL, parent["ts"])


def _generations(services: Services) -> list[Generation]:
    with services.session() as session:
        return list(session.exec(select(Generation).order_by(Generation.id)))


PROVIDER_TRANSIENT = [
    pytest.param({"kind": "rate_limit", "headers": NO_WAIT, "times": 2}, id="429-rate-limit"),
    pytest.param({"status": 500, "headers": NO_WAIT, "times": 2}, id="500"),
    pytest.param({"kind": "overloaded", "headers": NO_WAIT, "times": 1}, id="503-overloaded"),
    pytest.param({"kind": "timeout", "hold": 3, "times": 1}, id="timeout"),
    pytest.param({"kind": "disconnect", "times": 1}, id="dropped-connection"),
    pytest.param({"kind": "stream_error", "after_chunks": 5, "times": 1}, id="error-mid-stream"),
]


@pytest.mark.parametrize("fault", PROVIDER_TRANSIENT)
def test_transient_provider_errors_are_retried_and_the_draft_completes(
    factory, fake_slack, fake_openai, fault  # noqa: ANN001
) -> None:
    bot = factory.start(openai_timeout_seconds=0.5)
    fake_openai.inject("POST", "/chat/completions", **fault)
    _, replies = _draft(bot, fake_slack)
    assert len(fake_openai.requests_to("/chat/completions")) == fault["times"] + 1
    assert replies[0].get("blocks"), replies[0]["text"]
    [row] = _generations(bot.ctx.services)
    assert row.status == "completed"


PROVIDER_PERMANENT = [
    pytest.param({"kind": "insufficient_quota"}, "run out of credit", id="429-quota"),
    pytest.param({"kind": "invalid_api_key"}, "OPENAI_API_KEY", id="401"),
    pytest.param({"kind": "model_not_found"}, "SOP_BASE_MODEL", id="404-model"),
    pytest.param({"status": 500, "headers": NO_WAIT}, "HTTP 500", id="500-forever"),
    pytest.param({"kind": "rate_limit", "headers": NO_WAIT}, "rate-limiting", id="429-forever"),
]


@pytest.mark.parametrize(("fault", "sentence"), PROVIDER_PERMANENT)
def test_lasting_provider_errors_end_in_a_sentence_in_the_thread_and_the_bot_carries_on(
    factory, fake_slack, fake_openai, fault, sentence  # noqa: ANN001
) -> None:
    bot = factory.start(provider_max_retries=2)
    injection = fake_openai.inject("POST", "/chat/completions", times=None, **fault)
    _, replies = _draft(bot, fake_slack)
    assert replies[0]["text"].startswith(":x: I couldn't draft this SOP.")
    assert sentence in replies[0]["text"]
    assert "Traceback" not in replies[0]["text"]
    assert len(fake_openai.requests_to("/chat/completions")) <= 3  # bounded: no retry storm

    injection.times = 0  # the provider recovers: the next request works
    _, replies = _draft(bot, fake_slack)
    assert replies[0].get("blocks")
    assert [g.status for g in _generations(bot.ctx.services)] == ["failed", "completed"]


SLACK_DRAFT_FAULTS = [
    pytest.param("chat.postMessage", "ratelimited", {}, id="postMessage-429"),
    pytest.param("chat.update", "ratelimited", {}, id="update-429"),
    pytest.param("chat.update", "ratelimited", {"when": lambda p: "blocks" in p},
                 id="final-update-429"),
]


@pytest.mark.parametrize(("method", "error", "match"), SLACK_DRAFT_FAULTS)
def test_slack_rate_limits_while_drafting_are_retried_after_retry_after(
    factory, fake_slack, method, error, match  # noqa: ANN001
) -> None:
    bot = factory.start(slack_update_interval_seconds=0)
    fake_slack.inject(method, error, retry_after=3, times=1, **match)
    _, replies = _draft(bot, fake_slack)
    assert bot.sleeps == [3.0]
    assert replies[0].get("blocks")


def test_slack_server_errors_on_the_parent_message_get_an_ephemeral_sentence(
    factory, fake_slack, fake_openai  # noqa: ANN001
) -> None:
    bot = factory.start()
    fake_slack.inject("chat.postMessage", "internal_error", status=500, times=1)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    [answer] = fake_slack.responses
    assert answer["response_type"] == "ephemeral"
    assert "couldn't post your request" in answer["text"] and "Try again" in answer["text"]
    assert fake_openai.requests_to("/chat/completions") == []  # nothing paid for
    _, replies = _draft(bot, fake_slack)  # and the next one works
    assert replies[0].get("blocks")


def test_slack_refusing_the_final_draft_tells_the_requester_and_keeps_the_draft(
    factory, fake_slack  # noqa: ANN001
) -> None:
    bot = factory.start()
    fake_slack.inject("chat.update", "internal_error", status=500, times=1,
                      when=lambda p: "blocks" in p)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    [answer] = fake_slack.responses
    assert "Slack refused my reply" in answer["text"]
    [row] = _generations(bot.ctx.services)
    assert row.status == "completed" and row.draft_text  # nothing lost


def test_a_dropped_slack_connection_is_retried(factory, fake_slack) -> None:  # noqa: ANN001
    bot = factory.start()
    dropped: list[str] = []

    def drop_first_post(method: str, params: dict) -> None:
        if method == "chat.postMessage" and not dropped:
            dropped.append(method)
            raise ConnectionResetError("fault injected by the test")

    fake_slack.before_call = drop_first_post
    _, replies = _draft(bot, fake_slack)
    assert dropped and replies[0].get("blocks")


@pytest.mark.parametrize("error, status", [("ratelimited", 429), ("internal_error", 500)])
def test_confirmation_reaction_errors_never_lose_the_approval(
    factory, fake_slack, error, status  # noqa: ANN001
) -> None:
    bot = factory.start(sop_approvers=[APPROVER])
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    fake_slack.inject("reactions.add", error, status=status, times=1)
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    assert bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts).status \
        == 200
    bot.wait()
    with bot.ctx.services.session() as session:
        assert len(list(session.exec(select(TrainingExample)))) == 1
    [note] = fake_slack.ephemerals_for(APPROVER)  # told quietly, reaction or not
    assert note["text"].startswith("Added as training example")


@pytest.mark.parametrize("error, status", [("ratelimited", 429), ("internal_error", 500)])
def test_app_home_publish_errors_are_retried_or_logged(
    factory, fake_slack, error, status, caplog  # noqa: ANN001
) -> None:
    bot = factory.start(sop_admins=["UADMIN001"])
    fake_slack.inject("views.publish", error, status=status, times=1)
    event = {"type": "app_home_opened", "user": "UADMIN001", "channel": "D0000001",
             "tab": "home", "event_ts": "1.1"}
    assert bot.slack.event(event).status == 200
    bot.wait()
    published = fake_slack.views.get("UADMIN001")
    if status == 429:
        assert published is not None and bot.sleeps == [0.0]
    else:
        assert published is None
        assert any("App Home for UADMIN001 not published" in r.getMessage()
                   for r in caplog.records)
    # the next opening works: no stuck state
    assert bot.slack.event({**event, "event_ts": "1.2"}).status == 200
    bot.wait()
    assert fake_slack.views.get("UADMIN001") is not None
