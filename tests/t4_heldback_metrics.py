"""A mount's metrics and status say what directory write-back holds back from the servers
(issue 67: JuiceFS and Ceph show a client's backlog): ``bftfs_mount_heldback_creates``,
``_bytes`` and ``_oldest_seconds``, read from a real mount (node processes, FUSE) whose
closes of new files return before the creates are sent (``fs/writeback/``), and back to
zero once a directory ``fsync`` sent them.  ``_changes`` counts every change held back; the
benchmarks stop their clock only once it is 0 (``benchmarks/costs.py`` ``wait_settled``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from t4_health import metric, scrape

from bftfs.fuse import control
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import costs  # noqa: E402
from common import Site, TargetSpec  # noqa: E402

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

SIZES = (100, 2000, 30_000)


def until(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    """``probe()``'s first true answer, polled under a deadline."""
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return got


@pytest.mark.slow
def test_held_back_creates_show_in_the_mounts_metrics_and_status(tmp_path: Path) -> None:
    with (
        ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc,
        Mount(pc.config, tmp_path / "a", options="lease=30,commit=60,metrics_port=0") as a,
    ):
        status_path = control.status_file(pc.config, a.mountpoint)

        def status() -> dict[str, Any]:
            try:
                return dict(json.loads(status_path.read_text()))
            except (OSError, ValueError):
                return {}

        def figures() -> tuple[float, float, float]:
            text = scrape(until("the metrics address", lambda: status().get("metrics")))
            changes.append(metric(text, "bftfs_mount_heldback_changes"))
            return (
                metric(text, "bftfs_mount_heldback_creates"),
                metric(text, "bftfs_mount_heldback_bytes"),
                metric(text, "bftfs_mount_heldback_oldest_seconds"),
            )

        changes: list[float] = []  # every change held back, at each scrape

        d = a.mountpoint / "d"
        d.mkdir()
        for i in range(6):  # until the mount holds the directory exclusively
            (d / f"warm{i}").write_bytes(b"w")
            leases = status().get("leases") or {}
            if leases.get("exclusive") or leases.get("made_leased"):
                break
        until("closes left to write-back", lambda: (status().get("leases") or {}).get("deferred"))
        fsync_paths(d)  # sends what waits: the backlog starts empty
        assert figures() == (0.0, 0.0, 0.0)
        # (the directory's own entries are sent when fsync returns, the rest of the
        # mount's right after: every change held back is 0 soon after)
        until("nothing held back", lambda: figures() and changes[-1] == 0)

        for i, size in enumerate(SIZES):
            (d / f"f{i}").write_bytes(bytes([i]) * size)
        count, size, first_age = until(
            "the creates held back", lambda: (f := figures())[0] == len(SIZES) and f
        )
        assert size == sum(SIZES)
        assert 0 < first_age < 60  # within commit=60, or it would have been sent
        assert changes[-1] >= len(SIZES)  # the creates at least (their writes go with them)
        later_age = until("an older oldest", lambda: (f := figures())[2] > first_age and f[2])
        assert later_age < 60

        moment = time.time()  # the status file is rewritten every 2 s: one from after now
        held = until(
            "a fresh status", lambda: status().get("updated", 0) > moment and status()["heldback"]
        )
        assert (held["creates"], held["bytes"]) == (len(SIZES), sum(SIZES))
        assert held["changes"] >= len(SIZES)
        site = Site(TargetSpec("bftfs", "bftfs"), a.mountpoint, config=pc.config)
        assert costs.wait_settled(site, cap=1.0) is None  # held for commit=60
        table = bftfs_cli(pc.config.home, "status", "-v", check=False).stdout
        assert f"held back: {len(SIZES)} creates" in table, table

        fsync_paths(d)
        assert figures() == (0.0, 0.0, 0.0)
        settled = costs.wait_settled(site)
        assert settled is not None and settled < 10.0, settled  # (the gauge was at 0)
        for i, size in enumerate(SIZES):
            assert (d / f"f{i}").read_bytes() == bytes([i]) * size
