"""The fake OpenAI server, driven by the real `openai` client, with contract validation."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.contract import ContractViolation, OpenAPIContract
from tests.fakes.openai_fake import DEFAULT_SPEC, FakeOpenAI, house_sop

pytestmark = pytest.mark.skipif(
    not __import__("os").path.exists(DEFAULT_SPEC), reason=f"{DEFAULT_SPEC} missing"
)

TRAIN = (
    b'{"messages": [{"role": "user", "content": "Write an SOP for cleaning of a mixer"}, '
    b'{"role": "assistant", "content": "Title: Standard Operating Procedure"}]}\n'
)
VALID = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n'
)
BASE = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server
    if server.check_contract_on_exit:
        server.assert_contract_ok()


@pytest.fixture
def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, timeout=5)


def upload(client: openai.OpenAI, content: bytes = TRAIN, name: str = "train.jsonl"):
    return client.files.create(file=(name, content, "application/jsonl"), purpose="fine-tune")


def make_job(client: openai.OpenAI, **kwargs):
    training = upload(client)
    return client.fine_tuning.jobs.create(model=BASE, training_file=training.id, **kwargs)


# ----------------------------------------------------------------------------- files


def test_file_upload_waits_until_processed(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.file_uploaded_retrieves = 2
    f = upload(client)
    assert f.status == "uploaded" and f.bytes == len(TRAIN) and f.purpose == "fine-tune"

    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=BASE, training_file=f.id)
    assert err.value.code == "file_not_ready"
    assert err.value.body["param"] == "training_file"
    assert err.value.body["message"] == f"File {f.id} is not ready"

    statuses = [client.files.retrieve(f.id).status for _ in range(3)]
    assert statuses == ["uploaded", "uploaded", "processed"]

    sent = fake.last_request("/files", "POST")
    assert sent.form["purpose"] == "fine-tune"
    assert sent.files["file"].filename == "train.jsonl"
    assert sent.files["file"].data == TRAIN
    assert fake.file_content(f.id) == TRAIN
    assert client.files.content(f.id).read() == TRAIN

    listed = client.files.list(purpose="fine-tune")
    assert [x.id for x in listed.data] == [f.id]
    assert client.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


# ----------------------------------------------------------------------------- fine-tuning


def test_fine_tuning_lifecycle(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    training = upload(client)
    validation = upload(client, VALID, "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        validation_file=validation.id,
        suffix="sop-v3",
        seed=42,
        metadata={"sop_bot_run": "run-7", "kind": "retrain"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 0.5}},
        },
    )
    assert fake.last_request("/fine_tuning/jobs", "POST").json == {
        "model": BASE,
        "training_file": training.id,
        "validation_file": validation.id,
        "suffix": "sop-v3",
        "seed": 42,
        "metadata": {"sop_bot_run": "run-7", "kind": "retrain"},
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 0.5}},
        },
    }
    assert job.status == "validating_files" and job.seed == 42
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == "auto"
    other = make_job(client, metadata={"sop_bot_run": "run-8"})

    filtered = client.fine_tuning.jobs.list(metadata={"sop_bot_run": "run-7"})
    assert [j.id for j in filtered.data] == [job.id]
    assert fake.last_request("/fine_tuning/jobs", "GET").q("metadata[sop_bot_run]") == "run-7"
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [other.id, job.id]

    fake.advance_job(job.id, to="running")
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.hyperparameters.batch_size == 1
    fake.add_metrics(job.id, step=1, train_loss=1.5, valid_loss=1.7, total_steps=2)
    fake.add_metrics(job.id, step=2, train_loss=0.9, valid_loss=1.1, total_steps=2)

    events = client.fine_tuning.jobs.list_events(job.id, limit=50).data
    assert events[0].type == "metrics" and events[0].data["step"] == 2
    assert events[0].data["train_loss"] == 0.9 and events[0].data["valid_loss"] == 1.1
    assert events[0].message == "Step 2/2: training loss=0.90, validation loss=1.10"
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=2)] == [
        e.id for e in events
    ]  # auto-pagination with `after`

    done = fake.succeed_job(job.id)
    model_id = done["fine_tuned_model"]
    assert re.fullmatch(rf"ft:{BASE}:fake-org:sop-v3:[0-9a-f]{{8}}", model_id)
    finished = client.fine_tuning.jobs.retrieve(job.id)
    assert finished.status == "succeeded" and finished.fine_tuned_model == model_id
    assert finished.trained_tokens and finished.finished_at is not None
    csv = client.files.content(finished.result_files[0]).read().decode()
    assert csv.splitlines()[0].startswith("step,train_loss")
    assert csv.splitlines()[2].startswith("2,0.9")

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints[0].step_number == 2
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{model_id}:ckpt-step-2"
    assert checkpoints[0].metrics.valid_loss == 1.1

    assert model_id in {m.id for m in client.models.list()}
    assert client.models.retrieve(model_id).owned_by == "org-fakeorg"
    reply = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Write an SOP for dispensing"}]
    )
    assert reply.model == model_id

    assert client.models.delete(model_id).deleted is True
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


def test_failed_and_cancelled_jobs(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    failing = make_job(client)
    fake.fail_job(failing.id, code="invalid_training_file", message="Line 3 has no messages")
    got = client.fine_tuning.jobs.retrieve(failing.id)
    assert got.status == "failed" and got.error.code == "invalid_training_file"
    assert got.error.message == "Line 3 has no messages"
    assert fake.events(failing.id)[0]["level"] == "error"

    job = make_job(client)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="gpt-nope", training_file=job.training_file)
    assert err.value.code == "model_not_available"


# ----------------------------------------------------------------------------- chat


def test_chat_default_reply_is_house_format(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You write SOPs."},
            {"role": "user", "content": "Write an SOP for cleaning of tablet compression machine"},
        ],
    )
    text = reply.choices[0].message.content
    assert text == house_sop("Cleaning of Tablet Compression Machine")
    assert text.startswith("Title: Standard Operating Procedure for Cleaning of Tablet Compression")
    assert "5.0 Procedure:\n5.1 " in text and "6.0 Abbreviations:" in text
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.completion_tokens > 50 and usage.prompt_tokens > 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_scripted_replies_and_truncation(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.chat_responses.extend(["first", lambda req: "echo: " + req["messages"][-1]["content"]])
    ask = [{"role": "user", "content": "hello"}]
    first = client.chat.completions.create(model="gpt-4o", messages=ask)
    assert first.choices[0].message.content == "first"
    second = client.chat.completions.create(model="gpt-4o", messages=ask, temperature=0.2)
    assert second.choices[0].message.content == "echo: hello"
    assert fake.last_request("/chat/completions").json["temperature"] == 0.2
    short = client.chat.completions.create(model="gpt-4o", messages=ask, max_completion_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5


def test_chat_streaming_with_usage(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.chat_responses.append("Title: Streamed SOP\n\n1.0 Objective: test.")
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Title: Streamed SOP\n\n1.0 Objective: test."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_unknown_model_is_404(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


# ----------------------------------------------------------------------------- faults


def test_rate_limit_then_retry_succeeds(fake: FakeOpenAI) -> None:
    injection = fake.inject("POST", "/v1/chat/completions", kind="rate_limit", times=1)
    retrying = fake.client(max_retries=1)
    started = time.monotonic()
    reply = retrying.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Write an SOP for gowning"}]
    )
    assert time.monotonic() - started < 2  # retry-after-ms honoured
    assert reply.choices[0].message.content.startswith("Title: Standard Operating Procedure")
    sent = fake.requests_to("/chat/completions")
    assert [r.status for r in sent] == [429, 200] and sent[0].injected == "rate_limit"
    assert sent[1].headers.get("x-stainless-retry-count") == "1"
    assert injection.hits == 1 and injection.remaining == 0


def test_error_presets(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    fake.inject("POST", "/chat/completions", kind="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as quota:
        client.chat.completions.create(**ask)
    assert quota.value.code == "insufficient_quota"

    fake.inject("POST", "/chat/completions", status=500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**ask)

    fake.inject("*", "/fine_tuning/*", kind="invalid_api_key")
    with pytest.raises(openai.AuthenticationError) as auth:
        client.fine_tuning.jobs.list()
    assert auth.value.code == "invalid_api_key"

    fake.inject("POST", "/chat/completions", status=429, headers={"Retry-After": "0"})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**ask)
    # Retry-After: 0 breaks the spec (integer, minimum 1) and is reported as such
    assert any("Retry-After" in v for v in fake.contract_violations)
    fake.contract_violations.clear()


def test_timeout_injection_does_not_hang(fake: FakeOpenAI) -> None:
    injection = fake.inject("GET", "/models", kind="timeout", hold=2.0)
    impatient = fake.client(timeout=0.2)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        impatient.models.list()
    assert time.monotonic() - started < 1.5
    injection.release()
    assert impatient.models.list().data  # the next call is answered normally


def test_stream_faults(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
    fake.inject("POST", "/chat/completions", kind="stream_error", after_chunks=3)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(**ask))
    fake.inject("POST", "/chat/completions", kind="disconnect", after_chunks=2)
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(**ask))
    fake.inject("GET", "/models", kind="disconnect")
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_auth_is_required(fake: FakeOpenAI) -> None:
    request = urllib.request.Request(fake.base_url + "/models")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 401
    assert json.loads(err.value.read())["error"]["type"] == "invalid_request_error"
    fake.contract_violations.clear()  # the unauthenticated request itself breaks the contract

    fake.api_keys = {"sk-good"}
    with pytest.raises(openai.AuthenticationError) as bad:
        fake.client(api_key="sk-bad-key").models.list()
    assert bad.value.code == "invalid_api_key"
    assert fake.client(api_key="sk-good").models.list().data


# ----------------------------------------------------------------------------- azure


def test_azure_client_paths(fake: FakeOpenAI) -> None:
    azure = fake.azure_client(api_version="2024-10-21")
    reply = azure.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Write an SOP for sampling"}]
    )
    assert reply.choices[0].message.content.startswith("Title: Standard Operating Procedure for")
    chat = fake.last_request("/chat/completions")
    assert chat.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert chat.api_version == "2024-10-21" and chat.headers["api-key"] == "azure-test-key"
    assert chat.azure_deployment == "gpt-4o-mini"

    fake.deploy("sop-writer", "gpt-4o")
    azure.chat.completions.create(model="sop-writer", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as err:
        azure.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "DeploymentNotFound"

    assert list(azure.fine_tuning.jobs.list()) == []
    assert fake.last_request("/fine_tuning/jobs").path == "/openai/fine_tuning/jobs"


# ----------------------------------------------------------------------------- contract


def test_contract_records_bad_requests(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    f = upload(client)
    client.fine_tuning.jobs.create(model=BASE, training_file=f.id, extra_body={"seed": -5})
    with pytest.raises(AssertionError, match=r"seed: -5 is less than the minimum of 0"):
        fake.assert_contract_ok()
    fake.contract_violations.clear()


def test_strict_contract_rejects_bad_requests() -> None:
    with FakeOpenAI(strict_contract=True) as strict:
        client = strict.client()
        with pytest.raises(openai.BadRequestError, match="not in the spec"):
            client.models.list(extra_query={"bogus": "1"})
        assert len(strict.contract_violations) == 1
        unfiltered = client.fine_tuning.jobs.list(extra_query={"metadata": "null"})
        assert unfiltered.data == []
        assert len(strict.contract_violations) == 1  # `metadata=null` is allowed


def test_contract_helper_direct() -> None:
    contract = OpenAPIContract.for_spec(DEFAULT_SPEC)
    assert contract is OpenAPIContract.for_spec(DEFAULT_SPEC)  # loaded once per session
    op = contract.validate_request(
        "GET", "/v1/fine_tuning/jobs?limit=2&metadata[a]=b", headers={"Authorization": "Bearer x"}
    )
    assert op.operation_id == "listPaginatedFineTuningJobs"
    with pytest.raises(ContractViolation, match="no such path"):
        contract.validate_request("GET", "/v1/fine_tunes", headers={"Authorization": "Bearer x"})
    with pytest.raises(ContractViolation, match="'error' is a required property"):
        contract.validate_response(
            "GET", "/v1/fine_tuning/jobs/ftjob-1", 200, json.dumps({"id": "x"}).encode()
        )
    # learning_rate_multiplier uses 3.0-style `exclusiveMinimum: true`: normalized, so 0.5 is ok
    contract.validate_request(
        "POST",
        "/v1/fine_tuning/jobs",
        headers={"Authorization": "Bearer x"},
        body_bytes=json.dumps(
            {
                "model": BASE,
                "training_file": "file-1",
                "suffix": None,
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"learning_rate_multiplier": 0.5}},
                },
            }
        ).encode(),
        content_type="application/json",
    )


def test_contract_is_generic_over_swagger2(tmp_path) -> None:
    spec = "/work/shared/specs/slack-web-openapi-v2.json"
    if not __import__("os").path.exists(spec):
        pytest.skip("slack spec missing")
    slack = OpenAPIContract.for_spec(spec, ignore_params=[("header", "token")])
    slack.validate_request(
        "POST",
        "/api/chat.postMessage",
        body_bytes=b"channel=C1&text=hi&mrkdwn=true",
        content_type="application/x-www-form-urlencoded",
    )
    with pytest.raises(ContractViolation, match="missing required form field 'channel'"):
        slack.validate_request(
            "POST",
            "/api/chat.postMessage",
            body_bytes=b"text=hi",
            content_type="application/x-www-form-urlencoded",
        )
