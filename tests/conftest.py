"""Shared fixtures: a real database per test (SQLite file, or PostgreSQL when asked), settings
pointing at loopback fakes, and the service container.

`SOP_TEST_DATABASE=postgres` runs the whole suite on the local PostgreSQL (127.0.0.1:5432),
one fresh database per test; the default is a fresh SQLite file per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sop_pipeline.notifications import RecordingNotifier
from sop_pipeline.services import Services, build_services
from sop_pipeline.settings import Settings, load_settings

PG_ADMIN_URL = os.environ.get(
    "SOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DATA_DIR = Path(__file__).parent / "data"


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason to show in the skip message."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__})"


@pytest.fixture(scope="session")
def pg_reason() -> str | None:
    return _pg_available()


def _fresh_pg_database() -> tuple[str, callable]:
    name = f"sopbot_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture
def pg_url(pg_reason: str | None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (for multi-instance tests); skipped if none runs."""
    if pg_reason:
        pytest.skip(pg_reason)
    url, drop = _fresh_pg_database()
    yield url
    drop()


@pytest.fixture
def database_url(tmp_path: Path, pg_reason: str | None) -> Iterator[str]:
    """The database the test runs on: SQLite file by default, PostgreSQL on request."""
    if os.environ.get("SOP_TEST_DATABASE", "sqlite") == "postgres":
        if pg_reason:
            pytest.skip(pg_reason)
        url, drop = _fresh_pg_database()
        yield url
        drop()
    else:
        yield f"sqlite:///{tmp_path / 'sop_bot.db'}"


@pytest.fixture
def fake_openai() -> Iterator[object]:
    """A stateful fake OpenAI API on 127.0.0.1; every request and response it saw must match
    the official OpenAPI document (tests that send bad requests on purpose switch this off with
    `fake.check_contract_on_exit = False`)."""
    from tests.fakes.openai_fake import FakeOpenAI

    with FakeOpenAI() as fake:
        yield fake
        if fake.check_contract_on_exit:
            fake.assert_contract_ok()


@pytest.fixture
def fake_slack() -> Iterator[object]:
    """A fake Slack Web API on 127.0.0.1 that records every call; the calls must match the
    official Slack API description."""
    from tests.fakes.slack_fake import FakeSlack

    with FakeSlack() as fake:
        yield fake
    fake.assert_contract_ok()


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: never read the developer's .env, never reach the internet."""
    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "openai_api_key": "sk-test-key",
        "openai_timeout_seconds": 5,
        "slack_api_url": "http://127.0.0.1:9/api/",
    }
    values.update(overrides)
    return load_settings(env_file=None, **values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path, fake_openai) -> Settings:  # noqa: ANN001
    return make_settings(database_url, tmp_path / "data", openai_base_url=fake_openai.base_url)


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def services(settings: Settings, notifier: RecordingNotifier) -> Iterator[Services]:
    svc = build_services(settings, notifier=notifier)
    yield svc
    svc.engine.dispose()


@pytest.fixture
def training_window_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every provider still trains and serves every model, whatever today's date: for tests
    that start fine-tuning jobs on the real clock (in-process CLI, Slack commands). The
    sunset's own tests (tests/test_sunset.py) use the real table and fixed days."""
    from datetime import timedelta

    from sop_pipeline.models import utcnow
    from sop_pipeline.training import sunset

    real = sunset.load_table()
    later = utcnow().date() + timedelta(days=400)

    def open_table(path: Path = sunset.TABLE_PATH) -> dict:
        table = {name: dict(section) for name, section in real.items()}
        for section in table.values():
            models = section.get("models") or {}
            section["models"] = {key: {**row, "last_training_day": later, "retired_on": later}
                                 for key, row in models.items()}
        return table

    monkeypatch.setattr(sunset, "load_table", open_table)


@pytest.fixture(autouse=True, scope="session")
def _cli_consoles_follow_columns() -> Iterator[None]:
    """Rich fixes a console's width for good when COLUMNS is set as it is built. The CLI's
    consoles are built once per process, so they are built here without it: each in-process
    `sop-bot` run then follows its own test's COLUMNS, whatever ran before."""
    saved = os.environ.pop("COLUMNS", None)
    import sop_pipeline.cli.common  # noqa: F401 - builds the consoles

    if saved is not None:
        os.environ["COLUMNS"] = saved
    yield


@pytest.fixture
def sop_bot_cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """`make(columns)` gives `sop-bot` run in-process on the test's database, as QA lead
    "qa.lead" in `tmp_path`: call it with the command's words; it returns the Click result."""
    from typer.testing import CliRunner

    from bot.cli import build_app

    def make(columns: int = 60):  # noqa: ANN202
        for key, value in {
            "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
            "USER": "qa.lead", "COLUMNS": str(columns), "LOG_LEVEL": "WARNING",
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        runner, app = CliRunner(), build_app()
        return lambda *args: runner.invoke(app, [str(a) for a in args])

    return make


@pytest.fixture
def factory(database_url, tmp_path, fake_openai, fake_slack, notifier):  # noqa: ANN001, ANN201
    """In-process bots on the test's database and fakes: `factory.start(**settings)`."""
    from tests.fakes.slack_fake import BotFactory

    made = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    yield made
    made.close()
