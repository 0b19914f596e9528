"""Which model answers `/sop`: the active model version, its history, activate and rollback.

Exactly one version is active: `active_lock = "active"` is unique, so two instances cannot both
promote. Every switch is audited.
"""

from __future__ import annotations

from sqlmodel import Session, select

from sop_pipeline import audit
from sop_pipeline.models import ModelVersion, utcnow


class ModelRegistryError(ValueError):
    """A model switch that cannot be done; the text says why and what to do."""


def active_model(session: Session) -> ModelVersion | None:
    """The active model version, or None (then generation uses the base model + retrieval)."""
    return session.exec(select(ModelVersion).where(ModelVersion.active_lock == "active")).first()


def history(session: Session, limit: int = 20) -> list[ModelVersion]:
    """Model versions, newest first."""
    query = select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit)  # type: ignore[union-attr]
    return list(session.exec(query))


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
    current = active_model(session)
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
        old_value=current.model_id if current else None, new_value=version.model_id,
        reason=reason,
    )
    session.flush()
    return version


def rollback(session: Session, *, actor: str, reason: str | None = None) -> ModelVersion:
    """Switch back to the version that was active before the current one."""
    current = active_model(session)
    query = (
        select(ModelVersion)
        .where(ModelVersion.status == "previous")
        .order_by(ModelVersion.deactivated_at.desc(), ModelVersion.id.desc())  # type: ignore[union-attr]
    )
    previous = session.exec(query).first()
    if previous is None:
        raise ModelRegistryError(
            "There is no previous model to roll back to; `sop-bot models list` shows history."
        )
    return activate(session, previous, actor=actor, action="rollback", reason=reason or (
        f"rollback from {current.model_id}" if current else None))


def deactivate_missing(session: Session, version: ModelVersion, *, reason: str) -> None:
    """Mark a model gone at the provider (e.g. `model_not_found`) so generation falls back."""
    old = version.status
    version.active_lock = None
    version.status = "retired"
    version.deactivated_at = utcnow()
    session.add(version)
    audit.record(session, actor="system", action="retire", subject=f"model:{version.id}",
                 old_value=old, new_value="retired", reason=reason)
    session.flush()
