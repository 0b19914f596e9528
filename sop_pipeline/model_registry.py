"""Which model answers `/sop`: the active model version, its history, activate and rollback.

Exactly one version is active: `active_lock = "active"` is unique, so two instances cannot both
promote. Every switch is audited.

The base model with retrieval is a version too (`backend = "base"`, `model_id = "base"`): it
is the implicit active version before the first promotion, becomes "previous" when a fine-tune
is promoted, and `rollback` from the first fine-tune returns to it. `active_model` keeps
returning only fine-tuned models (None means "draft with the base model and retrieval"), so
generation, status and the gate need not know about the base row.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from sop_pipeline import audit
from sop_pipeline.models import ModelVersion, utcnow

BASE_BACKEND = "base"
BASE_ID = "base"  # what `sop-bot models activate base` and the Slack buttons name it


class ModelRegistryError(ValueError):
    """A model switch that cannot be done; the text says why and what to do."""


@dataclass(frozen=True)
class Switch:
    """What a switch did, as plain data (for the CLI, Slack and notifications)."""

    action: str  # activate | rollback
    old: str  # label of the version that was active
    new: str  # label of the version that is active now
    version_id: int | None
    changed: bool


def is_base(version: ModelVersion | None) -> bool:
    return version is not None and version.backend == BASE_BACKEND


def label(version: ModelVersion | None, base_model: str = "") -> str:
    """How people see a version: the fine-tuned model id, or "base model X + retrieval"."""
    if version is None or is_base(version):
        shown = base_model or (version.base_model if version is not None else "")
        return f"base model {shown} + retrieval" if shown else "base model + retrieval"
    return version.model_id


def active_model(session: Session) -> ModelVersion | None:
    """The active fine-tuned version, or None (then generation uses the base model +
    retrieval, whether or not the base row is marked active)."""
    query = select(ModelVersion).where(ModelVersion.active_lock == "active",
                                       ModelVersion.backend != BASE_BACKEND)
    return session.exec(query).first()


def active_version(session: Session) -> ModelVersion | None:
    """The row holding the active lock (the base row included), or None before any switch."""
    return session.exec(select(ModelVersion).where(ModelVersion.active_lock == "active")).first()


def base_version(session: Session, base_model: str = "") -> ModelVersion:
    """The base-model version row, created on first use (the oldest one if a race made two)."""
    query = (select(ModelVersion).where(ModelVersion.backend == BASE_BACKEND)
             .order_by(col(ModelVersion.id)))
    found = session.exec(query).first()
    if found is not None:
        if base_model and found.base_model != base_model:
            found.base_model = base_model  # SOP_BASE_MODEL changed: show what drafts use
            session.add(found)
        return found
    # before any promotion the base model is what answers, so it starts out active
    holder = active_version(session)
    version = ModelVersion(model_id=BASE_ID, backend=BASE_BACKEND, base_model=base_model,
                           status="active" if holder is None else "previous",
                           active_lock="active" if holder is None else None, eval_scores={})
    session.add(version)
    session.flush()
    return version


def history(session: Session, limit: int = 20) -> list[ModelVersion]:
    """Model versions, newest first (the base-model version included)."""
    query = select(ModelVersion).order_by(col(ModelVersion.id).desc()).limit(limit)
    return list(session.exec(query))


def find(session: Session, ref: str, base_model: str = "") -> ModelVersion:
    """A version by id, by "base", or by its model id; a sentence when there is none."""
    ref = ref.strip()
    if ref.lower() == BASE_ID:
        return base_version(session, base_model)
    if ref.isdigit():
        version = session.get(ModelVersion, int(ref))
    else:
        version = session.exec(select(ModelVersion).where(ModelVersion.model_id == ref)
                               .order_by(col(ModelVersion.id).desc())).first()
    if version is None:
        raise ModelRegistryError(f"There is no model version {ref!r}; `sop-bot models list` "
                                 "shows them (use `base` for the base model with retrieval).")
    return version


def activate(
    session: Session, version: ModelVersion, *, actor: str, action: str = "activate",
    reason: str | None = None,
) -> ModelVersion:
    """Make `version` the active model (the caller commits). Audited as `action`."""
    if version.status in ("retired",):
        raise ModelRegistryError(
            f"Model {version.model_id} is retired at the provider and cannot be activated; "
            "choose another with `sop-bot models list`."
        )
    if active_version(session) is None:
        base_version(session)  # the base model was answering until now: it takes the lock
    current = active_version(session)
    if current is not None and current.id == version.id:
        return version
    now = utcnow()
    if current is not None:
        current.active_lock = None
        current.status = "previous"
        current.deactivated_at = now
        session.add(current)
        session.flush()  # release the unique lock before taking it
    version.active_lock = "active"
    version.status = "active"
    version.activated_at = now
    version.deactivated_at = None
    session.add(version)
    audit.record(
        session, actor=actor, action=action, subject=f"model:{version.id}",
        old_value=current.model_id if current else BASE_ID, new_value=version.model_id,
        reason=reason,
    )
    session.flush()
    return version


def rollback_target(session: Session, *, create: bool = True) -> ModelVersion | None:
    """The version `rollback` would switch to: the one active before the current one (the
    base model when the first fine-tune is active), or None when there is none. With
    `create=False` (read-only callers such as status) a missing base row is not written."""
    current = active_version(session)
    query = (
        select(ModelVersion)
        .where(ModelVersion.status == "previous")
        .order_by(col(ModelVersion.deactivated_at).desc(), col(ModelVersion.id).desc())
    )
    for candidate in session.exec(query):
        if current is None or candidate.id != current.id:
            return candidate
    if current is not None and not is_base(current):
        if not create:  # a fine-tune promoted before the base row existed
            return ModelVersion(model_id=BASE_ID, backend=BASE_BACKEND)
        return base_version(session)
    return None


def rollback(session: Session, *, actor: str, reason: str | None = None) -> ModelVersion:
    """Switch back to the version that was active before the current one."""
    current = active_version(session)
    previous = rollback_target(session)
    if previous is None:
        raise ModelRegistryError(
            "There is no previous model to roll back to: drafts already use the base model "
            "with retrieval. `sop-bot models list` shows the history."
        )
    return activate(session, previous, actor=actor, action="rollback", reason=reason or (
        f"rollback from {current.model_id}" if current else None))


def deactivate_missing(session: Session, version: ModelVersion, *, reason: str) -> None:
    """Mark a model gone at the provider (e.g. `model_not_found`) so generation falls back to
    the base model, which becomes the active version."""
    old = version.status
    was_active = version.active_lock == "active"
    version.active_lock = None
    version.status = "retired"
    version.deactivated_at = utcnow()
    session.add(version)
    audit.record(session, actor="system", action="retire", subject=f"model:{version.id}",
                 old_value=old, new_value="retired", reason=reason)
    session.flush()
    if was_active:
        base = base_version(session)
        if base.active_lock != "active":
            base.active_lock, base.status = "active", "active"
            base.activated_at, base.deactivated_at = utcnow(), None
            session.add(base)
            session.flush()


def switch(
    session: Session, ref: str | None, *, actor: str, reason: str | None = None,
    base_model: str = "",
) -> Switch:
    """`activate <ref>` (ref given) or `rollback` (ref None), for the CLI and Slack alike."""
    if base_model:
        base_version(session, base_model)  # exists, and shows the configured base model
    before = active_version(session)
    old = label(before, base_model)
    if ref is None:
        version = rollback(session, actor=actor, reason=reason)
        return Switch("rollback", old, label(version, base_model), version.id, True)
    target = find(session, ref, base_model)
    before = active_version(session)
    changed = before is None or before.id != target.id
    if changed:
        activate(session, target, actor=actor, reason=reason)
    return Switch("activate", old, label(target, base_model), target.id, changed)


def switch_and_announce(
    services, ref: str | None, *, actor: str, reason: str | None = None,  # noqa: ANN001
) -> Switch:
    """Switch (activate `ref`, or roll back when None), commit with its audit event, then tell
    the admin channel through the notifier. Raises ModelRegistryError with a sentence."""
    from sop_pipeline.notifications import Notification

    base_model = services.settings.sop_base_model
    with services.session() as session:
        result = switch(session, ref, actor=actor, reason=reason, base_model=base_model)
        session.commit()
    if result.changed:
        verb = "rolled back" if result.action == "rollback" else "switched"
        why = f" Reason: {reason}" if reason else ""
        text = (f"Model {verb} by {actor}: drafts now use {result.new} "
                f"(was {result.old}).{why}")
        try:
            services.notifier.notify(Notification(
                kind=f"model_{result.action}", text=text,
                data={"actor": actor, "old": result.old, "new": result.new,
                      "version_id": result.version_id, "reason": reason}))
        except Exception:  # noqa: BLE001 - the switch is committed; a broken channel is logged
            import logging

            logging.getLogger(__name__).exception("could not announce the model switch")
    return result
