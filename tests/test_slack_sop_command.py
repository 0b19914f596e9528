"""`/sop <request>`: a parent message in the channel, the draft streamed into its thread, and
the finished draft as Block Kit with findings, model, DRAFT notice and buttons."""

from __future__ import annotations

import threading

import pytest
from sqlmodel import select

from bot import blocks
from sop_pipeline.models import Generation
from tests.fakes.openai_text import house_sop
from tests.fakes.slack_fake import BotFactory, FakeSlack, ManualClock

CHANNEL = "CSOP00001"
USER = "UREQ00001"
REQUEST = "Write an SOP for cleaning of the tablet compression machine"


@pytest.fixture
def make_bot(database_url, tmp_path, fake_openai, fake_slack, notifier):  # noqa: ANN001, ANN201
    """Start the bot with extra settings (a factory, so each test picks its settings)."""
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    yield factory.start
    factory.close()


def _draft_reply(fake: FakeSlack) -> tuple[dict, list[dict]]:
    parent = fake.top_level(CHANNEL)[-1]
    return parent, fake.replies(CHANNEL, parent["ts"])


def _block_texts(message: dict) -> str:
    parts = []
    for block in message.get("blocks", []):
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            parts.append(element.get("text", "") if isinstance(element.get("text"), str)
                         else (element.get("text") or {}).get("text", ""))
    return "\n".join(parts)


def test_sop_drafts_in_a_thread_with_blocks_and_buttons(make_bot, fake_slack, fake_openai):  # noqa: ANN001
    bot = make_bot()
    ack = bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    assert ack.status == 200
    bot.wait()

    parent, replies = _draft_reply(fake_slack)
    assert parent["text"] == f"SOP draft requested by <@{USER}>: {REQUEST}"
    assert len(replies) == 1
    draft = replies[0]
    text = _block_texts(draft)
    assert draft["blocks"][1]["type"] == "header"
    assert "Tablet Compression Machine" in draft["blocks"][1]["text"]["text"]
    assert "DRAFT" in text
    assert draft["blocks"][1]["text"]["text"].startswith("Title: ")
    assert "*5.0 Procedure:*" in text and "5.1 Put 'OFF' the electric supply" in text
    assert "Follows the house format" in text
    assert "Model: `gpt-4o-mini-2024-07-18` · mode: retrieval" in text
    actions = [b for b in draft["blocks"] if b["type"] == "actions"][0]
    assert [e["text"]["text"] for e in actions["elements"]] == [
        "Approve as example", "Regenerate", "Download .docx"]

    with bot.ctx.services.session() as session:
        row = session.get(Generation, int(actions["elements"][0]["value"]))
    assert (row.slack_channel, row.slack_thread_ts, row.slack_ts) == (
        CHANNEL, parent["ts"], draft["ts"])
    assert row.status == "completed" and row.requester == USER
    assert fake_openai.requests_to("/chat/completions")[0].json["stream"] is True


def test_the_draft_streams_into_the_thread_and_ends_as_the_house_format(  # noqa: ANN201
        make_bot, fake_slack):  # noqa: ANN001
    """Slack's streaming messages carry the preview; the same message then becomes the draft
    exactly as `render_canonical` writes it (the text approved and exported)."""
    bot = make_bot(slack_update_interval_seconds=0)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    [start] = fake_slack.calls_to("chat.startStream")
    assert start.params["recipient_user_id"] == USER and start.params["recipient_team_id"]
    assert fake_slack.calls_to("chat.appendStream")
    assert len(fake_slack.calls_to("chat.stopStream")) == 1
    assert not [c for c in fake_slack.calls_to("chat.postMessage") if c.params.get("thread_ts")]
    _, [draft] = _draft_reply(fake_slack)
    assert draft["ts"] == fake_slack.calls_to("chat.stopStream")[0].params["ts"]
    with bot.ctx.services.session() as session:
        row = session.get(Generation, 1)
    shown = _block_texts(draft).replace("*", "")
    for line in row.draft_text.splitlines():
        assert line in shown, line
    fake_slack.assert_contract_ok()


def test_nested_bullets_reach_slack_indented_as_the_training_text_writes_them(  # noqa: ANN201
        make_bot, fake_slack, fake_openai):  # noqa: ANN001
    lines = house_sop("tablet compression machine").splitlines()
    step = next(n for n, line in enumerate(lines) if line.startswith("5.2 "))
    lines[step + 1:step + 1] = ["   - Check the upper punches for residue.",
                                "   - Check the lower punches for residue."]
    fake_openai.chat_responses.append("\n".join(lines))
    bot = make_bot()
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()

    _, [draft] = _draft_reply(fake_slack)
    procedure = next(b["text"]["text"] for b in draft["blocks"]
                     if b["type"] == "section" and "*5.0 Procedure:*" in b["text"]["text"])
    assert procedure.splitlines()[2:5] == [
        "5.2 Remove the product contact parts.",
        "   - Check the upper punches for residue.",
        "   - Check the lower punches for residue."]
    with bot.ctx.services.session() as session:
        row = session.get(Generation, 1)
    assert "\n   - Check the upper punches for residue.\n" in row.draft_text


def test_where_slack_refuses_streaming_the_preview_edits_a_placeholder(  # noqa: ANN201
        make_bot, fake_slack):  # noqa: ANN001
    fake_slack.refuse_streaming = "feature_not_enabled"
    bot = make_bot(slack_update_interval_seconds=0)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    assert not fake_slack.calls_to("chat.appendStream")
    _, [draft] = _draft_reply(fake_slack)
    updates = fake_slack.calls_to("chat.update")
    assert updates[0].params["text"].startswith(":hourglass_flowing_sand: Drafting")
    assert "Title: " in _block_texts(draft)


def test_an_append_refused_mid_draft_falls_back_to_chat_update(make_bot, fake_slack):  # noqa: ANN001
    fake_slack.inject("chat.appendStream", "message_not_in_streaming_state")
    bot = make_bot(slack_update_interval_seconds=0)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    _, [draft] = _draft_reply(fake_slack)
    previews = [c for c in fake_slack.calls_to("chat.update")
                if c.params.get("ts") == draft["ts"] and not c.params.get("blocks")]
    assert previews and previews[0].params["text"].startswith(":hourglass_flowing_sand:")
    assert "Title: " in _block_texts(draft)


def test_streaming_preview_updates_at_most_once_per_interval(make_bot, fake_slack):  # noqa: ANN001
    fake_slack.refuse_streaming = "feature_not_enabled"
    clock = ManualClock()
    bot = make_bot(clock=clock, slack_update_interval_seconds=5)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    updates = fake_slack.calls_to("chat.update")
    # The clock never moved: one preview edit, then the final draft.
    assert len(updates) == 2
    assert updates[0].params["text"].startswith(":hourglass_flowing_sand: Drafting")
    assert "blocks" in updates[1].params


def test_streaming_preview_follows_the_text_when_the_interval_is_zero(make_bot, fake_slack):  # noqa: ANN001
    bot = make_bot(slack_update_interval_seconds=0)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    appended = [c.params["markdown_text"] for c in fake_slack.calls_to("chat.appendStream")]
    assert len(appended) > 10
    assert "6.0 Abbreviations" in "".join(appended)


def test_empty_request_gets_a_usage_hint_and_posts_nothing(make_bot, fake_slack):  # noqa: ANN001
    bot = make_bot()
    ack = bot.slack.command("/sop", "   ", user=USER, channel=CHANNEL)
    bot.wait()
    assert ack.json() == {"text": blocks_usage(), "response_type": "ephemeral"}
    assert fake_slack.calls_to("chat.postMessage") == []


def blocks_usage() -> str:
    from bot.commands import USAGE

    return USAGE


def test_a_request_that_is_not_an_sop_is_refused_with_a_sentence(make_bot, fake_slack, fake_openai):  # noqa: ANN001, E501
    bot = make_bot()
    ack = bot.slack.command("/sop", "what's for lunch?", user=USER, channel=CHANNEL)
    bot.wait()
    assert ack.json()["response_type"] == "ephemeral"
    assert "doesn't look like a request for an SOP" in ack.json()["text"]
    assert fake_slack.calls_to("chat.postMessage") == []
    assert fake_openai.requests_to("/chat/completions") == []


def test_not_in_channel_tells_the_user_to_invite_the_bot(make_bot, fake_slack, fake_openai):  # noqa: ANN001
    bot = make_bot()
    fake_slack.not_member.add(CHANNEL)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    assert len(fake_slack.responses) == 1
    assert "/invite @SOP Bot" in fake_slack.responses[0]["text"]
    assert fake_slack.responses[0]["response_type"] == "ephemeral"
    assert fake_openai.requests_to("/chat/completions") == []
    # the request was stored before posting; it is failed at once, with the reason, rather
    # than left pending until the recovery sweep finds it
    with bot.ctx.services.session() as session:
        row = session.get(Generation, 1)
    assert row is not None and row.status == "failed" and row.completed_at is not None
    assert row.error == "Slack refused the request's message (not_in_channel)."


def test_a_refused_draft_reply_fails_the_stored_request_and_tells_the_user(  # noqa: ANN201
        make_bot, fake_slack, fake_openai):  # noqa: ANN001
    fake_slack.refuse_streaming = "feature_not_enabled"
    fake_slack.inject("chat.postMessage", "restricted_action",
                      when=lambda params: bool(params.get("thread_ts")))
    bot = make_bot()
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    assert fake_slack.top_level(CHANNEL)[-1]["text"].startswith("SOP draft requested by")
    assert [r["text"] for r in fake_slack.responses] == [
        "I'm not in this channel yet. Invite me with `/invite @SOP Bot`, then run your "
        "command again."]
    assert fake_openai.requests_to("/chat/completions") == []
    with bot.ctx.services.session() as session:
        row = session.get(Generation, 1)
    assert row is not None and row.status == "failed"
    assert row.error == "Slack refused the reply that would show this draft (restricted_action)."


def test_with_every_draft_turn_taken_the_user_is_told_to_ask_again(  # noqa: ANN201
        make_bot, fake_slack, fake_openai):  # noqa: ANN001
    """Drafts take turns at the database (DB_DRAFT_CONNECTIONS); a draft that gets no turn
    within DB_POOL_TIMEOUT_SECONDS stores and posts nothing and says so in a sentence."""
    bot = make_bot(db_draft_connections=2, db_pool_timeout_seconds=0.05)
    services = bot.ctx.services
    with services.draft_session(), services.draft_session():  # other drafts' turns
        bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
        bot.wait()
    assert [(r["response_type"], r["text"]) for r in fake_slack.responses] == [(
        "ephemeral", "The database is busy with other drafts right now, so this draft could "
                     "not be stored or read the SOP library. Please ask again in a minute.")]
    assert fake_slack.calls_to("chat.postMessage") == []
    assert fake_openai.requests_to("/chat/completions") == []
    with services.session() as session:
        assert list(session.exec(select(Generation))) == []
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)  # turns free: it drafts
    bot.wait()
    assert _draft_reply(fake_slack)[1][0]["blocks"]


def test_the_request_is_stored_and_claimed_in_one_write_before_anything_is_posted(
    make_bot, fake_slack,  # noqa: ANN001
) -> None:
    """A replayed /sop (same trigger_id) posts nothing: the claim commits with the stored
    request, before the parent message; the reply is recorded when the draft is claimed."""
    bot = make_bot()
    for _ in range(2):
        bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL, trigger_id="13.24.ab")
        bot.wait()
    assert len(fake_slack.top_level(CHANNEL)) == 1
    parent, replies = _draft_reply(fake_slack)
    with bot.ctx.services.session() as session:
        rows = list(session.exec(select(Generation)))
    assert len(rows) == 1
    assert (rows[0].slack_thread_ts, rows[0].slack_ts) == (parent["ts"], replies[0]["ts"])
    assert rows[0].status == "completed"


def test_rate_limited_posts_are_retried_after_retry_after(make_bot, fake_slack):  # noqa: ANN001
    bot = make_bot()
    fake_slack.inject("chat.postMessage", "ratelimited", retry_after=7, times=1)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    assert bot.sleeps == [7.0]
    parent, replies = _draft_reply(fake_slack)
    assert parent["text"].startswith("SOP draft requested by")
    assert replies and replies[0].get("blocks")


def test_a_draft_slack_refuses_as_too_long_is_attached_as_a_file(make_bot, fake_slack):  # noqa: ANN001
    bot = make_bot()
    fake_slack.inject("chat.update", "msg_too_long", when=lambda params: "blocks" in params)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    parent, replies = _draft_reply(fake_slack)
    uploads = [m for m in replies if m.get("files")]
    assert uploads, "the draft should be attached as a file"
    meta, content = fake_slack.uploaded_file(uploads[0]["files"][0]["id"])
    assert meta["name"].endswith(".md")
    assert b"5.0 Procedure" in content
    assert "too long to show in Slack" in _block_texts(replies[0])


def test_a_failed_generation_edits_the_reply_into_a_sentence(make_bot, fake_slack, fake_openai):  # noqa: ANN001
    bot = make_bot()
    fake_openai.inject("POST", "/chat/completions", status=401, times=10)
    bot.slack.command("/sop", REQUEST, user=USER, channel=CHANNEL)
    bot.wait()
    _, replies = _draft_reply(fake_slack)
    assert replies[0]["text"].startswith(":x: I couldn't draft this SOP.")
    assert "blocks" not in replies[0] or not replies[0]["blocks"]


def test_fifty_drafts_stream_in_parallel(make_bot, fake_slack):  # noqa: ANN001
    """Each draft's first streamed preview waits on a barrier for all 50: if drafting were
    serialised anywhere, the barrier would break and the previews would fail."""
    fake_slack.refuse_streaming = "feature_not_enabled"
    bot = make_bot(openai_timeout_seconds=60, slack_update_interval_seconds=1000)
    barrier = threading.Barrier(50, timeout=30)
    passed: list[int] = []

    def hold_first_previews(method: str, params: dict) -> None:
        if method == "chat.update" and str(params.get("text", "")).startswith(
                ":hourglass_flowing_sand: Drafting…"):
            passed.append(barrier.wait())

    fake_slack.before_call = hold_first_previews
    for n in range(50):
        assert bot.slack.command("/sop", f"{REQUEST} number {n}", user=USER,
                                 channel=CHANNEL).status == 200
    bot.wait(timeout=90)
    assert sorted(passed) == list(range(50))
    with bot.ctx.services.session() as session:

        rows = list(session.exec(select(Generation)))
    assert len(rows) == 50
    assert {r.status for r in rows} == {"completed"}


def test_draft_blocks_respect_slack_limits() -> None:
    long_step = "Wipe the surface " * 400  # ~6,800 characters in one step
    structure = {
        "title": "T" * 300,
        "sections": [{"number": "5.0", "key": "procedure", "heading": "Procedure", "body": "",
                      "items": [{"number": f"5.{i}", "text": long_step} for i in range(1, 40)]}],
    }
    messages = blocks.draft_messages(structure, findings=[], compliant=True, model="m",
                                     mode="retrieval", draft_notice="DRAFT", generation_id=1)
    assert len(messages) > 1
    for message in messages:
        assert len(message) <= blocks.MAX_BLOCKS
        for block in message:
            if block["type"] == "section":
                assert len(block["text"]["text"]) <= blocks.MAX_SECTION_CHARS
            if block["type"] == "header":
                assert len(block["text"]["text"]) <= blocks.MAX_HEADER_CHARS
    assert messages[-1][-1]["type"] == "actions"
    joined = "".join(b["text"]["text"] for m in messages for b in m if b["type"] == "section")
    assert joined.count("Wipe the surface") == 39 * 400
