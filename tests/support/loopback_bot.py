"""Run the real bot (`bot.__main__.main`, exactly what `sop-bot run` runs) bound to 127.0.0.1.

`bot.__main__` binds 0.0.0.0 (what a platform like Heroku needs); tests and the benchmark must
bind only loopback, so this wrapper pins the host and changes nothing else.

    python -m tests.support.loopback_bot      # env as for `sop-bot run`, PORT required
"""

from __future__ import annotations

import sys


def main() -> int:
    from bot import http_server

    original = http_server.BotHTTPServer.__init__

    def loopback_init(self, app, *, host: str = "127.0.0.1", port: int = 0,  # noqa: ANN001
                      path: str = http_server.EVENTS_PATH) -> None:
        original(self, app, host="127.0.0.1", port=port, path=path)

    http_server.BotHTTPServer.__init__ = loopback_init  # type: ignore[method-assign]
    from bot.__main__ import main as bot_main

    return bot_main()


if __name__ == "__main__":
    sys.exit(main())
