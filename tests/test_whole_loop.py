"""The whole loop through real HTTP: ten ✅ approvals in Slack → the scheduled retrain check →
a fine-tuning job on the (fake) provider → success → the model is promoted → the next `/sop`
drafts with the new `ft:` model, in a thread, and admins saw it all in their channel."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from pathlib import Path

from bot.notifier import SlackNotifier
from sop_pipeline import model_registry
from sop_pipeline.charts import record_chart_url
from sop_pipeline.models import RunState, TrainingRun
from sop_pipeline.notifications import FanOutNotifier, RecordingNotifier
from sop_pipeline.training.scheduler import poll_active_runs, retrain_check
from tests.fakes.slack_fake import BotFactory, user_reacts

SOPS = Path(__file__).parent / "data" / "sops"
CHANNEL = "CQUALITY1"
ADMIN_CHANNEL = "CADMIN001"
APPROVER = "UAPPROVE1"
ADMIN = "UADMIN001"
REQUEST = "Write an SOP for calibration of the dissolution apparatus"
TRAINING_DAY = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)


def _shown(message: dict) -> str:
    """What a person reads: the blocks' text (the fallback text only without blocks)."""
    parts = [str((b.get("text") or {}).get("text", "")) for b in message.get("blocks", [])]
    parts += [e.get("text", "") for b in message.get("blocks", [])
              for e in b.get("elements", []) if isinstance(e.get("text"), str)]
    return "\n".join(parts) or message["text"]


def test_ten_approvals_train_promote_and_draft_with_the_new_model(
    database_url, tmp_path, fake_openai, fake_slack  # noqa: ANN001
) -> None:
    recorded = RecordingNotifier()
    notifier = FanOutNotifier(recorded)
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    try:
        prompts = tmp_path / "eval.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
            "Write an SOP for cleaning of the coating pan",
            "Write an SOP for calibration of the pH meter")), encoding="utf-8")
        bot = factory.start(sop_approvers=[APPROVER], sop_watched_channels=[CHANNEL],
                            sop_admin_channel=ADMIN_CHANNEL, sop_admins=[ADMIN],
                            eval_prompts_file=prompts)
        notifier.notifiers.append(SlackNotifier(
            bot.ctx.client, ADMIN_CHANNEL, services=bot.ctx.services,
            on_chart_posted=functools.partial(record_chart_url, bot.ctx.services)))
        services = bot.ctx.services
        # A day inside OpenAI's fine-tuning window and outside its countdown (sunset.toml),
        # whatever the real date: the loop, not the sunset, is under test here.
        services.clock = lambda: TRAINING_DAY
        no_sleep: list[float] = []

        # 1. Ten compliant SOPs posted by people, each approved with a ✅ by an approver.
        for path in sorted(SOPS.iterdir())[:10]:
            ts = fake_slack.user_posts(CHANNEL, "UAUTHOR01", path.read_text(encoding="utf-8"))
            user_reacts(fake_slack, CHANNEL, ts, APPROVER)
            bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts)
            bot.wait()
            assert fake_slack.replies(CHANNEL, ts) == []  # approvals answer quietly
            confirmation = fake_slack.ephemerals_for(APPROVER)[-1]
            assert confirmation["text"].startswith("Added as training example #")
        assert "#10 (10 new examples" in confirmation["text"]

        posted_before = len(fake_slack.calls_to("chat.postMessage"))
        # 2. The scheduler's retrain check (called directly) starts a job at the provider.
        result = retrain_check(services, sleep=no_sleep.append)
        assert result is not None and result.run is not None, result and result.summary
        with services.session() as session:
            run = session.get(TrainingRun, result.run.id)
        assert run.provider_job_id

        # A second request while it trains gets one answer, in words.
        before = len(fake_slack.responses)
        assert bot.slack.command("/sop-retrain", user=ADMIN, channel=CHANNEL).status == 200
        bot.wait()
        [answer] = fake_slack.responses[before:]
        assert answer["text"].startswith(
            f":information_source: No new run started: training run #{run.id} is ")
        words = answer["text"].removeprefix(":information_source:")
        assert "_" not in words and " since " in words

        # 3. The provider trains (progress edits the same message), finishes; the next poll
        # evaluates and promotes the model.
        fake_openai.advance_job(run.provider_job_id, "running")
        fake_openai.add_metrics(run.provider_job_id, step=1, train_loss=1.2, valid_loss=1.4)
        poll_active_runs(services, sleep=no_sleep.append)
        [message] = fake_slack.top_level(ADMIN_CHANNEL)
        assert "Progress: step 1, training loss 1.2000, validation loss 1.4000." in _shown(
            message)
        assert "Training run #1: training" in _shown(message)
        fake_openai.add_metrics(run.provider_job_id, step=2, train_loss=0.8, valid_loss=1.0)
        fake_openai.succeed_job(run.provider_job_id)
        poll_active_runs(services, sleep=no_sleep.append)
        with services.session() as session:
            run = session.get(TrainingRun, run.id)
            active = model_registry.active_model(session)
        assert run.state == RunState.PROMOTED
        assert active is not None and active.model_id == run.fine_tuned_model
        assert active.model_id.startswith("ft:")

        # 4. Admins followed it in ONE message, edited in place, chart in its thread.
        assert "run_promoted" in recorded.kinds()
        [message] = fake_slack.top_level(ADMIN_CHANNEL)
        shown = _shown(message)
        assert f"Training run #{run.id}: finished: the new model is now in use" in shown
        assert "estimated cost $" in shown and "Progress: step" in shown
        assert "| Metric" in shown and "Aggregate score" in shown and "Candidate: ft:" in shown
        assert "```" in shown  # the comparison table is a monospace section
        assert len(fake_slack.calls_to("chat.postMessage")) - posted_before == 1
        assert len(fake_slack.calls_to("chat.update")) >= 2  # it moved, in place
        [chart] = fake_slack.replies(ADMIN_CHANNEL, message["ts"])
        assert chart["files"][0]["name"].endswith(".png")
        for state in RunState.ACTIVE + RunState.TERMINAL:
            if "_" in state:
                assert state not in shown
        with services.session() as session:
            assert session.get(TrainingRun, run.id).admin_message_ts == message["ts"]

        # 5. The next /sop asks the provider for the new fine-tuned model, drafts in a thread.
        before = len(fake_openai.requests_to("/chat/completions"))
        assert bot.slack.command("/sop", REQUEST, user="UREQ00001",
                                 channel=CHANNEL).status == 200
        bot.wait()
        chats = fake_openai.requests_to("/chat/completions")[before:]
        assert chats and chats[0].json["model"] == active.model_id
        assert [m["role"] for m in chats[0].json["messages"]] == ["system", "user"]
        parent = fake_slack.top_level(CHANNEL)[-1]
        assert parent["text"] == f"SOP draft requested by <@UREQ00001>: {REQUEST}"
        [draft] = fake_slack.replies(CHANNEL, parent["ts"])
        rendered = str(draft["blocks"])
        assert "Dissolution Apparatus" in rendered
        assert f"Model: `{active.model_id}` · mode: fine_tuned" in rendered
        assert "DRAFT" in rendered
    finally:
        factory.close()
    fake_openai.assert_contract_ok()
