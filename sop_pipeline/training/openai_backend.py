"""OpenAI fine-tuning as a `TrainingBackend`: Files + Fine-tuning Jobs through the official SDK.

Each method is one provider call (the SDK retries within it, per `retry_policy`; the
lifecycle's stored backoff takes over after that) and turns every SDK exception into a
`BackendError` that says whether a retry can help. The job carries our `snapshot_hash` and
`run_id` in `metadata`, which is what lets a restarted bot find the job it created before a
crash instead of creating a second one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import openai

from sop_pipeline.models import utcnow
from sop_pipeline.retry_policy import retry_after_from_headers
from sop_pipeline.training.backend import (
    BackendError,
    JobEvent,
    JobSpec,
    JobStatus,
    UploadedFile,
)

if TYPE_CHECKING:  # the SDK's response models, for annotations only
    from openai.pagination import SyncCursorPage
    from openai.types import FileObject
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

T = TypeVar("T")
log = logging.getLogger(__name__)

JOB_STATES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
MAX_SUFFIX_CHARS = 64  # the API's limit for `suffix`
MAX_LIST_PAGES = 50  # bound on pagination: never loop forever over a misbehaving server
NOT_READY_HINTS = ("not ready", "still being processed", "not been processed", "is processing")


UPLOAD_PREFIX = "sop-bot-"
UPLOAD_KINDS = ("train", "validation")


def upload_name(snapshot_hash: str, kind: str) -> str:
    """The provider-side name of a snapshot file: ours, and which snapshot it holds."""
    return f"{UPLOAD_PREFIX}{snapshot_hash[:12]}-{kind}.jsonl"


def _uploaded(obj: FileObject) -> UploadedFile:
    return UploadedFile(id=obj.id, status=str(obj.status),
                        error=getattr(obj, "status_details", None))


def sanitize_suffix(value: str) -> str:
    """A suffix the API accepts: lower-case letters, digits and dashes, at most 64 chars."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:MAX_SUFFIX_CHARS]
    return cleaned.strip("-") or "sop-bot"


def _error_details(exc: openai.APIStatusError) -> tuple[str | None, str]:
    """Provider error code and human message from the response body."""
    body = exc.body if isinstance(exc.body, dict) else {}
    code = body.get("code") or exc.code or body.get("type")
    message = body.get("message") or exc.message or str(exc)
    return (str(code) if code else None), str(message)


def map_error(exc: Exception) -> BackendError:
    """Turn an SDK exception into a `BackendError`, deciding whether retrying can help.

    Retryable: rate limits and the daily job cap (429), server errors (5xx), timeouts and
    connection errors, and "file not ready" (processing catches up). Not retryable: bad
    credentials (401/403), `insufficient_quota` (money, not time, fixes it), other 4xx.
    """
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return BackendError(
            "The provider did not answer in time.", code="timeout", retryable=True
        )
    if isinstance(exc, openai.APIConnectionError):
        return BackendError(
            "Could not reach the provider.", code="connection_error", retryable=True
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code, message = _error_details(exc)
        retry_after = retry_after_from_headers(exc.response.headers)
        if status == 429 and code != "insufficient_quota":
            return BackendError(message, code=code or "rate_limit_exceeded", retryable=True,
                                retry_after=retry_after, status=status)
        if status >= 500 or status in (408, 409):
            return BackendError(message, code=code or f"http_{status}", retryable=True,
                                retry_after=retry_after, status=status)
        if status == 400 and (code == "file_not_ready"
                              or any(h in message.lower() for h in NOT_READY_HINTS)):
            return BackendError(message, code=code or "file_not_ready", retryable=True,
                                retry_after=retry_after, status=status)
        return BackendError(message, code=code or f"http_{status}", retryable=False,
                            status=status)
    if isinstance(exc, openai.OpenAIError):
        return BackendError(str(exc), code="provider_error", retryable=False)
    raise exc


def _state(status: str) -> str:
    """Our run state for a provider job status (unknown/paused states count as running)."""
    return status if status in JOB_STATES else "running"


def _metadata(value: object) -> dict:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {}


def to_job_status(job: FineTuningJob) -> JobStatus:
    """Our `JobStatus` from the SDK's `FineTuningJob`."""
    error = getattr(job, "error", None)
    return JobStatus(
        id=job.id,
        state=_state(str(job.status)),
        fine_tuned_model=getattr(job, "fine_tuned_model", None),
        trained_tokens=getattr(job, "trained_tokens", None),
        error_code=getattr(error, "code", None) if error else None,
        error_message=getattr(error, "message", None) if error else None,
        metadata=_metadata(getattr(job, "metadata", None)),
    )


def _float(value: object) -> float | None:
    try:  # any value: float() raises TypeError/ValueError for what it cannot convert
        return None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def to_job_event(event: FineTuningJobEvent) -> JobEvent:
    """Our `JobEvent`; `type == "metrics"` events carry step, train and validation loss."""
    data = getattr(event, "data", None)
    data = data if isinstance(data, dict) else {}
    is_metrics = getattr(event, "type", None) == "metrics"
    step = data.get("step") if is_metrics else None
    valid = data.get("valid_loss")
    if valid is None:
        valid = data.get("full_valid_loss")
    return JobEvent(
        id=event.id,
        created_at=int(event.created_at),
        level=str(getattr(event, "level", "info")),
        message=str(getattr(event, "message", "")),
        kind="metrics" if is_metrics else "message",
        step=int(step) if isinstance(step, int | float) else None,
        train_loss=_float(data.get("train_loss")) if is_metrics else None,
        valid_loss=_float(valid) if is_metrics else None,
    )


class OpenAIBackend:
    """Fine-tuning on OpenAI (and, via `AzureBackend`, Azure OpenAI)."""

    name = "openai"
    metadata_filter = True  # OpenAI filters job lists by metadata server-side
    page_size = 100

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.client = client
        self.sleep = sleep
        self.clock = clock

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - mapped, or re-raised if not the SDK's
            raise map_error(exc) from exc

    # --- files --------------------------------------------------------------------------
    def upload(
        self, data: Path | bytes, snapshot_hash: str | None = None, *, kind: str | None = None,
    ) -> UploadedFile:
        """Upload a JSONL file for fine-tuning, named after the snapshot it belongs to.

        With `snapshot_hash`, the file is called `sop-bot-<hash12>-<kind>.jsonl` and an earlier
        upload of the same snapshot (left behind by a crash before its id was stored) is
        reused instead of uploading again; extra copies of it are deleted. `kind` is "train"
        or "validation" (taken from the file name when `data` is a path).
        """
        kind = kind or (Path(data).stem if isinstance(data, Path | str) else "train")
        name = upload_name(snapshot_hash, kind) if snapshot_hash else (
            Path(data).name if isinstance(data, Path | str) else f"{kind}.jsonl")
        if snapshot_hash:
            reused = self._reuse_upload(name)
            if reused is not None:
                return reused
        content = data if isinstance(data, bytes) else Path(data).read_bytes()
        obj = self._call(lambda: self.client.files.create(
            file=(name, content, "application/jsonl"), purpose="fine-tune"))
        return _uploaded(obj)

    def _own_files(self) -> list[FileObject]:
        """Our fine-tune uploads (named `sop-bot-...`), newest first, across every page."""
        page = self._call(lambda: self.client.files.list(purpose="fine-tune",
                                                         limit=self.page_size))
        found: list[FileObject] = []
        for _ in range(MAX_LIST_PAGES):
            found += [f for f in page.data or []
                      if str(getattr(f, "filename", "")).startswith(UPLOAD_PREFIX)]
            if not page.has_next_page():
                break
            page = self._call(page.get_next_page)
        return sorted(found, key=lambda f: getattr(f, "created_at", 0) or 0, reverse=True)

    def _reuse_upload(self, name: str) -> UploadedFile | None:
        """An earlier upload of this snapshot file that the provider did not reject; further
        copies (and rejected ones) are deleted so no orphan stays behind."""
        same = [f for f in self._own_files() if getattr(f, "filename", None) == name]
        usable = [f for f in same if str(getattr(f, "status", "")) != "error"]
        usable.sort(key=lambda f: str(getattr(f, "status", "")) != "processed")  # stable
        keep = usable[0] if usable else None
        for extra in same:
            if extra is not keep:
                self._delete_quietly(extra.id)
        if keep is not None:
            log.info("reusing upload %s (%s) of the same snapshot", keep.id, name)
            return _uploaded(keep)
        return None

    def delete_unreferenced(self, referenced: set[str], snapshot_hashes: set[str]) -> list[str]:
        """Delete our uploads that no training run references (crash leftovers); their ids.

        Only files named after one of `snapshot_hashes` (our database's snapshots) are
        touched, so another deployment sharing the provider account keeps its files."""
        names = {upload_name(h, kind) for h in snapshot_hashes for kind in UPLOAD_KINDS}
        deleted = []
        for item in self._own_files():
            file_id = item.id
            if (getattr(item, "filename", None) in names and file_id not in referenced
                    and self._delete_quietly(file_id)):
                deleted.append(file_id)
        return deleted

    def _delete_quietly(self, file_id: str) -> bool:
        try:
            self._call(lambda: self.client.files.delete(file_id))
        except BackendError as exc:  # cleaning up must never stop a run
            log.warning("could not delete file %s: %s", file_id, exc.message)
            return False
        return True

    def file_status(self, file_id: str) -> UploadedFile:
        """Whether the provider has finished processing (validating) the file."""
        return _uploaded(self._call(lambda: self.client.files.retrieve(file_id)))

    # --- jobs ---------------------------------------------------------------------------
    def start_job(self, spec: JobSpec) -> JobStatus:
        """Create the fine-tuning job (supervised method with our hyperparameters)."""
        kwargs: dict = {
            "model": spec.base_model,
            "training_file": spec.training_file_id,
            "method": {"type": "supervised",
                       "supervised": {"hyperparameters": dict(spec.hyperparameters)}},
            "suffix": sanitize_suffix(spec.suffix),
            "metadata": {str(k): str(v) for k, v in spec.metadata.items()},
        }
        if spec.validation_file_id:
            kwargs["validation_file"] = spec.validation_file_id
        if spec.seed is not None:
            kwargs["seed"] = spec.seed
        if self.extra_job_body():
            kwargs["extra_body"] = self.extra_job_body()
        job = self._call(lambda: self.client.fine_tuning.jobs.create(**kwargs))
        return to_job_status(job)

    def extra_job_body(self) -> dict | None:
        """Provider-specific fields for job creation (Azure's trainingType); none on OpenAI."""
        return None

    def find_job(self, snapshot_hash: str) -> JobStatus | None:
        """The job created for this snapshot, preferring one that is not failed or cancelled.

        Pages through the job list (newest first) and compares `metadata["snapshot_hash"]`
        ourselves, because not every OpenAI-compatible server applies the metadata filter.
        """
        def first_page() -> SyncCursorPage[FineTuningJob]:
            if self.metadata_filter:
                return self.client.fine_tuning.jobs.list(
                    limit=self.page_size, metadata={"snapshot_hash": snapshot_hash})
            return self.client.fine_tuning.jobs.list(limit=self.page_size)

        page = self._call(first_page)
        matches: list[JobStatus] = []
        for _ in range(MAX_LIST_PAGES):
            for job in page.data or []:
                status = to_job_status(job)
                if status.metadata.get("snapshot_hash") == snapshot_hash:
                    matches.append(status)
            if not page.has_next_page():
                break
            page = self._call(page.get_next_page)
        live = [m for m in matches if m.state not in ("failed", "cancelled")]
        found = live or matches
        return found[0] if found else None

    def job_status(self, job_id: str) -> JobStatus:
        return to_job_status(self._call(lambda: self.client.fine_tuning.jobs.retrieve(job_id)))

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Events oldest first; with `after`, only the ones newer than that event.

        The API lists newest first, so we page until we meet `after` and then reverse.
        """
        page = self._call(lambda: self.client.fine_tuning.jobs.list_events(
            job_id, limit=self.page_size))
        collected: list[JobEvent] = []
        for _ in range(MAX_LIST_PAGES):
            for raw in page.data or []:
                if after is not None and raw.id == after:
                    return _oldest_first(collected)
                collected.append(to_job_event(raw))
            if not page.has_next_page():
                break
            page = self._call(page.get_next_page)
        return _oldest_first(collected)

    def checkpoints(self, job_id: str) -> list[dict]:
        page = self._call(lambda: self.client.fine_tuning.jobs.checkpoints.list(job_id))
        return [item.model_dump() for item in page.data or []]

    def cancel(self, job_id: str) -> JobStatus:
        return to_job_status(self._call(lambda: self.client.fine_tuning.jobs.cancel(job_id)))


def _oldest_first(events: list[JobEvent]) -> list[JobEvent]:
    """Reverse the newest-first listing; a stable sort by time keeps same-second order."""
    return sorted(reversed(events), key=lambda e: e.created_at)
