"""`sop-bot retrain | runs ... | models ... | status` run in-process against the fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import build_app
from sop_pipeline import audit
from sop_pipeline.models import ModelVersion
from tests.test_training_helpers import approve, make_services, training_settings

# Jobs start on the real clock here: the provider must still train today.
pytestmark = pytest.mark.usefixtures("training_window_open")


@pytest.fixture
def cli(database_url: str, tmp_path: Path, fake_openai, monkeypatch):  # noqa: ANN001, ANN201
    """Invoke `sop-bot` with the environment pointing at the test database and the fake."""
    monkeypatch.chdir(tmp_path)  # no developer .env
    for key, value in {
        "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url,
        "EVAL_SHARE": "0", "USER": "alice",
    }.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    app = build_app()

    def invoke(*args: str):  # noqa: ANN202
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture
def services(database_url: str, tmp_path: Path, fake_openai):  # noqa: ANN001, ANN201
    svc = make_services(training_settings(database_url, tmp_path / "data", fake_openai))
    yield svc
    svc.engine.dispose()


def test_retrain_dry_run_then_retrain_then_runs_and_status(cli, services, fake_openai) -> None:  # noqa: ANN001
    approve(services, 10)

    dry = cli("retrain", "--dry-run")
    assert dry.exit_code == 0 and "Dry run: would train on 10 examples" in dry.stdout
    assert fake_openai.requests == []

    started = cli("retrain")
    assert started.exit_code == 0, started.output
    assert "Started training run #1" in started.stdout and "validating_files" in started.stdout

    again = cli("retrain", "--force")
    assert again.exit_code == 2 and "already under way" in again.output
    assert "validating_files" not in again.output

    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert listed[0]["id"] == 1 and listed[0]["job_id"]
    job_id = listed[0]["job_id"]
    fake_openai.add_metrics(job_id, step=3, train_loss=0.5)
    polled = cli("runs", "poll", "1")
    assert polled.exit_code == 0 and "Run #1: running" in polled.stdout
    shown = json.loads(cli("runs", "show", "1", "--json").stdout)
    assert (shown["step"], shown["train_loss"]) == (3, 0.5)
    status = json.loads(cli("status", "--json").stdout)
    assert status["active_run"]["id"] == 1 and status["approved"] == 10
    assert "Active run: #1 running" in cli("status").stdout

    cancelled = cli("runs", "cancel", "1", "--reason", "testing")
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    assert fake_openai.jobs[job_id]["status"] == "cancelled"
    missing = cli("runs", "show", "42")
    assert missing.exit_code == 2 and "no training run #42" in missing.output
    fake_openai.assert_contract_ok()


def test_retrain_refusal_is_one_sentence_and_exit_2(cli, services) -> None:  # noqa: ANN001
    approve(services, 3)
    result = cli("retrain", "--force")
    assert result.exit_code == 2
    assert "approve 7 more SOP(s) first" in result.output


def test_models_list_activate_rollback_are_audited(cli, services) -> None:  # noqa: ANN001
    with services.session() as session:
        for name in ("ft:one", "ft:two"):
            session.add(ModelVersion(model_id=name))
        session.commit()

    assert cli("models", "activate", "1").exit_code == 0
    assert "ft:two" in cli("models", "activate", "2", "--reason", "better").stdout
    listed = json.loads(cli("models", "list", "--json").stdout)
    assert [(m["model_id"], m["status"]) for m in listed] == [
        ("base", "previous"), ("ft:two", "active"), ("ft:one", "previous")]
    rolled = cli("models", "rollback")
    assert rolled.exit_code == 0 and "ft:one" in rolled.stdout
    assert cli("models", "activate", "9").exit_code == 2

    with services.session() as session:
        actions = [(e.action, e.actor) for e in audit.events(session)]
    assert actions == [("activate", "cli:alice"), ("activate", "cli:alice"),
                       ("rollback", "cli:alice")]
