"""Tier 1: an unmount waits for a mount daemon for as long as it works, and kills it only
once it stayed idle (``proc.wait_gone_unless_idle``): the daemon sends what it held back
to a slow cluster for as long as that delivers, and a fixed deadline killed it midway."""

from __future__ import annotations

import subprocess
import sys
import time

from bftfs import proc

#: A process that keeps a core busy for ``BUSY`` seconds, then exits by itself.
BUSY = 3.0
WORKS = f"""
import time
end = time.monotonic() + {BUSY}
while time.monotonic() < end:
    pass
"""
#: Seconds without CPU after which the wait kills the process.
IDLE = 1.5


def test_a_working_process_is_waited_for_past_the_idle_limit() -> None:
    child = subprocess.Popen([sys.executable, "-c", WORKS])
    try:
        began = time.monotonic()
        assert proc.wait_gone_unless_idle(child.pid, IDLE) is False  # exited by itself
        assert time.monotonic() - began > IDLE  # it outlived the limit, working
    finally:
        child.kill()
        child.wait()


def test_an_idle_process_is_killed_after_the_idle_limit() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        began = time.monotonic()
        assert proc.wait_gone_unless_idle(child.pid, IDLE) is True
        assert IDLE <= time.monotonic() - began < 60  # not the 600 s it would sleep
        assert not proc.process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
