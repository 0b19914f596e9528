"""Everything the bot posts is rendered by one function (`bot.render`): the model's output, the
request and file names reach Slack escaped, in the streamed preview (stream appends or
`chat.update` edits) and in the final draft alike. Asserted on what Slack received."""

from __future__ import annotations

import json

import pytest

from bot import render
from sop_pipeline.models import Generation
from tests.fakes.openai_fake import house_sop
from tests.fakes.slack_fake import BotFactory, FakeSlack

CHANNEL = "CSOP00001"
USER = "UREQ00001"
RLO = "\u202e"
PINGS = ("<!channel>", "<!here>", "<@U0EVIL01>", "<#C0EVIL01>", "<https://evil.example|",
         "<!subteam^S0EVIL>")


def hostile_sop() -> str:
    """A compliant SOP whose text tries every way to ping, link, break out of a code block or
    turn itself around."""
    sop = house_sop("Cleaning of Mixer")
    return sop.replace(
        "5.2 Remove the product contact parts.",
        "5.2 Remove the parts <!channel> <!here> and tell <@U0EVIL01> in <#C0EVIL01>.\n"
        "5.3 See <https://evil.example|the official guide> and <!subteam^S0EVIL>.\n"
        "5.4 ```\n</code> ``` escaped?\n"
        f"5.5 Sign as {RLO}txt.exe and A\u200bB\u2066C\u2069.",
    ).replace("5.3 Clean the parts", "5.6 Clean the parts")


def _strings(value: object) -> list[str]:
    """Every string in a call's parameters (text, markdown_text, blocks, chunks...)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return [value]
        return _strings(parsed) if isinstance(parsed, (dict, list)) else [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


POSTING = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream",
           "chat.stopStream", "chat.postEphemeral", "files.completeUploadExternal")


def _posted(fake: FakeSlack) -> list[tuple[str, str]]:
    return [(call.method, text) for call in fake.calls if call.method in POSTING
            for key, value in call.params.items() if key not in ("channel", "ts", "token")
            for text in _strings(value)]


@pytest.fixture
def make_bot(database_url, tmp_path, fake_openai, fake_slack, notifier):  # noqa: ANN001, ANN201
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    yield factory.start
    factory.close()


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "chat.update"])
def test_model_output_reaches_slack_escaped_in_previews_and_the_final_draft(
    make_bot, fake_slack, fake_openai, streaming: bool,  # noqa: ANN001
) -> None:
    if not streaming:
        fake_slack.refuse_streaming = "feature_not_enabled"
    bot = make_bot(slack_update_interval_seconds=0, sop_repair_rounds=0)
    fake_openai.chat_responses.append(hostile_sop())
    request = f"Write an SOP for cleaning of the mixer {RLO}reversed"
    assert bot.slack.command("/sop", request, user=USER, channel=CHANNEL).status == 200
    bot.wait()

    posted = _posted(fake_slack)
    previews = [t for m, t in posted
                if m == ("chat.appendStream" if streaming else "chat.update")]
    assert any("&lt;!channel&gt;" in t for t in previews), "the preview showed the text"
    for method, text in posted:
        for ping in PINGS:
            assert ping not in text, (method, ping, text[:200])
        assert not render.has_invisible(text), (method, ascii(text[:200]))
        if text.count("```"):  # our own code blocks only, closed, with nothing breaking out
            assert text.count("```") % 2 == 0, (method, text)
    assert any(m == "chat.appendStream" for m, _ in posted) is streaming

    parent = fake_slack.top_level(CHANNEL)[-1]
    assert RLO not in parent["text"] and parent["text"].endswith("mixer reversed")
    [draft] = fake_slack.replies(CHANNEL, parent["ts"])
    final = " ".join(_strings(draft.get("blocks")))
    assert "Remove the parts" in final and "escaped?" in final
    assert "Sign as txt.exe and ABC." in final
    with bot.ctx.services.session() as session:
        row = session.get(Generation, 1)
    assert RLO not in row.request  # sanitised at intake: not stored raw


def test_render_is_the_one_escaping_function() -> None:
    assert render.mrkdwn("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"
    assert render.mrkdwn(f"a{RLO}b\u200bc\u2066d") == "abcd"
    block = render.code("x ``` y `")
    assert block.startswith("```") and block.endswith("```") and block.count("```") == 2
    assert "`" not in render.preview("a ``` b `c`")
    assert render.plain(f"Title: {RLO}X") == "Title: X"
