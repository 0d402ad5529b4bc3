"""Waiting on another process's state: polling a condition until it holds, never a fixed
sleep standing in for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``cond()``'s first true value; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling other processes
    return got
