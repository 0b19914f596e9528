"""The fake OpenAI server for `benchmarks/load.py`, in a process of its own.

In production the provider is another machine: streaming 50 answers costs the bot's host
nothing. Served from the benchmark's own process, the fake's work (building and sending
every SSE event of 50 answers at once) shared one interpreter lock with the fake Slack that
records when each draft's text arrives, and the figures measured the fakes as much as the
bot. Here it has its own interpreter; the bot and the fake Slack see it over loopback.

    python benchmarks/fake_provider.py LATENCY_SECONDS

prints the base URL on its first line and serves until its standard input closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from tests.fakes.openai_fake import FakeOpenAI

    latency = float(argv[0]) if argv else 0.0
    with FakeOpenAI(contract=False) as fake:
        if latency > 0:  # every chat completion is held this long, then streamed
            fake.inject("POST", "/chat/completions", kind="timeout", hold=latency, times=None)
        print(fake.base_url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
