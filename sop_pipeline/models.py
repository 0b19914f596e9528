"""Every database table of SOP Bot, in one place.

The schema is managed by Alembic (`migrations/`); after changing a table here run
`python scripts/regen_migration.py` while the first release is unreleased.

Uniqueness that protects data (one example per SOP text, one example per Slack message, one
active run, one active model, one reply per Slack event) lives in constraints, so several bot
instances on one PostgreSQL cannot race past it with read-then-write.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum, nonmember

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    Text,
    TypeDecorator,
    UniqueConstraint,
    true,
)
from sqlmodel import Field, SQLModel

STORED_EVAL_SEED = 7  # Settings.eval_seed's default: the seed `eval_point` is stored for


def eval_point(digest: str, seed: int = STORED_EVAL_SEED) -> int:
    """Where an example with this content hash falls in the evaluation hold-out under `seed`:
    the first 12 hex digits of SHA-256("<seed>:<hash>") as an integer (0 to 16^12 - 1); the
    example is held out when this is below EVAL_SHARE x 16^12."""
    return int(hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:12], 16)


def utcnow() -> datetime:
    """Timezone-aware UTC now; every timestamp in the database is UTC."""
    return datetime.now(UTC)


def empty_list() -> list:
    """A fresh list for JSON columns. Pydantic inspects a default factory's signature on every
    instance; for a builtin like `list` that means parsing its text signature (about 40 µs)."""
    return []


def empty_dict() -> dict:
    """A fresh dict for JSON columns (see `empty_list` for why not `dict`)."""
    return {}


class UTCDateTime(TypeDecorator):
    """Stores UTC and always hands back aware datetimes, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExampleStatus(StrEnum):
    """Status of a training example (stored as its text value)."""

    APPROVED = "approved"
    RETRACTED = "retracted"


class TrainingExample(SQLModel, table=True):
    """An approved SOP: the prompt a user would type and the canonical SOP text."""

    __tablename__ = "training_example"
    __table_args__ = (
        UniqueConstraint("slack_channel", "slack_ts", name="uq_example_slack_msg"),
        # Counts read only this index, never the texts: the hold-out rule needs eval_point
        # (or, for another EVAL_SEED or a row without one, the hash).
        Index("ix_training_example_status_point", "status", "eval_point", "content_hash", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    sop_text: str = Field(sa_column=Column(Text, nullable=False))
    title: str = ""
    content_hash: str = Field(unique=True, index=True, max_length=64)
    # eval_point(content_hash) for STORED_EVAL_SEED, written with the hash (migration 0004):
    # counts test the hold-out in SQL instead of calling a hash function per row.
    eval_point: int | None = Field(default=None, sa_type=BigInteger)
    # sop_format.wording_fingerprint(sop_text): finds the renumbered text an older release
    # stored for the same SOP (issue #13). Not unique: such a database may already hold both
    # texts of one SOP, and SOPs that differ only in title share it.
    wording_hash: str | None = Field(default=None, index=True, max_length=64)
    # True for rows stored before verbatim training text (issue #13, migration 0003): their
    # text may be renumbered, and approving the same wording again restores it. Rows stored
    # since are the author's text as approved (False) and are never rewritten.
    legacy_text: bool = Field(default=False, sa_column_kwargs={"server_default": true()})
    source: str = Field(default="slack", max_length=20)  # slack | import | generation
    source_path: str | None = None
    slack_channel: str | None = Field(default=None, max_length=32)
    slack_ts: str | None = Field(default=None, max_length=32)
    generation_id: int | None = Field(default=None, foreign_key="generation.id")
    author: str | None = None
    approver: str | None = None
    approved_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    status: str = Field(default=ExampleStatus.APPROVED, index=True, max_length=20)
    retracted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    retracted_by: str | None = None
    token_count: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Generation(SQLModel, table=True):
    """One SOP draft request and what came of it (kept for cost, audit and approvals)."""

    __tablename__ = "generation"

    id: int | None = Field(default=None, primary_key=True)
    request: str = Field(sa_column=Column(Text, nullable=False))
    requester: str | None = None
    model: str | None = None
    mode: str | None = Field(default=None, max_length=20)  # fine_tuned | retrieval
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int | None = None
    repair_rounds: int = 0
    compliant: bool | None = None
    findings: list = Field(default_factory=empty_list, sa_column=Column(JSON, nullable=False))
    retrieved_example_ids: list = Field(default_factory=empty_list, sa_column=Column(JSON))
    draft_text: str | None = Field(default=None, sa_column=Column(Text))
    status: str = Field(default="pending", index=True, max_length=20)
    # pending | streaming | completed | failed | rejected
    worker: str | None = Field(default=None, max_length=120)  # host:pid:start drafting it
    error: str | None = Field(default=None, sa_column=Column(Text))
    slack_channel: str | None = Field(default=None, max_length=32, index=True)
    slack_thread_ts: str | None = Field(default=None, max_length=32)
    slack_ts: str | None = Field(default=None, max_length=32, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DatasetSnapshot(SQLModel, table=True):
    """A versioned, portable JSONL export: what a training run was (or could be) made from."""

    __tablename__ = "dataset_snapshot"

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(unique=True, index=True, max_length=64)
    example_ids: list = Field(default_factory=empty_list, sa_column=Column(JSON, nullable=False))
    train_example_ids: list = Field(default_factory=empty_list, sa_column=Column(JSON))
    validation_example_ids: list = Field(default_factory=empty_list, sa_column=Column(JSON))
    n_train: int = 0
    n_validation: int = 0
    token_count: int = 0
    estimated_epochs: int = 0
    estimated_cost_usd: float = 0.0
    system_prompt: str = Field(default="", sa_column=Column(Text))
    # The exact JSONL bytes, gzip-compressed, so any instance can upload them (issue 18.1);
    # NULL only for a snapshot whose files were already gone when they moved here (0002_llm).
    train_jsonl_gz: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    validation_jsonl_gz: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RunState(StrEnum):
    """State of a training run (stored as its text value; see `training.lifecycle`)."""

    PREPARING = "preparing"
    UPLOADING = "uploading"
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EVALUATING = "evaluating"
    PROMOTED = "promoted"
    REJECTED = "rejected"

    # groups, not members (nonmember): their items are the plain values, equal to the members
    ACTIVE = nonmember(
        (PREPARING, UPLOADING, VALIDATING_FILES, QUEUED, RUNNING, SUCCEEDED, EVALUATING))
    TERMINAL = nonmember((FAILED, CANCELLED, PROMOTED, REJECTED))


class TrainingRun(SQLModel, table=True):
    """A fine-tuning run as a state machine; every transition is committed before it is used.

    `active_lock` is "active" while the run is not terminal and NULL afterwards: the unique
    constraint makes "at most one active run" a database fact across instances.
    """

    __tablename__ = "training_run"

    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="dataset_snapshot.id", index=True)
    backend: str = Field(default="openai", max_length=20)
    state: str = Field(default=RunState.PREPARING, index=True, max_length=20)
    active_lock: str | None = Field(default="active", unique=True, max_length=10)
    trigger: str = Field(default="schedule", max_length=20)  # schedule | manual | cli
    requested_by: str | None = None
    base_model: str = ""
    provider_job_id: str | None = Field(default=None, index=True)
    train_file_id: str | None = None
    validation_file_id: str | None = None
    fine_tuned_model: str | None = None
    hyperparameters: dict = Field(default_factory=empty_dict, sa_column=Column(JSON))
    estimated_cost_usd: float = 0.0
    trained_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0  # consecutive retryable provider failures (backoff grows with it)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    eval_scores: dict = Field(default_factory=empty_dict, sa_column=Column(JSON))
    chart_path: str | None = None
    chart_url: str | None = None  # where admins can open the loss chart (Slack permalink)
    # The run's one admin-channel message (ts), and the state it last showed: after a restart
    # the same message is edited, and one that was never posted (or fell behind) is posted.
    admin_message_ts: str | None = Field(default=None, max_length=32)
    admin_message_state: str | None = Field(default=None, max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class TrainingEvent(SQLModel, table=True):
    """Provider events and metrics (loss by step), stored for status and charts."""

    __tablename__ = "training_event"
    __table_args__ = (UniqueConstraint("run_id", "provider_event_id", name="uq_event_per_run"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="training_run.id", index=True)
    provider_event_id: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    level: str = "info"
    kind: str = "message"  # message | metrics
    message: str = Field(default="", sa_column=Column(Text))
    step: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


class ModelVersion(SQLModel, table=True):
    """A usable model; exactly one is active (unique `active_lock`), the rest is history."""

    __tablename__ = "model_version"

    id: int | None = Field(default=None, primary_key=True)
    model_id: str = Field(index=True)
    backend: str = Field(default="openai", max_length=20)
    base_model: str = ""
    run_id: int | None = Field(default=None, foreign_key="training_run.id")
    status: str = Field(default="candidate", max_length=20)
    # candidate | active | previous | rejected | retired
    active_lock: str | None = Field(default=None, unique=True, max_length=10)
    eval_scores: dict = Field(default_factory=empty_dict, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    activated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    deactivated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    """Append-only log of state changes that matter; the code has no update or delete path."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True, sa_type=UTCDateTime)
    actor: str
    action: str = Field(index=True, max_length=40)
    subject: str
    old_value: str | None = Field(default=None, sa_column=Column(Text))
    new_value: str | None = Field(default=None, sa_column=Column(Text))
    reason: str | None = Field(default=None, sa_column=Column(Text))


class ProcessedEvent(SQLModel, table=True):
    """Idempotency keys: a Slack event or action handled once, whichever instance got it."""

    __tablename__ = "processed_event"

    key: str = Field(primary_key=True, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ApprovalConfirmation(SQLModel, table=True):
    """What an approval owes Slack after its commit, as its own step: written in the approval's
    transaction (keyed like its claim), marked posted once Slack has the confirmation, so a
    crash in between is answered on Slack's redelivery or at the next start."""

    __tablename__ = "approval_confirmation"

    key: str = Field(primary_key=True, max_length=200)
    channel: str = Field(max_length=32)
    thread_ts: str = Field(max_length=32)
    reacted_ts: str = Field(max_length=32)
    approver: str = Field(max_length=32)
    status: str = Field(max_length=20)  # an ApprovalStatus value
    example_id: int | None = None
    findings_text: str | None = Field(default=None, sa_column=Column(Text))
    worker: str | None = Field(default=None, max_length=120)  # the process start posting it
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    posted_at: datetime | None = Field(default=None, index=True, sa_type=UTCDateTime)


class SchedulerLease(SQLModel, table=True):
    """A named lease so that one scheduler among several instances acts at a time."""

    __tablename__ = "scheduler_lease"

    name: str = Field(primary_key=True, max_length=50)
    holder: str = Field(max_length=200)
    expires_at: datetime = Field(sa_type=UTCDateTime)
