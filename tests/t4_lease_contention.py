"""Tier 4: leases that ping-pong (issue 62) through real mounts of node processes: two
mounts alternately creating and statting files in one directory recall each other's lease
on it until one mount's recalls pass ``k``; that mount then cools the directory down
(``fs/leases/contention.py``) and asks for no lease at all while it does (its Q/U
``fs.lease`` operations, from its Prometheus metrics, stay still), and each mount still
sees every file the other made.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from t4_leases import _leases, _two_mounts, _wait
from t4_stat_leases import _metrics

from bftfs.fs.leases.contention import BASE
from bftfs.fuse import control
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]

MIB = 1024 * 1024
OPTIONS = "allow_other,metrics_port=0,lease=60,commit=60"
#: Seconds the alternation may take to cool one mount (recalls come at most one per
#: object per 5 s quiet, ``holdings.COOLDOWN``; k + 1 within the 30 s window cool it).
PATIENCE = 120.0


def _step(m: Mount, d: Path, name: str, made: list[str]) -> None:
    """Create ``name`` in ``d`` from mount ``m`` and stat it twice (two queries: fewer
    than a file needs before its own lease is asked for)."""
    (m.mountpoint / d / name).write_bytes(name.encode())
    made.append(name)
    for _ in range(2):
        assert (m.mountpoint / d / name).stat().st_size == len(name)
    os.listdir(m.mountpoint / d)


def test_a_mount_recalled_past_k_stops_asking_for_the_directorys_lease(
    tmp_path: Path,
) -> None:
    with (
        ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc,
        _two_mounts(pc, tmp_path, OPTIONS) as (a, b),
    ):
        d = Path("shared")
        (a.mountpoint / d).mkdir()
        made: dict[str, list[str]] = {"a": [], "b": []}
        deadline = time.monotonic() + PATIENCE
        i = 0
        cooled: Mount | None = None
        while cooled is None:
            assert time.monotonic() < deadline, (_leases(pc, a), _leases(pc, b))
            _step(a, d, f"a{i}", made["a"])
            _step(b, d, f"b{i}", made["b"])
            i += 1
            cooled = next((m for m in (a, b) if _leases(pc, m).get("cooled")), None)
        # While it cools down (BASE s: the steps below take a fraction of it), the
        # cooled mount asks for no lease, however the two keep alternating.
        before = _metrics(pc, cooled)
        start = time.monotonic()
        for j in range(6):
            _step(a, d, f"a{i}-{j}", made["a"])
            _step(b, d, f"b{i}-{j}", made["b"])
        after = _metrics(pc, cooled)
        if time.monotonic() - start < BASE / 2:  # (a loaded machine: no claim)
            assert after["qu fs.lease"] == before["qu fs.lease"], (before, after)
        # Correctness: each mount sees the other's files, with their contents.
        for m in (a, b):
            names = set(os.listdir(m.mountpoint / d))
            assert names == set(made["a"]) | set(made["b"])
            for name in made["a"] + made["b"]:
                assert (m.mountpoint / d / name).read_bytes() == name.encode()


def test_a_reader_whose_leases_a_writer_keeps_recalling_lets_the_others_there_go(
    tmp_path: Path,
) -> None:
    """A mount that read a directory (a file manager beside a build) holds shared leases
    on its files; another mount appending to them recalls them one by one, each append
    waiting for the reader's release.  The reader counts each recall of a read lease
    there as contention of the directory, and when that cools it (past ``k``) it lets go
    of its other leases there at once: the writer waits for a few recalls, not one per
    file (``Holdings.read_where_changed``; before: one wait per file).  The mounts do
    not publish: the reader's first looks recall the writer's lease on the directory, so
    it leases the files at once (with publication the writer, having written a moment
    before, would keep the directory, and the reader lease there once it stops)."""
    files = 12
    with (
        ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc,
        _two_mounts(pc, tmp_path, OPTIONS + ",nopublish") as (a, b),
    ):
        d = Path("build")
        (a.mountpoint / d).mkdir()
        for i in range(files):
            (a.mountpoint / d / f"f{i}").write_bytes(b"x")
        os.sync()
        for _ in range(6):  # opened past FILE_USES: the reader asks for their leases
            for i in range(files):
                assert (b.mountpoint / d / f"f{i}").read_bytes() == b"x"
        _wait("the reader's leases", 30, lambda: _leases(pc, b).get("held", 0) >= files)
        waits_before = _leases(pc, a).get("recall_waits", 0)
        for i in range(files):
            with open(a.mountpoint / d / f"f{i}", "ab") as f:
                f.write(b"y")
        after = time.time()
        wrote, read = (
            _wait("a status", 10, lambda m=m: _leases_after(pc, m, after)) for m in (a, b)
        )
        waits = wrote.get("recall_waits", 0) - waits_before
        assert waits <= files // 2, (waits, wrote, read)  # the old rule: one per file
        assert read.get("read_leases_let_go"), read
        # Correctness: the reader sees every append.
        for i in range(files):
            assert (b.mountpoint / d / f"f{i}").read_bytes() == b"xy"


def _leases_after(pc: ProcessCluster, m: Mount, after: float) -> dict[str, int] | None:
    """``m``'s lease counters from a status file written after ``after`` (None: none yet)."""
    status = control.status_file(pc.config, m.mountpoint)
    try:
        st = json.loads(status.read_text())
    except (OSError, ValueError):
        return None
    return (st.get("leases") or {}) if float(st.get("updated") or 0) > after else None
