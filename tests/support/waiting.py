"""Waiting for another process or server thread to reach a state: poll a predicate with a
deadline (never a fixed sleep), and fail with a description of what never happened."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.02,
               what: str = "the condition") -> T:
    """The first truthy value of `predicate()`, or AssertionError after `timeout` seconds."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(interval)
