"""Admin surfaces: `/sop-retrain`, `/sop-status`, App Home, admin-channel notifications, the
Regenerate and Download .docx buttons, and start-up configuration errors."""

from __future__ import annotations

import io
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlmodel import select

from bot import blocks
from bot.notifier import SlackNotifier
from sop_pipeline.models import Generation, TrainingRun
from sop_pipeline.notifications import Notification
from tests.fakes.slack_fake import BotFactory, FakeSlack, user_reacts

# Jobs start on the real clock here: the provider must still train today.
pytestmark = pytest.mark.usefixtures("training_window_open")

SOPS = Path(__file__).parent / "data" / "sops"
CHANNEL = "CSOP00001"
ADMIN = "UADMIN001"
ADMIN_CHANNEL = "CADMIN001"
REQUEST = "Write an SOP for cleaning of the tablet compression machine"


@pytest.fixture
def bot(database_url, tmp_path, fake_openai, fake_slack, notifier):  # noqa: ANN001, ANN201
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    yield factory.start(sop_admins=[ADMIN], sop_approvers=[ADMIN],
                        sop_admin_channel=ADMIN_CHANNEL, retrain_min_new_examples=3)
    factory.close()


def _approve_all(bot, fake: FakeSlack, names: list[str]) -> None:  # noqa: ANN001
    for name in names:
        ts = fake.user_posts(CHANNEL, "UAUTHOR01", (SOPS / name).read_text())
        user_reacts(fake, CHANNEL, ts, ADMIN)
        bot.slack.reaction("reaction_added", user=ADMIN, channel=CHANNEL, ts=ts)
    bot.wait()


TEN = sorted(p.name for p in SOPS.iterdir())[:10]


@pytest.mark.parametrize("command", ["/sop-retrain", "/sop-status"])
def test_admin_commands_refuse_non_admins(bot, fake_slack, command) -> None:  # noqa: ANN001
    ack = bot.slack.command(command, user="UNOBODY01", channel=CHANNEL)
    bot.wait()
    assert ack.json()["response_type"] == "ephemeral"
    assert f"Only SOP Bot admins can use {command}" in ack.json()["text"]
    with bot.ctx.services.session() as session:
        assert list(session.exec(select(TrainingRun))) == []


def test_retrain_starts_a_run_and_answers_with_the_snapshot(bot, fake_slack) -> None:  # noqa: ANN001
    _approve_all(bot, fake_slack, TEN)
    assert bot.slack.command("/sop-retrain", user=ADMIN, channel=CHANNEL).status == 200
    bot.wait()
    with bot.ctx.services.session() as session:
        [run] = list(session.exec(select(TrainingRun)))
    assert run.trigger == "manual" and run.requested_by == ADMIN
    [final] = fake_slack.responses  # one answer, after the check
    assert final["response_type"] == "ephemeral"
    assert final["text"].startswith(f":rocket: Training run #{run.id} started on 10 examples")
    assert "estimated cost $" in final["text"]
    assert f"<#{ADMIN_CHANNEL}>" in final["text"]


def test_a_second_retrain_gets_one_answer_in_words(bot, fake_slack) -> None:  # noqa: ANN001
    from sop_pipeline.models import RunState

    _approve_all(bot, fake_slack, TEN)
    bot.slack.command("/sop-retrain", user=ADMIN, channel=CHANNEL)
    bot.wait()
    with bot.ctx.services.session() as session:
        [run] = list(session.exec(select(TrainingRun)))
        run.state = RunState.VALIDATING_FILES
        session.add(run)
        session.commit()
    before = len(fake_slack.responses)
    bot.slack.command("/sop-retrain", user=ADMIN, channel=CHANNEL)
    bot.wait()
    [answer] = fake_slack.responses[before:]
    assert answer["text"].startswith(
        f":information_source: No new run started: training run #{run.id} is waiting for "
        "the provider to check the training data since ")
    words = answer["text"].removeprefix(":information_source:")
    assert "validating" not in words and "_" not in words


def test_retrain_with_nothing_to_train_says_why(bot, fake_slack) -> None:  # noqa: ANN001
    bot.slack.command("/sop-retrain", user=ADMIN, channel=CHANNEL)
    bot.wait()
    [answer] = fake_slack.responses
    assert answer["text"].startswith(":information_source: No training run was started.")


def test_status_shows_model_examples_runs_and_cutoff(bot, fake_slack) -> None:  # noqa: ANN001
    _approve_all(bot, fake_slack, TEN[:2])
    bot.slack.command("/sop-status", user=ADMIN, channel=CHANNEL)
    bot.wait()
    response = fake_slack.responses[-1]
    text = "\n".join(b["text"]["text"] if isinstance(b.get("text"), dict) else
                     " ".join(e["text"] for e in b.get("elements", []))
                     for b in response["blocks"])
    assert "*Active model:* none fine-tuned yet" in text
    assert "*Examples:* 2 approved, 2 of 3 new since the last training, 0 retracted." in text
    assert "no training run in progress" in text
    assert "day(s) left before the provider's fine-tuning cutoff" in text


def test_app_home_shows_the_dashboard_to_admins_and_a_how_to_to_others(bot, fake_slack) -> None:  # noqa: ANN001
    for user in (ADMIN, "UNOBODY01"):
        bot.slack.event({"type": "app_home_opened", "user": user, "channel": "D0001",
                         "tab": "home", "event_ts": "1.1"})
    bot.wait()
    admin_view, user_view = fake_slack.views[ADMIN], fake_slack.views["UNOBODY01"]
    assert admin_view["blocks"][0]["text"]["text"] == "SOP Bot status"
    assert user_view["blocks"][0]["text"]["text"] == "SOP Bot"
    assert not any("Active model" in str(b) for b in user_view["blocks"])


def test_regenerate_drafts_again_in_the_same_thread(bot, fake_slack, fake_openai) -> None:  # noqa: ANN001
    bot.slack.command("/sop", REQUEST, user="UREQ00001", channel=CHANNEL)
    bot.wait()
    parent = fake_slack.top_level(CHANNEL)[-1]
    first = fake_slack.replies(CHANNEL, parent["ts"])[0]
    bot.slack.action(blocks.REGENERATE_ACTION, _generation_id(first), user="UREQ00001",
                     channel=CHANNEL, message_ts=first["ts"], thread_ts=parent["ts"])
    bot.wait()
    drafts = [m for m in fake_slack.replies(CHANNEL, parent["ts"]) if m.get("blocks")]
    assert len(drafts) == 2
    assert len(fake_openai.requests_to("/chat/completions")) == 2
    with bot.ctx.services.session() as session:
        rows = list(session.exec(select(Generation)))
    assert [r.request for r in rows] == [REQUEST, REQUEST]


def test_regenerate_with_every_draft_turn_taken_says_to_ask_again(  # noqa: ANN201
        bot, fake_slack, fake_openai):  # noqa: ANN001
    bot.slack.command("/sop", REQUEST, user="UREQ00001", channel=CHANNEL)
    bot.wait()
    parent = fake_slack.top_level(CHANNEL)[-1]
    first = fake_slack.replies(CHANNEL, parent["ts"])[0]
    services = bot.ctx.services
    services.settings.db_pool_timeout_seconds = 0.05
    with ExitStack() as turns:  # other drafts hold every turn
        for _ in range(services.draft_connections):
            turns.enter_context(services.draft_session())
        bot.slack.action(blocks.REGENERATE_ACTION, _generation_id(first), user="UREQ00001",
                         channel=CHANNEL, message_ts=first["ts"], thread_ts=parent["ts"])
        bot.wait()
    [note] = fake_slack.calls_to("chat.postEphemeral")
    assert note.params["user"] == "UREQ00001"
    assert note.params["text"].startswith("The database is busy with other drafts right now")
    assert len(fake_slack.replies(CHANNEL, parent["ts"])) == 1  # no second draft
    assert len(fake_openai.requests_to("/chat/completions")) == 1
    with services.session() as session:
        assert len(list(session.exec(select(Generation)))) == 1


def test_download_docx_uploads_the_draft_into_the_thread(bot, fake_slack) -> None:  # noqa: ANN001
    bot.slack.command("/sop", REQUEST, user="UREQ00001", channel=CHANNEL)
    bot.wait()
    parent = fake_slack.top_level(CHANNEL)[-1]
    draft = fake_slack.replies(CHANNEL, parent["ts"])[0]
    bot.slack.action(blocks.DOCX_ACTION, _generation_id(draft), user="UREQ00001",
                     channel=CHANNEL, message_ts=draft["ts"], thread_ts=parent["ts"])
    bot.wait()
    [upload] = [m for m in fake_slack.replies(CHANNEL, parent["ts"]) if m.get("files")]
    meta, content = fake_slack.uploaded_file(upload["files"][0]["id"])
    assert meta["name"].endswith("-draft.docx")
    import docx

    text = "\n".join(p.text for p in docx.Document(io.BytesIO(content)).paragraphs)
    assert "DRAFT" in text and "Procedure" in text


def _generation_id(message: dict) -> str:
    return [b for b in message["blocks"] if b["type"] == "actions"][0]["elements"][0]["value"]


def test_slack_notifier_posts_to_the_admin_channel_and_never_raises(bot, fake_slack) -> None:  # noqa: ANN001
    notifier = SlackNotifier(bot.ctx.client, ADMIN_CHANNEL)
    notifier.notify(Notification(kind="run_succeeded", text="Run #1 succeeded.", run_id=1))
    fake_slack.inject("chat.postMessage", "channel_not_found")
    notifier.notify(Notification(kind="run_failed", text="Run #2 failed.", run_id=2))
    [message] = fake_slack.top_level(ADMIN_CHANNEL)
    assert message["text"] == ":white_check_mark: Run #1 succeeded."


def test_missing_bot_token_stops_start_up_with_a_sentence(monkeypatch, capsys, tmp_path) -> None:  # noqa: ANN001
    from bot.__main__ import main

    monkeypatch.chdir(tmp_path)
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert main() == 2
    assert "SLACK_BOT_TOKEN is not set" in capsys.readouterr().err

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    assert main() == 2
    assert "SLACK_SIGNING_SECRET is not set" in capsys.readouterr().err


def test_sop_bot_run_is_wired_to_the_bot(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from bot.cli import build_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    result = CliRunner().invoke(build_app(), ["run"])
    assert result.exit_code == 2


def test_loss_chart_is_uploaded_to_the_admin_channel_and_linked_from_status(
    bot, fake_slack, tmp_path  # noqa: ANN001
) -> None:
    from sop_pipeline.charts import record_chart_url

    services = bot.ctx.services
    chart = tmp_path / "run-1-loss.png"
    chart.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    with services.session() as session:
        session.add(TrainingRun(id=1, snapshot_id=_snapshot_id(services), state="promoted",
                                active_lock=None, fine_tuned_model="ft:gpt-4o-mini:x:sop:1"))
        session.commit()
    notifier = SlackNotifier(bot.ctx.client, ADMIN_CHANNEL,
                             on_chart_posted=lambda run_id, url: record_chart_url(
                                 services, run_id, url))

    notifier.notify(Notification(kind="chart", text="Loss chart for training run #1.",
                                 run_id=1, data={"path": str(chart)}))

    [upload] = fake_slack.calls_to("files.completeUploadExternal")
    assert upload.params["channel_id"] == ADMIN_CHANNEL
    bot.slack.command("/sop-status", user=ADMIN, channel=CHANNEL)
    bot.wait()
    status_text = str(fake_slack.responses[-1]["blocks"])
    assert "|loss chart>" in status_text and "run-1-loss.png" in status_text


def _snapshot_id(services) -> int:  # noqa: ANN001
    from sop_pipeline.models import DatasetSnapshot

    with services.session() as session:
        snapshot = DatasetSnapshot(content_hash="c" * 64)
        session.add(snapshot)
        session.commit()
        return snapshot.id


def _run_row(services, snapshot_id: int, **values) -> int:  # noqa: ANN001
    with services.session() as session:
        run = TrainingRun(snapshot_id=snapshot_id, **values)
        session.add(run)
        session.commit()
        return run.id


def test_a_run_message_survives_a_restart_and_a_lost_post_is_posted_at_start(
    bot, fake_slack  # noqa: ANN001
) -> None:
    """The run's message ts is stored: a new notifier (a restarted bot) edits the same
    message; a run whose message was never posted (crash after the commit) is posted by
    `recover()`, once."""
    services = bot.ctx.services
    snapshot = _snapshot_id(services)
    run_id = _run_row(services, snapshot, state="running", trigger="manual", requested_by=ADMIN,
                      provider_job_id="ftjob-1")
    first = SlackNotifier(bot.ctx.client, ADMIN_CHANNEL, services=services)
    first.notify(Notification(kind="run_progress", text="x", run_id=run_id))
    [message] = fake_slack.top_level(ADMIN_CHANNEL)
    assert message["text"] == f":hourglass_flowing_sand: Training run #{run_id}: training"
    assert f"by <@{ADMIN}>" in str(message["blocks"])

    with services.session() as session:
        row = session.get(TrainingRun, run_id)
        row.state, row.active_lock = "failed", None
        row.error_message = "The training file has an invalid format on line 3."
        session.add(row)
        session.commit()
    lost = _run_row(services, snapshot, state="cancelled", active_lock=None, trigger="schedule",
                    error_message="Cancelled by UADMIN001.")
    restarted = SlackNotifier(bot.ctx.client, ADMIN_CHANNEL, services=services)
    restarted.recover()
    restarted.recover()  # nothing left to do the second time

    messages = fake_slack.top_level(ADMIN_CHANNEL)
    assert [m["ts"] for m in messages][0] == message["ts"] and len(messages) == 2
    failed = str(messages[0]["blocks"])
    assert "stopped: training did not complete" in failed
    assert "the current model stays in use" in failed and "invalid format on line 3" in failed
    assert "failed" not in messages[0]["text"].split(":", 2)[-1].split()  # words, not codes
    assert f"Training run #{lost}: cancelled" in messages[1]["text"]
    assert len(fake_slack.calls_to("chat.update")) == 1
    fake_slack.assert_contract_ok()


# --- admin model switches: Roll back / Use base model, with a confirmation -------------------

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:sop:first1"


@pytest.fixture
def admin_bot(database_url, tmp_path, fake_openai, fake_slack):  # noqa: ANN001, ANN201
    """The bot with its notifier posting to the admin channel, as `sop-bot run` wires it."""
    from sop_pipeline.notifications import FanOutNotifier, RecordingNotifier

    notifier = FanOutNotifier(RecordingNotifier())
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    harness = factory.start(sop_admins=[ADMIN], sop_approvers=[ADMIN],
                            sop_admin_channel=ADMIN_CHANNEL)
    notifier.notifiers.append(SlackNotifier(harness.ctx.client, ADMIN_CHANNEL))
    yield harness
    factory.close()


def _promote_first_fine_tune(services, fake_openai) -> None:  # noqa: ANN001
    from sop_pipeline import model_registry
    from sop_pipeline.models import ModelVersion

    fake_openai.register_model(FT_MODEL)
    with services.session() as session:
        version = ModelVersion(model_id=FT_MODEL)
        session.add(version)
        session.flush()
        model_registry.activate(session, version, actor="system", action="promote")
        session.commit()


def _status_buttons(bot, fake: FakeSlack) -> dict[str, dict]:  # noqa: ANN001
    bot.slack.command("/sop-status", user=ADMIN, channel=CHANNEL)
    bot.wait()
    actions = [b for b in fake.responses[-1]["blocks"] if b["type"] == "actions"]
    return {e["action_id"]: e for a in actions for e in a["elements"]}


def _assert_confirm_object(element: dict) -> None:
    """Block Kit's confirm object: plain_text title/confirm/deny, text, within the limits."""
    dialog = element["confirm"]
    assert dialog["title"]["type"] == "plain_text" and len(dialog["title"]["text"]) <= 100
    assert dialog["text"]["type"] in ("plain_text", "mrkdwn") and len(dialog["text"]["text"]) <= 300
    for key in ("confirm", "deny"):
        assert dialog[key]["type"] == "plain_text" and len(dialog[key]["text"]) <= 30
    assert dialog.get("style", "danger") in ("danger", "primary")


def test_status_offers_rollback_and_base_with_a_confirmation_and_rollback_reaches_slack(
    admin_bot, fake_slack, fake_openai  # noqa: ANN001
) -> None:
    from sop_pipeline import audit, model_registry

    bot, services = admin_bot, admin_bot.ctx.services
    assert _status_buttons(bot, fake_slack) == {}  # nothing to roll back to yet: no buttons
    _promote_first_fine_tune(services, fake_openai)

    buttons = _status_buttons(bot, fake_slack)
    assert set(buttons) == {blocks.MODEL_ROLLBACK_ACTION, blocks.MODEL_BASE_ACTION}
    for element in buttons.values():
        _assert_confirm_object(element)
    base = services.settings.sop_base_model
    assert f"back to `base model {base} + retrieval`" in \
        buttons[blocks.MODEL_ROLLBACK_ACTION]["confirm"]["text"]["text"]

    rollback = buttons[blocks.MODEL_ROLLBACK_ACTION]
    bot.slack.action(rollback["action_id"], rollback["value"], user=ADMIN, channel=CHANNEL,
                     message_ts="1.000001")
    bot.wait()

    answer = fake_slack.responses[-1]
    assert answer["replace_original"] is True
    assert answer["text"] == (f":rewind: Rolled back: drafts now use base model {base} + "
                              f"retrieval (was {FT_MODEL}). Announced in <#{ADMIN_CHANNEL}>.")
    assert "*Active model:* none fine-tuned yet" in str(answer["blocks"])
    [announced] = fake_slack.top_level(ADMIN_CHANNEL)
    assert announced["text"] == (f":rewind: Model rolled back by <@{ADMIN}>: drafts now use "
                                 f"base model {base} + retrieval (was {FT_MODEL}). Reason: "
                                 "from Slack")
    with services.session() as session:
        assert model_registry.active_model(session) is None
        [event] = audit.events(session, action="rollback")
    assert (event.actor, event.old_value, event.new_value) == (ADMIN, FT_MODEL, "base")

    bot.slack.command("/sop", REQUEST, user="UREQ00001", channel=CHANNEL)
    bot.wait()
    assert fake_openai.requests_to("/chat/completions")[-1].json["model"] == base

    # the same click delivered again (or an old status message) switches nothing
    bot.slack.action(rollback["action_id"], rollback["value"], user=ADMIN, channel=CHANNEL,
                     message_ts="1.000001")
    bot.wait()
    assert "nothing was switched" in fake_slack.responses[-1]["text"]
    assert len(fake_slack.top_level(ADMIN_CHANNEL)) == 1


def test_only_admins_can_switch_models(admin_bot, fake_slack, fake_openai) -> None:  # noqa: ANN001
    from sop_pipeline import model_registry

    bot, services = admin_bot, admin_bot.ctx.services
    _promote_first_fine_tune(services, fake_openai)
    base_button = _status_buttons(bot, fake_slack)[blocks.MODEL_BASE_ACTION]

    bot.slack.action(base_button["action_id"], base_button["value"], user="UNOBODY01",
                     channel=CHANNEL, message_ts="1.000001")
    bot.wait()

    assert "Only SOP Bot admins can switch models" in fake_slack.responses[-1]["text"]
    assert fake_slack.responses[-1]["replace_original"] is False
    assert fake_slack.top_level(ADMIN_CHANNEL) == []
    with services.session() as session:
        assert model_registry.active_model(session).model_id == FT_MODEL


def test_app_home_use_base_model_switches_and_publishes_the_new_state(
    admin_bot, fake_slack, fake_openai  # noqa: ANN001
) -> None:
    import json
    from urllib.parse import urlencode

    from sop_pipeline import model_registry

    bot, services = admin_bot, admin_bot.ctx.services
    _promote_first_fine_tune(services, fake_openai)
    bot.slack.event({"type": "app_home_opened", "user": ADMIN, "channel": "D0001",
                     "tab": "home", "event_ts": "1.1"})
    bot.wait()
    [actions] = [b for b in fake_slack.views[ADMIN]["blocks"] if b["type"] == "actions"]
    [base_button] = [e for e in actions["elements"]
                     if e["action_id"] == blocks.MODEL_BASE_ACTION]
    _assert_confirm_object(base_button)

    payload = {  # a click in App Home: a view container, no channel, no response_url
        "type": "block_actions", "team": {"id": "T00000001"},
        "user": {"id": ADMIN, "username": "admin", "team_id": "T00000001"},
        "api_app_id": "A00000001", "token": "legacy-verification-token",
        "container": {"type": "view", "view_id": "V0001"}, "trigger_id": "trigger.home",
        "view": {"id": "V0001", "type": "home", "blocks": fake_slack.views[ADMIN]["blocks"]},
        "actions": [{"action_id": base_button["action_id"], "block_id": "sop_model_actions",
                     "value": base_button["value"], "type": "button",
                     "action_ts": "1763000000.000001"}],
    }
    bot.slack.post(urlencode({"payload": json.dumps(payload)}),
                   "application/x-www-form-urlencoded")
    bot.wait()

    home = fake_slack.views[ADMIN]["blocks"]
    assert home[0]["text"]["text"].startswith(":arrows_counterclockwise: Drafts now use the "
                                              "base model")
    assert "*Active model:* none fine-tuned yet" in str(home)
    [announced] = fake_slack.top_level(ADMIN_CHANNEL)
    assert announced["text"].startswith(f":arrows_counterclockwise: Model switched by <@{ADMIN}>")
    with services.session() as session:
        assert model_registry.active_model(session) is None
