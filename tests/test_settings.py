"""Settings: one object, documented in .env.example, failing loudly and clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sop_pipeline.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _documented_variables() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    documented = set(_documented_variables())
    fields = {name.upper() for name in Settings.model_fields}
    assert documented - fields == set(), "documented in .env.example but not a setting"
    assert fields - documented == set(), "a setting missing from .env.example"


def test_every_variable_in_env_example_has_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z0-9_]+=", line):
            assert lines[index - 1].startswith("#"), f"{line.split('=')[0]} has no comment"


def test_env_example_loads_as_valid_settings(tmp_path: Path) -> None:
    settings = load_settings(env_file=ROOT / ".env.example")
    assert settings.sop_base_model == "gpt-4o-mini-2024-07-18"
    assert settings.database_url == "sqlite:///sop_bot.db"
    assert settings.sop_approval_emoji == ["white_check_mark"]


def test_defaults_match_the_brief() -> None:
    settings = load_settings(env_file=None)
    assert settings.sop_system_prompt == (
        "You are a Quality analyst who writes Standard Operating Procedures (SOPs)."
    )
    from sop_pipeline.training.sunset import window

    assert window("openai", settings.sop_base_model).last_training_day.isoformat() == "2027-01-06"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RETRAIN_CHECK_MINUTES", "soon"),
        ("DATABASE_URL", "mysql://db"),
        ("FINE_TUNE_EPOCHS", "lots"),
        ("SOP_REDACT_PATTERNS", "([unclosed"),
        ("VALIDATION_SHARE", "0.9"),
        ("PORT", "70000"),
    ],
)
def test_wrong_value_fails_with_a_sentence_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings(env_file=None)
    message = str(excinfo.value)
    assert variable in message
    assert message.endswith(".")
    assert "Traceback" not in message


def test_comma_lists_and_postgres_urls_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOP_APPROVERS", "U1, U2,S123")
    monkeypatch.setenv("SOP_APPROVAL_EMOJI", ":white_check_mark:,heavy_check_mark")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@localhost/db")
    settings = load_settings(env_file=None)
    assert settings.sop_approvers == ["U1", "U2", "S123"]
    assert settings.sop_approval_emoji == ["white_check_mark", "heavy_check_mark"]
    assert settings.database_url == "postgresql+psycopg://u@localhost/db"


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret")
    settings = load_settings(env_file=None)
    assert "very-secret" not in repr(settings)
    assert settings.secret("openai_api_key") == "sk-very-secret"


def test_a_json_list_allows_regexes_with_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOP_REDACT_PATTERNS", '["email", "LOT-\\\\d{3,4}"]')
    assert load_settings(env_file=None).sop_redact_patterns == ["email", "LOT-\\d{3,4}"]


def test_an_empty_value_means_unset_for_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.env.example` as shipped writes `NAME=` for optional settings: each is the default,
    never an empty path ("." for SOP_TEMPLATE) or an empty list item."""
    for name in _documented_variables():
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / ".env"
    env.write_text("\n".join(f"{name}=" for name in _documented_variables()) + "\n")
    settings = load_settings(env_file=env)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.model_dump() == defaults.model_dump()
    assert settings.sop_template is None and settings.eval_prompts_file is None
    monkeypatch.setenv("SOP_TEMPLATE", "  ")
    monkeypatch.setenv("FINE_TUNE_SEED", "auto")
    settings = load_settings(env_file=env)
    assert settings.sop_template is None and settings.fine_tune_seed is None
