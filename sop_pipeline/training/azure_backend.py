"""Azure OpenAI fine-tuning as a `TrainingBackend`, deployments included.

Azure serves the same Files and Fine-tuning Jobs API under `{endpoint}/openai/...` with an
`api-version` query parameter; the SDK's `AzureOpenAI` client adds both, so the behaviour
(and the error mapping, and reconciliation by `metadata["snapshot_hash"]`) is the OpenAI
backend's. The job list's metadata filter is not relied upon (we compare metadata ourselves).

What Azure adds: a trained model answers only once a *deployment* of it exists, created
through the Azure control plane (`Microsoft.CognitiveServices/accounts/deployments`), billed
by the hour and deleted by Azure after 15 idle days. When AZURE_SUBSCRIPTION_ID,
AZURE_RESOURCE_GROUP and AZURE_OPENAI_ACCOUNT are set, this backend creates that deployment
itself after the job succeeds (azure-mgmt-cognitiveservices, signed in with azure-identity's
DefaultAzureCredential chain), reports the run as still running until the deployment's
provisioningState is Succeeded, and then hands the deployment name to the evaluation gate as
the model to try. `prune_deployments` deletes deployments of models that were rolled back,
rejected or superseded (AZURE_KEEP_OLD_DEPLOYMENTS keeps them).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from sop_pipeline import audit
from sop_pipeline.models import AuditEvent, ModelVersion, ProcessedEvent, utcnow
from sop_pipeline.providers import make_azure_client
from sop_pipeline.settings import Settings
from sop_pipeline.training.backend import BackendError, JobStatus
from sop_pipeline.training.openai_backend import OpenAIBackend

log = logging.getLogger(__name__)

ARM_SCOPE = "https://management.azure.com/.default"
FAILED_STATES = ("Failed", "Canceled", "Disabled")
CREATED_TAG = "sop-bot-created"
DELETED_KEY = "azure:deployment_deleted:{name}"  # a claim row once we deleted a deployment


def deployment_name(job_id: str) -> str:
    """The deployment name for a job: letters, digits, '-', '_' and '.', at most 64."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"sop-bot-{job_id}")[:64]


class Deployments:
    """Create, read and delete deployments in one Azure OpenAI account (the control plane)."""

    def __init__(self, settings: Settings, *, credential: Any = None, client: Any = None) -> None:
        self.settings = settings
        self.resource_group = settings.azure_resource_group or ""
        self.account = settings.azure_openai_account or ""
        # azure-core refuses bearer tokens over plain http; only a loopback fake is http
        self._options = ({"enforce_https": False}
                         if settings.azure_management_url.startswith("http://") else {})
        if client is None:
            from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient

            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            scope = (ARM_SCOPE if "management.azure.com" in settings.azure_management_url
                     else settings.azure_management_url.rstrip("/") + "/.default")
            client = CognitiveServicesManagementClient(
                credential, settings.azure_subscription_id or "",
                base_url=settings.azure_management_url, credential_scopes=[scope])
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings, *, credential: Any = None) -> Deployments | None:
        """None when the control-plane settings are not all there (deploy by hand then)."""
        if not (settings.azure_subscription_id and settings.azure_resource_group
                and settings.azure_openai_account):
            return None
        return cls(settings, credential=credential)

    def _call(self, fn: Callable[[], Any]) -> Any:
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        try:
            return fn()
        except ResourceNotFoundError:
            raise
        except HttpResponseError as exc:
            status = exc.status_code or 0
            retryable = status >= 500 or status in (408, 409, 429)
            code = getattr(exc.error, "code", None) if exc.error else None
            raise BackendError(
                f"The Azure control plane refused the deployment request ({status} "
                f"{code or ''}): {exc.message}", code=f"azure_{code or status}",
                retryable=retryable, status=status) from exc
        except AzureError as exc:
            raise BackendError(f"Could not reach the Azure control plane: {exc}",
                               code="azure_connection_error", retryable=True) from exc

    def get(self, name: str) -> dict | None:
        """The deployment as a dict, or None when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            found = self._call(lambda: self.client.deployments.get(
                self.resource_group, self.account, name, **self._options))
        except ResourceNotFoundError:
            return None
        return found.as_dict()

    def create(self, name: str, model: str, tags: dict[str, str]) -> None:
        """PUT the deployment; Azure provisions it in the background (we poll `get`)."""
        from azure.mgmt.cognitiveservices.models import (
            Deployment,
            DeploymentModel,
            DeploymentProperties,
            Sku,
        )

        body = Deployment(
            sku=Sku(name=self.settings.azure_deployment_sku,
                    capacity=self.settings.azure_deployment_capacity),
            tags=tags,
            properties=DeploymentProperties(
                model=DeploymentModel(format="OpenAI", name=model, version="1")),
        )
        self._call(lambda: self.client.deployments.begin_create_or_update(
            self.resource_group, self.account, name, body, polling=False, **self._options))

    def delete(self, name: str) -> None:
        """DELETE the deployment (a missing one is fine)."""
        self._call(lambda: self.client.deployments.begin_delete(
            self.resource_group, self.account, name, polling=False, **self._options))


class AzureBackend(OpenAIBackend):
    """Fine-tuning on Azure OpenAI through the SDK's `AzureOpenAI` client, then deploying."""

    name = "azure"
    metadata_filter = False  # Azure's job list does not document the metadata filter

    def __init__(self, client, *, settings: Settings | None = None,  # noqa: ANN001
                 deployments: Deployments | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__(client, sleep=sleep, clock=clock)
        self.settings = settings
        self.deployments = deployments

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = utcnow,
        credential: Any = None,
    ) -> AzureBackend:
        """Build the backend from AZURE_* settings (a sentence says what is missing)."""
        return cls(make_azure_client(settings), settings=settings, sleep=sleep, clock=clock,
                   deployments=Deployments.from_settings(settings, credential=credential))

    def extra_job_body(self) -> dict | None:
        """AZURE_TRAINING_TYPE; `standard` (Azure's default, data stays in region) sends none."""
        training_type = self.settings.azure_training_type if self.settings else "standard"
        return None if training_type == "standard" else {"trainingType": training_type}

    def job_status(self, job_id: str) -> JobStatus:
        """The job's status; once it succeeded, "running" until its deployment is ready, then
        "succeeded" with the deployment name as the model to use."""
        status = super().job_status(job_id)
        if status.state != "succeeded" or self.deployments is None:
            return status
        return self._deployed(status, self.deployments)

    def _deployed(self, status: JobStatus, deployments: Deployments) -> JobStatus:
        name = deployment_name(status.id)
        model = status.fine_tuned_model or ""
        found = deployments.get(name)
        if found is None:
            deployments.create(name, model,
                               tags={CREATED_TAG: self.clock().isoformat(),
                                     "sop-bot-job": status.id})
            log.info("creating Azure deployment %s for %s", name, model)
            return replace(status, state="running", fine_tuned_model=None)
        state = str((found.get("properties") or {}).get("provisioning_state") or "")
        if state == "Succeeded":
            return replace(status, fine_tuned_model=name,
                           metadata={**status.metadata, "azure_model": model,
                                     "deployment": name})
        if state in FAILED_STATES:
            return replace(status, state="failed", fine_tuned_model=None,
                           error_code="deployment_failed", error_message=(
                               f"Azure could not deploy {model} as {name} (provisioningState "
                               f"{state}); check the quota of AZURE_DEPLOYMENT_SKU "
                               f"{self.settings.azure_deployment_sku if self.settings else ''} "
                               "in the Azure portal, then start a new run."))
        if self._waited_too_long(found):
            return replace(status, state="failed", fine_tuned_model=None,
                           error_code="deployment_timeout", error_message=(
                               f"The Azure deployment {name} of {model} was not ready after "
                               f"AZURE_DEPLOYMENT_WAIT_SECONDS; check it in the Azure portal "
                               "and start a new run."))
        return replace(status, state="running", fine_tuned_model=None)

    def _waited_too_long(self, found: dict) -> bool:
        created = (found.get("tags") or {}).get(CREATED_TAG)
        if not created or self.settings is None:
            return False
        waited = (self.clock() - datetime.fromisoformat(created)).total_seconds()
        return waited > self.settings.azure_deployment_wait_seconds


# --- deleting deployments nobody uses any more -----------------------------------------------


def _deleted_before(session, name: str) -> bool:  # noqa: ANN001 - Session
    key = DELETED_KEY.format(name=name)
    return session.exec(select(ProcessedEvent.key).where(ProcessedEvent.key == key)).first() \
        is not None


def stale_versions(session) -> list[ModelVersion]:  # noqa: ANN001 - Session
    """Azure model versions whose deployment only costs money: rejected, retired, rolled back
    from, or superseded (all but the newest previous one, which `models rollback` returns to)."""
    versions = list(session.exec(select(ModelVersion).where(
        ModelVersion.backend == "azure", col(ModelVersion.active_lock).is_(None))))
    rolled_back_from = set(session.exec(select(AuditEvent.old_value).where(
        AuditEvent.action == "rollback")))
    previous = sorted((v for v in versions if v.status == "previous"),
                      key=lambda v: (v.deactivated_at or utcnow(), v.id or 0), reverse=True)
    target = next((v for v in previous if v.model_id not in rolled_back_from), None)
    return [v for v in versions
            if v.status in ("rejected", "retired") or v.model_id in rolled_back_from
            or (v.status == "previous" and v is not target)]


def prune_deployments(services, *, deployments: Deployments | None = None) -> list[str]:  # noqa: ANN001
    """Delete the deployments of stale Azure model versions (once each, audited)."""
    from sop_pipeline.claims import claim

    settings = services.settings
    if settings.azure_keep_old_deployments:
        return []
    if deployments is None:
        deployments = Deployments.from_settings(
            settings, credential=getattr(services, "azure_credential", None))
    if deployments is None:
        return []
    with services.session() as session:
        names = [v.model_id for v in stale_versions(session)
                 if not _deleted_before(session, v.model_id)]
    deleted = []
    for name in names:
        try:
            deployments.delete(name)
        except BackendError as exc:
            log.warning("could not delete Azure deployment %s: %s", name, exc.message)
            continue
        with services.session() as session:
            if claim(session, DELETED_KEY.format(name=name)):
                audit.record(session, actor="system", action="delete_deployment",
                             subject=f"deployment:{name}", old_value=name,
                             reason="rolled back, rejected or superseded; "
                                    "AZURE_KEEP_OLD_DEPLOYMENTS=false")
            session.commit()
        deleted.append(name)
    return deleted
