"""A real bot process (`python -m bot`, i.e. `sop-bot run`, with HOST=127.0.0.1)
in HTTP mode, configured only through its environment, that tests can SIGKILL and restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.fakes.slack_fake import SIGNING_SECRET, SlackTestClient

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bot_env(*, database_url: str, data_dir: Path, slack_url: str, bot_token: str,
            openai_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment `sop-bot run` needs to talk to the fakes (nothing from the caller's
    Slack/OpenAI settings leaks in)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "OPENAI_", "SOP_", "AZURE_", "DATABASE_URL"))}
    env.update({
        "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url, "DATA_DIR": str(data_dir),
        "SLACK_API_URL": slack_url, "SLACK_BOT_TOKEN": bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET, "OPENAI_API_KEY": "sk-test-key",
        "OPENAI_BASE_URL": openai_url, "HOST": "127.0.0.1", "PORT": str(port),
        "SCHEDULER_ENABLED": "false",
        "LOG_LEVEL": "INFO",
    })
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


class BotProcess:
    """Start, health-check, SIGKILL and restart the bot; its output goes to `log_path`."""

    def __init__(self, env: dict[str, str], workdir: Path, *, name: str = "bot") -> None:
        self.env = env
        self.workdir = workdir
        self.port = int(env["PORT"])
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.command = [sys.executable, "-m", "bot"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, response_url: str | None = None) -> SlackTestClient:
        return SlackTestClient(self.url, response_url=response_url)

    def start(self, timeout: float = 30.0) -> BotProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n--- start #{self.starts}\n".encode())
        log.flush()
        # cwd is a scratch folder so the developer's .env is never read
        self.proc = subprocess.Popen(
            self.command, cwd=self.workdir,
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"the bot exited with {code}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                            timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)  # polling a process we do not control; never a fixed wait
        raise AssertionError(f"the bot did not answer within {timeout}s:\n{self.output()}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown hooks, no finally blocks, like a crashed container."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill9()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak) of the bot process, in KiB, from /proc."""
        values: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        return values
