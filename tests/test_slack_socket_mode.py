"""Socket Mode: with SLACK_APP_TOKEN set, `sop-bot run` opens a Socket Mode connection (no
public URL) and serves the same commands over it as over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot.commands import USAGE
from tests.fakes.socket_mode import FakeSocketMode
from tests.support.bot_process import bot_env, free_port
from tests.support.waiting import wait_until

CHANNEL = "CSOP00001"
USER = "UREQ00001"


def _command(envelope_id: str, text: str) -> dict:
    return {
        "envelope_id": envelope_id, "type": "slash_commands", "accepts_response_payload": True,
        "payload": {
            "token": "legacy-verification-token", "team_id": "T00000001", "team_domain": "fake",
            "channel_id": CHANNEL, "channel_name": "qa", "user_id": USER, "user_name": "qa",
            "command": "/sop", "text": text, "api_app_id": "A00000001",
            "response_url": "http://127.0.0.1:9/response", "trigger_id": "1.2.3",
        },
    }


def test_socket_mode_acks_commands_and_drafts_in_the_channel(
    database_url, tmp_path: Path, fake_openai, fake_slack  # noqa: ANN001
) -> None:
    with FakeSocketMode() as socket_mode:
        fake_slack.socket_mode_url = socket_mode.url
        env = bot_env(database_url=database_url, data_dir=tmp_path / "data",
                      slack_url=fake_slack.base_url, bot_token=fake_slack.bot_token,
                      openai_url=fake_openai.base_url, port=free_port(),
                      slack_app_token="xapp-1-test")
        env.pop("SLACK_SIGNING_SECRET")  # Socket Mode needs no signing secret
        workdir = tmp_path / "bot"
        workdir.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "bot"], cwd=workdir, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert socket_mode.connected.wait(30), "the bot never opened a Socket Mode link"
            assert fake_slack.calls_to("apps.connections.open")

            socket_mode.send(_command("env-1", ""))
            ack = socket_mode.next_message()
            assert ack["envelope_id"] == "env-1"
            assert ack["payload"]["text"] == USAGE

            socket_mode.send(_command("env-2", "Write an SOP for cleaning of the mixer"))
            assert socket_mode.next_message()["envelope_id"] == "env-2"
            wait_until(lambda: any(
                "SOP draft requested by" in call.params.get("text", "")
                for call in fake_slack.calls_to("chat.postMessage")),
                timeout=20, what="the parent message of the draft")
            # ... and the draft streamed into its thread and finished, before the bot stops
            wait_until(lambda: fake_slack.calls_to("chat.stopStream"), timeout=30,
                       what="the finished draft")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_a_silently_cut_connection_is_replaced_and_a_new_command_acked_within_15_s(
    database_url, tmp_path: Path, fake_openai, fake_slack  # noqa: ANN001
) -> None:
    """No close frame, no pongs (a NAT timeout): the bot notices by its pings, opens a new
    connection, logs one line with the reason, and acknowledges the next /sop on it. Its
    probes say ready while connected."""
    import time
    import urllib.request

    with FakeSocketMode() as socket_mode:
        fake_slack.socket_mode_url = socket_mode.url
        probe_port = free_port()
        env = bot_env(database_url=database_url, data_dir=tmp_path / "data",
                      slack_url=fake_slack.base_url, bot_token=fake_slack.bot_token,
                      openai_url=fake_openai.base_url, port=free_port(),
                      slack_app_token="xapp-1-test", probe_port=str(probe_port))
        env.pop("SLACK_SIGNING_SECRET")
        workdir = tmp_path / "bot"
        workdir.mkdir()
        log_path = workdir / "bot.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bot"], cwd=workdir, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            assert socket_mode.connected.wait(30), "the bot never opened a Socket Mode link"
            wait_until(lambda: "SOP Bot listening" in log_path.read_text(), timeout=20,
                       what="the listening line")
            for path, text in (("/healthz", "ok"), ("/readyz", "ready")):
                with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}{path}",
                                            timeout=5) as response:
                    assert (response.status, response.read().decode()) == (200, text)

            socket_mode.cut()
            cut_at = time.monotonic()
            assert socket_mode.wait_connections(2, timeout=15), (
                "no new connection within 15 s:\n" + log_path.read_text())
            socket_mode.send(_command("env-3", ""))
            ack = socket_mode.next_message(timeout=15 - (time.monotonic() - cut_at))
            assert ack["envelope_id"] == "env-3" and ack["payload"]["text"] == USAGE
            assert time.monotonic() - cut_at < 15
            reconnects = [line for line in log_path.read_text().splitlines()
                          if "Socket Mode reconnected" in line]
            assert len(reconnects) == 1 and "reason: no pong from Slack" in reconnects[0], (
                log_path.read_text())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
