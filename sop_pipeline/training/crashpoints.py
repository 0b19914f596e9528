"""TEST-ONLY fault injection: die with SIGKILL at a named point of the run lifecycle.

The crash-recovery tests run a real `sop-bot` process with `SOP_BOT_CRASH_AT=<point>` and
restart it afterwards, proving that a run resumes from its stored state and never creates a
second provider job. Points are the run states (called right after the transition to that
state is committed) plus "train_uploaded" and "job_created" (right after the provider call
returned, before its result is stored: the worst moment to die).

In production the variable is unset and `crash_point` is a dictionary lookup that does nothing.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "SOP_BOT_CRASH_AT"


def crash_point(name: str) -> None:
    """Kill this process (no cleanup, like `kill -9`) when SOP_BOT_CRASH_AT names this point."""
    if os.environ.get(ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
