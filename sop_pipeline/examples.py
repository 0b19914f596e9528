"""Training examples: approving SOPs, retracting them, counting them, holding some out.

Approval is the one write path for examples (Slack reactions, file import and the CLI all come
here), so format checks, canonical text, idempotency and the audit record are enforced once.
Idempotency is a database fact: INSERT ... ON CONFLICT DO NOTHING on the SOP's hash and on the
Slack message, so two bot instances approving the same message at once store one example.

Functions add to the caller's transaction (they flush, never commit): the caller commits the
example and its audit event together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, select

from sop_pipeline import audit
from sop_pipeline.models import (
    DatasetSnapshot,
    ExampleStatus,
    RunState,
    TrainingExample,
    TrainingRun,
    utcnow,
)
from sop_pipeline.settings import Settings
from sop_pipeline.tokens import count_tokens

TRAINED_STATES = (RunState.SUCCEEDED, RunState.EVALUATING, RunState.PROMOTED, RunState.REJECTED)
_TITLE_PREFIXES = (
    "standard operating procedure for ",
    "standard operating procedure on ",
    "standard operating procedure:",
    "standard operating procedure -",
    "sop for ",
    "sop on ",
    "sop:",
    "sop -",
)


class ApprovalStatus:
    APPROVED = "approved"
    DUPLICATE = "duplicate"
    REAPPROVED = "reapproved"
    NOT_COMPLIANT = "not_compliant"


@dataclass(frozen=True)
class ExampleCounts:
    """Where the example pool stands relative to the next retrain."""

    approved: int
    retracted: int
    new_since_last_training: int
    threshold: int
    total_trainable: int

    @property
    def progress(self) -> str:
        """E.g. "7 of 10 new examples toward the next retrain"."""
        new = self.new_since_last_training
        if new >= self.threshold:
            return f"{new} new examples: enough for the next retrain, which needs {self.threshold}"
        return f"{new} of {self.threshold} new examples toward the next retrain"


@dataclass
class ApprovalResult:
    """What happened to an approval; `message` is ready to show to the approver."""

    status: str
    example: TrainingExample | None = None
    findings: list = field(default_factory=list)
    counts: ExampleCounts | None = None

    @property
    def stored(self) -> bool:
        """True when the SOP is (now or already) an approved training example."""
        return self.status in (ApprovalStatus.APPROVED, ApprovalStatus.REAPPROVED) or (
            self.status == ApprovalStatus.DUPLICATE
            and self.example is not None
            and self.example.status == ExampleStatus.APPROVED
        )

    @property
    def message(self) -> str:
        progress = f" ({self.counts.progress})" if self.counts else ""
        number = f"#{self.example.id}" if self.example else ""
        if self.status == ApprovalStatus.APPROVED:
            return f"Added as training example {number}{progress}."
        if self.status == ApprovalStatus.REAPPROVED:
            return f"Training example {number} was retracted and is approved again{progress}."
        if self.status == ApprovalStatus.DUPLICATE:
            return f"This SOP is already training example {number}; nothing was added."
        from sop_pipeline.sop_format import summarize

        return (
            f"Not added as a training example. {summarize(self.findings)}\n"
            "Fix the SOP and approve it again."
        )


# --- helpers shared with dataset.py ------------------------------------------------------


def dialect_insert(session: Session, table: type) -> Any:
    """The INSERT construct of the session's dialect (SQLite or PostgreSQL), for ON CONFLICT."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - settings only allow sqlite and postgresql
        raise RuntimeError(f"Unsupported database dialect {name!r}.")
    return insert(table)


def content_hash(text: str) -> str:
    """sha256 of the canonical SOP text: the identity of an example."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_prompt(title: str | None) -> str:
    """The request a user would type for this SOP: "Write an SOP for <title>".

    A title that already says "SOP for ..." or "Standard Operating Procedure for ..." loses
    that prefix so the prompt does not repeat it; otherwise the title is kept as written.
    """
    cleaned = " ".join((title or "").split()).strip(" .:-")
    lowered = cleaned.lower()
    for prefix in _TITLE_PREFIXES:
        if lowered.startswith(prefix):
            cleaned = cleaned[len(prefix):].strip(" .:-")
            break
    if not cleaned:
        return "Write an SOP"
    return f"Write an SOP for {_unshout(cleaned)}"


_SMALL_WORDS = {"a", "an", "and", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with"}


def _unshout(title: str) -> str:
    """ "RECEIPT OF RAW MATERIALS" → "Receipt of Raw Materials"; people do not type in caps.

    Short words that are not English glue words ("QC", "PH") stay upper-case: they are
    usually abbreviations.
    """
    if not title.isupper():
        return title
    words = []
    for index, word in enumerate(title.split()):
        lower = word.lower()
        if index and lower in _SMALL_WORDS:
            words.append(lower)
        elif len(word) <= 2 and word.isalpha():
            words.append(word)
        else:
            words.append(word.capitalize())
    return " ".join(words)


# --- approving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedSop:
    """An SOP parsed, checked and rendered canonically: the CPU-heavy half of an approval,
    done before the transaction so the database's write lock is never held while parsing."""

    findings: list
    canonical: str = ""
    digest: str = ""
    tokens: int = 0
    title: str = ""

    @property
    def compliant(self) -> bool:
        return bool(self.canonical)


def prepare_sop(text: str, template: Any, settings: Settings) -> PreparedSop:
    """Parse and validate `text`; compliant SOPs also get their canonical text, hash and size."""
    from sop_pipeline.sop_format import is_compliant, parse, render_canonical, validate

    sop = parse(text, template)
    findings = list(validate(
        sop, template, max_tokens=settings.sop_max_example_tokens, count_tokens=count_tokens
    ))
    if not is_compliant(findings):
        return PreparedSop(findings)
    canonical = render_canonical(sop, template)
    return PreparedSop(findings, canonical, content_hash(canonical), count_tokens(canonical),
                       (sop.title or "").strip())


def approve_sop(
    session: Session,
    template: Any,
    settings: Settings,
    *,
    text: str,
    prompt: str | None = None,
    source: str = "slack",
    approver: str | None = None,
    author: str | None = None,
    slack_channel: str | None = None,
    slack_ts: str | None = None,
    generation_id: int | None = None,
    source_path: str | None = None,
    with_counts: bool = True,
    prepared: PreparedSop | None = None,
) -> ApprovalResult:
    """Turn an approved SOP into a training example, once, with an audit record.

    Non-compliant text is refused with findings and nothing stored. The same SOP text, or the
    same Slack message, approved again returns status "duplicate" with the existing example;
    a retracted example approved again becomes approved ("reapproved"). `with_counts=False`
    skips the pool counts (bulk import does not show them per file). `prepared` is
    `prepare_sop(text, ...)` when the caller did it before opening its transaction.
    """
    prepared = prepared or prepare_sop(text, template, settings)
    findings = prepared.findings
    if not prepared.compliant:
        return ApprovalResult(ApprovalStatus.NOT_COMPLIANT, findings=findings)
    canonical, digest = prepared.canonical, prepared.digest

    def counts() -> ExampleCounts | None:
        return example_counts(session, settings) if with_counts else None

    values = {
        "prompt": (prompt or "").strip() or default_prompt(prepared.title),
        "sop_text": canonical,
        "title": prepared.title,
        "content_hash": digest,
        "source": source,
        "source_path": source_path,
        "slack_channel": slack_channel,
        "slack_ts": slack_ts,
        "generation_id": generation_id,
        "author": author,
        "approver": approver,
        "approved_at": utcnow(),
        "status": ExampleStatus.APPROVED,
        "token_count": prepared.tokens,
        "created_at": utcnow(),
    }
    stmt = dialect_insert(session, TrainingExample).values(**values)
    new_id = session.execute(
        stmt.on_conflict_do_nothing().returning(TrainingExample.id)
    ).scalar_one_or_none()
    if new_id is not None:
        example = get_example(session, new_id)
        audit.record(
            session, actor=approver or "system", action="approve",
            subject=f"example:{example.id}", new_value=ExampleStatus.APPROVED,
            reason=f"source={source}" + (f" path={source_path}" if source_path else ""),
        )
        session.flush()
        return ApprovalResult(ApprovalStatus.APPROVED, example, findings, counts())
    existing = _by_hash(session, digest) or _by_message(session, slack_channel, slack_ts)
    if existing is None:  # pragma: no cover - the conflicting row was deleted meanwhile
        raise RuntimeError("The example conflicted with a row that no longer exists.")
    if existing.status == ExampleStatus.RETRACTED and _reapprove(session, existing, approver):
        session.refresh(existing)
        return ApprovalResult(ApprovalStatus.REAPPROVED, existing, findings, counts())
    return ApprovalResult(ApprovalStatus.DUPLICATE, existing, findings, counts())


def exercise_statements(session: Session, template: Any, settings: Settings, tag: str) -> None:
    """Run the statements an approval runs, inside the caller's transaction, which must roll
    them back: SQLAlchemy then has them compiled before the first burst (`sop_pipeline.warm_up`).
    `tag` makes the made-up example unique, so it can never meet a real one."""
    digest = content_hash(f"warm-up {tag}")
    approve_sop(
        session, template, settings, text="", prompt="warm-up", source="slack", approver="U0",
        author="U0", slack_channel="C0", slack_ts=f"0.{tag}", generation_id=None,
        prepared=PreparedSop([], "warm-up", digest, 1, "Warm-up"),
    )
    _by_hash(session, digest)
    _by_message(session, "C0", f"0.{tag}")


def _by_hash(session: Session, digest: str) -> TrainingExample | None:
    query = select(TrainingExample).where(TrainingExample.content_hash == digest)
    return session.exec(query.execution_options(populate_existing=True)).first()


def _by_message(
    session: Session, channel: str | None, ts: str | None
) -> TrainingExample | None:
    if not channel or not ts:
        return None
    query = select(TrainingExample).where(
        TrainingExample.slack_channel == channel, TrainingExample.slack_ts == ts
    )
    return session.exec(query.execution_options(populate_existing=True)).first()


def _reapprove(session: Session, example: TrainingExample, approver: str | None) -> bool:
    """Flip retracted → approved with a conditional UPDATE, so only one racer wins."""
    result = session.execute(
        update(TrainingExample)
        .where(
            TrainingExample.id == example.id,
            TrainingExample.status == ExampleStatus.RETRACTED,
        )
        .values(
            status=ExampleStatus.APPROVED,
            approver=approver or example.approver,
            approved_at=utcnow(),
            retracted_at=None,
            retracted_by=None,
        )
    )
    if result.rowcount != 1:
        return False
    audit.record(
        session, actor=approver or "system", action="approve",
        subject=f"example:{example.id}", old_value=ExampleStatus.RETRACTED,
        new_value=ExampleStatus.APPROVED, reason="approved again after retraction",
    )
    session.flush()
    return True


# --- retracting ----------------------------------------------------------------------------


def retract_example(
    session: Session,
    *,
    actor: str,
    reason: str | None = None,
    example_id: int | None = None,
    slack_channel: str | None = None,
    slack_ts: str | None = None,
) -> TrainingExample | None:
    """Mark an example retracted (it is kept, never deleted) and audit it.

    Returns the example (also when it was already retracted: nothing changes then), or None
    when no example matches. Retracted examples never enter future snapshots.
    """
    if example_id is not None:
        example = get_example(session, example_id)
    else:
        example = _by_message(session, slack_channel, slack_ts)
    if example is None or example.status == ExampleStatus.RETRACTED:
        return example
    result = session.execute(
        update(TrainingExample)
        .where(
            TrainingExample.id == example.id,
            TrainingExample.status == ExampleStatus.APPROVED,
        )
        .values(status=ExampleStatus.RETRACTED, retracted_at=utcnow(), retracted_by=actor)
    )
    if result.rowcount == 1:
        audit.record(
            session, actor=actor, action="retract", subject=f"example:{example.id}",
            old_value=ExampleStatus.APPROVED, new_value=ExampleStatus.RETRACTED, reason=reason,
        )
        session.flush()
    session.refresh(example)
    return example


# --- reading ---------------------------------------------------------------------------------


def list_examples(
    session: Session, status: str | None = None, limit: int = 50
) -> list[TrainingExample]:
    """Examples newest first, optionally only "approved" or "retracted"."""
    query = select(TrainingExample).order_by(TrainingExample.id.desc()).limit(limit)
    if status:
        query = query.where(TrainingExample.status == status)
    return list(session.exec(query))


def get_example(session: Session, example_id: int) -> TrainingExample | None:
    """One example by id, or None."""
    query = select(TrainingExample).where(TrainingExample.id == example_id)
    return session.exec(query.execution_options(populate_existing=True)).first()


def trained_example_ids(session: Session) -> set[int]:
    """Ids of examples inside a snapshot that a model was actually trained on."""
    query = (
        select(DatasetSnapshot.example_ids)
        .join(TrainingRun, TrainingRun.snapshot_id == DatasetSnapshot.id)
        .where(TrainingRun.state.in_(TRAINED_STATES))
    )
    ids: set[int] = set()
    for example_ids in session.exec(query):
        ids.update(int(i) for i in example_ids or [])
    return ids


def example_counts(session: Session, settings: Settings) -> ExampleCounts:
    """Approved, retracted, new since the last training, and trainable counts.

    Held-out evaluation examples never train, so they count neither as new nor as trainable.
    """
    approved = list(
        session.exec(
            select(TrainingExample).where(TrainingExample.status == ExampleStatus.APPROVED)
        )
    )
    retracted = session.exec(
        select(func.count())
        .select_from(TrainingExample)
        .where(TrainingExample.status == ExampleStatus.RETRACTED)
    ).one()
    held_out = eval_holdout_ids(approved, settings)
    trained = trained_example_ids(session)
    trainable = [ex for ex in approved if ex.id not in held_out]
    new = [ex for ex in trainable if ex.id not in trained]
    return ExampleCounts(
        approved=len(approved),
        retracted=int(retracted),
        new_since_last_training=len(new),
        threshold=settings.retrain_min_new_examples,
        total_trainable=len(trainable),
    )


# --- evaluation hold-out -------------------------------------------------------------------


def _share_point(seed: int, digest: str) -> float:
    """A stable number in [0, 1) for an example under a seed."""
    value = hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:12]
    return int(value, 16) / float(16**12)


def eval_holdout_ids(examples: Iterable[TrainingExample], settings: Settings) -> set[int]:
    """Ids of approved examples kept out of training to evaluate candidates on.

    Membership is decided per example from seed + content hash, so adding examples never moves
    an old example between training and evaluation. When holding out would leave fewer than
    `settings.sop_min_examples` to train on, nothing is held out.
    """
    pool: Sequence[TrainingExample] = [
        ex for ex in examples if ex.status == ExampleStatus.APPROVED and ex.id is not None
    ]
    if settings.eval_share <= 0:
        return set()
    held = {
        ex.id for ex in pool
        if _share_point(settings.eval_seed, ex.content_hash) < settings.eval_share
    }
    if len(pool) - len(held) < settings.sop_min_examples:
        return set()
    return held  # type: ignore[return-value]
