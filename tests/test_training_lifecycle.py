"""Training runs end to end against the fake OpenAI server: start, upload, job, events,
success, evaluation, promotion; every documented fault and refusal."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline import audit, model_registry
from sop_pipeline.evaluation import GateDecision
from sop_pipeline.models import ModelVersion, RunState, TrainingEvent, TrainingRun
from sop_pipeline.services import Services
from sop_pipeline.training import lifecycle, scheduler
from tests.test_training_helpers import (
    Clock,
    Sleeps,
    approve,
    make_services,
    sop_texts,
    training_settings,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make(database_url: str, tmp_path: Path, fake_openai, clock: Clock  # noqa: ANN001
         ) -> Iterator[Callable[..., Services]]:
    """Build services (settings overrides allowed) on the test database and the fake."""
    built: list[Services] = []

    def factory(**overrides: object) -> Services:
        settings = training_settings(database_url, tmp_path / "data", fake_openai, **overrides)
        services = make_services(settings, clock)
        built.append(services)
        return services

    yield factory
    for services in built:
        services.engine.dispose()


@pytest.fixture
def svc(make) -> Services:  # noqa: ANN001
    return make()


@pytest.fixture(autouse=True)
def _contract(fake_openai) -> Iterator[None]:  # noqa: ANN001
    yield
    fake_openai.assert_contract_ok()


def load(services: Services, run_id: int) -> TrainingRun:
    with services.session() as session:
        return lifecycle.get_run(session, run_id)


def job_creations(fake) -> list:  # noqa: ANN001
    return fake.requests_to("/fine_tuning/jobs", "POST")


def started(services: Services, sleeps: Sleeps, **kwargs: object) -> TrainingRun:
    result = lifecycle.start_run(services, trigger="cli", requested_by="admin", force=True,
                                 **kwargs)
    assert result.run is not None, result.summary
    lifecycle.advance(services, result.run.id, sleep=sleeps)
    return load(services, result.run.id)


# --- the happy path -----------------------------------------------------------------------


def test_ten_approvals_and_a_tick_train_and_promote_a_model(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)

    result = scheduler.retrain_check(svc, sleep=sleeps)

    assert result is not None and result.run is not None, result and result.summary
    run = load(svc, result.run.id)
    assert run.state == RunState.VALIDATING_FILES and run.provider_job_id
    [create] = job_creations(fake_openai)
    body = create.json
    assert body["model"] == "gpt-4o-mini-2024-07-18"
    assert body["method"]["supervised"]["hyperparameters"] == {
        "n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5}
    assert (body["suffix"], body["seed"]) == ("acme-qa", 1234)
    with svc.session() as session:
        snapshot = lifecycle._snapshot(session, run)
    assert body["metadata"] == {"snapshot_hash": snapshot.content_hash, "run_id": str(run.id)}
    lines = fake_openai.file_content(body["training_file"]).decode().splitlines()
    assert len(lines) == 10
    first = json.loads(lines[0])["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[2]["content"].startswith("Title: ")

    job_id = run.provider_job_id
    fake_openai.advance_job(job_id, "running")
    fake_openai.add_metrics(job_id, step=1, train_loss=1.9, valid_loss=2.0)
    fake_openai.add_metrics(job_id, step=2, train_loss=1.1, valid_loss=1.3)
    scheduler.poll_active_runs(svc, sleep=sleeps)
    scheduler.poll_active_runs(svc, sleep=sleeps)  # re-polling stores nothing twice

    run = load(svc, run.id)
    assert run.state == RunState.RUNNING
    with svc.session() as session:
        events = lifecycle.run_events(session, run.id)
        metrics = lifecycle.latest_metrics(session, run.id)
    assert len(events) == len({e.provider_event_id for e in events}) == len(
        fake_openai.events(job_id))
    assert (metrics.step, metrics.train_loss, metrics.valid_loss) == (2, 1.1, 1.3)
    progress = [n for n in svc.notifier.sent if n.kind == "run_progress" and "step" in n.data]
    assert progress[-1].data["train_loss"] == 1.1

    fake_openai.succeed_job(job_id, trained_tokens=4321)
    scheduler.poll_active_runs(svc, sleep=sleeps)

    run = load(svc, run.id)
    assert run.state == RunState.PROMOTED and run.active_lock is None
    assert run.trained_tokens == 4321 and run.fine_tuned_model.startswith("ft:gpt-4o-mini")
    with svc.session() as session:
        active = model_registry.active_model(session)
        assert active.model_id == run.fine_tuned_model and active.run_id == run.id
        actions = [e.action for e in audit.events(session)]
    assert "retrain" in actions and "promote" in actions
    assert svc.notifier.kinds()[0] == "run_started"
    kinds = svc.notifier.kinds()
    assert kinds[-1] == "run_promoted" and "run_succeeded" in kinds
    assert len(job_creations(fake_openai)) == 1
    assert scheduler.poll_active_runs(svc, sleep=sleeps) == []  # nothing active: no work


def test_twenty_or_more_examples_also_upload_a_validation_file(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 22)

    run = started(svc, sleeps)

    body = job_creations(fake_openai)[0].json
    assert run.validation_file_id and body["validation_file"] == run.validation_file_id
    train = fake_openai.file_content(body["training_file"]).decode().splitlines()
    validation = fake_openai.file_content(body["validation_file"]).decode().splitlines()
    assert len(train) + len(validation) == 22 and validation


def test_a_rejected_candidate_leaves_the_active_model_alone(
    svc: Services, fake_openai, sleeps: Sleeps, monkeypatch  # noqa: ANN001
) -> None:
    approve(svc, 10)
    monkeypatch.setattr("sop_pipeline.evaluation.gate", lambda services, run, model_id:
                        GateDecision(promote=False, scores={"compliance": 0.4},
                                     report="Compliance fell from 0.9 to 0.4."))
    run = started(svc, sleeps)
    fake_openai.succeed_job(run.provider_job_id)

    lifecycle.advance(svc, run.id, sleep=sleeps)

    run = load(svc, run.id)
    assert run.state == RunState.REJECTED and run.eval_scores == {"compliance": 0.4}
    with svc.session() as session:
        assert model_registry.active_model(session) is None
        version = session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).one()
    assert version.status == "rejected"
    assert svc.notifier.kinds()[-1] == "run_rejected"
    assert "0.4" in svc.notifier.sent[-1].text


def test_eleven_examples_and_no_curated_prompts_end_the_run_without_promoting(
    make, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    svc = make(eval_share=0.1, eval_template_prompts=False)
    approve(svc, 11)
    run = started(svc, sleeps)
    fake_openai.succeed_job(run.provider_job_id)

    lifecycle.advance(svc, run.id, sleep=sleeps)

    run = load(svc, run.id)
    assert run.state == RunState.REJECTED and run.error_code == "insufficient_evidence"
    assert "needs at least 3 evaluation prompt(s)" in run.error_message
    assert run.eval_scores["decision"] == "insufficient_evidence"
    assert len(run.eval_scores["prompts"]) == run.eval_scores["n_cases"] < 3
    with svc.session() as session:
        assert model_registry.active_model(session) is None
    rejected = svc.notifier.sent[-1]
    assert rejected.kind == "run_rejected" and "approve about" in rejected.text
    assert fake_openai.requests_to("/chat/completions", "POST") == []


def test_eleven_examples_with_curated_prompts_compare_and_promote(
    make, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    svc = make(eval_share=0.1)
    approve(svc, 11)
    run = started(svc, sleeps)
    fake_openai.succeed_job(run.provider_job_id)

    lifecycle.advance(svc, run.id, sleep=sleeps)

    run = load(svc, run.id)
    assert run.state == RunState.PROMOTED, run.eval_scores.get("reason")
    assert run.eval_scores["decision"] == "promote"
    sources = [p["source"] for p in run.eval_scores["prompts"]]
    curated = [s for s in sources if s.startswith("house_eval_prompts.toml")]
    assert len(curated) == 8 and len(sources) == run.eval_scores["n_cases"]
    models = [r.json["model"] for r in fake_openai.requests_to("/chat/completions", "POST")]
    assert models.count(run.fine_tuned_model) == len(sources)


# --- refusals -------------------------------------------------------------------------------


def test_fewer_than_ten_examples_is_refused(svc: Services, fake_openai) -> None:  # noqa: ANN001
    approve(svc, 9)

    result = lifecycle.start_run(svc, trigger="cli", force=True)

    assert result.run is None and result.reason == "too_few_examples"
    assert "approve 1 more" in result.summary
    assert fake_openai.requests == []


def test_below_the_new_example_threshold_needs_force(
    make, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    svc = make(retrain_min_new_examples=5)
    approve(svc, 10)
    run = started(svc, sleeps)
    fake_openai.succeed_job(run.provider_job_id)
    lifecycle.advance(svc, run.id, sleep=sleeps)
    approve(svc, 3, start=10)

    waiting = scheduler.retrain_check(svc, sleep=sleeps)
    forced = lifecycle.start_run(svc, trigger="cli", force=True)

    assert waiting.run is None and waiting.reason == "below_threshold"
    assert "Only 3 new example(s)" in waiting.summary and "--force" in waiting.summary
    assert forced.run is not None


def test_the_same_snapshot_is_not_trained_twice(svc: Services, fake_openai, sleeps) -> None:  # noqa: ANN001
    approve(svc, 10)
    run = started(svc, sleeps)
    fake_openai.succeed_job(run.provider_job_id)
    lifecycle.advance(svc, run.id, sleep=sleeps)

    again = lifecycle.start_run(svc, trigger="cli", force=True)

    assert again.run is None and again.reason == "already_trained"
    assert again.summary.startswith("Nothing new to train")
    assert len(job_creations(fake_openai)) == 1


def test_cost_guard_refuses_expensive_runs(make, fake_openai) -> None:  # noqa: ANN001
    svc = make(max_training_cost_usd=0.001)
    approve(svc, 10)

    result = lifecycle.start_run(svc, trigger="cli", force=True)

    assert result.run is None and result.reason == "cost"
    assert result.summary.startswith("Estimated cost $0.03 is above MAX_TRAINING_COST_USD "
                                     "($0.00); raise the limit or")
    assert fake_openai.requests == []
    with svc.session() as session:
        assert lifecycle.list_runs(session) == []


def test_one_active_run_at_a_time(svc: Services, sleeps: Sleeps) -> None:
    approve(svc, 10)
    run = started(svc, sleeps)
    approve(svc, 10, start=10)

    second = lifecycle.start_run(svc, trigger="cli", force=True)

    assert second.run is None and second.reason == "active_run"
    assert f"#{run.id}" in second.summary and "sop-bot runs cancel" in second.summary


def test_dry_run_reports_the_snapshot_and_cost_and_creates_nothing(
    svc: Services, fake_openai  # noqa: ANN001
) -> None:
    approve(svc, 10)

    result = lifecycle.start_run(svc, trigger="cli", force=True, dry_run=True)

    assert result.run is None and result.reason == "dry_run"
    assert "10 examples" in result.summary and "$0.03" in result.summary
    assert result.estimated_cost_usd == pytest.approx(0.0342, abs=0.01)
    with svc.session() as session:
        assert lifecycle.list_runs(session) == []
    assert fake_openai.requests == []


def test_no_new_openai_jobs_after_the_cutoff(make, clock: Clock) -> None:  # noqa: ANN001
    svc = make()
    approve(svc, 10)
    clock.now = datetime(2027, 1, 7, tzinfo=UTC)

    result = lifecycle.start_run(svc, trigger="schedule")

    assert result.reason == "cutoff" and "TRAINING_BACKEND" in result.summary


def test_backend_none_disables_retraining(make) -> None:  # noqa: ANN001
    svc = make(training_backend="none")
    approve(svc, 10)

    result = lifecycle.start_run(svc, trigger="cli", force=True)

    assert result.reason == "disabled" and "retrieval only" in result.summary


# --- faults ----------------------------------------------------------------------------------


def test_rate_limit_with_retry_after_is_waited_out(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    fake_openai.inject("POST", "/fine_tuning/jobs", status=429, kind="custom",
                       headers={"Retry-After": "1", "retry-after-ms": "5"},
                       code="rate_limit_exceeded", validate=False)

    run = started(svc, sleeps)  # the SDK waits out the 429 within the call

    assert [r.status for r in job_creations(fake_openai)] == [429, 200]
    assert run.provider_job_id and run.attempts == 0
    assert len([r for r in job_creations(fake_openai) if r.status == 200]) == 1


def test_a_server_error_is_retried(svc: Services, fake_openai, sleeps: Sleeps) -> None:  # noqa: ANN001
    approve(svc, 10)
    fake_openai.inject("POST", "/files", kind="server_error")

    run = started(svc, sleeps)

    assert run.provider_job_id  # the SDK retried the 500 within the call
    assert len(fake_openai.requests_to("/files", "POST")) == 2


def test_persistent_errors_back_off_without_spinning(
    make, fake_openai, sleeps: Sleeps, clock: Clock  # noqa: ANN001
) -> None:
    svc = make(provider_max_retries=1)
    approve(svc, 10)
    fake_openai.inject("POST", "/fine_tuning/jobs", kind="overloaded", times=2)

    run = started(svc, sleeps)

    assert run.state == RunState.VALIDATING_FILES and run.provider_job_id is None
    assert run.attempts == 1 and run.error_code == "server_error"
    assert run.next_attempt_at > clock.now
    before = len(fake_openai.requests)
    scheduler.poll_active_runs(svc, sleep=sleeps)
    assert len(fake_openai.requests) == before  # still backing off: no calls

    clock.advance(seconds=(run.next_attempt_at - clock.now).total_seconds() + 1)
    scheduler.poll_active_runs(svc, sleep=sleeps)

    run = load(svc, run.id)
    assert run.provider_job_id and run.attempts == 0 and run.error_code is None
    assert len([r for r in job_creations(fake_openai) if r.status == 200]) == 1


def test_a_timeout_is_retryable(make, fake_openai, sleeps: Sleeps) -> None:  # noqa: ANN001
    svc = make(openai_timeout_seconds=0.2, provider_max_retries=0)
    approve(svc, 10)
    held = fake_openai.inject("POST", "/files", kind="timeout", hold=5)

    run = started(svc, sleeps)
    held.release()

    assert run.state == RunState.UPLOADING and run.error_code == "timeout"
    assert run.next_attempt_at is not None


@pytest.mark.parametrize(
    ("kind", "code"), [("invalid_api_key", "invalid_api_key"),
                       ("insufficient_quota", "insufficient_quota")])
def test_auth_and_quota_errors_fail_the_run(
    svc: Services, fake_openai, sleeps: Sleeps, kind: str, code: str  # noqa: ANN001
) -> None:
    approve(svc, 10)
    # every time: the SDK retries a 429 quota error like any 429 before it gives up
    fake_openai.inject("POST", "/files", kind=kind, times=None, headers={"retry-after-ms": "1"})

    run = started(svc, sleeps)
    fake_openai.clear_injections()

    assert run.state == RunState.FAILED and run.error_code == code
    assert run.error_message and run.active_lock is None
    assert sleeps.delays == []
    assert svc.notifier.kinds()[-1] == "run_failed"
    assert code in svc.notifier.sent[-1].text


def test_a_failed_job_keeps_the_provider_code_and_message(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    run = started(svc, sleeps)
    fake_openai.fail_job(run.provider_job_id, code="invalid_n_examples",
                         message="Training file has 9 example(s), but must have at least 10.")

    lifecycle.advance(svc, run.id, sleep=sleeps)

    run = load(svc, run.id)
    assert (run.state, run.error_code) == (RunState.FAILED, "invalid_n_examples")
    assert run.error_message.startswith("Training file has 9 example(s)")
    assert lifecycle.start_run(svc, trigger="cli", force=True).run is not None  # can retry


def test_jobs_are_created_only_after_the_files_are_processed(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    fake_openai.file_uploaded_retrieves = 3

    run = started(svc, sleeps)

    assert run.provider_job_id
    assert sleeps.delays == [lifecycle.FILE_WAIT_SECONDS] * 3
    paths = [r.route for r in fake_openai.requests]
    create = paths.index("/fine_tuning/jobs")
    assert paths[:create].count(f"/files/{run.train_file_id}") == 4


def test_files_still_processing_wait_for_the_next_tick(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    fake_openai.file_uploaded_retrieves = 1000

    run = started(svc, sleeps)

    assert run.state == RunState.VALIDATING_FILES and run.provider_job_id is None
    assert len(sleeps.delays) == lifecycle.FILE_WAIT_POLLS - 1
    fake_openai.process_file(run.train_file_id)
    lifecycle.advance(svc, run.id, sleep=sleeps)
    assert load(svc, run.id).provider_job_id


def test_a_file_the_provider_rejects_fails_the_run(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    fake_openai.file_uploaded_retrieves = 1000
    run = started(svc, sleeps)
    fake_openai.set_file_status(run.train_file_id, "error", "Invalid file format.")

    lifecycle.advance(svc, run.id, sleep=sleeps)

    run = load(svc, run.id)
    assert (run.state, run.error_code) == (RunState.FAILED, "file_invalid")
    assert "Invalid file format." in run.error_message
    assert job_creations(fake_openai) == []


def test_a_file_not_ready_answer_from_job_creation_is_retried(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    fake_openai.inject("POST", "/fine_tuning/jobs", status=400, code="file_not_ready",
                       message="File file-x is not ready")

    run = started(svc, sleeps)  # a 400 is not the SDK's to retry: the run backs off
    assert run.provider_job_id is None and run.error_code == "file_not_ready"

    svc.clock.advance(seconds=(run.next_attempt_at - svc.clock.now).total_seconds() + 1)
    scheduler.poll_active_runs(svc, sleep=sleeps)

    assert load(svc, run.id).provider_job_id


# --- reconciliation and cancelling -------------------------------------------------------------


def test_a_job_created_before_a_crash_is_adopted_not_duplicated(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    fake_openai.file_uploaded_retrieves = 1000
    run = started(svc, sleeps)  # files uploaded, waiting for processing
    fake_openai.process_file(run.train_file_id)
    with svc.session() as session:
        snapshot_hash = lifecycle._snapshot(session, run).content_hash
    client = fake_openai.client()
    orphan = client.fine_tuning.jobs.create(  # what the crashed process had sent
        model="gpt-4o-mini-2024-07-18", training_file=run.train_file_id,
        metadata={"snapshot_hash": snapshot_hash, "run_id": str(run.id)})

    lifecycle.reconcile(svc, sleep=sleeps)

    assert load(svc, run.id).provider_job_id == orphan.id
    assert len(job_creations(fake_openai)) == 1


def test_cancel_cancels_the_provider_job_and_is_audited(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    run = started(svc, sleeps)

    cancelled = lifecycle.cancel_run(svc, run.id, "cli:alice", reason="wrong data")

    assert cancelled.state == RunState.CANCELLED and cancelled.active_lock is None
    assert fake_openai.jobs[run.provider_job_id]["status"] == "cancelled"
    with svc.session() as session:
        [event] = audit.events(session, action="cancel")
    assert (event.actor, event.reason) == ("cli:alice", "wrong data")
    with pytest.raises(lifecycle.LifecycleError, match="already ended"):
        lifecycle.cancel_run(svc, run.id, "cli:alice")
    with pytest.raises(lifecycle.LifecycleError, match="no training run #99"):
        lifecycle.cancel_run(svc, 99, "cli:alice")
    assert lifecycle.start_run(svc, trigger="cli", force=True).run is not None


def test_a_job_cancelled_at_the_provider_ends_the_run(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    run = started(svc, sleeps)
    fake_openai.cancel_job(run.provider_job_id)

    lifecycle.advance(svc, run.id, sleep=sleeps)

    assert load(svc, run.id).state == RunState.CANCELLED


def test_events_are_stored_once_per_provider_event(
    svc: Services, fake_openai, sleeps: Sleeps  # noqa: ANN001
) -> None:
    approve(svc, 10)
    run = started(svc, sleeps)
    for step in range(1, 6):
        fake_openai.add_metrics(run.provider_job_id, step=step, train_loss=2.0 / step)
        lifecycle.advance(svc, run.id, sleep=sleeps)
        lifecycle.advance(svc, run.id, sleep=sleeps)

    with svc.session() as session:
        rows = session.exec(select(TrainingEvent).where(TrainingEvent.run_id == run.id)).all()
    assert len(rows) == len(fake_openai.events(run.provider_job_id))
    assert [r.step for r in rows if r.kind == "metrics"] == [1, 2, 3, 4, 5]


def test_start_run_uses_distinct_example_texts() -> None:
    texts = sop_texts(30)
    assert len(set(texts)) == 30
