"""Choosing the fine-tuning backend from settings, and the hyperparameters we send.

`TRAINING_BACKEND`: "openai" | "azure" | "local" (open-weights LoRA, imported lazily because
it pulls heavy libraries) | "none" (retrieval only: no fine-tuning, retraining disabled).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sop_pipeline.settings import Settings
from sop_pipeline.training.backend import TrainingBackend

RETRAINING_DISABLED = (
    "Retraining is disabled because TRAINING_BACKEND is 'none' (retrieval only); set "
    "TRAINING_BACKEND to openai, azure or local to fine-tune."
)


def _auto_or_number(value: str, kind: type) -> str | int | float:
    """"auto" stays "auto"; numeric strings become int (epochs, batch size) or float."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    number = float(text)
    return int(number) if kind is int else number


def hyperparameters_from_settings(settings: Settings) -> dict:
    """The supervised-method hyperparameters from FINE_TUNE_* settings."""
    return {
        "n_epochs": _auto_or_number(settings.fine_tune_epochs, int),
        "batch_size": _auto_or_number(settings.fine_tune_batch_size, int),
        "learning_rate_multiplier": _auto_or_number(
            settings.fine_tune_learning_rate_multiplier, float),
    }


def make_backend(
    services,  # noqa: ANN001 - Services
    *,
    sleep: Callable[[float], None] = time.sleep,
    kind: str | None = None,
) -> TrainingBackend | None:
    """The backend named `kind` (default `settings.training_backend`), or None when retraining
    is disabled. A run keeps the backend it started on, even if the setting changes later."""
    settings = services.settings
    kind = kind or settings.training_backend
    if kind == "none":
        return None
    if kind == "openai":
        from sop_pipeline.training.openai_backend import OpenAIBackend

        return OpenAIBackend(services.openai_client(), sleep=sleep, clock=services.clock)
    if kind == "azure":
        from sop_pipeline.training.azure_backend import AzureBackend

        return AzureBackend.from_settings(settings, sleep=sleep, clock=services.clock,
                                          credential=getattr(services, "azure_credential", None))
    if kind == "local":
        from sop_pipeline.training.lora_backend import LoraBackend

        return LoraBackend(services)
    raise ValueError(f"unknown training backend {kind!r}")  # settings validation prevents this
