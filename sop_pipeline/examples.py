"""Training examples: approving SOPs, retracting them, counting them, holding some out.

Approval is the one write path for examples (Slack reactions, file import and the CLI all come
here), so format checks, canonical text, idempotency and the audit record are enforced once.
Idempotency is a database fact: INSERT ... ON CONFLICT DO NOTHING on the SOP's hash and on the
Slack message, so two bot instances approving the same message at once store one example.

Functions add to the caller's transaction (they flush, never commit): the caller commits the
example and its audit event together.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text, update
from sqlmodel import Session, col, select

from sop_pipeline import audit
from sop_pipeline.models import (
    STORED_EVAL_SEED,
    DatasetSnapshot,
    ExampleStatus,
    RunState,
    TrainingExample,
    TrainingRun,
    eval_point,
    utcnow,
)
from sop_pipeline.settings import Settings
from sop_pipeline.sop_format.title_prompt import default_prompt
from sop_pipeline.tokens import count_tokens

TRAINED_STATES = (RunState.SUCCEEDED, RunState.EVALUATING, RunState.PROMOTED, RunState.REJECTED)


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
    # The example was stored renumbered by an older release and now has the verbatim text.
    text_restored: bool = False

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
            restored = (" Its training text now keeps your numbering." if self.text_restored
                        else "")
            return f"This SOP is already training example {number}; nothing was added.{restored}"
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
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise RuntimeError(f"Unsupported database dialect {name!r}.")  # pragma: no cover


def content_hash(text: str) -> str:
    """sha256 of the canonical SOP text: the identity of an example."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    wording: str = ""  # sop_format.wording_fingerprint(canonical)

    @property
    def compliant(self) -> bool:
        return bool(self.canonical)


def prepare_sop(text: str, template: Any, settings: Settings) -> PreparedSop:
    """Parse and validate `text`; compliant SOPs also get their canonical text, hash and size."""
    from sop_pipeline.sop_format import is_compliant, parse, render_training_text, validate
    from sop_pipeline.sop_format.wording import wording_fingerprint

    sop = parse(text, template)
    findings = list(validate(
        sop, template, max_tokens=settings.sop_max_example_tokens, count_tokens=count_tokens
    ))
    if not is_compliant(findings):
        return PreparedSop(findings)
    # The author's numbering and words, as approved: never renumbered (issue #13).
    canonical = render_training_text(sop, template)
    return PreparedSop(findings, canonical, content_hash(canonical), count_tokens(canonical),
                       (sop.title or "").strip(), wording_fingerprint(canonical))


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
    a retracted example approved again becomes approved ("reapproved"). The same SOP stored
    renumbered by a release before issue #13 (same wording, another text) gets the verbatim
    text, keeping its id, and counts as the same example ("duplicate" or "reapproved", with
    `text_restored`). `with_counts=False` skips the pool counts (bulk import does not show
    them per file). `prepared` is `prepare_sop(text, ...)` when the caller did it before
    opening its transaction.
    """
    prepared = prepared or prepare_sop(text, template, settings)
    findings = prepared.findings
    if not prepared.compliant:
        return ApprovalResult(ApprovalStatus.NOT_COMPLIANT, findings=findings)
    canonical, digest = prepared.canonical, prepared.digest

    def counts() -> ExampleCounts | None:
        return example_counts(session, settings) if with_counts else None

    from sop_pipeline.legacy_text import renumbered_twin, restore_text

    twin = renumbered_twin(session, prepared, slack_channel, slack_ts)
    if twin is not None and restore_text(session, twin, prepared, approver):
        restored = get_example(session, twin.id) if twin.id is not None else None
        assert restored is not None  # the row the UPDATE just changed
        status = ApprovalStatus.DUPLICATE
        if restored.status == ExampleStatus.RETRACTED and _reapprove(session, restored, approver):
            session.refresh(restored)
            status = ApprovalStatus.REAPPROVED
        _embed_after_commit(session, settings, restored)
        return ApprovalResult(status, restored, findings, counts(), text_restored=True)

    values = {
        "prompt": (prompt or "").strip() or default_prompt(prepared.title),
        "sop_text": canonical,
        "title": prepared.title,
        "content_hash": digest,
        "eval_point": eval_point(digest),
        "wording_hash": prepared.wording,
        "legacy_text": False,
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
    # the new row comes back whole with the INSERT: no second round trip to read it
    example = session.scalars(
        stmt.on_conflict_do_nothing().returning(TrainingExample),
        execution_options={"populate_existing": True},
    ).one_or_none()
    if example is not None:
        audit.record(
            session, actor=approver or "system", action="approve",
            subject=f"example:{example.id}", new_value=ExampleStatus.APPROVED,
            reason=f"source={source}" + (f" path={source_path}" if source_path else ""),
        )
        session.flush()
        _embed_after_commit(session, settings, example)
        return ApprovalResult(ApprovalStatus.APPROVED, example, findings, counts())
    existing = _by_hash(session, digest) or _by_message(session, slack_channel, slack_ts)
    if existing is None:  # pragma: no cover - the conflicting row was deleted meanwhile
        raise RuntimeError("The example conflicted with a row that no longer exists.")
    if existing.status == ExampleStatus.RETRACTED and _reapprove(session, existing, approver):
        session.refresh(existing)
        _embed_after_commit(session, settings, existing)
        return ApprovalResult(ApprovalStatus.REAPPROVED, existing, findings, counts())
    return ApprovalResult(ApprovalStatus.DUPLICATE, existing, findings, counts())


def _embed_after_commit(session: Session, settings: Settings,
                        example: TrainingExample | None) -> None:
    """With SOP_EMBEDDINGS_MODEL set, the example gets its vector once this commits."""
    if settings.sop_embeddings_model and example is not None and example.id is not None:
        from sop_pipeline.library import vectors

        vectors.after_approval(session, settings, example.id, example.title or "",
                               example.prompt, example.sop_text)


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
    result = session.exec(
        update(TrainingExample)
        .where(
            col(TrainingExample.id) == example.id,
            col(TrainingExample.status) == ExampleStatus.RETRACTED,
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
    result = session.exec(
        update(TrainingExample)
        .where(
            col(TrainingExample.id) == example.id,
            col(TrainingExample.status) == ExampleStatus.APPROVED,
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
    query = select(TrainingExample).order_by(col(TrainingExample.id).desc()).limit(limit)
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
        .join(TrainingRun, col(TrainingRun.snapshot_id) == DatasetSnapshot.id)
        .where(col(TrainingRun.state).in_(TRAINED_STATES))
    )
    ids: set[int] = set()
    for example_ids in session.exec(query):
        ids.update(int(i) for i in example_ids or [])
    return ids


def example_counts(session: Session, settings: Settings) -> ExampleCounts:
    """Approved, retracted, new since the last training, and trainable counts.

    Held-out evaluation examples never train, so they count neither as new nor as trainable.
    One COUNT query over the table (the hold-out rule and the trained ids evaluated by the
    database), never loading rows: approvals, status and the retrain check all call this.
    """
    dialect = session.get_bind().dialect.name
    states = ", ".join(f"'{state}'" for state in TRAINED_STATES)
    each_id = ("json_array_elements_text(d.example_ids) AS e(value)" if dialect == "postgresql"
               else "json_each(d.example_ids) AS e")
    trained = (f"SELECT CAST(e.value AS integer) FROM dataset_snapshot d JOIN training_run r "
               f"ON r.snapshot_id = d.id, {each_id} WHERE r.state IN ({states})")
    held = "1 = 0"
    params: dict[str, object] = {"approved": ExampleStatus.APPROVED,
                                 "retracted": ExampleStatus.RETRACTED}
    if settings.eval_share > 0:
        point = _eval_point_sql(session, settings.eval_seed)
        held = f"{point} < :cut"
        params.update(seed=settings.eval_seed, cut=settings.eval_share * float(16**12))
    # The hold-out test runs once per approved row (in the inner query); retracted rows are
    # counted from the status index alone.
    row = session.execute(text(
        "SELECT count(*), coalesce(sum(held), 0), coalesce(sum(fresh), 0), "
        "coalesce(sum(CASE WHEN held = 0 THEN fresh ELSE 0 END), 0), "
        "(SELECT count(*) FROM training_example WHERE status = :retracted) "
        f"FROM (SELECT CASE WHEN {held} THEN 1 ELSE 0 END AS held, "
        f"CASE WHEN id NOT IN ({trained}) THEN 1 ELSE 0 END AS fresh "
        "FROM training_example WHERE status = :approved) AS approved_examples"), params).one()
    approved, held_out, new_all, new_not_held, retracted = (int(v) for v in row)
    if approved - held_out < settings.sop_min_examples:  # too few to hold any out
        held_out, new_not_held = 0, new_all
    return ExampleCounts(
        approved=approved,
        retracted=retracted,
        new_since_last_training=new_not_held,
        threshold=settings.retrain_min_new_examples,
        total_trainable=approved - held_out,
    )


def _eval_point_sql(session: Session, seed: int) -> str:
    """`models.eval_point(content_hash, seed)` in SQL. Rows store it for the default seed, so
    the test reads the column; a row without it (or another EVAL_SEED) computes it: PostgreSQL
    with its sha256, SQLite with a Python function on the connection, which at 10,000 rows
    took 8.7 of a count's 12.4 ms and the interpreter lock once per row."""
    if session.get_bind().dialect.name == "postgresql":
        computed = ("('x' || substr(encode(sha256(convert_to(CAST(:seed AS text) || ':' || "
                    "content_hash, 'UTF8')), 'hex'), 1, 12))::bit(48)::bigint")
    else:
        raw = session.connection().connection.driver_connection
        assert raw is not None  # a checked-out connection always has one
        raw.create_function("sop_eval_point", 2, _cached_eval_point, deterministic=True)
        computed = "sop_eval_point(:seed, content_hash)"
    if seed != STORED_EVAL_SEED:
        return computed
    return f"CASE WHEN eval_point IS NOT NULL THEN eval_point ELSE {computed} END"


@functools.lru_cache(maxsize=200_000)  # a pure function of its arguments
def _cached_eval_point(seed: int, digest: str) -> int:
    return eval_point(digest, seed)


# --- evaluation hold-out -------------------------------------------------------------------


def _share_point(seed: int, digest: str) -> float:
    """A stable number in [0, 1) for an example under a seed."""
    return eval_point(digest, seed) / float(16**12)


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
        if ex.id is not None
        and _share_point(settings.eval_seed, ex.content_hash) < settings.eval_share
    }
    if len(pool) - len(held) < settings.sop_min_examples:
        return set()
    return held
