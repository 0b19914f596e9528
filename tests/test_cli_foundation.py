"""The `sop-bot` commands of the foundation: import, validate, dataset, examples, audit."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import build_app
from tests.conftest import DATA_DIR

SOPS = DATA_DIR / "sops"
BROKEN = DATA_DIR / "sops_broken"
JSONL = DATA_DIR / "jsonl"
N_SOPS = len([p for p in SOPS.iterdir() if p.suffix in (".txt", ".md", ".docx")])


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Environment of a user running the CLI in an empty folder (so no stray .env is read)."""
    env = {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "USER": "qa.lead",
        "COLUMNS": "200",
        "LOG_LEVEL": "WARNING",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return env


@pytest.fixture
def sop_bot(cli_env: dict):  # noqa: ANN201
    """Run `sop-bot ARGS...` in-process; returns the click Result."""
    runner = CliRunner()
    app = build_app()

    def run(*args: str):  # noqa: ANN202
        return runner.invoke(app, [str(a) for a in args])

    return run


def test_every_command_has_help(sop_bot) -> None:  # noqa: ANN001
    for args in (
        ["import"], ["validate"], ["dataset", "export"], ["dataset", "check"],
        ["examples", "list"], ["examples", "show"], ["examples", "retract"],
        ["examples", "renumbered"], ["audit", "export"],
    ):
        result = sop_bot(*args, "--help")
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output
    assert "Exit codes" in sop_bot("import", "--help").output


def test_validate_passes_the_real_world_sops(sop_bot) -> None:  # noqa: ANN001
    result = sop_bot("validate", *sorted(SOPS.iterdir()))
    assert result.exit_code == 0, result.output
    assert f"{N_SOPS} of {N_SOPS} file(s) compliant." in result.output


def test_validate_reports_each_broken_sop_as_json(sop_bot) -> None:  # noqa: ANN001
    result = sop_bot("validate", BROKEN, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert len(report) == len(list(BROKEN.iterdir()))
    for entry in report:
        # An undefined abbreviation is a warning by default since issue #13.
        assert entry["compliant"] is (Path(entry["file"]).stem == "undefined_abbreviation")
        assert Path(entry["file"]).stem in {f["code"] for f in entry["findings"]}


def test_import_export_check_retract_and_audit(sop_bot, tmp_path: Path) -> None:  # noqa: ANN001
    first = sop_bot("import", SOPS)
    assert first.exit_code == 0, first.output
    assert f"{N_SOPS} file(s): {N_SOPS} imported, 0 already present" in first.output
    again = sop_bot("import", SOPS)
    assert again.exit_code == 0
    assert f"0 imported, {N_SOPS} already present" in again.output

    out, val = tmp_path / "export" / "train.jsonl", tmp_path / "export" / "val.jsonl"
    exported = sop_bot("dataset", "export", "--out", out, "--validation-out", val)
    assert exported.exit_code == 0, exported.output
    assert "examples (" in exported.output and "estimated cost $" in exported.output
    assert "No validation file written" in exported.output  # fewer than 20 examples
    checked = sop_bot("dataset", "check", out)
    assert checked.exit_code == 0, checked.output
    assert "No errors found." in checked.output and "Estimate:" in checked.output

    listed = sop_bot("examples", "list")
    assert listed.exit_code == 0
    assert "Calibration of pH Meter" in listed.output
    assert f"{N_SOPS} approved, 0 retracted" in listed.output
    shown = sop_bot("examples", "show", "1")
    assert shown.exit_code == 0 and "1.0 Objective:" in shown.output
    assert "Prompt: Write an SOP for" in shown.output

    retracted = sop_bot("examples", "retract", "1", "--reason", "Superseded by rev 2")
    assert retracted.exit_code == 0, retracted.output
    assert "Example #1 retracted" in retracted.output
    assert "already retracted" in sop_bot("examples", "retract", "1", "--reason", "x").output
    assert "retracted" in sop_bot("examples", "list", "--status", "retracted").output

    csv_path = tmp_path / "audit.csv"
    exported_audit = sop_bot("audit", "export", "--out", csv_path)
    assert exported_audit.exit_code == 0
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [r["action"] for r in rows].count("approve") == N_SOPS
    [retract_row] = [r for r in rows if r["action"] == "retract"]
    assert retract_row["actor"] == "qa.lead" and retract_row["reason"] == "Superseded by rev 2"
    assert rows[0]["at"].endswith("+00:00")


def test_import_of_only_broken_files_fails_and_lists_findings(sop_bot) -> None:  # noqa: ANN001
    # An undefined abbreviation is only a warning since issue #13, so that file is left out.
    broken = [p for p in sorted(BROKEN.iterdir()) if p.stem != "undefined_abbreviation"]
    result = sop_bot("import", *broken)
    assert result.exit_code == 1
    # One triage line per file with its first finding (issue #13).
    assert f"{BROKEN / 'missing_title.txt'}: not compliant: The SOP has no title." in (
        result.output
    )
    assert f"{BROKEN / 'duplicate_section.txt'}: not compliant: Section 2.0 Scope appears 2 " \
        "times" in result.output
    assert f"{len(broken)} file(s): 0 imported" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "no/such/folder"], "File not found: no/such/folder."),
        (["validate", "missing.txt"], "File not found: missing.txt."),
        (["dataset", "check", "missing.jsonl"], "File not found: missing.jsonl."),
        (["examples", "show", "999"], "There is no example #999"),
        (["examples", "retract", "999", "--reason", "x"], "There is no example #999"),
        (["examples", "list", "--status", "deleted"], "Unknown status 'deleted'"),
        (["dataset", "export", "--out", "x.jsonl"], "Only 0 approved example(s)"),
        (["dataset", "export", "--out", "."], ". is a folder"),
        (["audit", "export", "--out", "."], ". is a folder"),
    ],
)
def test_errors_are_sentences_with_non_zero_exit(sop_bot, args: list, message: str) -> None:  # noqa: ANN001
    result = sop_bot(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_dataset_check_reports_cookbook_errors(sop_bot, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SOP_MAX_EXAMPLE_TOKENS", "256")
    table = sop_bot("dataset", "check", JSONL / "cookbook_errors.jsonl")
    assert table.exit_code == 1
    for key in ("data_type", "missing_messages_list", "message_missing_key",
                "message_unrecognized_key", "unrecognized_role", "missing_content",
                "example_missing_assistant_message", "invalid_json", "duplicate_example",
                "over_token_limit"):
        assert key in table.output
    as_json = sop_bot("dataset", "check", JSONL / "cookbook_errors.jsonl", "--json")
    data = json.loads(as_json.stdout)
    assert data["ok"] is False and data["error_lines"]["invalid_json"] == [9]


@pytest.mark.slow
def test_real_sop_bot_process_imports_and_explains_errors(cli_env: dict, tmp_path: Path) -> None:
    executable = Path(sys.executable).with_name("sop-bot")
    env = {**os.environ, **cli_env}
    imported = subprocess.run(
        [str(executable), "import", str(SOPS)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    assert f"{N_SOPS} imported" in imported.stdout
    failed = subprocess.run(
        [str(executable), "examples", "show", "4242"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode == 2
    assert "There is no example #4242" in failed.stderr and "Traceback" not in failed.stderr
