"""Azure end to end on loopback fakes: approve → train → deploy → evaluate → promote → roll back
→ deployment deleted; a deployment Azure deleted for idleness → retrieval, with a sentence.

The Azure OpenAI data plane is the OpenAI fake (through the SDK's `AzureOpenAI` client); the
control plane is `tests/fakes/azure_mgmt_fake.py`, reached through azure-mgmt-cognitiveservices
and checked against the official REST description excerpt in `tests/fakes/specs/`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from sqlmodel import select

from sop_pipeline import model_registry
from sop_pipeline.generation.generate import generate
from sop_pipeline.models import AuditEvent, RunState, TrainingRun
from sop_pipeline.training import lifecycle, scheduler
from sop_pipeline.training.azure_backend import deployment_name, prune_deployments
from tests.fakes.azure_mgmt_fake import AzureManagementFake
from tests.test_training_helpers import Clock, Sleeps, approve, make_services, training_settings

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"


class FakeCredential:
    """Stands in for DefaultAzureCredential (no Azure sign-in on the test machine)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("fake-arm-token", int(time.time()) + 3600)


@pytest.fixture
def mgmt(fake_openai):  # noqa: ANN001, ANN201
    fake = AzureManagementFake(
        ready_after_gets=1, on_ready=fake_openai.deploy,
        on_delete=lambda name: fake_openai.azure_deployments.pop(name, None)).start()
    yield fake
    fake.stop()


@pytest.fixture
def azure(database_url: str, tmp_path: Path, fake_openai, mgmt):  # noqa: ANN001, ANN201
    made = []

    def _make(**overrides: object):  # noqa: ANN202
        settings = training_settings(
            database_url, tmp_path / "data", fake_openai, training_backend="azure",
            azure_openai_endpoint=fake_openai.azure_endpoint, azure_openai_api_key="az-key",
            azure_subscription_id=SUBSCRIPTION, azure_resource_group="rg-quality",
            azure_openai_account="acme-aoai", azure_management_url=mgmt.base_url,
            **overrides)
        services = make_services(settings, Clock())
        services.azure_credential = FakeCredential()
        made.append(services)
        return services

    yield _make
    for services in made:
        services.engine.dispose()


def _train(services, fake_openai, mgmt, start: int) -> TrainingRun:  # noqa: ANN001
    """Approve ten SOPs, let the scheduler train, the provider succeed, and poll until the
    deployment is ready and the run evaluated."""
    approve(services, 10, start=start)
    result = scheduler.retrain_check(services, sleep=Sleeps())
    assert result is not None and result.run is not None, result and result.summary
    with services.session() as session:
        job_id = lifecycle.get_run(session, result.run.id).provider_job_id
    fake_openai.advance_job(job_id, "running")
    fake_openai.succeed_job(job_id)
    puts_before = len(mgmt.calls("PUT"))
    for _ in range(3):  # GET 404 → PUT; GET "Creating"; GET "Succeeded" → evaluate
        scheduler.poll_active_runs(services, sleep=Sleeps())
        with services.session() as session:
            run = lifecycle.get_run(session, result.run.id)
        if run.state in RunState.TERMINAL:
            break
        assert run.state == RunState.RUNNING  # deploying counts as still running
    assert len(mgmt.calls("PUT")) == puts_before + 1
    return run


def test_train_deploy_promote_roll_back_and_delete_the_deployment(
    azure, fake_openai, mgmt  # noqa: ANN001
) -> None:
    services = azure()

    first = _train(services, fake_openai, mgmt, start=0)
    assert first.state == RunState.PROMOTED, first.error_message
    name1 = deployment_name(first.provider_job_id)
    assert first.fine_tuned_model == name1  # /sop asks Azure for the deployment
    put = mgmt.calls("PUT")[0]
    assert put.path.endswith(f"/resourceGroups/rg-quality/providers/Microsoft.CognitiveServices"
                             f"/accounts/acme-aoai/deployments/{name1}")
    assert put.path.startswith(f"/subscriptions/{SUBSCRIPTION}/")
    assert put.body["sku"] == {"name": "Standard", "capacity": 1}
    assert put.body["properties"]["model"]["format"] == "OpenAI"
    assert put.body["properties"]["model"]["name"].startswith("ft:gpt-4o-mini")
    assert all(r.authorization == "Bearer fake-arm-token" for r in mgmt.requests)
    assert services.azure_credential.scopes[0] == (f"{mgmt.base_url}/.default",)

    second = _train(services, fake_openai, mgmt, start=10)
    assert second.state == RunState.PROMOTED, second.error_message
    name2 = deployment_name(second.provider_job_id)
    with services.session() as session:
        assert model_registry.active_model(session).model_id == name2
    assert prune_deployments(services) == []  # the superseded model is the rollback target

    with services.session() as session:
        model_registry.rollback(session, actor="U_ADMIN", reason="drafts got worse")
        session.commit()
        assert model_registry.active_model(session).model_id == name1
    assert prune_deployments(services) == [name2]
    assert prune_deployments(services) == []  # once
    [delete] = mgmt.calls("DELETE")
    assert delete.path.endswith(f"/deployments/{name2}") and delete.status == 200
    assert name2 not in fake_openai.azure_deployments
    with services.session() as session:
        audited = session.exec(select(AuditEvent).where(
            AuditEvent.action == "delete_deployment")).all()
    assert [a.subject for a in audited] == [f"deployment:{name2}"]

    draft = generate(services, "Write an SOP for cleaning the tablet press", "U_REQ")
    assert draft.model == name1 and draft.mode == "fine_tuned"
    assert mgmt.violations == []
    fake_openai.assert_contract_ok()


def test_a_deployment_deleted_for_idleness_falls_back_to_retrieval_with_a_sentence(
    azure, fake_openai, mgmt  # noqa: ANN001
) -> None:
    services = azure()
    run = _train(services, fake_openai, mgmt, start=0)
    assert run.state == RunState.PROMOTED, run.error_message

    mgmt.delete_for_idleness(run.fine_tuned_model)  # 15 idle days later
    draft = generate(services, "Write an SOP for cleaning the tablet press", "U_REQ")

    assert draft.status == "completed" and draft.mode == "retrieval"
    with services.session() as session:
        assert model_registry.active_model(session) is None
    [notice] = [n for n in services.notifier.sent if n.kind == "model_retired"]
    assert notice.text.startswith(f"The fine-tuned model {run.fine_tuned_model} no longer "
                                  "exists at the provider, so SOP Bot now drafts with the base "
                                  "model and retrieval.")
    assert mgmt.violations == []


def test_old_deployments_are_kept_when_asked_and_training_type_is_sent(
    azure, fake_openai, mgmt  # noqa: ANN001
) -> None:
    services = azure(azure_keep_old_deployments=True, azure_training_type="globalstandard")
    first = _train(services, fake_openai, mgmt, start=0)
    _train(services, fake_openai, mgmt, start=10)
    with services.session() as session:
        model_registry.rollback(session, actor="U_ADMIN")
        session.commit()

    assert prune_deployments(services) == [] and mgmt.calls("DELETE") == []
    job = fake_openai.last_request("/fine_tuning/jobs", "POST")
    assert job.json["trainingType"] == "globalstandard"
    assert first.state == RunState.PROMOTED
