"""SOP generation against the fake OpenAI server and a real database.

Covers the two modes (fine-tuned: only system + user; retrieval: similar approved SOPs as
examples), the repair round, falling back when the fine-tuned model is gone, every error
sentence, redaction on the wire, streaming and the contract with the OpenAI spec.
"""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from sqlmodel import select

from sop_pipeline import audit, model_registry, sop_format
from sop_pipeline.generation import (
    RequestRejected,
    find_generation_by_message,
    generate,
    run_generation,
    start_generation,
)
from sop_pipeline.models import Generation, ModelVersion, TrainingExample
from sop_pipeline.services import build_services
from tests.conftest import make_settings
from tests.fakes.openai_fake import house_sop

REQUEST = "Write an SOP for cleaning of the tablet compression machine"
FT_MODEL = "ft:gpt-4o-mini-2024-07-18:fake-org:sop-bot:abc123"

BROKEN_SOP = """Cleaning of the tablet compression machine

1.0 Objective: To clean the machine.

5.0 Procedure:
5.1 Switch off the machine.
"""


@pytest.fixture(autouse=True)
def _contract_checked(fake_openai):  # noqa: ANN001, ANN202
    """Every request we send must match the official OpenAI spec."""
    yield
    fake_openai.assert_contract_ok()


def add_example(services, title: str, prompt: str, text: str, *, status: str = "approved"):  # noqa: ANN001, ANN201
    with services.session() as session:
        row = TrainingExample(
            title=title, prompt=prompt, sop_text=text, status=status, source="import",
            content_hash=hashlib.sha256(text.encode()).hexdigest(),
        )
        session.add(row)
        session.commit()
        session.refresh(row)
        return row


def add_library(services) -> dict[str, int]:  # noqa: ANN001
    topics = {
        "press": "Cleaning of Tablet Compression Machine",
        "autoclave": "Operation of Autoclave",
        "balance": "Calibration of Analytical Balance",
        "pest": "Pest Control in Warehouse",
    }
    ids = {}
    for key, topic in topics.items():
        text = sop_format.canonicalize(house_sop(topic))
        ids[key] = add_example(services, topic, f"Write an SOP for {topic.lower()}", text).id
    return ids


def activate_ft_model(services, fake, model_id: str = FT_MODEL, *, register: bool = True):  # noqa: ANN001, ANN201
    if register:
        fake.register_model(model_id)
    with services.session() as session:
        version = ModelVersion(model_id=model_id, base_model="gpt-4o-mini-2024-07-18")
        session.add(version)
        session.flush()
        model_registry.activate(session, version, actor="U_ADMIN")
        session.commit()
        session.refresh(version)
        return version


def chat_bodies(fake) -> list[dict]:  # noqa: ANN001
    return [r.json for r in fake.requests_to("/chat/completions", "POST")]


# ------------------------------------------------------------------------ the two modes


def test_without_fine_tuned_model_the_base_model_gets_similar_approved_sops(
    services, fake_openai
):
    ids = add_library(services)
    retracted = add_example(
        services, "Cleaning of tablet press (old)", "Write an SOP for tablet press cleaning",
        "Title: Old tablet press cleaning\n\n1.0 Objective: retracted text.\n",
        status="retracted",
    )

    result = generate(services, REQUEST, "U1")

    assert result.status == "completed" and result.compliant is True
    assert result.mode == "retrieval"
    assert result.model == services.settings.sop_base_model
    (body,) = chat_bodies(fake_openai)
    assert body["model"] == services.settings.sop_base_model
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    messages = body["messages"]
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith(services.settings.sop_system_prompt)
    assert "5.0 Procedure" in messages[0]["content"]
    assert "6.0 Abbreviations" in messages[0]["content"]
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[-1] == {"role": "user", "content": REQUEST}
    # the most similar example sits right before the request
    assert "Tablet Compression Machine" in messages[-2]["content"]
    assert all("retracted text" not in m["content"] for m in messages)
    assert result.retrieved_example_ids[0] == ids["press"]
    assert retracted.id not in result.retrieved_example_ids
    with services.session() as session:
        row = session.get(Generation, result.generation_id)
        assert row.retrieved_example_ids == result.retrieved_example_ids
        assert row.mode == "retrieval" and row.status == "completed"


def test_retrieval_respects_k_and_token_budget(database_url, tmp_path, fake_openai):
    settings = make_settings(database_url, tmp_path / "d", openai_base_url=fake_openai.base_url,
                             sop_retrieval_k=3, sop_retrieval_token_budget=400)
    services = build_services(settings)
    try:
        add_library(services)
        result = generate(services, REQUEST, "U1")
    finally:
        services.engine.dispose()
    (body,) = chat_bodies(fake_openai)
    # each house SOP is ~170 tokens: only two fit in 400
    assert len(result.retrieved_example_ids) == 2
    assert len(body["messages"]) == 1 + 2 * 2 + 1


def test_with_no_approved_examples_the_template_alone_guides_the_base_model(
    services, fake_openai
):
    result = generate(services, REQUEST, "U1")

    assert result.status == "completed"
    (body,) = chat_bodies(fake_openai)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "1.0 Objective" in body["messages"][0]["content"]
    assert result.retrieved_example_ids == []


def test_active_fine_tuned_model_gets_only_the_short_training_prompt(services, fake_openai):
    add_library(services)
    activate_ft_model(services, fake_openai)

    result = generate(services, REQUEST, "U1")

    (body,) = chat_bodies(fake_openai)
    assert body["model"] == FT_MODEL
    assert body["messages"] == [
        {"role": "system", "content": services.settings.sop_system_prompt},
        {"role": "user", "content": REQUEST},
    ]
    assert result.mode == "fine_tuned" and result.model == FT_MODEL
    assert result.retrieved_example_ids == []
    assert result.draft_notice.startswith(f"DRAFT generated by SOP Bot with model {FT_MODEL} on ")


def test_deleted_fine_tuned_model_falls_back_to_retrieval_and_is_retired(
    services, fake_openai, notifier
):
    add_library(services)
    version = activate_ft_model(services, fake_openai)
    fake_openai.delete_model(FT_MODEL)

    result = generate(services, REQUEST, "U1")

    first, second = chat_bodies(fake_openai)
    assert first["model"] == FT_MODEL
    assert second["model"] == services.settings.sop_base_model
    assert second["messages"][-1] == {"role": "user", "content": REQUEST}
    assert len(second["messages"]) > 2  # examples came along
    assert result.status == "completed" and result.mode == "retrieval"
    with services.session() as session:
        assert session.get(ModelVersion, version.id).status == "retired"
        assert model_registry.active_model(session) is None
        assert [e.action for e in audit.events(session, action="retire")] == ["retire"]
    assert "model_retired" in notifier.kinds()
    # the next request goes straight to retrieval
    generate(services, REQUEST, "U1")
    assert chat_bodies(fake_openai)[-1]["model"] == services.settings.sop_base_model


# ------------------------------------------------------------------------ compliance


def test_non_compliant_first_answer_gets_exactly_one_repair(services, fake_openai):
    fake_openai.chat_responses.extend([BROKEN_SOP, house_sop("Cleaning of Tablet Press")])
    resets: list[str] = []

    result = generate(services, REQUEST, "U1", on_delta=lambda _: None,
                      on_reset=lambda: resets.append("reset"))

    first, second = chat_bodies(fake_openai)
    assert second["messages"][: len(first["messages"])] == first["messages"]
    assert second["messages"][-2] == {"role": "assistant", "content": BROKEN_SOP}
    repair = second["messages"][-1]
    assert repair["role"] == "user"
    assert "2.0 Scope" in repair["content"]  # the findings are listed
    assert "complete corrected SOP" in repair["content"]
    assert result.compliant is True and result.repair_rounds == 1
    assert resets == ["reset"]
    assert result.text == sop_format.canonicalize(house_sop("Cleaning of Tablet Press"))


def test_draft_still_broken_after_repair_is_returned_with_its_findings(services, fake_openai):
    fake_openai.chat_responses.extend([BROKEN_SOP, BROKEN_SOP, house_sop("Never asked")])

    result = generate(services, REQUEST, "U1")

    assert len(chat_bodies(fake_openai)) == 2
    assert result.status == "completed"
    assert result.compliant is False
    assert any(f.severity == "error" for f in result.findings)
    assert "does not follow the house format" in result.summary
    with services.session() as session:
        row = session.get(Generation, result.generation_id)
        assert row.compliant is False and row.findings and row.repair_rounds == 1


def test_draft_cut_at_the_output_limit_is_flagged(database_url, tmp_path, fake_openai):
    settings = make_settings(database_url, tmp_path / "d", openai_base_url=fake_openai.base_url,
                             sop_max_output_tokens=100, sop_repair_rounds=0)
    services = build_services(settings)
    try:
        result = generate(services, REQUEST, "U1")
    finally:
        services.engine.dispose()
    assert result.compliant is False
    assert any(f.code == "truncated" for f in result.findings)


def test_text_is_canonical_and_carries_no_draft_notice(services, fake_openai):
    fake_openai.chat_responses.append(
        "**Cleaning of Tablet Press**\n\n1. Objective\nTo clean.\n\n2. Scope\nTablet press.\n\n"
        "3. Responsibility\n- Operator\n\n4. Accountability\nHOD QA\n\n5. Procedure\n"
        "5.1 Switch off.\n5.2 Dismantle.\n5.3 Wash with purified water.\n\n"
        "6. Abbreviations\nHOD - Head of Department\nQA - Quality Assurance\n"
    )

    result = generate(services, REQUEST, "U1")

    assert result.text == sop_format.canonicalize(result.text)
    assert result.text.startswith("Title: Cleaning of Tablet Press")
    assert "DRAFT" not in result.text
    assert result.markdown.startswith(f"_{result.draft_notice}_")
    with services.session() as session:
        row = session.get(Generation, result.generation_id)
        assert row.draft_text == result.text
        assert row.prompt_tokens == result.prompt_tokens > 0
        assert row.completion_tokens == result.completion_tokens > 0
        assert row.latency_ms is not None


# ------------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("", "Your request is empty."),
        ("   \n ", "Your request is empty."),
        ("hi", "That doesn't look like a request for an SOP. Try: /sop Write an SOP for"),
        ("what's the weather", "That doesn't look like a request for an SOP."),
        ("Write an SOP for " + "cleaning " * 400, "the limit is 2,000"),
    ],
)
def test_bad_requests_get_a_sentence_and_nothing_is_stored_or_sent(
    services, fake_openai, request_text, expected
):
    with pytest.raises(RequestRejected) as info:
        start_generation(services, request_text, "U1")

    assert expected in str(info.value)
    assert str(info.value).endswith((".", "machine"))
    with services.session() as session:
        assert session.exec(select(Generation)).all() == []
    assert fake_openai.requests == []


# ------------------------------------------------------------------------ provider trouble


def test_rate_limit_is_retried_after_the_wait_the_provider_asks_for(services, fake_openai):
    fake_openai.inject("POST", "/chat/completions", kind="rate_limit")  # retry-after-ms: 5
    row = start_generation(services, REQUEST, "U1")

    result = run_generation(services, row.id)

    assert result.status == "completed"
    assert [r.status for r in fake_openai.requests_to("/chat/completions")] == [429, 200]


def test_server_errors_until_retries_run_out_fail_with_a_sentence(
    database_url, tmp_path, fake_openai
):
    settings = make_settings(database_url, tmp_path / "d", openai_base_url=fake_openai.base_url,
                             provider_max_retries=2)
    services = build_services(settings)
    fake_openai.inject("POST", "/chat/completions", kind="server_error", times=None)
    try:
        row = start_generation(services, REQUEST, "U1")
        result = run_generation(services, row.id)
        with services.session() as session:
            stored = session.get(Generation, row.id)
    finally:
        services.engine.dispose()

    assert len(fake_openai.requests_to("/chat/completions")) == 3
    assert result.status == "failed"
    assert result.error == (
        "The model provider had an error (HTTP 500). Please try again in a few minutes."
    )
    assert result.text == "" and result.sop is None and result.markdown == ""
    assert stored.status == "failed" and stored.draft_text is None
    assert stored.error == result.error


def test_provider_that_does_not_answer_in_time_fails_with_a_sentence(
    database_url, tmp_path, fake_openai
):
    settings = make_settings(database_url, tmp_path / "d", openai_base_url=fake_openai.base_url,
                             sop_generation_timeout_seconds=0.3)
    services = build_services(settings)
    hang = fake_openai.inject("POST", "/chat/completions", kind="timeout", hold=10, times=None)
    try:
        result = generate(services, REQUEST, "U1")
    finally:
        hang.release()
        services.engine.dispose()

    assert result.status == "failed"
    assert result.error == (
        "The model provider did not answer within 0.3 seconds. "
        "Please try again in a few minutes."
    )
    assert result.text == ""


def test_refused_key_fails_at_once_with_a_sentence(services, fake_openai):
    fake_openai.inject("POST", "/chat/completions", kind="invalid_api_key")

    result = generate(services, REQUEST, "U1")

    assert result.status == "failed"
    assert result.error == (
        "SOP Bot's OpenAI key was refused; ask an admin to check OPENAI_API_KEY."
    )
    assert len(fake_openai.requests_to("/chat/completions")) == 1


def test_exhausted_quota_fails_with_a_sentence(services, fake_openai):
    # The SDK retries every 429 (openai-python cannot tell quota from rate limits before
    # retrying); the sentence still says what to do once its retries are used up.
    fake_openai.inject("POST", "/chat/completions", kind="insufficient_quota", times=None,
                       headers={"retry-after-ms": "1"})

    result = generate(services, REQUEST, "U1")

    assert result.status == "failed"
    assert "run out of credit" in result.error
    retries = services.settings.provider_max_retries
    assert len(fake_openai.requests_to("/chat/completions")) == retries + 1
    fake_openai.clear_injections()


def test_dropped_stream_is_retried_and_the_consumer_is_told_to_start_over(
    services, fake_openai
):
    fake_openai.inject("POST", "/chat/completions", kind="disconnect", after_chunks=6)
    shown: list[str] = []

    def reset() -> None:
        shown.clear()

    result = generate(services, REQUEST, "U1", on_delta=shown.append, on_reset=reset)

    assert result.status == "completed"
    assert len(fake_openai.requests_to("/chat/completions")) == 2
    assert sop_format.canonicalize("".join(shown)) == result.text


def test_without_on_reset_a_retried_stream_is_not_glued_to_the_partial_one(
    services, fake_openai
):
    fake_openai.inject("POST", "/chat/completions", kind="stream_error", after_chunks=6)
    shown: list[str] = []

    result = generate(services, REQUEST, "U1", on_delta=shown.append)

    assert result.status == "completed"
    assert len("".join(shown)) < len(result.text)  # only the partial first attempt was shown


def test_cancelled_generation_stops_and_says_so(services, fake_openai):
    cancel = threading.Event()
    row = start_generation(services, REQUEST, "U1")

    def on_delta(_: str) -> None:
        cancel.set()

    result = run_generation(services, row.id, on_delta=on_delta, cancel=cancel)

    assert result.status == "failed"
    assert result.error == "The draft was cancelled before it was finished. Please ask again."


# ------------------------------------------------------------------------ redaction


def test_redaction_happens_before_anything_leaves(database_url, tmp_path, fake_openai):
    settings = make_settings(
        database_url, tmp_path / "d", openai_base_url=fake_openai.base_url,
        sop_redact_patterns=r"email,phone,Plant-\d+",
    )
    services = build_services(settings)
    try:
        add_example(
            services, "Cleaning of tablet press", "Write an SOP for cleaning of tablet press",
            sop_format.canonicalize(house_sop("Cleaning of Tablet Press")).replace(
                "Operator", "Operator (anna.berg@acme-pharma.com, +44 20 7946 0958)"),
        )
        request = (REQUEST + " at Plant-7; questions to qa.lead@acme-pharma.com or "
                   "555-123-4567")
        fake_openai.chat_responses.append(house_sop("Cleaning of Tablet Press"))
        result = generate(services, request, "U1")
        with services.session() as session:
            stored = session.get(Generation, result.generation_id)
    finally:
        services.engine.dispose()

    (recorded,) = fake_openai.requests_to("/chat/completions")
    wire = recorded.body.decode()
    for secret in ("acme-pharma.com", "7946 0958", "555-123-4567", "Plant-7"):
        assert secret not in wire
    body = json.loads(wire)
    assert body["messages"][-1]["content"] == (
        REQUEST + " at [REDACTED]; questions to [REDACTED-EMAIL] or [REDACTED-PHONE]"
    )
    assert "[REDACTED-EMAIL]" in body["messages"][2]["content"]
    assert stored.request == request  # our own record keeps what the user typed


# ------------------------------------------------------------------------ streaming


def test_deltas_arrive_in_order_and_make_up_the_draft(services, fake_openai):
    answer = house_sop("Cleaning of Tablet Press")
    fake_openai.chat_responses.append(answer)
    deltas: list[str] = []

    result = generate(services, REQUEST, "U1", on_delta=deltas.append)

    assert len(deltas) > 20
    assert "".join(deltas) == answer
    assert sop_format.canonicalize("".join(deltas)) == result.text


def test_streaming_status_is_visible_while_the_model_writes(services, fake_openai):
    row = start_generation(services, REQUEST, "U1")
    seen: list[str] = []

    def on_delta(_: str) -> None:
        if not seen:
            with services.session() as session:
                seen.append(session.get(Generation, row.id).status)

    result = run_generation(services, row.id, on_delta=on_delta)

    assert seen == ["streaming"] and result.status == "completed"


# ------------------------------------------------------------------------ bookkeeping


def test_start_stores_a_pending_row_and_run_completes_it(services, fake_openai):
    row = start_generation(services, f"  {REQUEST}  ", "U1", slack_channel="C1",
                           slack_thread_ts="111.1")

    assert row.id is not None and row.status == "pending" and row.request == REQUEST
    assert fake_openai.requests == []
    result = run_generation(services, row.id)
    assert result.status == "completed" and result.generation_id == row.id


def test_running_a_completed_generation_again_does_not_call_the_provider(services, fake_openai):
    row = start_generation(services, REQUEST, "U1")
    first = run_generation(services, row.id)

    again = run_generation(services, row.id)

    assert len(fake_openai.requests_to("/chat/completions")) == 1
    assert again.text == first.text and again.status == "completed"
    assert [f.code for f in again.findings] == [f.code for f in first.findings]


def test_slack_reply_location_maps_reactions_back_to_the_generation(services, fake_openai):
    row = start_generation(services, REQUEST, "U1", slack_channel="C1", slack_thread_ts="100.1",
                           slack_ts="100.2")
    other = start_generation(services, REQUEST, "U2", slack_channel="C2", slack_thread_ts="100.1")

    with services.session() as session:
        assert find_generation_by_message(session, "C1", "100.2").id == row.id
        assert find_generation_by_message(session, "C1", "100.1").id == row.id
        assert find_generation_by_message(session, "C2", "100.1").id == other.id
        assert find_generation_by_message(session, "C1", "999.9") is None


def test_a_wait_longer_than_the_sdk_honours_fails_at_once_as_rate_limited(services, fake_openai):
    fake_openai.inject("POST", "/chat/completions", kind="rate_limit",
                       headers={"retry-after": "600", "retry-after-ms": "600000"})

    result = generate(services, REQUEST, "U1")

    assert len(fake_openai.requests_to("/chat/completions")) == 1
    assert result.status == "failed"
    assert result.error.startswith("The model provider is rate-limiting SOP Bot")


def test_a_failing_stream_consumer_does_not_lose_the_draft(services, fake_openai):
    calls: list[str] = []

    def broken_slack_update(text: str) -> None:
        calls.append(text)
        raise RuntimeError("Slack said ratelimited")

    result = generate(services, REQUEST, "U1", on_delta=broken_slack_update)

    assert len(calls) == 1
    assert result.status == "completed" and result.text


def test_an_unexpected_error_is_stored_as_a_failure_not_left_streaming(
    services, fake_openai, monkeypatch
):
    def explode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyError("bug")

    monkeypatch.setattr(sop_format, "validate", explode)  # a bug in the format engine
    row = start_generation(services, REQUEST, "U1")

    result = run_generation(services, row.id)

    assert result.status == "failed"
    assert result.error.startswith("SOP generation failed unexpectedly.")
    with services.session() as session:
        assert session.get(Generation, row.id).status == "failed"


def test_a_draft_left_streaming_by_a_dead_worker_can_be_run_again(services, fake_openai):
    from datetime import timedelta

    row = start_generation(services, REQUEST, "U1")
    with services.session() as session:
        stored = session.get(Generation, row.id)
        stored.status = "streaming"
        session.add(stored)
        session.commit()

    busy = run_generation(services, row.id)  # a live worker may still be on it
    assert busy.status == "streaming" and fake_openai.requests == []

    with services.session() as session:
        stored = session.get(Generation, row.id)
        stored.created_at = stored.created_at - timedelta(hours=1)
        session.add(stored)
        session.commit()
    assert run_generation(services, row.id).status == "completed"


def test_a_draft_keeps_the_models_own_numbering_and_reports_a_duplicate(services, fake_openai):
    """Issue #13: the draft shown, approved and exported is numbered as the model wrote it;
    a duplicated step number is a finding the reviewer sees, never silently renumbered."""
    written = house_sop("Cleaning of Tablet Press").replace(
        "5.3 Clean the parts", "5.2 Clean the parts"
    )
    fake_openai.chat_responses.append(written)

    result = generate(services, REQUEST, "U1")

    assert result.text == written
    assert [(f.code, f.severity) for f in result.findings] == [("duplicate_step_number", "warning")]
    assert result.compliant is True and result.repair_rounds == 0
    structure = sop_format.render_structure(result.sop, services.template)
    assert [item["number"] for item in structure["sections"][4]["items"]] == ["5.1", "5.2", "5.2"]
    assert "\n\n5.2 Remove" in result.markdown and "\n\n5.2 Clean" in result.markdown


def test_a_failed_repair_keeps_the_complete_first_draft(database_url, tmp_path, fake_openai):
    settings = make_settings(database_url, tmp_path / "d", openai_base_url=fake_openai.base_url,
                             provider_max_retries=0)
    services = build_services(settings)
    fake_openai.chat_responses.append(BROKEN_SOP)

    def provider_breaks_after_first_answer(_: str) -> None:
        if not fake_openai.injections:
            fake_openai.inject("POST", "/chat/completions", kind="server_error", times=None)

    try:
        result = generate(services, REQUEST, "U1", on_delta=provider_breaks_after_first_answer)
    finally:
        services.engine.dispose()

    assert len(fake_openai.requests_to("/chat/completions")) == 2
    assert result.status == "completed" and result.compliant is False
    assert result.repair_rounds == 1
    assert result.text == sop_format.canonicalize(BROKEN_SOP)
