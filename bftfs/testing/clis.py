"""The ``bftfs`` command as process-level tests run it: a child process on the cluster
``home``'s configuration, its output captured, so each test sees exactly what an operator
would (exit code, standard output and error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def bftfs_cli(
    home: Path, *args: str, check: bool = True, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """``bftfs ARGS --config HOME/cluster.toml``; with ``check`` (the default) it must exit
    0, and the assertion shows the command and what it printed."""
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(home / "cluster.toml")]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert got.returncode == 0, (cmd, got.stdout, got.stderr)
    return got
