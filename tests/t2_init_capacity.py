"""``init`` and ``up`` say when the nodes' maps may outgrow the disk under them (issue 67):
LMDB maps are sparse and grow with the data, so six 16 GiB maps on a disk with 40 GiB
free fill the disk first, and the nodes on it refuse writes together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _init(home: Path, map_size: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bftfs", "init", "--dir", str(home), "--map-size", map_size]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_init_warns_when_the_maps_may_outgrow_the_disk_and_not_otherwise(tmp_path: Path) -> None:
    huge = _init(tmp_path / "huge", "100T")  # more than any disk this runs on
    assert "warning: the LMDB maps of node(s) 0, 1, 2, 3, 4, 5 may grow to 600.0 TiB" in (
        huge.stderr
    )
    assert "more disk" in huge.stderr
    small = _init(tmp_path / "small", "64M")
    assert "warning" not in small.stderr, small.stderr
