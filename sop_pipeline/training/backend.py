"""The `TrainingBackend` interface every fine-tuning provider implements.

OpenAI is winding down self-serve fine-tuning, so the lifecycle only talks to this interface:
OpenAI and Azure OpenAI implement it first, the open-weights LoRA backend next. A backend is
stateless between calls; all state lives in our tables (the `TrainingRun` row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class BackendError(Exception):
    """A provider failure. `retryable` errors are retried with backoff (honouring
    `retry_after`); the others end the run with `code` and `message` kept for admins."""

    def __init__(
        self, message: str, *, code: str | None = None, retryable: bool = False,
        retry_after: float | None = None, status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class UploadedFile:
    id: str
    status: str  # uploaded | processed | error
    error: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """What to train: the snapshot's files, the base model and hyperparameters."""

    base_model: str
    training_file_id: str
    validation_file_id: str | None
    hyperparameters: dict  # n_epochs / batch_size / learning_rate_multiplier: "auto" or number
    suffix: str
    seed: int | None
    metadata: dict  # includes {"snapshot_hash": ..., "run_id": ...}


@dataclass(frozen=True)
class JobStatus:
    """Provider job state, mapped to ours: validating_files|queued|running|succeeded|failed|
    cancelled."""

    id: str
    state: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobEvent:
    id: str
    created_at: int  # unix seconds
    level: str
    message: str
    kind: str = "message"  # message | metrics
    step: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


class TrainingBackend(Protocol):
    """The small surface the lifecycle needs from a fine-tuning provider."""

    name: str

    def upload(
        self, data: Path | bytes, snapshot_hash: str | None = None, *, kind: str | None = None,
    ) -> UploadedFile:
        """Upload a snapshot file (a path, or its bytes with `kind` "train"/"validation").
        With `snapshot_hash`, an earlier upload of the same snapshot file is reused (a crash
        between upload and storing its id must not leave a second copy)."""
        ...

    def file_status(self, file_id: str) -> UploadedFile: ...

    def start_job(self, spec: JobSpec) -> JobStatus: ...

    def find_job(self, snapshot_hash: str) -> JobStatus | None:
        """The job already created for this snapshot (reconciliation after a crash)."""
        ...

    def job_status(self, job_id: str) -> JobStatus: ...

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Events oldest first, only those after the given event id when one is given."""
        ...

    def checkpoints(self, job_id: str) -> list[dict]: ...

    def cancel(self, job_id: str) -> JobStatus: ...
