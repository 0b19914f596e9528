"""Shared helpers for the training tests (no tests here): approved examples, a fixed clock,
a recording sleep, and services pointed at the fake OpenAI server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sop_pipeline.notifications import RecordingNotifier
from sop_pipeline.services import Services, build_services
from sop_pipeline.settings import Settings
from tests.conftest import make_settings

SOPS_DIR = Path(__file__).parent / "data" / "sops"
TODAY = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = TODAY) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


class Sleeps:
    """An injected `sleep` that records the requested delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def sop_texts(n: int) -> list[str]:
    """`n` distinct compliant SOPs: the fixtures, then fixture variants with a numbered title."""
    base = [p.read_text(encoding="utf-8") for p in sorted(SOPS_DIR.iterdir()) if p.is_file()]
    texts = []
    for i in range(n):
        text = base[i % len(base)]
        if i >= len(base):
            first, rest = text.split("\n", 1)
            text = f"{first.rstrip()} - Line {i // len(base) + 1}\n{rest}"
        texts.append(text)
    return texts


def approve(services: Services, n: int, *, start: int = 0) -> list[int]:
    """Approve `n` SOPs as training examples (through the real approval path); their ids."""
    from sop_pipeline.examples import approve_sop

    ids = []
    with services.session() as session:
        for text in sop_texts(start + n)[start:]:
            result = approve_sop(session, services.template, services.settings, text=text,
                                 approver="U_QA", source="import")
            assert result.stored, result.message
            ids.append(result.example.id)
        session.commit()
    return ids


def training_settings(database_url: str, data_dir: Path, fake, **overrides: object) -> Settings:
    """Settings for training tests: the fake, no eval hold-out, a fixed schedule."""
    values: dict[str, object] = {
        "openai_base_url": fake.base_url,
        "eval_share": 0,
        "retrain_min_new_examples": 10,
        "fine_tune_epochs": "3",
        "fine_tune_batch_size": "auto",
        "fine_tune_learning_rate_multiplier": "0.5",
        "fine_tune_seed": 1234,
        "fine_tune_suffix": "Acme QA",
    }
    values.update(overrides)
    return make_settings(database_url, data_dir, **values)


def make_services(settings: Settings, clock: Clock | None = None) -> Services:
    return build_services(settings, notifier=RecordingNotifier(), clock=clock or Clock())
