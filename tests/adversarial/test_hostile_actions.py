"""Adversarial (issue 12.4–12.6, 16.3): buttons bound to their draft's conversation, replayed
commands, confirmations owed after a crash, worker identity across container restarts, and
quiet approvals. Each case fails on the code before issue 12."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlmodel import select

from bot import blocks
from bot.recovery import recover_abandoned_drafts
from sop_pipeline.generation import start_generation
from sop_pipeline.generation.recovery import current_worker, fail_abandoned_drafts
from sop_pipeline.models import ApprovalConfirmation, Generation, TrainingExample
from tests.fakes.slack_fake import FakeSlack, user_reacts

SOPS = Path(__file__).parent.parent / "data" / "sops"
CHANNEL = "CSOP00001"
OTHER = "COTHER001"
APPROVER = "UAPPROVE1"
AUTHOR = "UAUTHOR01"
REQUEST = "Write an SOP for cleaning of the tablet compression machine"


@pytest.fixture
def bot(factory):  # noqa: ANN001, ANN201
    return factory.start(sop_approvers=[APPROVER])


def rows(bot, model: type) -> list:  # noqa: ANN001
    with bot.ctx.services.session() as session:
        return list(session.exec(select(model)))


def draft(bot, fake: FakeSlack) -> tuple[dict, dict, str]:  # noqa: ANN001
    """/sop in CHANNEL: (parent, draft message, generation id)."""
    assert bot.slack.command("/sop", REQUEST, user=AUTHOR, channel=CHANNEL).status == 200
    bot.wait()
    parent = fake.top_level(CHANNEL)[-1]
    message = fake.replies(CHANNEL, parent["ts"])[0]
    value = [b for b in message["blocks"] if b["type"] == "actions"][0]["elements"][0]["value"]
    return parent, message, value


# --- buttons act only where they were made ---------------------------------------------------


@pytest.mark.parametrize("action_id", [blocks.REGENERATE_ACTION, blocks.DOCX_ACTION,
                                       blocks.APPROVE_ACTION])
def test_a_button_carrying_another_channels_draft_id_does_nothing_there(
    bot, fake_slack, action_id  # noqa: ANN001
) -> None:
    _, _, value = draft(bot, fake_slack)
    elsewhere = fake_slack.user_posts(OTHER, AUTHOR, "our channel")
    before = {m: len(fake_slack.calls_to(m)) for m in ("chat.postMessage",
                                                       "files.completeUploadExternal")}
    bot.slack.action(action_id, value, user=APPROVER, channel=OTHER, message_ts=elsewhere)
    bot.wait()

    assert fake_slack.replies(OTHER, elsewhere) == []
    assert fake_slack.top_level(OTHER) == [fake_slack.message(OTHER, elsewhere)]
    for method, count in before.items():
        assert len(fake_slack.calls_to(method)) == count, method
    assert len(rows(bot, Generation)) == 1 and rows(bot, TrainingExample) == []
    [note] = fake_slack.ephemerals_for(APPROVER)
    assert note["channel"] == OTHER and "another conversation" in note["text"]


def test_a_button_from_another_thread_of_the_same_channel_is_refused(bot, fake_slack) -> None:  # noqa: ANN001
    _, _, value = draft(bot, fake_slack)
    other_thread = fake_slack.user_posts(CHANNEL, AUTHOR, "another thread")
    bot.slack.action(blocks.REGENERATE_ACTION, value, user=AUTHOR, channel=CHANNEL,
                     message_ts=other_thread, thread_ts=other_thread)
    bot.wait()
    assert fake_slack.replies(CHANNEL, other_thread) == []
    assert len(rows(bot, Generation)) == 1
    assert "another conversation" in fake_slack.ephemerals_for(AUTHOR)[0]["text"]


def test_the_buttons_still_work_under_their_own_draft(bot, fake_slack) -> None:  # noqa: ANN001
    parent, message, value = draft(bot, fake_slack)
    bot.slack.action(blocks.REGENERATE_ACTION, value, user=AUTHOR, channel=CHANNEL,
                     message_ts=message["ts"], thread_ts=parent["ts"])
    bot.wait()
    assert len(rows(bot, Generation)) == 2
    assert len(fake_slack.replies(CHANNEL, parent["ts"])) == 2


# --- a replayed signed /sop drafts once --------------------------------------------------------


def test_a_replayed_signed_sop_command_drafts_once(bot, fake_slack) -> None:  # noqa: ANN001
    form = urlencode({
        "token": "legacy", "team_id": "T00000001", "channel_id": CHANNEL, "channel_name": "q",
        "user_id": AUTHOR, "user_name": "author", "command": "/sop", "text": REQUEST,
        "api_app_id": "A00000001", "response_url": fake_slack.response_url("replay"),
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
    })
    stamp = int(time.time())
    headers = {"X-Slack-Request-Timestamp": str(stamp),
               "X-Slack-Signature": bot.slack.sign(form, stamp)}
    answers = [bot.slack.post(form, "application/x-www-form-urlencoded", signed=False,
                              headers=headers) for _ in range(3)]
    bot.wait()
    assert [a.status for a in answers] == [200] * 3
    assert len(fake_slack.top_level(CHANNEL)) == 1
    assert len(rows(bot, Generation)) == 1


# --- a confirmation owed after a crash is posted -----------------------------------------------


def test_a_confirmation_lost_to_a_crash_is_posted_on_redelivery(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                       event_id="Ev0LOST")
    bot.wait()
    # As if the process died after the commit: the row is owed by a previous start.
    with bot.ctx.services.session() as session:
        [row] = session.exec(select(ApprovalConfirmation)).all()
        row.posted_at, row.worker = None, f"{socket.gethostname()}:{os.getpid()}:previous"
        session.add(row)
        session.commit()
    sent_before = len(fake_slack.ephemerals_for(APPROVER))

    bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                       event_id="Ev0LOST", retry_num=1)
    bot.wait()
    notes = fake_slack.ephemerals_for(APPROVER)[sent_before:]
    assert [n["text"][:26] for n in notes] == ["Added as training example "]
    assert len(rows(bot, TrainingExample)) == 1
    bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                       event_id="Ev0LOST", retry_num=2)
    bot.wait()
    assert len(fake_slack.ephemerals_for(APPROVER)) == sent_before + 1  # once


def test_start_up_posts_confirmations_a_previous_start_owed(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts)
    bot.wait()
    with bot.ctx.services.session() as session:
        [row] = session.exec(select(ApprovalConfirmation)).all()
        row.posted_at, row.worker = None, f"{socket.gethostname()}:{os.getpid()}:previous"
        session.add(row)
        session.commit()
    before = len(fake_slack.ephemerals_for(APPROVER))
    recover_abandoned_drafts(bot.ctx)
    assert len(fake_slack.ephemerals_for(APPROVER)) == before + 1
    recover_abandoned_drafts(bot.ctx)
    assert len(fake_slack.ephemerals_for(APPROVER)) == before + 1


# --- worker identity survives container restarts ----------------------------------------------


def test_a_draft_of_a_previous_start_as_pid_1_is_recovered_at_once(services) -> None:  # noqa: ANN001
    """In a container every start is PID 1 on the same hostname: host:pid cannot tell the
    dead start from this one; the start id can."""
    row = start_generation(services, REQUEST, "U1", slack_channel="C1", slack_thread_ts="1.0")
    previous = f"{socket.gethostname()}:{os.getpid()}:0123456789ab"
    with services.session() as session:
        stored = session.get(Generation, row.id)
        stored.status, stored.worker = "streaming", previous
        session.add(stored)
        session.commit()
    assert [g.id for g in fail_abandoned_drafts(services)] == [row.id]


def test_drafts_of_this_start_and_of_another_live_process_are_left_alone(services) -> None:  # noqa: ANN001
    mine = start_generation(services, REQUEST, "U1")
    other = start_generation(services, REQUEST, "U1")
    assert mine.worker == current_worker() and len(current_worker().split(":")) == 3
    with services.session() as session:
        stored = session.get(Generation, other.id)
        stored.worker = f"{socket.gethostname()}:{os.getppid()}:fedcba987654"  # alive
        session.add(stored)
        session.commit()
    assert fail_abandoned_drafts(services) == []


# --- quiet approvals (issue 16.3) --------------------------------------------------------------


def test_an_approval_and_its_retraction_post_nothing_in_the_thread(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    start = len(fake_slack.calls)
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts)
    bot.wait()
    writes = [(c.method, c.params.get("name") or c.params.get("user"))
              for c in fake_slack.calls[start:] if not c.method.startswith("conversations.")]
    assert writes == [("reactions.add", "inbox_tray"), ("chat.postEphemeral", APPROVER)]

    start = len(fake_slack.calls)
    with fake_slack._lock:
        fake_slack.message(CHANNEL, ts)["reactions"] = [
            r for r in fake_slack.message(CHANNEL, ts)["reactions"] if r["name"] == "inbox_tray"]
    bot.slack.reaction("reaction_removed", user=APPROVER, channel=CHANNEL, ts=ts)
    bot.wait()
    writes = [(c.method, c.params.get("name") or c.params.get("user"))
              for c in fake_slack.calls[start:] if not c.method.startswith("conversations.")]
    assert writes == [("reactions.remove", "inbox_tray"), ("chat.postEphemeral", APPROVER)]
    assert fake_slack.replies(CHANNEL, ts) == []
    assert "was retracted" in fake_slack.ephemerals_for(APPROVER)[-1]["text"]
