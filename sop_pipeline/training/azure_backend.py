"""Azure OpenAI fine-tuning as a `TrainingBackend`.

Azure serves the same Files and Fine-tuning Jobs API under `{endpoint}/openai/...` with an
`api-version` query parameter; the SDK's `AzureOpenAI` client adds both, so the behaviour
(and the error mapping, and reconciliation by `metadata["snapshot_hash"]`) is the OpenAI
backend's. Differences: the job-list metadata filter is not relied upon (we compare metadata
ourselves), and a fine-tuned model must be deployed in Azure before `/sop` can use it
(AZURE_OPENAI_DEPLOYMENT names that deployment).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from sop_pipeline.models import utcnow
from sop_pipeline.providers import make_azure_client
from sop_pipeline.settings import Settings
from sop_pipeline.training.openai_backend import OpenAIBackend


class AzureBackend(OpenAIBackend):
    """Fine-tuning on Azure OpenAI through the SDK's `AzureOpenAI` client."""

    name = "azure"
    metadata_filter = False  # Azure's job list does not document the metadata filter

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = utcnow,
    ) -> AzureBackend:
        """Build the backend from AZURE_OPENAI_* settings (a sentence says what is missing)."""
        return cls(make_azure_client(settings), sleep=sleep, clock=clock)
