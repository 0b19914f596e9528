"""The README is a test: its Quick start, run as written from a fresh folder.

`.env` is `.env.example` copied, with only the values the Quick start names filled in (Slack
and OpenAI pointing at the loopback fakes); nothing else comes from the environment. Then
`sop-bot run` must reach "SOP Bot listening" in Socket Mode and in HTTP mode (and through the
Procfile's command) and draft on `/sop`; `sop-bot generate` drafts; `sop-bot validate` works.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.slack_fake import SIGNING_SECRET, SlackTestClient
from tests.fakes.socket_mode import FakeSocketMode
from tests.support.bot_process import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SOP_BOT = Path(sys.executable).parent / "sop-bot"
CHANNEL = "CSOP00001"
USER = "UREQ00001"
REQUEST = "Write an SOP for cleaning of the mixer"
# "SOP Bot listening" is the line README promises; Socket Mode said "starting in Socket Mode"
# until both modes print the same line.
READY = ("SOP Bot listening", "SOP Bot starting in Socket Mode")


def quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def named_in_quick_start() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", quick_start()))


def fresh_copy(tmp_path: Path, values: dict[str, str]) -> Path:
    """A new folder with `.env` = `.env.example` plus `values` (each named in Quick start)."""
    unnamed = set(values) - named_in_quick_start()
    assert not unnamed, f"the test fills {unnamed}, which README's Quick start never names"
    folder = tmp_path / "fresh"
    folder.mkdir()
    lines = []
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    assert not values, f"not in .env.example: {values}"
    (folder / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def clean_env(**extra: str) -> dict[str, str]:
    """Only what a shell has: no SLACK_/OPENAI_/SOP_ variables from the test run."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                "PATH": f"{SOP_BOT.parent}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra)
    return env


class Running:
    """A `sop-bot run` process whose output is collected line by line."""

    def __init__(self, command: list[str], folder: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        # a session of its own: stopping signals the whole group, as a platform does, so the
        # bot under the Procfile's shell is stopped too (not left running after the test)
        self.proc = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError("sop-bot run exited:\n" + "".join(self.lines))
            return any(any(mark in line for mark in READY) for line in self.lines)

        wait_until(ready, timeout=60, what="'SOP Bot listening' in the log")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._reader.join(5)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for process in started:
        process.stop()


def _drafted(fake_slack) -> bool:  # noqa: ANN001
    """The /sop parent has its finished draft (house format: "Title: …") in its thread."""
    parents = [m for m in fake_slack.top_level(CHANNEL) if "requested by" in m["text"]]
    return bool(parents) and any(
        "Title: " in str(reply.get("blocks")) for reply in fake_slack.replies(
            CHANNEL, parents[-1]["ts"]))


def _socket_command(text: str) -> dict:
    return {
        "envelope_id": "env-readme", "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": {
            "token": "legacy", "team_id": "T00000001", "team_domain": "fake",
            "channel_id": CHANNEL, "channel_name": "qa", "user_id": USER, "user_name": "qa",
            "command": "/sop", "text": text, "api_app_id": "A00000001",
            "response_url": "http://127.0.0.1:9/response", "trigger_id": "1.2.3",
        },
    }


def test_env_example_copied_as_is_loads_and_empty_values_are_defaults(tmp_path: Path) -> None:
    from sop_pipeline.settings import load_settings

    folder = fresh_copy(tmp_path, {})
    settings = load_settings(env_file=folder / ".env")
    assert settings.sop_template is None  # `SOP_TEMPLATE=` is the built-in format, not "."


def test_quick_start_socket_mode(tmp_path: Path, fake_slack, fake_openai, running) -> None:  # noqa: ANN001
    with FakeSocketMode() as socket_mode:
        fake_slack.socket_mode_url = socket_mode.url
        folder = fresh_copy(tmp_path, {
            "SLACK_BOT_TOKEN": fake_slack.bot_token, "SLACK_APP_TOKEN": "xapp-1-readme",
            "OPENAI_API_KEY": "sk-readme", "SLACK_API_URL": fake_slack.base_url,
            "OPENAI_BASE_URL": fake_openai.base_url})
        bot = Running([str(SOP_BOT), "run"], folder, clean_env())
        running.append(bot)
        bot.wait_ready()
        assert socket_mode.connected.wait(30)
        socket_mode.send(_socket_command(REQUEST))
        assert socket_mode.next_message()["envelope_id"] == "env-readme"
        wait_until(lambda: _drafted(fake_slack), timeout=60, what="the draft in the thread")
    assert (folder / "sop_bot.db").exists()


@pytest.mark.parametrize("how", ["sop-bot run", "Procfile"])
def test_quick_start_http_mode(tmp_path: Path, fake_slack, fake_openai, running,  # noqa: ANN001
                               how: str) -> None:
    port = free_port()
    folder = fresh_copy(tmp_path, {
        "SLACK_BOT_TOKEN": fake_slack.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "OPENAI_API_KEY": "sk-readme", "SLACK_API_URL": fake_slack.base_url,
        "OPENAI_BASE_URL": fake_openai.base_url,
        **({"PORT": str(port)} if how == "sop-bot run" else {})})
    if how == "Procfile":  # a platform runs the web process with $PORT in the environment
        [web] = [line.split(":", 1)[1].strip() for line in
                 (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")]
        # as Heroku-style platforms do: bash runs the line (and execs a single command)
        bot = Running(["/bin/bash", "-c", web], folder, clean_env(PORT=str(port)))
    else:
        bot = Running([str(SOP_BOT), "run"], folder, clean_env())
    running.append(bot)
    bot.wait_ready()
    slack = SlackTestClient(f"http://127.0.0.1:{port}/slack/events",
                            response_url=fake_slack.response_url("readme"))
    assert slack.command("/sop", REQUEST, user=USER, channel=CHANNEL).status == 200
    wait_until(lambda: _drafted(fake_slack), timeout=60, what="the draft in the thread")


def test_quick_start_generate_and_validate(tmp_path: Path, fake_openai) -> None:  # noqa: ANN001
    folder = fresh_copy(tmp_path, {"OPENAI_API_KEY": "sk-readme",
                                   "OPENAI_BASE_URL": fake_openai.base_url})
    generated = subprocess.run([str(SOP_BOT), "generate", REQUEST], cwd=folder,
                               env=clean_env(), capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Title:" in generated.stdout and "5.0 Procedure" in generated.stdout

    sop = folder / "my-sop.txt"
    shutil.copy(ROOT / "tests" / "data" / "sops" / "01_tablet_compression_cleaning.txt", sop)
    validated = subprocess.run([str(SOP_BOT), "validate", sop.name], cwd=folder,
                               env=clean_env(), capture_output=True, text=True, timeout=120)
    assert validated.returncode == 0, validated.stdout + validated.stderr
