"""The systemd units bftfs ships (``bftfs/systemd``, ``bftfs unit``): a real node process
started as ``Type=notify`` units start it (``$NOTIFY_SOCKET`` bound here) says ``READY=1``
once it listens and ``STOPPING=1`` at SIGTERM; the node unit's exposure as
``systemd-analyze security`` rates it (where the tool is installed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bftfs import local
from bftfs.cli.units import UNITS, unit_text

UNIT_DIR = Path(__file__).resolve().parent.parent / "bftfs" / "systemd"


def test_a_node_tells_the_service_manager_when_it_serves_and_when_it_stops(
    tmp_path: Path,
) -> None:
    cfg = local.init_cluster(tmp_path / "c", map_size=16 * 1024 * 1024, durable=False)
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(address)
        manager.settimeout(30)
        cmd = [sys.executable, "-P", "-m", "bftfs", "node"]
        cmd += ["--config", str(local.config_path(cfg.home)), "--id", "0"]
        node = subprocess.Popen(cmd, env={**os.environ, "NOTIFY_SOCKET": address})
        try:
            ready = manager.recv(4096).decode()
            assert ready.splitlines()[0] == "READY=1", ready
            spec = cfg.node(0)
            with socket.create_connection((spec.host, spec.port), timeout=5):
                pass  # listening when it said so
            node.send_signal(signal.SIGTERM)
            assert manager.recv(4096) == b"STOPPING=1"
            assert node.wait(timeout=30) == 0
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()


def test_the_shipped_units_are_what_bftfs_unit_prints() -> None:
    for name, file in UNITS.items():
        assert unit_text(name) == (UNIT_DIR / file).read_text()
    out = subprocess.run(
        [sys.executable, "-P", "-m", "bftfs", "unit", "node"], capture_output=True, check=True
    )
    assert out.stdout.decode() == (UNIT_DIR / UNITS["node"]).read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", ["node", "snapshot"])
def test_the_services_are_rated_ok_by_systemd_analyze_security(unit: str) -> None:
    """Hardened (issue 36: the node unit was 8.9 EXPOSED): its own user, no capabilities,
    no devices, read-only system, a system-call filter; what is left is network access.
    The scheduled snapshots' service is hardened the same way."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT_DIR / UNITS[unit])],
        capture_output=True,
        text=True,
        check=False,
    )
    got = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    if got is None and "offline" in out.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    assert got is not None, out.stdout + out.stderr
    assert float(got.group(1)) <= 2.0, out.stdout
