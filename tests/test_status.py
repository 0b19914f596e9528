"""The admin status report: model, examples, active run with loss, recent runs, deadlines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sop_pipeline.status import status_report
from sop_pipeline.training import lifecycle
from tests.test_training_helpers import Clock, Sleeps, approve, make_services, training_settings


def test_status_follows_a_run_from_start_to_promotion(
    database_url: str, tmp_path: Path, fake_openai  # noqa: ANN001
) -> None:
    clock = Clock()
    services = make_services(
        training_settings(database_url, tmp_path / "data", fake_openai), clock)
    sleeps = Sleeps()
    try:
        empty = status_report(services)
        assert (empty.active_model, empty.active_run, empty.recent_runs) == (None, None, [])
        assert (empty.days_to_cutoff, empty.days_to_shutdown, empty.deprecation_warning) == (
            42, 50, None)
        assert empty.backend == "openai" and empty.threshold == 10
        assert any("base model gpt-4o-mini-2024-07-18" in line for line in empty.lines())

        approve(services, 10)
        run = lifecycle.start_run(services, trigger="cli", force=True).run
        lifecycle.advance(services, run.id, sleep=sleeps)
        with services.session() as session:
            job_id = lifecycle.get_run(session, run.id).provider_job_id
        fake_openai.add_metrics(job_id, step=7, train_loss=0.8123, valid_loss=0.9)
        lifecycle.advance(services, run.id, sleep=sleeps)

        running = status_report(services)
        assert (running.approved, running.new_since_last_training) == (10, 10)
        assert running.active_run["id"] == run.id and running.active_run["state"] == "running"
        assert (running.active_run["step"], running.active_run["train_loss"],
                running.active_run["valid_loss"]) == (7, 0.8123, 0.9)
        assert "Active run: #1 running, step 7, train loss 0.8123, validation loss 0.9000" in (
            running.lines())
        json.dumps(running.to_dict())  # JSON-ready for Slack and `--json`

        fake_openai.succeed_job(job_id)
        lifecycle.advance(services, run.id, sleep=sleeps)
        done = status_report(services)
        assert done.active_model and done.active_model.startswith("ft:")
        assert done.active_run is None and done.new_since_last_training == 0
        assert done.recent_runs[0]["state"] == "promoted"
        assert done.recent_runs[0]["model"] == done.active_model
    finally:
        services.engine.dispose()


def test_status_warns_near_the_cutoff_and_shows_failures(
    database_url: str, tmp_path: Path, fake_openai  # noqa: ANN001
) -> None:
    clock = Clock(datetime(2026, 12, 28, tzinfo=UTC))
    services = make_services(
        training_settings(database_url, tmp_path / "data", fake_openai), clock)
    try:
        approve(services, 10)
        fake_openai.inject("POST", "/files", kind="invalid_api_key")
        run = lifecycle.start_run(services, trigger="cli", force=True).run
        lifecycle.advance(services, run.id, sleep=Sleeps())

        report = status_report(services)

        assert report.days_to_cutoff == 9 and "in 9 day(s)" in report.deprecation_warning
        assert report.recent_runs[0]["error_code"] == "invalid_api_key"
        assert any(line.startswith("Warning: ") for line in report.lines())
    finally:
        services.engine.dispose()
