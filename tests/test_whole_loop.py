"""The whole loop through real HTTP: ten ✅ approvals in Slack → the scheduled retrain check →
a fine-tuning job on the (fake) provider → success → the model is promoted → the next `/sop`
drafts with the new `ft:` model, in a thread, and admins saw it all in their channel."""

from __future__ import annotations

from pathlib import Path

from bot.notifier import SlackNotifier
from sop_pipeline import model_registry
from sop_pipeline.models import RunState, TrainingRun
from sop_pipeline.notifications import FanOutNotifier, RecordingNotifier
from sop_pipeline.training.scheduler import poll_active_runs, retrain_check
from tests.fakes.slack_fake import BotFactory, user_reacts

SOPS = Path(__file__).parent / "data" / "sops"
CHANNEL = "CQUALITY1"
ADMIN_CHANNEL = "CADMIN001"
APPROVER = "UAPPROVE1"
REQUEST = "Write an SOP for calibration of the dissolution apparatus"


def test_ten_approvals_train_promote_and_draft_with_the_new_model(
    database_url, tmp_path, fake_openai, fake_slack  # noqa: ANN001
) -> None:
    recorded = RecordingNotifier()
    notifier = FanOutNotifier(recorded)
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    try:
        bot = factory.start(sop_approvers=[APPROVER], sop_watched_channels=[CHANNEL],
                            sop_admin_channel=ADMIN_CHANNEL)
        notifier.notifiers.append(SlackNotifier(bot.ctx.client, ADMIN_CHANNEL))
        services = bot.ctx.services
        no_sleep: list[float] = []

        # 1. Ten compliant SOPs posted by people, each approved with a ✅ by an approver.
        for path in sorted(SOPS.iterdir())[:10]:
            ts = fake_slack.user_posts(CHANNEL, "UAUTHOR01", path.read_text(encoding="utf-8"))
            user_reacts(fake_slack, CHANNEL, ts, APPROVER)
            bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts)
            bot.wait()
            [confirmation] = fake_slack.replies(CHANNEL, ts)
            assert confirmation["text"].startswith("Added as training example #")
        assert "#10 (10 new examples" in confirmation["text"]

        # 2. The scheduler's retrain check (called directly) starts a job at the provider.
        result = retrain_check(services, sleep=no_sleep.append)
        assert result is not None and result.run is not None, result and result.summary
        with services.session() as session:
            run = session.get(TrainingRun, result.run.id)
        assert run.provider_job_id

        # 3. The provider finishes; the next poll evaluates and promotes the model.
        fake_openai.advance_job(run.provider_job_id, "running")
        fake_openai.succeed_job(run.provider_job_id)
        poll_active_runs(services, sleep=no_sleep.append)
        with services.session() as session:
            run = session.get(TrainingRun, run.id)
            active = model_registry.active_model(session)
        assert run.state == RunState.PROMOTED
        assert active is not None and active.model_id == run.fine_tuned_model
        assert active.model_id.startswith("ft:")

        # 4. Admins followed it in their channel.
        admin_texts = [m["text"] for m in fake_slack.top_level(ADMIN_CHANNEL)]
        assert any(f"Training run #{run.id} started" in t for t in admin_texts)
        assert "run_promoted" in recorded.kinds()
        assert len(admin_texts) == len(recorded.sent)

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
