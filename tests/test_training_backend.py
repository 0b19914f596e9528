"""The OpenAI and Azure fine-tuning backends against the fake OpenAI server (real SDK, HTTP)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import openai
import pytest

from sop_pipeline.training.azure_backend import AzureBackend
from sop_pipeline.training.backend import BackendError, JobSpec
from sop_pipeline.training.backends import hyperparameters_from_settings, make_backend
from sop_pipeline.training.openai_backend import OpenAIBackend, sanitize_suffix
from tests.conftest import make_settings

LINE = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a"}]}


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(LINE) + "\n" for _ in range(10)), encoding="utf-8")
    return path


@pytest.fixture
def backend(fake_openai) -> OpenAIBackend:  # noqa: ANN001
    return OpenAIBackend(fake_openai.client())


def spec(file_id: str, snapshot_hash: str = "h" * 64, run_id: int = 1, **kw) -> JobSpec:  # noqa: ANN003
    values = dict(base_model="gpt-4o-mini-2024-07-18", training_file_id=file_id,
                  validation_file_id=None,
                  hyperparameters={"n_epochs": 3, "batch_size": "auto",
                                   "learning_rate_multiplier": 0.5},
                  suffix="Acme QA!", seed=7,
                  metadata={"snapshot_hash": snapshot_hash, "run_id": str(run_id)})
    values.update(kw)
    return JobSpec(**values)


def test_upload_sends_the_file_for_fine_tuning(backend, fake_openai, jsonl) -> None:  # noqa: ANN001
    uploaded = backend.upload(jsonl)

    request = fake_openai.last_request("/files", "POST")
    assert request.form["purpose"] == "fine-tune"
    assert fake_openai.file_content(uploaded.id) == jsonl.read_bytes()
    assert backend.file_status(uploaded.id).status == "processed"
    fake_openai.assert_contract_ok()


def test_uploads_are_named_after_the_snapshot_and_an_earlier_one_is_reused(
    backend, fake_openai, jsonl  # noqa: ANN001
) -> None:
    snapshot = "ab" * 32
    first = backend.upload(jsonl, snapshot, kind="train")
    assert fake_openai.files[first.id]["filename"] == "sop-bot-abababababab-train.jsonl"

    again = backend.upload(jsonl.read_bytes(), snapshot, kind="train")  # after a crash

    assert again.id == first.id and len(fake_openai.files) == 1
    assert len(fake_openai.requests_to("/files", "POST")) == 1
    validation = backend.upload(jsonl, snapshot, kind="validation")
    assert validation.id != first.id
    fake_openai.assert_contract_ok()


def test_duplicate_and_rejected_copies_of_a_snapshot_file_are_deleted(
    backend, fake_openai, jsonl  # noqa: ANN001
) -> None:
    name = "sop-bot-cdcdcdcdcdcd-train.jsonl"
    broken = fake_openai.add_file(b"x", filename=name, status="error")
    kept = fake_openai.add_file(jsonl.read_bytes(), filename=name)
    extra = fake_openai.add_file(jsonl.read_bytes(), filename=name, status="uploaded")
    foreign = fake_openai.add_file(b"theirs", filename="train.jsonl")

    reused = backend.upload(jsonl, "cd" * 32)

    assert reused.id == kept["id"]
    assert set(fake_openai.files) == {kept["id"], foreign["id"]}
    assert broken["id"] not in fake_openai.files and extra["id"] not in fake_openai.files
    fake_openai.assert_contract_ok()


def test_only_our_unreferenced_snapshot_uploads_are_deleted(
    backend, fake_openai, jsonl  # noqa: ANN001
) -> None:
    ours, old = "ef" * 32, "12" * 32
    used = backend.upload(jsonl, ours, kind="train")
    orphan = backend.upload(jsonl, old, kind="train")
    stranger = fake_openai.add_file(b"x", filename="sop-bot-999999999999-train.jsonl")

    deleted = backend.delete_unreferenced({used.id}, {ours, old})

    assert deleted == [orphan.id]
    assert set(fake_openai.files) == {used.id, stranger["id"]}
    fake_openai.assert_contract_ok()


def test_start_job_sends_supervised_method_seed_suffix_and_metadata(
    backend, fake_openai, jsonl  # noqa: ANN001
) -> None:
    file_id = backend.upload(jsonl).id

    job = backend.start_job(spec(file_id))

    body = fake_openai.last_request("/fine_tuning/jobs", "POST").json
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5}}}
    assert body["seed"] == 7
    assert body["suffix"] == "acme-qa"
    assert body["metadata"] == {"snapshot_hash": "h" * 64, "run_id": "1"}
    assert "validation_file" not in body
    assert job.state == "validating_files"
    assert job.metadata["snapshot_hash"] == "h" * 64
    fake_openai.assert_contract_ok()


def test_suffix_is_sanitised_and_at_most_64_characters() -> None:
    assert sanitize_suffix("SOP Bot / Plant #7") == "sop-bot-plant-7"
    assert len(sanitize_suffix("x" * 200)) == 64
    assert sanitize_suffix("!!!") == "sop-bot"


def test_numeric_hyperparameter_settings_become_numbers(tmp_path: Path) -> None:
    settings = make_settings("sqlite:///x.db", tmp_path, fine_tune_epochs="4",
                             fine_tune_batch_size="8", fine_tune_learning_rate_multiplier="0.3")
    assert hyperparameters_from_settings(settings) == {
        "n_epochs": 4, "batch_size": 8, "learning_rate_multiplier": 0.3}
    auto = make_settings("sqlite:///x.db", tmp_path)
    assert hyperparameters_from_settings(auto) == {
        "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}


def test_find_job_pages_through_jobs_and_matches_the_snapshot_hash(
    fake_openai, jsonl  # noqa: ANN001
) -> None:
    backend = AzureBackend(fake_openai.client())  # no server-side metadata filter
    backend.page_size = 2
    file_id = backend.upload(jsonl).id
    wanted = backend.start_job(spec(file_id, snapshot_hash="a" * 64))
    for i in range(5):
        backend.start_job(spec(file_id, snapshot_hash=f"{i}" * 64))

    found = backend.find_job("a" * 64)

    assert found is not None and found.id == wanted.id
    assert backend.find_job("f" * 64) is None
    assert len(fake_openai.requests_to("/fine_tuning/jobs", "GET")) >= 3  # it paginated
    fake_openai.assert_contract_ok()


def test_find_job_prefers_a_live_job_over_a_failed_one(backend, fake_openai, jsonl) -> None:  # noqa: ANN001
    file_id = backend.upload(jsonl).id
    failed = backend.start_job(spec(file_id, run_id=1))
    fake_openai.fail_job(failed.id)
    live = backend.start_job(spec(file_id, run_id=2))

    assert backend.find_job("h" * 64).id == live.id
    assert fake_openai.last_request("/fine_tuning/jobs", "GET").q(
        "metadata[snapshot_hash]") == "h" * 64


def test_events_come_oldest_first_with_metrics_mapped(backend, fake_openai, jsonl) -> None:  # noqa: ANN001
    job = backend.start_job(spec(backend.upload(jsonl).id))
    fake_openai.add_metrics(job.id, step=1, train_loss=1.5, valid_loss=1.7)
    fake_openai.add_metrics(job.id, step=2, train_loss=1.2, full_valid_loss=1.3)
    backend.page_size = 2

    events = backend.events(job.id)

    assert [e.created_at for e in events] == sorted(e.created_at for e in events)
    metrics = [e for e in events if e.kind == "metrics"]
    assert [(m.step, m.train_loss, m.valid_loss) for m in metrics] == [
        (1, 1.5, 1.7), (2, 1.2, 1.3)]
    assert events[0].message.startswith("Created fine-tuning job")
    newer = backend.events(job.id, after=metrics[0].id)
    assert [e.id for e in newer] == [e.id for e in events[events.index(metrics[0]) + 1:]]
    assert backend.events(job.id, after=events[-1].id) == []


def test_job_status_success_and_failure_are_mapped(backend, fake_openai, jsonl) -> None:  # noqa: ANN001
    file_id = backend.upload(jsonl).id
    ok = backend.start_job(spec(file_id))
    bad = backend.start_job(spec(file_id, run_id=2))
    fake_openai.succeed_job(ok.id, trained_tokens=1234)
    fake_openai.fail_job(bad.id, code="invalid_training_file", message="Line 3 is bad.")

    done = backend.job_status(ok.id)
    failed = backend.job_status(bad.id)

    assert (done.state, done.trained_tokens) == ("succeeded", 1234)
    assert done.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18")
    assert (failed.state, failed.error_code, failed.error_message) == (
        "failed", "invalid_training_file", "Line 3 is bad.")
    assert backend.checkpoints(ok.id)[0]["fine_tuning_job_id"] == ok.id


def test_cancel_cancels_the_job(backend, fake_openai, jsonl) -> None:  # noqa: ANN001
    job = backend.start_job(spec(backend.upload(jsonl).id))
    assert backend.cancel(job.id).state == "cancelled"


@pytest.mark.parametrize(
    ("inject", "code", "retryable", "retry_after"),
    [
        ({"kind": "rate_limit"}, "rate_limit_exceeded", True, 0.005),
        ({"status": 429, "kind": "custom", "headers": {"Retry-After": "7"},
          "code": "daily_job_limit", "validate": False}, "daily_job_limit", True, 7),
        ({"kind": "insufficient_quota"}, "insufficient_quota", False, None),
        ({"kind": "server_error"}, "server_error", True, None),
        ({"kind": "overloaded"}, "server_error", True, None),
        ({"kind": "invalid_api_key"}, "invalid_api_key", False, None),
        ({"status": 403, "kind": "custom", "code": "unsupported_country", "validate": False},
         "unsupported_country", False, None),
        ({"kind": "bad_request", "code": "invalid_value"}, "invalid_value", False, None),
    ],
)
def test_provider_errors_become_backend_errors(
    backend, fake_openai, jsonl, inject, code, retryable, retry_after  # noqa: ANN001
) -> None:
    fake_openai.inject("POST", "/files", **inject)

    with pytest.raises(BackendError) as caught:
        backend.upload(jsonl)

    error = caught.value
    assert (error.code, error.retryable) == (code, retryable)
    if retry_after is not None:
        assert error.retry_after == pytest.approx(retry_after)
    assert error.message


def test_file_not_ready_is_retryable(backend, fake_openai, jsonl) -> None:  # noqa: ANN001
    fake_openai.file_uploaded_retrieves = 5
    file_id = backend.upload(jsonl).id
    assert backend.file_status(file_id).status == "uploaded"

    with pytest.raises(BackendError) as caught:
        backend.start_job(spec(file_id))

    assert caught.value.code == "file_not_ready" and caught.value.retryable


def test_timeout_and_connection_errors_are_retryable(fake_openai, jsonl) -> None:  # noqa: ANN001
    backend = OpenAIBackend(fake_openai.client(timeout=0.2))
    injection = fake_openai.inject("GET", "/fine_tuning/jobs", kind="timeout", hold=5)
    with pytest.raises(BackendError) as caught:
        backend.find_job("h" * 64)
    injection.release()
    assert (caught.value.code, caught.value.retryable) == ("timeout", True)

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = OpenAIBackend(openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k",
                                         max_retries=0, timeout=2))
    with pytest.raises(BackendError) as caught:
        closed.find_job("h" * 64)
    assert (caught.value.code, caught.value.retryable) == ("connection_error", True)


def test_azure_backend_uses_the_openai_prefix_and_api_version(
    tmp_path: Path, fake_openai, jsonl  # noqa: ANN001
) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, training_backend="azure",
        azure_openai_endpoint=fake_openai.azure_endpoint, azure_openai_api_key="az-key",
        azure_openai_api_version="2024-10-21",
    )
    backend = AzureBackend.from_settings(settings)
    assert backend.name == "azure"

    file_id = backend.upload(jsonl).id
    job = backend.start_job(spec(file_id, snapshot_hash="z" * 64))
    fake_openai.add_metrics(job.id, step=1, train_loss=0.9)

    assert backend.find_job("z" * 64).id == job.id
    assert [e.train_loss for e in backend.events(job.id) if e.kind == "metrics"] == [0.9]
    request = fake_openai.last_request("/fine_tuning/jobs", "POST")
    assert request.path == "/openai/fine_tuning/jobs"
    assert request.api_version == "2024-10-21"
    assert request.headers["api-key"] == "az-key"
    fake_openai.assert_contract_ok()


def test_make_backend_follows_training_backend(services, tmp_path: Path) -> None:  # noqa: ANN001
    assert make_backend(services).name == "openai"
    services.settings = make_settings(services.settings.database_url, tmp_path,
                                      training_backend="none")
    assert make_backend(services) is None
