"""Ctrl-C quits a command cleanly (issue 67): one line and exit 130, as restic and rclone
do.  ``verify`` interrupted printed a 45-line ExceptionGroup (trio's nursery wraps the
KeyboardInterrupt beside its tasks' cancellations) and exited 1, its code for "repaired"."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from waiting import wait_for

from bftfs.local import running_pid
from bftfs.testing.processes import ProcessCluster


def _connected_to(pid: int, ports: set[int]) -> bool:
    """Whether process ``pid`` itself holds an established TCP connection to one of
    ``ports`` (``/proc/PID/net/tcp`` lists the whole namespace's: its sockets are matched
    by inode against the process's own descriptors)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    mine = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port in ports and fields[9] in mine:
                    return True  # 01: ESTABLISHED
    return False


def _as_from_a_shell() -> None:
    """The child's SIGINT as a shell starts a command with it: default action, unblocked.
    A child inherits its parent's ignored signals and signal mask, and a pytest worker's
    may differ after other tests (two ``make test`` runs here: the command never saw the
    SIGINT and ran on to ``QUUnavailable``, exit 1; alone it passed)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def test_ctrl_c_in_a_command_waiting_on_the_cluster_exits_130_in_one_line(
    tmp_path: Path,
) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, map_size=1 << 28, durable=False) as pc:
        stopped = [running_pid(s) or 0 for s in pc.config.nodes]
        for pid in stopped:  # every node silent: the command waits on them
            os.kill(pid, signal.SIGSTOP)
        try:
            cmd = subprocess.Popen(
                [sys.executable, "-m", "bftfs", "verify", "--dir", str(home)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=_as_from_a_shell,
            )
            try:
                ports = {s.port for s in pc.config.nodes}
                wait_for("verify to connect", lambda: _connected_to(cmd.pid, ports))
                cmd.send_signal(signal.SIGINT)
                out, err = cmd.communicate(timeout=60)
            finally:
                cmd.kill()
                cmd.communicate()
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
    worker = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert cmd.returncode == 130, (worker, err)
    assert err.strip() == "bftfs: interrupted", err
