"""Providers' fine-tuning sunset as behaviour: the dates table and what follows from it.

`sunset.toml` (next to this module) holds, per provider and base model, the last day a job can
be started and the day the model stops answering, with the provider page it comes from. This
module answers "can this backend train today, and until when?", words the refusals (naming the
alternatives and how to switch), and knows OpenAI's "may not fine-tune" answer, which can come
before the table's dates for organisations OpenAI has already closed.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import asdict, dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from sqlalchemy import delete
from sqlmodel import Session, col, select

from sop_pipeline.models import ProcessedEvent

log = logging.getLogger(__name__)

TABLE_PATH = Path(__file__).with_name("sunset.toml")
ORG_BLOCKED_KEY = "sunset:org_blocked:openai"  # a claim row: OpenAI said we may not fine-tune
ORG_BLOCKED_CODE = "fine_tuning_not_allowed"
PROVIDER_OF = {"openai": "openai", "azure": "azure"}  # local and none have no provider dates

SWITCH_HOW = (
    "To keep improving drafts, set TRAINING_BACKEND=azure (Azure OpenAI, same API; needs "
    "AZURE_OPENAI_ENDPOINT), TRAINING_BACKEND=local (open-weights LoRA on your own machine; "
    "needs LOCAL_BASE_MODEL) or TRAINING_BACKEND=none (retrieval only, no fine-tuning) in .env "
    "and restart the bot."
)
ORG_BLOCKED = (
    "OpenAI answered that this organisation may no longer fine-tune (OpenAI closed self-serve "
    "fine-tuning to organisations that never fine-tuned, or had no fine-tuned-model traffic "
    "in 60 days), so SOP Bot has stopped asking it. The active model keeps drafting until "
    "OpenAI retires it. " + SWITCH_HOW + " If OpenAI enables fine-tuning for your "
    "organisation again, an admin's /sop-retrain (or `sop-bot retrain --force`) asks it once "
    "more."
)
# A 403 that names missing key scopes is a restricted API key, not the organisation's sunset.
KEY_SCOPE_WORDS = ("missing scopes", "insufficient permissions", "api.fine_tuning")


@dataclass(frozen=True)
class Window:
    """One row of the table: a provider's dates for a base-model family."""

    provider: str
    model: str
    last_training_day: date | None
    retired_on: date | None
    source: str


@dataclass(frozen=True)
class Availability:
    """Whether `backend` can start a fine-tuning job today, until when, and why not."""

    backend: str
    model: str
    can_train: bool
    until: date | None  # last day a job can be started (None: no announced end)
    serving_until: date | None  # first day the model no longer answers
    reason: str | None  # the sentence admins see when it cannot train
    source: str | None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["until"] = self.until.isoformat() if self.until else None
        data["serving_until"] = self.serving_until.isoformat() if self.serving_until else None
        return data


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> dict:
    """The parsed table (read once per path)."""
    with path.open("rb") as handle:
        return tomllib.load(handle)


def base_of(model_id: str) -> str:
    """The base model of a fine-tuned id ("ft:gpt-4o-mini-2024-07-18:org::x" -> the base)."""
    if model_id.startswith("ft:"):
        return model_id.split(":")[1]
    return model_id


def window(provider: str, model_id: str, table: dict | None = None) -> Window | None:
    """The row for this provider whose key is the longest prefix of the (base) model."""
    table = load_table() if table is None else table
    section = table.get(provider) or {}
    base = base_of(model_id)
    keys = [k for k in (section.get("models") or {}) if base.startswith(k)]
    if not keys:
        return None
    key = max(keys, key=len)
    row = section["models"][key]
    return Window(provider=provider, model=key, last_training_day=row.get("last_training_day"),
                  retired_on=row.get("retired_on"), source=str(section.get("source", "")))


def cutoff_sentence(backend: str, model: str, found: Window) -> str:
    """The refusal after the last training day, naming the alternatives and how to switch."""
    day = found.last_training_day.isoformat() if found.last_training_day else "?"
    name = "OpenAI" if backend == "openai" else "Azure OpenAI"
    return (f"{name} no longer starts fine-tuning jobs for {model} (last day {day}, per the "
            f"{found.source.split(',')[0]}), so retraining on {backend} is off. " + SWITCH_HOW)


def availability(backend: str, model: str, today: date, *, org_blocked: bool = False,
                 table: dict | None = None) -> Availability:
    """Can `backend` fine-tune `model` today? (`org_blocked`: OpenAI refused this org.)"""
    if backend == "none":
        return Availability(backend, model, False, None, None,
                            "Retraining is off (TRAINING_BACKEND=none, retrieval only).", None)
    provider = PROVIDER_OF.get(backend)
    found = window(provider, model, table) if provider else None
    if found is None:  # local LoRA, or a model the table does not list: no announced end
        return Availability(backend, model, True, None, None, None, None)
    until, retired = found.last_training_day, found.retired_on
    reason = None
    if backend == "openai" and org_blocked:
        reason = ORG_BLOCKED
    elif until is not None and today > until:
        reason = cutoff_sentence(backend, model, found)
    return Availability(backend, model, reason is None, until, retired, reason, found.source)


def is_retired(backend: str, model_id: str, today: date, table: dict | None = None) -> bool:
    """True from the day the provider stops serving this (fine-tuned) model."""
    provider = PROVIDER_OF.get(backend)
    found = window(provider, model_id, table) if provider else None
    return bool(found and found.retired_on and today >= found.retired_on)


def retired_sentence(model_id: str, backend: str, retired_on: date | None) -> str:
    day = retired_on.isoformat() if retired_on else "its retirement date"
    return (f"The active model {model_id} was retired by {backend} on {day}, so /sop now drafts "
            "with the base model and retrieval of approved SOPs. " + SWITCH_HOW)


def warning(backend: str, model: str, today: date, window_days: int,
            table: dict | None = None) -> str | None:
    """A countdown sentence when the last training day or retirement is within the window."""
    provider = PROVIDER_OF.get(backend)
    found = window(provider, model, table) if provider else None
    if found is None:
        return None
    name = "OpenAI" if backend == "openai" else "Azure OpenAI"
    parts = []
    if found.last_training_day and 0 <= (found.last_training_day - today).days <= window_days:
        days = (found.last_training_day - today).days
        parts.append(f"{name} starts its last fine-tuning jobs for {model} in {days} day(s), "
                     f"on {found.last_training_day.isoformat()}.")
    if found.retired_on and 0 < (found.retired_on - today).days <= window_days:
        days = (found.retired_on - today).days
        parts.append(f"{name} retires {model} and its fine-tunes in {days} day(s), on "
                     f"{found.retired_on.isoformat()}.")
    if not parts:
        return None
    return " ".join(parts) + " " + SWITCH_HOW


def configured_backends(settings) -> list[str]:  # noqa: ANN001 - Settings
    """TRAINING_BACKEND first, then every other backend whose settings are filled in."""
    names = [settings.training_backend]
    if settings.secret("openai_api_key") and not settings.openai_base_url:
        names.append("openai")
    if settings.azure_openai_endpoint:
        names.append("azure")
    if settings.local_base_model:
        names.append("local")
    return list(dict.fromkeys(n for n in names if n != "none")) or ["none"]


def model_for(settings, backend: str) -> str:  # noqa: ANN001 - Settings
    if backend == "local":
        return settings.local_base_model or ""
    return settings.sop_base_model


def org_blocked(session: Session) -> bool:
    """Has OpenAI told us this organisation may not fine-tune? (stored as a claim row)"""
    query = select(ProcessedEvent.key).where(ProcessedEvent.key == ORG_BLOCKED_KEY)
    return session.exec(query).first() is not None


def report(services) -> list[dict]:  # noqa: ANN001 - Services
    """Per configured backend: can it train, until when, why not (for status and Slack)."""
    settings = services.settings
    today = services.clock().date()
    with services.session() as session:
        blocked = org_blocked(session)
    return [availability(name, model_for(settings, name), today, org_blocked=blocked).to_dict()
            for name in configured_backends(settings)]


def is_key_scope_refusal(message: str) -> bool:
    """True when OpenAI's 403 says the API key lacks a permission (fixable by the admin)."""
    lowered = message.lower()
    return any(word in lowered for word in KEY_SCOPE_WORDS)


def clear_org_blocked(session: Session, *, actor: str) -> bool:
    """Forget OpenAI's refusal (an admin asked to try again), audited; True if it was set."""
    from sop_pipeline import audit

    if not org_blocked(session):
        return False
    session.execute(delete(ProcessedEvent).where(col(ProcessedEvent.key) == ORG_BLOCKED_KEY))
    audit.record(session, actor=actor, action="sunset.org_block_cleared", subject="openai",
                 reason="a forced retrain asks OpenAI once more")
    return True


def claim_org_blocked(session: Session) -> bool:
    """Remember OpenAI's refusal (in the caller's transaction); True the first time."""
    from sop_pipeline.claims import claim

    return claim(session, ORG_BLOCKED_KEY)


def stop_key(backend: str, reason: str) -> str:
    """The once-only key of the "retraining stopped for good" notice."""
    return f"sunset:{backend}:{reason}"


def notify_once(services, key: str, kind: str, text: str) -> bool:  # noqa: ANN001 - Services
    """Tell the admin channel `text` the first time any instance meets `key`."""
    from sqlalchemy.exc import IntegrityError

    from sop_pipeline.claims import claim
    from sop_pipeline.notifications import Notification

    with services.session() as session:
        try:
            won = claim(session, key)
            session.commit()
        except IntegrityError:  # pragma: no cover - on_conflict covers it
            session.rollback()
            won = False
    if not won:
        return False
    try:
        services.notifier.notify(Notification(kind=kind, text=text))
    except Exception:  # noqa: BLE001 - a broken notifier must never break training
        log.exception("sunset notification failed")
    return True
