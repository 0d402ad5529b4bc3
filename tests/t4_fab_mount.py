"""The FaB engine under a real file system (issue 39): an ``engine = "fab"`` cluster of
real node processes and two real FUSE mounts.

* Namespace and contents: mkdir, create, write, rename, unlink and ``ls -l`` on one mount
  are what the other sees, and the nodes ordered them through FaB (every node executed
  the slots; none runs Q/U).
* The leader killed while a mount writes files: every write completes, after the others
  elected a new leader, and the second mount reads every file back.
* The killed node started again rejoins: it executes what was ordered while it was down.
* Every node killed and started again: the metadata was in their LMDB stores (what they
  accepted, learned and checkpointed), so a new mount finds the whole tree.

Everything that crosses a process boundary is a condition polled under a deadline.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from mount_helpers import two_mounts

from bftfs.local import query_status
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    home = tmp_path_factory.mktemp("fab") / "c"
    # durable (the default): the persistence test covers the group-committed writes
    with ProcessCluster(home, engine="fab", map_size=1 << 30, clients=3) as pc:
        yield pc


@pytest.fixture(scope="module")
def mounts(
    cluster: ProcessCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    with two_mounts(cluster, tmp_path_factory.mktemp("mnt")) as both:
        yield both


def _fab(pc: ProcessCluster) -> list[dict[str, Any]]:
    """Each node's FaB figures (``progress.fab`` of its stats); {} for a node down."""
    stats = [s.stats or {} for s in trio.run(query_status, pc.config)]
    return [(st.get("progress") or {}).get("fab") or {} for st in stats]


def _wait(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """Poll ``probe`` until it returns something true; fail naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {got!r})")
        time.sleep(0.1)


def _leader(pc: ProcessCluster, down: frozenset[int] = frozenset()) -> int:
    """The leader the nodes that are up agree on."""

    def agreed() -> list[int]:
        leaders = {f.get("leader") for i, f in enumerate(_fab(pc)) if i not in down}
        return [int(x) for x in leaders if x is not None] if len(leaders) == 1 else []

    return int(_wait("the nodes agree on a leader", 30, agreed)[0])


def test_namespace_and_contents_are_ordered_by_fab_and_seen_by_a_second_mount(
    cluster: ProcessCluster, mounts: tuple[Path, Path]
) -> None:
    a, b = mounts
    before = [f.get("executed", 0) for f in _fab(cluster)]
    assert all(f for f in _fab(cluster)), "every node runs the FaB engine"
    (a / "d").mkdir()
    (a / "d" / "sub").mkdir()
    (a / "d" / "f").write_bytes(b"contents " * 1000)
    (a / "d" / "small").write_bytes(b"s")
    os.chmod(a / "d" / "small", 0o600)
    os.rename(a / "d" / "f", a / "d" / "sub" / "g")
    (a / "d" / "gone").write_bytes(b"x")
    os.unlink(a / "d" / "gone")

    assert sorted(os.listdir(b / "d")) == ["small", "sub"]
    assert (b / "d" / "sub" / "g").read_bytes() == b"contents " * 1000
    st = os.stat(b / "d" / "small")  # ls -l
    assert (stat.S_IMODE(st.st_mode), st.st_size) == (0o600, 1)
    assert stat.S_ISDIR(os.stat(b / "d" / "sub").st_mode)
    assert not (b / "d" / "gone").exists()
    # ... and the metadata went through FaB: every node executed more slots.
    after = _wait(
        "every node executed the new slots",
        30,
        lambda: (
            all(f.get("executed", 0) > x for f, x in zip(_fab(cluster), before, strict=True))
            and _fab(cluster)
        ),
    )
    assert len({f["regency"] for f in after}) == 1


def test_a_second_mount_of_the_same_client_writes_and_reads_beside_the_first(
    cluster: ProcessCluster, mounts: tuple[Path, Path], tmp_path: Path
) -> None:
    """``client0`` mounted a second time (one bundle on two machines): both mounts write
    five files at once, each in its own thread, and each reads all ten.  Each mount's
    requests run on its own stream (``fab/sessions.py``); with one last request id per
    client the nodes dropped the slower mount's calls and its writes failed with EIO."""
    a, _ = mounts
    (a / "twins").mkdir()
    with Mount(cluster.config, tmp_path / "twin", client="client0") as twin:
        roots = {"a": a, "t": twin.mountpoint}
        failed: list[OSError] = []

        def writes(tag: str) -> None:
            try:
                for i in range(5):
                    (roots[tag] / "twins" / f"{tag}{i}").write_bytes(tag.encode() * 99 + b"%d" % i)
            except OSError as e:
                failed.append(e)

        threads = [threading.Thread(target=writes, args=(tag,)) for tag in roots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failed
        for root in roots.values():
            for tag in roots:
                for i in range(5):
                    got = (root / "twins" / f"{tag}{i}").read_bytes()
                    assert got == tag.encode() * 99 + b"%d" % i


def test_the_leader_killed_while_a_mount_writes_then_restarted_rejoins(
    cluster: ProcessCluster, mounts: tuple[Path, Path]
) -> None:
    a, b = mounts
    leader = _leader(cluster)
    regency = _fab(cluster)[leader]["regency"]
    (a / "run").mkdir()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for k in range(30):
                (a / "run" / f"f{k}").write_bytes(f"file {k}".encode() * 100)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            failures.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        _wait("the writer is under way", 60, lambda: (a / "run" / "f5").exists())
        cluster.kill(leader)
    finally:
        thread.join(120)
    assert not thread.is_alive() and not failures, failures
    for k in range(30):
        assert (b / "run" / f"f{k}").read_bytes() == f"file {k}".encode() * 100
    up = [f for i, f in enumerate(_fab(cluster)) if i != leader]
    assert all(f["regency"] > regency for f in up), "the others elected a new leader"
    assert _leader(cluster, frozenset({leader})) != leader

    cluster.start(leader)
    (a / "run" / "after").write_bytes(b"after the restart")
    target = max(f["executed"] for f in _fab(cluster))
    _wait(
        f"node {leader} executes up to slot {target} again",
        60,
        lambda: _fab(cluster)[leader].get("executed", 0) >= target,
    )
    assert (b / "run" / "after").read_bytes() == b"after the restart"


def test_every_node_killed_and_started_again_keeps_the_tree(
    cluster: ProcessCluster, mounts: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = mounts
    (a / "kept").mkdir()
    (a / "kept" / "file").write_bytes(b"kept " * 2000)
    for i in range(cluster.config.n):
        cluster.kill(i)
    for i in range(cluster.config.n):
        cluster.start(i)
    with Mount(cluster.config, tmp_path / "c", client="client2") as c:
        assert (c.mountpoint / "kept" / "file").read_bytes() == b"kept " * 2000
        (c.mountpoint / "kept" / "new").write_bytes(b"new")
    assert (a / "kept" / "new").read_bytes() == b"new"
