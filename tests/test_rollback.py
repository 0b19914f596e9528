"""Always a way back: the base model with retrieval is a model version; `sop-bot models
rollback` from the first fine-tune returns to it, `models activate base` works, every switch is
audited and announced in the admin channel, and drafts then use the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import build_app
from sop_pipeline import audit, model_registry
from sop_pipeline.generation import generate
from sop_pipeline.models import ModelVersion
from tests.test_training_helpers import approve, make_services, training_settings

ADMIN_CHANNEL = "CADMIN001"
FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:sop:abc123"
REQUEST = "Write an SOP for cleaning of the tablet compression machine"


@pytest.fixture
def services(database_url: str, tmp_path: Path, fake_openai):  # noqa: ANN001, ANN201
    svc = make_services(training_settings(database_url, tmp_path / "data", fake_openai))
    yield svc
    svc.engine.dispose()


@pytest.fixture
def cli(database_url: str, tmp_path: Path, fake_openai, fake_slack, monkeypatch):  # noqa: ANN001, ANN201
    """`sop-bot` in-process, with Slack configured so switches reach the admin channel."""
    monkeypatch.chdir(tmp_path)
    for key, value in {
        "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url,
        "SLACK_BOT_TOKEN": fake_slack.bot_token, "SLACK_API_URL": fake_slack.base_url,
        "SOP_ADMIN_CHANNEL": ADMIN_CHANNEL, "EVAL_SHARE": "0", "USER": "alice",
    }.items():
        monkeypatch.setenv(key, value)
    runner, app = CliRunner(), build_app()
    return lambda *args: runner.invoke(app, list(args), catch_exceptions=False)


def promote_first_fine_tune(services, fake_openai) -> ModelVersion:  # noqa: ANN001
    """What the lifecycle does when the first run passes the gate."""
    fake_openai.register_model(FT_MODEL)
    with services.session() as session:
        version = ModelVersion(model_id=FT_MODEL, base_model=services.settings.sop_base_model)
        session.add(version)
        session.flush()
        model_registry.activate(session, version, actor="system", action="promote")
        session.commit()
        return version


def test_rollback_from_the_first_fine_tune_returns_to_the_base_model(
    cli, services, fake_openai, fake_slack  # noqa: ANN001
) -> None:
    approve(services, 3)
    promote_first_fine_tune(services, fake_openai)
    assert generate(services, REQUEST, "U1").model == FT_MODEL

    rolled = cli("models", "rollback", "--reason", "drafts got worse")

    assert rolled.exit_code == 0, rolled.output
    base = services.settings.sop_base_model
    assert f"active model is now base model {base} + retrieval" in rolled.stdout
    with services.session() as session:
        assert model_registry.active_model(session) is None
        assert model_registry.is_base(model_registry.active_version(session))
        rollback = audit.events(session, action="rollback")[-1]
    assert (rollback.actor, rollback.old_value, rollback.new_value, rollback.reason) == (
        "cli:alice", FT_MODEL, "base", "drafts got worse")
    [message] = fake_slack.top_level(ADMIN_CHANNEL)
    assert message["text"] == (
        f":rewind: Model rolled back by cli:alice: drafts now use base model {base} + "
        f"retrieval (was {FT_MODEL}). Reason: drafts got worse")

    draft = generate(services, REQUEST, "U1")
    assert (draft.mode, draft.model) == ("retrieval", base)
    assert fake_openai.requests_to("/chat/completions")[-1].json["model"] == base

    listed = json.loads(cli("models", "list", "--json").stdout)
    assert [(m["label"], m["status"]) for m in listed] == [
        (f"base model {base} + retrieval", "active"), (FT_MODEL, "previous")]
    again = cli("models", "rollback")
    assert again.exit_code == 0 and FT_MODEL in again.stdout  # and forward again


def test_activate_base_by_name_and_nothing_to_roll_back_before_any_fine_tune(
    cli, services, fake_openai, fake_slack  # noqa: ANN001
) -> None:
    nothing = cli("models", "rollback")
    assert nothing.exit_code == 2
    assert "drafts already use the base model" in " ".join(nothing.output.split())
    already = cli("models", "activate", "base")
    assert already.exit_code == 0 and "is already active" in already.stdout

    promote_first_fine_tune(services, fake_openai)
    switched = cli("models", "activate", "base", "--reason", "audit finding")
    assert switched.exit_code == 0, switched.output
    assert "Active model is now base model" in switched.stdout
    with services.session() as session:
        assert model_registry.active_model(session) is None
        actions = [(e.action, e.new_value) for e in audit.events(session)]
    assert actions == [("promote", FT_MODEL), ("activate", "base")]
    [message] = fake_slack.top_level(ADMIN_CHANNEL)
    assert message["text"].startswith(":arrows_counterclockwise: Model switched by cli:alice")

    missing = cli("models", "activate", "42")
    assert missing.exit_code == 2 and "no model version '42'" in " ".join(missing.output.split())


def test_a_retired_fine_tune_hands_over_to_the_base_version(services, fake_openai) -> None:  # noqa: ANN001
    version = promote_first_fine_tune(services, fake_openai)
    with services.session() as session:
        model_registry.deactivate_missing(session, session.get(ModelVersion, version.id),
                                          reason="model_not_found")
        session.commit()
        assert model_registry.is_base(model_registry.active_version(session))
        with pytest.raises(model_registry.ModelRegistryError, match="no previous model"):
            model_registry.rollback(session, actor="U1")
