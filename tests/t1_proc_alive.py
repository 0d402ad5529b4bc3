"""Tier 1: ``proc.process_alive`` counts a process as gone only once all its threads are.

A SIGKILLed multi-threaded process can show its leader as a zombie while another thread is
still exiting; until that thread has, the process holds its files, and a FUSE daemon's
connection still answers (t4_operators' dead-mount test failed so, once the mount daemon
kept an idle worker thread).  The child here leaves exactly that state on purpose: its
main thread ends with ``pthread_exit`` while a second thread sleeps.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from bftfs import proc

CHILD = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]


def test_a_zombie_leader_with_a_live_thread_is_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    try:
        deadline = time.monotonic() + 30
        while _state(child.pid) != "Z":  # the main thread has ended, the other runs
            assert time.monotonic() < deadline, "the child's main thread never ended"
            time.sleep(0.01)
        assert proc.process_alive(child.pid)
        child.send_signal(signal.SIGKILL)
        proc.wait_gone(child.pid, 10)
        assert not proc.process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
