"""Providers' fine-tuning sunset as behaviour (training/sunset.toml), on a fake clock.

Each date is checked on both sides: the day it still works and the day after. What reaches
admins (the notifier) is asserted message by message; OpenAI is the loopback fake.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bot.blocks import status_blocks
from sop_pipeline import model_registry
from sop_pipeline.models import ModelVersion, RunState
from sop_pipeline.status import status_report
from sop_pipeline.training import lifecycle, scheduler, sunset
from tests.test_training_helpers import Clock, Sleeps, approve, make_services, training_settings

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme::abc123"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(database_url: str, tmp_path: Path, fake_openai, clock: Clock):  # noqa: ANN001, ANN201
    made = []

    def _make(**overrides: object):  # noqa: ANN202
        services = make_services(
            training_settings(database_url, tmp_path / "data", fake_openai, **overrides), clock)
        made.append(services)
        return services

    yield _make
    for services in made:
        services.engine.dispose()


def _job_requests(fake) -> list:  # noqa: ANN001
    return [r for r in fake.requests if r.path.endswith("/fine_tuning/jobs")
            and r.method == "POST"]


# --- the table -----------------------------------------------------------------------------


def test_the_table_names_its_sources() -> None:
    table = sunset.load_table()
    assert "OpenAI deprecations page" in table["openai"]["source"]
    assert "Azure OpenAI model retirements page" in table["azure"]["source"]


@pytest.mark.parametrize(("backend", "last_day", "retired"), [
    ("openai", date(2027, 1, 6), date(2027, 1, 14)),
    ("azure", date(2027, 3, 31), date(2027, 10, 1)),
])
def test_training_and_serving_end_on_the_table_dates(
    backend: str, last_day: date, retired: date
) -> None:
    model = "gpt-4o-mini-2024-07-18"
    on = sunset.availability(backend, model, last_day)
    after = sunset.availability(backend, model, date.fromordinal(last_day.toordinal() + 1))
    assert on.can_train and on.until == last_day and on.reason is None
    assert not after.can_train
    for switch in ("TRAINING_BACKEND=azure", "TRAINING_BACKEND=local", "TRAINING_BACKEND=none"):
        assert switch in after.reason
    assert last_day.isoformat() in after.reason
    ft = f"ft:{model}:acme::x"
    assert not sunset.is_retired(backend, ft, date.fromordinal(retired.toordinal() - 1))
    assert sunset.is_retired(backend, ft, retired)


def test_gpt_4_1_mini_has_its_own_azure_dates_and_local_has_no_end() -> None:
    assert sunset.availability("azure", "gpt-4.1-mini-2025-04-14",
                               date(2027, 4, 13)).can_train
    assert not sunset.availability("azure", "gpt-4.1-mini-2025-04-14",
                                   date(2027, 4, 14)).can_train
    local = sunset.availability("local", "Qwen/Qwen2.5-1.5B-Instruct", date(2030, 1, 1))
    assert local.can_train and local.until is None


def test_the_countdown_warning_starts_inside_the_window() -> None:
    model = "gpt-4o-mini-2024-07-18"
    assert sunset.warning("openai", model, date(2026, 11, 25), 30) is None  # 42 days left
    text = sunset.warning("openai", model, date(2026, 12, 10), 30)
    assert "in 27 day(s), on 2027-01-06" in text and "TRAINING_BACKEND=local" in text
    assert "retires" in sunset.warning("openai", model, date(2027, 1, 10), 30)


# --- refusals and the scheduler --------------------------------------------------------------


def test_a_retrain_runs_on_the_last_day_and_is_refused_the_day_after(
    make, clock: Clock, fake_openai  # noqa: ANN001
) -> None:
    services = make()
    approve(services, 10)
    clock.now = datetime(2027, 1, 7, 8, tzinfo=UTC)
    refused = lifecycle.start_run(services, trigger="cli", force=True)
    assert refused.run is None and refused.reason == "cutoff"
    assert "last day 2027-01-06" in refused.summary
    assert "TRAINING_BACKEND=azure" in refused.summary

    clock.now = datetime(2027, 1, 6, 23, tzinfo=UTC)
    started = lifecycle.start_run(services, trigger="cli", force=True)
    assert started.reason == "started"


def test_the_scheduler_stops_after_the_cutoff_and_says_so_once(
    make, clock: Clock, fake_openai  # noqa: ANN001
) -> None:
    services = make()
    approve(services, 10)
    clock.now = datetime(2027, 1, 7, 9, tzinfo=UTC)
    for _ in range(3):
        scheduler.retrain_check(services)
        clock.advance(hours=1)

    notices = [n for n in services.notifier.sent if n.kind == "sunset"]
    assert len(notices) == 1
    assert notices[0].text.startswith("Scheduled retraining has stopped and will not try again")
    assert "TRAINING_BACKEND=local" in notices[0].text
    assert _job_requests(fake_openai) == [] and fake_openai.requests == []


def test_openai_refusing_the_organisation_gets_its_own_sentence_and_stops_retraining(
    make, clock: Clock, fake_openai  # noqa: ANN001
) -> None:
    services = make()
    approve(services, 10)
    fake_openai.inject("POST", "/fine_tuning/jobs", kind="fine_tuning_not_allowed")
    run = lifecycle.start_run(services, trigger="schedule").run
    lifecycle.advance(services, run.id, sleep=Sleeps())

    with services.session() as session:
        stored = lifecycle.get_run(session, run.id)
    assert stored.state == RunState.FAILED
    assert stored.error_code == sunset.ORG_BLOCKED_CODE
    assert stored.error_message == sunset.ORG_BLOCKED
    assert "may no longer fine-tune" in sunset.ORG_BLOCKED
    assert len(_job_requests(fake_openai)) == 1

    approve(services, 10, start=10)
    for _ in range(2):  # the scheduler keeps checking, never asks OpenAI again, says nothing
        clock.advance(hours=1)
        result = scheduler.retrain_check(services)
        assert result.reason == "org_blocked" and result.summary == sunset.ORG_BLOCKED
    assert len(_job_requests(fake_openai)) == 1
    notices = [n for n in services.notifier.sent if n.kind == "sunset"]
    assert len(notices) == 1 and sunset.ORG_BLOCKED in notices[0].text
    assert "run_failed" not in services.notifier.kinds()

    report = status_report(services).to_dict()
    openai_row = [b for b in report["training_backends"] if b["backend"] == "openai"][0]
    assert not openai_row["can_train"] and openai_row["reason"] == sunset.ORG_BLOCKED


def test_an_admins_forced_retrain_asks_openai_again_after_it_refused_the_organisation(
    make, clock: Clock, fake_openai  # noqa: ANN001
) -> None:
    from sop_pipeline import audit

    services = make()
    approve(services, 10)
    fake_openai.inject("POST", "/fine_tuning/jobs", kind="fine_tuning_not_allowed", times=2)
    first = lifecycle.start_run(services, trigger="schedule").run
    lifecycle.advance(services, first.id, sleep=Sleeps())
    assert scheduler.retrain_check(services).reason == "org_blocked"

    # still refused: the admin who asked hears how their run ended
    again = lifecycle.start_run(services, trigger="manual", requested_by="UADMIN", force=True)
    assert again.started
    lifecycle.advance(services, again.run.id, sleep=Sleeps())
    failed = [n for n in services.notifier.sent if n.kind == "run_failed"]
    assert [n.run_id for n in failed] == [again.run.id]
    assert sunset.ORG_BLOCKED in failed[0].text and "/sop-retrain" in sunset.ORG_BLOCKED
    assert scheduler.retrain_check(services).reason == "org_blocked"

    # OpenAI lets the organisation fine-tune again: the next forced retrain creates a job
    third = lifecycle.start_run(services, trigger="manual", requested_by="UADMIN", force=True)
    lifecycle.advance(services, third.run.id, sleep=Sleeps())
    with services.session() as session:
        assert lifecycle.get_run(session, third.run.id).provider_job_id
        assert not sunset.org_blocked(session)
        cleared = audit.events(session, action="sunset.org_block_cleared")
    assert len(_job_requests(fake_openai)) == 3
    assert [e.actor for e in cleared] == ["UADMIN", "UADMIN"]


def test_a_dry_run_does_not_forget_openais_refusal(make, fake_openai) -> None:  # noqa: ANN001
    services = make()
    approve(services, 10)
    fake_openai.inject("POST", "/fine_tuning/jobs", kind="fine_tuning_not_allowed")
    run = lifecycle.start_run(services, trigger="schedule").run
    lifecycle.advance(services, run.id, sleep=Sleeps())

    result = lifecycle.start_run(services, trigger="cli", force=True, dry_run=True)
    assert result.reason == "org_blocked"
    with services.session() as session:
        assert sunset.org_blocked(session)


def test_a_403_for_a_restricted_key_is_not_taken_for_the_organisations_sunset(
    make, fake_openai  # noqa: ANN001
) -> None:
    services = make()
    approve(services, 10)
    fake_openai.inject("POST", "/fine_tuning/jobs", status=403, code="permission_denied",
                       message="You have insufficient permissions for this operation. "
                               "Missing scopes: api.fine_tuning.jobs.write.")
    run = lifecycle.start_run(services, trigger="schedule").run
    lifecycle.advance(services, run.id, sleep=Sleeps())

    with services.session() as session:
        stored = lifecycle.get_run(session, run.id)
        assert not sunset.org_blocked(session)
    assert stored.state == RunState.FAILED and stored.error_code != sunset.ORG_BLOCKED_CODE
    assert "Missing scopes" in (stored.error_message or "")
    assert [n.kind for n in services.notifier.sent if n.kind == "sunset"] == []


def _activate(services, model_id: str, backend: str = "openai") -> None:  # noqa: ANN001
    with services.session() as session:
        version = ModelVersion(model_id=model_id, backend=backend,
                               base_model="gpt-4o-mini-2024-07-18")
        session.add(version)
        session.flush()
        model_registry.activate(session, version, actor="test")
        session.commit()


def test_the_active_model_is_retired_on_its_day_and_admins_are_told_once(
    make, clock: Clock  # noqa: ANN001
) -> None:
    services = make(scheduler_enabled=True)
    _activate(services, FT_MODEL)
    clock.now = datetime(2027, 1, 13, 23, tzinfo=UTC)
    scheduler.check_sunset(services)
    with services.session() as session:
        assert model_registry.active_model(session).model_id == FT_MODEL

    clock.now = datetime(2027, 1, 14, 0, 5, tzinfo=UTC)
    scheduler.check_sunset(services)
    scheduler.check_sunset(services)
    with services.session() as session:
        assert model_registry.active_model(session) is None  # drafting: base model + retrieval
    retired = [n for n in services.notifier.sent if n.kind == "model_retired"]
    assert len(retired) == 1
    assert retired[0].text.startswith(f"The active model {FT_MODEL} was retired by openai on "
                                      "2027-01-14")


# --- status: per configured backend -----------------------------------------------------------


def test_status_shows_each_configured_backend_on_both_sides_of_the_dates(
    make, clock: Clock  # noqa: ANN001
) -> None:
    services = make(azure_openai_endpoint="https://acme.openai.azure.com",
                    local_base_model="Qwen/Qwen2.5-1.5B-Instruct")
    clock.now = datetime(2027, 1, 6, 12, tzinfo=UTC)
    before = status_report(services)
    rows = {b["backend"]: b for b in before.to_dict()["training_backends"]}
    assert list(rows) == ["openai", "azure", "local"]
    assert rows["openai"]["can_train"] and rows["openai"]["until"] == "2027-01-06"
    assert rows["azure"]["until"] == "2027-03-31" and rows["local"]["until"] is None
    assert "Training on openai: can train (until 2027-01-06)" in before.lines()
    assert "Training on local: can train (no announced end)" in before.lines()

    clock.now = datetime(2027, 1, 7, 12, tzinfo=UTC)
    after = status_report(services).to_dict()
    rows = {b["backend"]: b for b in after["training_backends"]}
    assert not rows["openai"]["can_train"] and rows["azure"]["can_train"]
    text = str(status_blocks(after))
    assert "*openai*: cannot train. OpenAI no longer starts fine-tuning jobs" in text
    assert "*azure*: can train (until 2027-03-31)" in text
