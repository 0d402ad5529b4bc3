"""A rolling upgrade across a wire-version change, under a writer, loses nothing (issue 67,
docs/operations.md, "Upgrading").

Release v0.1.0 (wire 5) is built from this clone's history into a virtualenv of its own
(``testing/releases.py``).  Its ``bftfs`` makes and starts a cluster of six nodes and mounts
it; a writer keeps writing files there, each ``fsync``ed and its digest recorded.  The nodes
are then replaced one by one with this version's (stopped, started from the same
configuration by this version's ``bftfs``, waited for until it serves and its catch-up is
done); ``bftfs status`` shows the two versions meanwhile.  Then the mount is replaced with
this version's, and every file the writer ``fsync``ed reads back with its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bftfs import WIRE_VERSION, __version__
from bftfs.testing import releases
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

OLD = "0.1.0"
NODES = 6
#: Seconds between the writer's files (about 5 a second at most).
PACE = 0.2


def run(python: Path | str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``bftfs ARGS`` of the bftfs ``python`` runs (its own processes)."""
    cmd = [str(python), "-P", "-m", "bftfs", *args]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert got.returncode == 0, (cmd, got.stdout, got.stderr)
    return got


def until(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    """``probe()``'s first true answer, polled under a deadline."""
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)
    return got


class Writer(threading.Thread):
    """Writes files of seeded random content into ``directory``, each ``fsync``ed; the
    digest of each whose ``fsync`` returned is recorded (only those must survive)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.synced: dict[str, str] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(67)
        k = 0
        try:
            while not self.stop.is_set():
                data = rng.randbytes(rng.choice((100, 5000, 40_000)))
                name = f"w{k:05d}"
                fd = os.open(self.directory / name, os.O_CREAT | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.synced[name] = hashlib.sha256(data).hexdigest()
                k += 1
                # A steady stream, not a flood: each restarted node catches up on what
                # changed while it was down (one object at a time) while this goes on.
                self.stop.wait(PACE)
        except BaseException as e:  # reported by the test, with what it had written
            self.error = e


def status(home: Path) -> dict[str, Any]:
    """``bftfs status --json`` of this version."""
    got = run(sys.executable, "status", "--json", "--config", f"{home}/cluster.toml", check=False)
    return dict(json.loads(got.stdout))


#: What :func:`serving_new` last read of the node it waits for (a timeout shows it).
LAST: dict[str, Any] = {}


def serving_new(home: Path, node: int) -> dict[str, Any] | None:
    """The status once ``node`` answers on this version with its catch-ups done."""
    doc = status(home)
    (entry,) = [n for n in doc["nodes"] if n["id"] == node]
    stats = entry.get("stats") or {}
    LAST.update(up=entry["up"], version=stats.get("version"), catch_up=entry.get("catch_up"))
    LAST["problems"] = doc["problems"]
    if not entry["up"] or stats.get("version") != __version__:
        return None
    catch = entry.get("catch_up") or {}
    if not catch or any(c.get("state") != "done" for c in catch.values()):
        return None
    return doc


def test_a_cluster_of_0_1_0_upgrades_node_by_node_under_a_writer(tmp_path: Path) -> None:
    commit, why = releases.commit_of(OLD)
    if commit is None:
        pytest.skip(why)
    began = time.monotonic()
    old = releases.build(commit, tmp_path / f"v{OLD}")
    assert run(old, "--version").stdout.startswith(f"bftfs {OLD} (wire {WIRE_VERSION - 1},")
    home, mnt = tmp_path / "c", tmp_path / "mnt"
    config = ["--config", str(home / "cluster.toml")]
    run(old, "init", "--dir", str(home), "--map-size", str(1 << 28), "--no-durable")
    writer = None
    try:
        run(old, "up", "--dir", str(home), "--no-mount")
        mnt.mkdir()
        run(old, "mount", *config, str(mnt))
        (mnt / "w").mkdir()
        writer = Writer(mnt / "w")
        writer.start()
        until("the writer's first files", lambda: len(writer.synced) >= 5)
        print(f"set up: {time.monotonic() - began:.1f} s")
        mixes: list[str] = []
        for node in range(NODES):
            run(sys.executable, "node", "stop", str(node), *config)
            run(sys.executable, "node", "start", str(node), *config)
            started = time.monotonic()
            try:
                doc = until(f"node {node} on {__version__}", lambda n=node: serving_new(home, n))
            except AssertionError:
                print(json.dumps(LAST, indent=1))
                raise
            print(f"node {node}: {time.monotonic() - started:.1f} s, {len(writer.synced)} files")
            assert writer.error is None, writer.error
            if node < NODES - 1:
                mixes += [p for p in doc["problems"] if p.startswith("mixed versions")]
        until("the writer's files after the upgrade", lambda: len(writer.synced) >= 40, 120)
        writer.stop.set()
        writer.join(timeout=60)
        assert writer.error is None, writer.error
        # While nodes of both releases ran, status named each: the old mount and nodes,
        # the new nodes.
        assert len(mixes) == NODES - 1, mixes
        first = mixes[0]
        assert f"{OLD} (wire {WIRE_VERSION - 1}) on node 1, node 2" in first, first
        assert f"mount {mnt}" in first, first
        assert f"{__version__} (wire {WIRE_VERSION}) on " in first and "node 0" in first, first
        # The mount last: its umount sends what it holds back.
        print(f"upgraded: {time.monotonic() - began:.1f} s")
        run(old, "umount", *config, str(mnt))
        print(f"unmounted: {time.monotonic() - began:.1f} s")
        run(sys.executable, "mount", *config, str(mnt))
        print(f"mounted: {time.monotonic() - began:.1f} s")
        for name, digest in sorted(writer.synced.items()):
            assert hashlib.sha256((mnt / "w" / name).read_bytes()).hexdigest() == digest, name
        print(f"checked: {time.monotonic() - began:.1f} s")
        doc = status(home)
        assert not [p for p in doc["problems"] if p.startswith("mixed versions")], doc["problems"]
        assert {(s["version"], s["wire"]) for s in doc["sessions"]} == {(__version__, WIRE_VERSION)}
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(timeout=60)
        run(sys.executable, "down", "--dir", str(home), check=False)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
