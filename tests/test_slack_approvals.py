"""React-to-approve: approvers' ✅ turns an SOP in Slack into a training example, once."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from sqlmodel import select

from bot import blocks
from sop_pipeline import audit
from sop_pipeline.models import ExampleStatus, TrainingExample
from tests.fakes.slack_fake import FakeSlack, user_reacts, user_unreacts

SOPS = Path(__file__).parent / "data" / "sops"
BROKEN = Path(__file__).parent / "data" / "sops_broken"
CHANNEL = "CSOP00001"
APPROVER = "UAPPROVE1"
AUTHOR = "UAUTHOR01"
REQUEST = "Write an SOP for cleaning of the tablet compression machine"


@pytest.fixture
def bot(factory):  # noqa: ANN001, ANN201
    return factory.start(sop_approvers=[APPROVER], sop_watched_channels=[CHANNEL])


def examples(bot) -> list[TrainingExample]:  # noqa: ANN001
    with bot.ctx.services.session() as session:
        return list(session.exec(select(TrainingExample).order_by(TrainingExample.id)))


def approve(bot, fake: FakeSlack, ts: str, *, user: str = APPROVER, channel: str = CHANNEL,  # noqa: ANN001
            **kwargs) -> None:  # noqa: ANN003
    user_reacts(fake, channel, ts, user)
    assert bot.slack.reaction("reaction_added", user=user, channel=channel, ts=ts,
                              **kwargs).status == 200
    bot.wait()


def test_an_approvers_check_mark_adds_the_sop_as_a_training_example(bot, fake_slack) -> None:  # noqa: ANN001
    text = (SOPS / "01_tablet_compression_cleaning.txt").read_text()
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, text)
    approve(bot, fake_slack, ts)

    [example] = examples(bot)
    assert example.status == ExampleStatus.APPROVED
    assert (example.slack_channel, example.slack_ts) == (CHANNEL, ts)
    assert example.approver == APPROVER and example.author == AUTHOR
    assert example.prompt.startswith("Write an SOP for")
    assert example.sop_text.startswith("Title: Standard Cleaning Procedure")
    # quietly: a reaction on the message and a note only the approver sees, no thread reply
    assert fake_slack.replies(CHANNEL, ts) == []
    assert fake_slack.calls_to("chat.postMessage") == []
    [note] = fake_slack.ephemerals_for(APPROVER)
    assert note["text"] == (f"Added as training example #{example.id} "
                            "(1 of 10 new examples toward the next retrain).")
    assert {"name": "inbox_tray", "users": [fake_slack.bot_user_id], "count": 1} in \
        fake_slack.message(CHANNEL, ts)["reactions"]


def test_an_approval_never_waits_for_a_thread_behind_drafts(factory, fake_slack) -> None:  # noqa: ANN001
    """Every drafting thread busy (BOT_WORKER_THREADS=1, its draft held as it starts to
    stream): a ✅ is still stored and confirmed, by a pool of its own."""
    bot = factory.start(sop_approvers=[APPROVER], sop_watched_channels=[CHANNEL],
                        bot_worker_threads=1)
    drafting, confirmed = threading.Event(), threading.Event()

    def hold_the_draft(method: str, params: dict) -> None:
        if method == "chat.startStream":
            drafting.set()
            confirmed.wait(20)  # an approval queued behind this draft would never come
        elif method == "reactions.add" and params.get("name") == "inbox_tray":
            confirmed.set()

    fake_slack.before_call = hold_the_draft
    assert bot.slack.command("/sop", REQUEST, user=AUTHOR, channel=CHANNEL).status == 200
    assert drafting.wait(10), "the draft never started"
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    assert bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL,
                              ts=ts).status == 200
    assert confirmed.wait(10), "the approval waited for the draft's thread"
    bot.wait()
    [example] = examples(bot)
    assert example.slack_ts == ts
    # what Slack received, in order: the confirmation, then the rest of the held draft
    methods = [call.method for call in fake_slack.calls]
    assert methods.index("reactions.add") < methods.index("chat.stopStream")
    [note] = fake_slack.ephemerals_for(APPROVER)
    assert note["text"].startswith(f"Added as training example #{example.id} ")


def test_a_setting_adds_the_public_thread_reply(factory, fake_slack) -> None:  # noqa: ANN001
    bot = factory.start(sop_approvers=[APPROVER], sop_approval_public_reply=True)
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    approve(bot, fake_slack, ts)
    [reply] = fake_slack.replies(CHANNEL, ts)
    assert reply["text"].startswith("Added as training example #")
    assert fake_slack.ephemerals_for(APPROVER) == []
    user_unreacts(fake_slack, CHANNEL, ts, APPROVER)
    bot.slack.reaction("reaction_removed", user=APPROVER, channel=CHANNEL, ts=ts)
    bot.wait()
    assert fake_slack.replies(CHANNEL, ts)[-1]["text"].startswith("Training example #")


def confirmations_for(fake: FakeSlack, user: str = APPROVER) -> list[dict]:
    return [e for e in fake.ephemerals_for(user)
            if e["text"].startswith("Added as training example")]


def test_approving_a_bot_draft_keeps_the_original_request_as_prompt(bot, fake_slack) -> None:  # noqa: ANN001
    bot.slack.command("/sop", REQUEST, user=AUTHOR, channel=CHANNEL)
    bot.wait()
    parent = fake_slack.top_level(CHANNEL)[-1]
    draft = fake_slack.replies(CHANNEL, parent["ts"])[0]
    approve(bot, fake_slack, draft["ts"])

    [example] = examples(bot)
    assert example.prompt == REQUEST
    assert example.generation_id is not None
    assert example.slack_ts == draft["ts"] and example.author == AUTHOR
    assert len(confirmations_for(fake_slack)) == 1
    assert [m["ts"] for m in fake_slack.replies(CHANNEL, parent["ts"])] == [draft["ts"]]


def test_a_human_correction_in_the_drafts_thread_keeps_the_request_as_prompt(bot, fake_slack) -> None:  # noqa: ANN001, E501
    bot.slack.command("/sop", REQUEST, user=AUTHOR, channel=CHANNEL)
    bot.wait()
    parent = fake_slack.top_level(CHANNEL)[-1]
    corrected = (SOPS / "01_tablet_compression_cleaning.txt").read_text()
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, corrected, thread_ts=parent["ts"])
    approve(bot, fake_slack, ts)

    [example] = examples(bot)
    assert example.prompt == REQUEST
    assert example.slack_ts == ts
    assert example.sop_text.startswith("Title: Standard Cleaning Procedure")


def test_a_non_compliant_sop_gets_the_findings_and_is_not_stored(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (BROKEN / "missing_section.txt").read_text())
    approve(bot, fake_slack, ts)

    assert examples(bot) == []
    assert fake_slack.replies(CHANNEL, ts) == []
    [reply] = fake_slack.ephemerals_for(APPROVER)
    assert reply["text"].startswith(f"<@{APPROVER}> This SOP does not follow the house format")
    assert "❌" in reply["text"]
    assert not fake_slack.message(CHANNEL, ts).get("reactions", [])[1:]


def test_a_non_approver_gets_an_ephemeral_hint_and_nothing_is_stored(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    approve(bot, fake_slack, ts, user="USTRANGER")

    assert examples(bot) == []
    assert fake_slack.replies(CHANNEL, ts) == []
    [hint] = fake_slack.ephemerals_for("USTRANGER")
    assert "Only SOP approvers can add training examples" in hint["text"]


def test_a_redelivered_event_adds_one_example_and_one_reply(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    for retry in (None, 1, 2):
        assert bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                                  event_id="Ev0SAME", retry_num=retry).status == 200
    bot.wait()
    assert len(examples(bot)) == 1
    assert len(fake_slack.ephemerals_for(APPROVER)) == 1


def test_a_redelivery_while_the_first_is_handled_waits_for_it_and_reads_nothing(  # noqa: ANN201
        bot, fake_slack):  # noqa: ANN001
    """Slack re-delivers an event whose acknowledgement came late, often while the first
    delivery is still at work: the second must not fetch and parse the message again."""
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    fetching, release = threading.Event(), threading.Event()

    def hold_the_first_fetch(method: str, params: dict) -> None:
        if method.startswith("conversations.") and not fetching.is_set():
            fetching.set()
            release.wait(10)

    fake_slack.before_call = hold_the_first_fetch
    assert bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                              event_id="Ev0BUSY").status == 200
    assert fetching.wait(10)
    assert bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                              event_id="Ev0BUSY", retry_num=1).status == 200
    assert bot.ctx.in_hand.wait_for_waiting(1)
    release.set()
    bot.wait()

    reads = [c for c in fake_slack.calls if c.method.startswith("conversations.")]
    assert len(reads) == 1
    assert len(examples(bot)) == 1
    assert len(confirmations_for(fake_slack)) == 1
    assert len(fake_slack.ephemerals_for(APPROVER)) == 1


def test_the_same_message_approved_twice_gives_one_example_and_one_reply(factory, fake_slack) -> None:  # noqa: ANN001, E501
    bot = factory.start(sop_approvers=[APPROVER, "UAPPROVE2"])
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    approve(bot, fake_slack, ts)
    approve(bot, fake_slack, ts, user="UAPPROVE2")
    approve(bot, fake_slack, ts, reaction="heavy_check_mark")  # not an approval emoji

    assert len(examples(bot)) == 1
    assert len(confirmations_for(fake_slack)) == 1
    [note] = fake_slack.ephemerals_for("UAPPROVE2")
    assert "already training example" in note["text"]


def test_two_instances_receiving_the_same_event_reply_once(factory, fake_slack) -> None:  # noqa: ANN001
    first = factory.start(sop_approvers=[APPROVER])
    second = factory.start(sop_approvers=[APPROVER])
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    for instance in (first, second):
        instance.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                                event_id="Ev0BOTH")
    first.wait()
    second.wait()
    assert len(examples(first)) == 1
    assert len(confirmations_for(fake_slack)) == 1


def test_reactions_outside_watched_channels_and_on_files_are_ignored(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts("COTHER001", AUTHOR,
                               (SOPS / "09_autoclave_operation.txt").read_text())
    before = len(fake_slack.calls)
    approve(bot, fake_slack, ts, channel="COTHER001")
    file_event = {"type": "reaction_added", "user": APPROVER, "reaction": "white_check_mark",
                  "item": {"type": "file", "file": "F123"}, "event_ts": "1.2"}
    bot.slack.event(file_event)
    bot.wait()
    assert examples(bot) == []
    assert [c.method for c in fake_slack.calls[before:]] in ([], ["auth.test"])


@pytest.mark.parametrize("name", ["06_balance_calibration.md", "09_autoclave_operation.txt",
                                  "report.docx"])
def test_sops_attached_as_files_are_downloaded_with_the_bot_token(bot, fake_slack, name) -> None:  # noqa: ANN001
    text = (SOPS / "09_autoclave_operation.txt").read_text()
    if name.endswith(".docx"):
        import docx

        document = docx.Document()
        for line in text.splitlines():
            document.add_paragraph(line)
        buffer = io.BytesIO()
        document.save(buffer)
        content = buffer.getvalue()
    else:
        content = (SOPS / name).read_bytes()
    shared = fake_slack.add_file(name, content, user=AUTHOR)
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, "Here is our SOP, please approve", files=[shared])
    approve(bot, fake_slack, ts)

    [example] = examples(bot)
    assert example.slack_ts == ts
    assert [token for _, token in fake_slack.downloads] == [fake_slack.bot_token]
    assert len(confirmations_for(fake_slack)) == 1


def test_removing_the_check_mark_retracts_the_example(bot, fake_slack) -> None:  # noqa: ANN001
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    approve(bot, fake_slack, ts)
    user_unreacts(fake_slack, CHANNEL, ts, APPROVER)
    bot.slack.reaction("reaction_removed", user=APPROVER, channel=CHANNEL, ts=ts)
    bot.wait()

    [example] = examples(bot)
    assert example.status == ExampleStatus.RETRACTED and example.retracted_by == APPROVER
    assert fake_slack.replies(CHANNEL, ts) == []
    assert fake_slack.ephemerals_for(APPROVER)[-1]["text"].startswith(
        f"Training example #{example.id} was retracted")
    assert not fake_slack.message(CHANNEL, ts).get("reactions")  # the inbox_tray went too
    assert fake_slack.calls_to("chat.postMessage") == []
    with bot.ctx.services.session() as session:
        assert [e.action for e in audit.events(session)] == ["approve", "retract"]


def test_removing_one_of_two_approvals_keeps_the_example(factory, fake_slack) -> None:  # noqa: ANN001
    bot = factory.start(sop_approvers=[APPROVER, "UAPPROVE2"])
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    approve(bot, fake_slack, ts)
    approve(bot, fake_slack, ts, user="UAPPROVE2")
    user_unreacts(fake_slack, CHANNEL, ts, APPROVER)
    bot.slack.reaction("reaction_removed", user=APPROVER, channel=CHANNEL, ts=ts)
    bot.wait()
    assert examples(bot)[0].status == ExampleStatus.APPROVED
    assert "still approve it" in fake_slack.ephemerals_for(APPROVER)[-1]["text"]


def test_approvers_can_be_a_user_group(factory, fake_slack) -> None:  # noqa: ANN001
    fake_slack.add_usergroup("SQAGROUP1", [APPROVER])
    bot = factory.start(sop_approvers=["SQAGROUP1"])
    for name in ("09_autoclave_operation.txt", "01_tablet_compression_cleaning.txt"):
        ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / name).read_text())
        approve(bot, fake_slack, ts)
    assert len(examples(bot)) == 2
    assert len(fake_slack.calls_to("usergroups.users.list")) == 1  # cached


def test_the_approve_button_does_what_the_reaction_does(bot, fake_slack) -> None:  # noqa: ANN001
    bot.slack.command("/sop", REQUEST, user=AUTHOR, channel=CHANNEL)
    bot.wait()
    parent = fake_slack.top_level(CHANNEL)[-1]
    draft = fake_slack.replies(CHANNEL, parent["ts"])[0]
    generation_id = [b for b in draft["blocks"] if b["type"] == "actions"][0]["elements"][0][
        "value"]

    bot.slack.action(blocks.APPROVE_ACTION, generation_id, user="USTRANGER", channel=CHANNEL,
                     message_ts=draft["ts"], thread_ts=parent["ts"])
    bot.wait()
    assert examples(bot) == []
    assert "Only SOP approvers" in fake_slack.ephemerals_for("USTRANGER")[0]["text"]

    for _ in range(2):
        bot.slack.action(blocks.APPROVE_ACTION, generation_id, user=APPROVER, channel=CHANNEL,
                         message_ts=draft["ts"], thread_ts=parent["ts"])
    bot.wait()
    [example] = examples(bot)
    assert example.prompt == REQUEST and example.slack_ts == draft["ts"]
    assert len(confirmations_for(fake_slack)) == 1
