"""The evaluation gate: only a model that drafts SOPs at least as well as the current one is
promoted. Drafts come from the fake OpenAI server (scripted per model id); scores, decisions,
reports and the audit trail are checked on a real database."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import build_app
from sop_pipeline import audit, model_registry
from sop_pipeline.evaluation import (
    EvalCase,
    EvaluationError,
    ModelScores,
    decide,
    evaluate_model,
    evaluation_cases,
    gate,
    lcs_length,
    length_closeness,
    load_prompt_file,
    rouge_l_f1,
    score_draft,
)
from sop_pipeline.examples import approve_sop, eval_holdout_ids
from sop_pipeline.models import (
    DatasetSnapshot,
    ModelVersion,
    RunState,
    TrainingExample,
    TrainingRun,
)
from sop_pipeline.services import Services, build_services
from sop_pipeline.training.backend import BackendError
from tests.conftest import DATA_DIR, make_settings
from tests.fakes.openai_fake import house_sop, last_user_text, sop_topic

OLD_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:sop-bot:old111"
NEW_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:sop-bot:new222"
BASE_MODEL = "gpt-4o-mini-2024-07-18"
TOPICS = [
    "cleaning of tablet compression machine", "calibration of thermometers", "line clearance",
    "dispensing of raw materials", "operation of autoclave", "hand washing in the food plant",
    "pest control", "metal detector checks", "cleaning of dairy lines",
    "balance calibration", "cleaning of coating pan", "operation of blister machine",
    "sampling of purified water", "gowning for the sterile area", "temperature mapping",
    "handling of customer complaints",
]
NOT_AN_SOP = "Sure! Here are some tips:\n- clean the machine\n- check it afterwards"


def house_answer(request: dict) -> str:
    """What a good model drafts: the house format, for the requested topic."""
    return house_sop(sop_topic(last_user_text(request)))


def answer_by_model(bad_models: set[str]) -> Callable[[dict], str]:
    """A scripted chat reply: non-compliant text from `bad_models`, house format otherwise."""
    return lambda request: NOT_AN_SOP if request["model"] in bad_models else house_answer(request)


@pytest.fixture
def make(database_url: str, tmp_path: Path, fake_openai) -> Iterator[Callable[..., Services]]:  # noqa: ANN001
    """Services on the test database and the fake; retries on, evaluation hold-out on."""
    built: list[Services] = []
    from sop_pipeline.notifications import RecordingNotifier

    def factory(**overrides: object) -> Services:
        values = {"openai_base_url": fake_openai.base_url, "eval_share": 0.3,
                  "sop_min_examples": 5, "eval_max_prompts": 10, "provider_max_retries": 2,
                  **overrides}
        settings = make_settings(database_url, tmp_path / "data", **values)
        services = build_services(settings, notifier=RecordingNotifier())
        built.append(services)
        return services

    yield factory
    for services in built:
        services.engine.dispose()


@pytest.fixture
def svc(make) -> Services:  # noqa: ANN001
    return make()


@pytest.fixture(autouse=True)
def _models(fake_openai) -> Iterator[None]:  # noqa: ANN001
    fake_openai.register_model(OLD_MODEL)
    fake_openai.register_model(NEW_MODEL)
    yield
    fake_openai.assert_contract_ok()


def approve_house_sops(services: Services, n: int = len(TOPICS)) -> list[int]:
    """Approve `n` house-format SOPs through the real approval path; returns their ids."""
    ids = []
    with services.session() as session:
        for topic in TOPICS[:n]:
            prompt = f"Write an SOP for {topic}"
            result = approve_sop(session, services.template, services.settings,
                                 text=house_sop(sop_topic(prompt)), prompt=prompt,
                                 approver="U_QA", source="import")
            assert result.stored, result.message
            ids.append(result.example.id)
        session.commit()
    return ids


def held_out(services: Services) -> set[int]:
    with services.session() as session:
        return eval_holdout_ids(list(session.exec(select(TrainingExample))),
                                services.settings)


def make_run(services: Services, trained_on: list[int], model: str = NEW_MODEL) -> TrainingRun:
    """A run that just succeeded on a snapshot of `trained_on`, waiting for the gate."""
    with services.session() as session:
        snapshot = DatasetSnapshot(content_hash=f"snap-{len(trained_on)}-{model}",
                                   example_ids=trained_on)
        session.add(snapshot)
        session.flush()
        run = TrainingRun(snapshot_id=snapshot.id, state=RunState.EVALUATING,
                          fine_tuned_model=model, base_model=BASE_MODEL)
        session.add(run)
        session.commit()
        return run


def activate(services: Services, model_id: str) -> ModelVersion:
    with services.session() as session:
        version = ModelVersion(model_id=model_id, base_model=BASE_MODEL)
        session.add(version)
        session.flush()
        model_registry.activate(session, version, actor="U_ADMIN")
        session.commit()
        return version


def chat_requests(fake, model: str) -> list[dict]:  # noqa: ANN001
    return [r.json for r in fake.requests_to("/chat/completions", "POST")
            if r.json["model"] == model]


def script(fake, responder: Callable[[dict], str], n: int = 60) -> None:  # noqa: ANN001
    fake.chat_responses.extend([responder] * n)


# --- the gate --------------------------------------------------------------------------------


def test_a_worse_candidate_is_rejected_and_the_active_model_stays(svc, fake_openai) -> None:  # noqa: ANN001
    ids = approve_house_sops(svc)
    held = held_out(svc)
    assert held, "the seeded hold-out should keep some examples for evaluation"
    activate(svc, OLD_MODEL)
    run = make_run(svc, [i for i in ids if i not in held])
    script(fake_openai, answer_by_model({NEW_MODEL}))

    decision = gate(svc, run, NEW_MODEL)

    assert decision.promote is False
    assert decision.scores["candidate"]["compliance"] == 0.0
    assert decision.scores["baseline"]["compliance"] == 1.0
    assert decision.scores["n_cases"] == len(held)
    assert "Rejected" in decision.report and NEW_MODEL in decision.report
    assert OLD_MODEL in decision.report and "Format compliance" in decision.report
    with svc.session() as session:
        assert model_registry.active_model(session).model_id == OLD_MODEL
    # Both models were asked exactly what fine-tuned generation sends: system + request.
    for model in (NEW_MODEL, OLD_MODEL):
        requests = chat_requests(fake_openai, model)
        assert len(requests) == len(held)
        assert all([m["role"] for m in r["messages"]] == ["system", "user"] for r in requests)
        assert all(r.get("stream") in (None, False) for r in requests)
    [note] = [n for n in svc.notifier.sent if n.kind == "eval_report"]
    assert note.run_id == run.id and note.data["promote"] is False
    assert "Aggregate score" in note.data["table"]


def test_an_equal_candidate_is_promoted(svc, fake_openai) -> None:  # noqa: ANN001
    ids = approve_house_sops(svc)
    activate(svc, OLD_MODEL)
    run = make_run(svc, [i for i in ids if i not in held_out(svc)])
    script(fake_openai, answer_by_model(set()))

    decision = gate(svc, run, NEW_MODEL)

    assert decision.promote is True, decision.report
    candidate, baseline = decision.scores["candidate"], decision.scores["baseline"]
    assert candidate["aggregate"] == baseline["aggregate"] > 0.9
    assert candidate["similarity"] == 1.0  # the fake answers exactly the approved SOP
    assert "Promoted" in decision.report


def test_the_gate_through_the_training_lifecycle_rejects_a_worse_model(
    make, fake_openai, tmp_path: Path,  # noqa: ANN001
) -> None:
    from sop_pipeline.training import lifecycle

    svc = make(eval_share=0.25, sop_min_examples=10, retrain_min_new_examples=1)
    approve_house_sops(svc)
    assert held_out(svc)
    activate(svc, OLD_MODEL)
    start = lifecycle.start_run(svc, trigger="cli", requested_by="admin", force=True)
    assert start.run is not None, start.summary
    lifecycle.advance(svc, start.run.id, sleep=lambda seconds: None)
    with svc.session() as session:
        run = lifecycle.get_run(session, start.run.id)
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
    assert not set(snapshot.example_ids) & held_out(svc)  # held-out SOPs never train
    fake_openai.succeed_job(run.provider_job_id, fine_tuned_model=NEW_MODEL)
    script(fake_openai, answer_by_model({NEW_MODEL}))

    lifecycle.advance(svc, run.id, sleep=lambda seconds: None)

    with svc.session() as session:
        run = lifecycle.get_run(session, run.id)
        assert run.state == RunState.REJECTED
        assert run.eval_scores["candidate"]["compliance"] == 0.0
        assert model_registry.active_model(session).model_id == OLD_MODEL
    assert "eval_report" in svc.notifier.kinds()


def test_without_a_fine_tune_the_baseline_is_the_base_model_with_retrieval(
    svc, fake_openai,  # noqa: ANN001
) -> None:
    ids = approve_house_sops(svc)
    held = held_out(svc)
    run = make_run(svc, [i for i in ids if i not in held])
    script(fake_openai, answer_by_model(set()))

    decision = gate(svc, run, NEW_MODEL)

    assert decision.promote is True
    assert decision.scores["baseline"]["mode"] == "retrieval"
    base_requests = chat_requests(fake_openai, BASE_MODEL)
    assert len(base_requests) == len(held)
    with svc.session() as session:
        held_texts = [session.get(TrainingExample, i).sop_text for i in held]
    for request in base_requests:
        system = request["messages"][0]["content"]
        assert "house format" in system
        assert len(request["messages"]) > 2  # approved examples shown in context
        shown = [m["content"] for m in request["messages"] if m["role"] == "assistant"]
        assert not set(shown) & set(held_texts)  # the answer is never in the prompt


def test_too_few_prompts_and_no_curated_ones_never_promote_and_say_what_is_missing(
    make, fake_openai  # noqa: ANN001
) -> None:
    svc = make(eval_share=0.1, sop_min_examples=10, eval_template_prompts=False)
    ids = approve_house_sops(svc, 11)
    run = make_run(svc, ids)

    decision = gate(svc, run, NEW_MODEL)

    assert decision.promote is False
    scores = decision.scores
    assert (scores["decision"], scores["n_cases"], scores["prompts"]) == (
        "insufficient_evidence", 0, [])
    assert (scores["missing_prompts"], scores["missing_approved"]) == (3, 19)
    assert "needs at least 3 evaluation prompt(s)" in decision.report
    assert "approve about 19 more SOP(s)" in decision.report
    assert "add 3 curated prompt(s) to EVAL_PROMPTS_FILE" in decision.report
    assert fake_openai.requests_to("/chat/completions", "POST") == []  # no comparison, no promotion
    assert svc.notifier.kinds() == ["eval_report"]


def test_with_too_few_held_out_the_templates_curated_prompts_are_compared(
    make, fake_openai  # noqa: ANN001
) -> None:
    svc = make(eval_share=0.1, sop_min_examples=10)
    ids = approve_house_sops(svc, 11)
    run = make_run(svc, ids)
    script(fake_openai, answer_by_model({NEW_MODEL}))

    decision = gate(svc, run, NEW_MODEL)

    assert decision.promote is False and decision.scores["decision"] == "reject"
    prompts = decision.scores["prompts"]
    assert len(prompts) == 8 and all(p["source"].startswith("house_eval_prompts.toml")
                                     for p in prompts)
    assert "calibration" in " ".join(p["prompt"] for p in prompts)
    assert len(chat_requests(fake_openai, NEW_MODEL)) == 8
    assert len(chat_requests(fake_openai, BASE_MODEL)) == 8  # the base model with retrieval



def test_a_template_without_curated_prompts_refuses_and_names_the_file(
    make, tmp_path: Path  # noqa: ANN001
) -> None:
    from sop_pipeline.evaluation import template_prompts_path

    template = tmp_path / "acme.toml"
    template.write_bytes((Path(__file__).parents[1] / "sop_pipeline" / "templates"
                          / "house.toml").read_bytes())
    svc = make(eval_share=0, sop_template=template)
    assert template_prompts_path(svc.settings) == tmp_path / "acme_eval_prompts.toml"
    run = make_run(svc, approve_house_sops(svc, 6))

    decision = gate(svc, run, NEW_MODEL)

    assert decision.promote is False
    assert "set EVAL_SHARE above 0" in decision.report
    assert f"to {tmp_path / 'acme_eval_prompts.toml'} or to EVAL_PROMPTS_FILE" in \
        decision.report


def test_a_candidate_the_provider_does_not_know_is_rejected(svc, fake_openai) -> None:  # noqa: ANN001
    ids = approve_house_sops(svc)
    activate(svc, OLD_MODEL)
    run = make_run(svc, [i for i in ids if i not in held_out(svc)])

    decision = gate(svc, run, "ft:gpt-4o-mini-2024-07-18:acme:sop-bot:gone")

    assert decision.promote is False
    assert decision.scores["candidate"]["failed_requests"] == decision.scores["n_cases"]
    assert "Prompts answered" in decision.report and "| 0/" in decision.report


def test_rate_limits_are_waited_out_and_outages_are_retried_later(svc, fake_openai) -> None:  # noqa: ANN001
    ids = approve_house_sops(svc)
    run = make_run(svc, [i for i in ids if i not in held_out(svc)])
    fake_openai.inject("POST", "/chat/completions", kind="rate_limit", times=1)

    assert gate(svc, run, NEW_MODEL).promote is True  # the SDK waited out the 429

    fake_openai.inject("POST", "/chat/completions", status=503, times=None,
                       headers={"retry-after-ms": "1"})
    with pytest.raises(BackendError) as caught:
        gate(svc, run, NEW_MODEL)
    assert caught.value.retryable and caught.value.code == "evaluation_provider_unavailable"
    fake_openai.clear_injections()


# --- evaluation prompts ------------------------------------------------------------------------


def test_curated_prompts_come_first_and_are_capped(make, tmp_path: Path) -> None:  # noqa: ANN001
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Write an SOP for cleaning of mixer", "reference":
                    house_sop("Cleaning of Mixer")}) + "\n\n"
        + json.dumps({"prompt": "Write an SOP for fire drills"}) + "\n", encoding="utf-8")
    svc = make(eval_prompts_file=prompts, eval_max_prompts=3)
    approve_house_sops(svc)

    with svc.session() as session:
        cases = evaluation_cases(session, svc)

    assert len(cases) == 3
    assert cases[0].source == "eval.jsonl:1" and cases[0].reference.startswith("Title:")
    assert cases[1].reference is None
    assert cases[2].example_id in held_out(svc)


def test_prompt_files_in_yaml_and_toml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text("prompts:\n  - prompt: Write an SOP for gowning\n"
                         "  - Write an SOP for fumigation\n", encoding="utf-8")
    toml_file = tmp_path / "eval.toml"
    toml_file.write_text('[[prompts]]\nprompt = "Write an SOP for sampling"\n'
                         'reference = "Title: Sampling"\n', encoding="utf-8")

    assert [c.prompt for c in load_prompt_file(yaml_file)] == [
        "Write an SOP for gowning", "Write an SOP for fumigation"]
    [case] = load_prompt_file(toml_file)
    assert case.reference == "Title: Sampling"


def test_a_broken_prompt_file_is_a_clear_error_but_does_not_block_the_gate(
    make, fake_openai, tmp_path: Path,  # noqa: ANN001
) -> None:
    broken = tmp_path / "eval.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(EvaluationError, match="Line 2 of eval.jsonl is not valid JSON"):
        load_prompt_file(broken)
    with pytest.raises(EvaluationError, match="needs a non-empty"):
        load_prompt_file(_write(tmp_path / "e.jsonl", '{"reference": "x"}\n'))
    with pytest.raises(EvaluationError, match="must end in"):
        load_prompt_file(_write(tmp_path / "e.csv", "prompt\n"))

    svc = make(eval_prompts_file=broken)
    ids = approve_house_sops(svc)
    run = make_run(svc, [i for i in ids if i not in held_out(svc)])
    decision = gate(svc, run, NEW_MODEL)
    assert decision.promote is True
    assert "not valid JSON" in decision.report


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- scoring -------------------------------------------------------------------------------------


def test_lcs_and_rouge_l() -> None:
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    assert lcs_length([], ["a"]) == 0
    assert rouge_l_f1("clean the tank", "clean the tank") == 1.0
    assert rouge_l_f1("alpha beta", "gamma delta") == 0.0
    # LCS "the tank" = 2: precision 2/3, recall 2/4 -> F1 = 4/7
    assert rouge_l_f1("clean the tank", "rinse the big tank") == pytest.approx(4 / 7)


def test_length_closeness() -> None:
    assert length_closeness(100, 100) == 1.0
    assert length_closeness(50, 100) == length_closeness(200, 100) == 0.5
    assert length_closeness(0, 100) == 0.0


def test_fixture_sops_score_as_compliant_and_broken_ones_do_not(svc) -> None:  # noqa: ANN001
    good = sorted((DATA_DIR / "sops").glob("*"))
    broken = sorted((DATA_DIR / "sops_broken").glob("*"))
    assert good and broken
    for path in good:
        text = path.read_text(encoding="utf-8")
        score = score_draft(text, text, svc.template)
        assert score.compliant, path.name
        assert score.coverage == 1.0 and score.similarity == 1.0 and score.length == 1.0
    assert not all(score_draft(p.read_text(encoding="utf-8"), None, svc.template).compliant
                   for p in broken)
    chatty = score_draft(NOT_AN_SOP, good[0].read_text(encoding="utf-8"), svc.template)
    assert not chatty.compliant and chatty.coverage < 0.5 and chatty.similarity < 0.3


def test_the_decision_uses_the_tolerance_on_aggregate_and_compliance(svc) -> None:  # noqa: ANN001
    def scores(text: str) -> ModelScores:
        reference = house_sop("Cleaning of Mixer")
        result = ModelScores(model_id="m", mode="fine_tuned")
        result.cases.append(score_draft(text, reference, svc.template))
        return result

    good, bad = scores(house_sop("Cleaning of Mixer")), scores(NOT_AN_SOP)
    assert decide(good, good, 0.0)[0] is True
    assert decide(bad, good, 0.02)[0] is False
    assert decide(good, bad, 0.0)[0] is True
    assert decide(bad, good, 1.0)[0] is True  # everything within a tolerance of 1


def test_evaluate_model_scores_each_case(svc, fake_openai) -> None:  # noqa: ANN001
    script(fake_openai, answer_by_model({NEW_MODEL}))
    cases = [EvalCase(prompt="Write an SOP for line clearance", source="a"),
             EvalCase(prompt="Write an SOP for pest control",
                      reference=house_sop("Pest Control"), source="b")]

    good = evaluate_model(svc, OLD_MODEL, cases, mode="fine_tuned")
    bad = evaluate_model(svc, NEW_MODEL, cases, mode="fine_tuned")

    assert good.n == bad.n == 2
    assert good.compliance == 1.0 and bad.compliance == 0.0
    assert good.similarity == 1.0  # only the case with a reference counts
    assert bad.aggregate < good.aggregate


# --- rollback and the CLI ----------------------------------------------------------------------


def test_rollback_restores_the_previous_model_and_is_audited(svc) -> None:  # noqa: ANN001
    old = activate(svc, OLD_MODEL)
    with svc.session() as session:
        new = ModelVersion(model_id=NEW_MODEL, base_model=BASE_MODEL)
        session.add(new)
        session.flush()
        model_registry.activate(session, new, actor="system", action="promote")
        session.commit()

    with svc.session() as session:
        restored = model_registry.rollback(session, actor="U_ADMIN", reason="drafts got worse")
        session.commit()

    assert restored.id == old.id
    with svc.session() as session:
        assert model_registry.active_model(session).model_id == OLD_MODEL
        assert session.get(ModelVersion, new.id).status == "previous"
        [event] = audit.events(session, action="rollback")
    assert (event.actor, event.old_value, event.new_value) == ("U_ADMIN", NEW_MODEL, OLD_MODEL)
    assert event.reason == "drafts got worse"


@pytest.fixture
def cli_env(monkeypatch, tmp_path: Path, database_url: str, fake_openai, svc):  # noqa: ANN001, ANN201
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
        "OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": fake_openai.base_url,
        "EVAL_SHARE": "0.3", "SOP_MIN_EXAMPLES": "5", "PROVIDER_MAX_RETRIES": "0",
    }.items():
        monkeypatch.setenv(name, value)
    return svc


def test_cli_eval_prints_the_comparison_table(cli_env, fake_openai) -> None:  # noqa: ANN001
    approve_house_sops(cli_env)
    activate(cli_env, OLD_MODEL)
    script(fake_openai, answer_by_model({BASE_MODEL}))

    result = CliRunner().invoke(build_app(), ["eval"])

    assert result.exit_code == 0, result.output
    assert f"Model: {OLD_MODEL}" in result.output
    assert f"Base: {BASE_MODEL} (retrieval)" in result.output
    assert "is no worse than the base model" in result.output

    as_json = CliRunner().invoke(build_app(), ["eval", "--model", NEW_MODEL, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["candidate"]["model"] == NEW_MODEL


def test_cli_eval_without_prompts_says_what_to_do(cli_env, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("EVAL_SHARE", "0")
    monkeypatch.setenv("EVAL_TEMPLATE_PROMPTS", "false")

    result = CliRunner().invoke(build_app(), ["eval"])

    assert result.exit_code == 2
    assert "EVAL_PROMPTS_FILE" in result.output
