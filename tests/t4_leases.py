"""Leases with recall (issue 33) through real mounts of a cluster of node processes (real
TCP, LMDB, keys, FUSE): a mount that keeps listing a directory holds a lease on it and
lists it without rounds; another mount's create in it recalls the lease and is seen at
once; a Byzantine node that withholds every recall or forges recalls changes neither; a
holder killed with ``kill -9`` holds the other mount off at most its term.

What a mount's leases did is read from its status file (``leases``: held, taken, hits,
recalled), rewritten every two seconds; waits are conditions under deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bftfs.fuse import control
from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

MIB = 1024 * 1024
#: Creates on the other mount, each recalling the lease (it is taken again after the 5 s
#: cool-down in between).
CREATES = 2
#: The shortest lease a mount takes (``lease=``): the kill test waits it out.
TERM = 10


@contextlib.contextmanager
def _two_mounts(pc: ProcessCluster, tmp_path: Path, opts: str) -> Iterator[tuple[Mount, Mount]]:
    """Mount ``a`` as client0 and ``b`` as client1, both with ``opts``; both unmounted
    after, whatever happened."""
    with (
        Mount(pc.config, tmp_path / "a", client="client0", options=opts) as a,
        Mount(pc.config, tmp_path / "b", client="client1", options=opts) as b,
    ):
        yield a, b


def _wait(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def _leases(pc: ProcessCluster, m: Mount) -> dict[str, int]:
    status = control.status_file(pc.config, m.mountpoint)
    try:
        return json.loads(status.read_text()).get("leases") or {}
    except (OSError, ValueError):
        return {}


def _lease_directory(pc: ProcessCluster, m: Mount, d: Path) -> None:
    """List ``d`` until the mount holds a lease on it (its inode is the object id)."""
    ino = d.stat().st_ino
    since = time.time()
    status = control.status_file(pc.config, m.mountpoint)

    def listed_from_lease() -> bool:
        os.listdir(d)
        try:
            got = json.loads(status.read_text())
        except (OSError, ValueError):
            return False
        # Written after the call began (the file is rewritten every two seconds).
        return got["updated"] > since and ino in (got.get("leases") or {}).get("inos", [])

    _wait("a lease on the directory", 30, listed_from_lease)


def _holds_exclusively(pc: ProcessCluster, m: Mount) -> bool:
    """Whether mount ``m``'s status shows an exclusive lease taken, or a directory that
    came leased with its mkdir."""
    got = _leases(pc, m)
    return bool(got.get("exclusive") or got.get("made_leased"))


def _lease_exclusively(pc: ProcessCluster, m: Mount, d: Path, prefix: str) -> list[str]:
    """Create files ``PREFIX<i>`` (``i`` bytes ``PREFIX[0]``) in ``d`` until mount ``m``
    holds an exclusive lease on it (at most six; a directory the mount made came leased
    with its mkdir); the names created."""

    made = []
    for i in range(6):
        (d / f"{prefix}{i}").write_bytes(prefix[:1].encode() * i)
        made.append(f"{prefix}{i}")
        if _holds_exclusively(pc, m):
            break
    _wait("an exclusive lease", 30, lambda: _holds_exclusively(pc, m))
    return made


def _calls_after(pc: ProcessCluster, m: Mount, moment: float) -> dict[str, int]:
    """Mount ``m``'s kernel requests per operation its handlers answered, and as ``fast
    dirs`` the directory requests answered in pyfuse3's callback (``fuse/directories.py``),
    from a status written after ``moment`` (``time.time()``)."""
    status = control.status_file(pc.config, m.mountpoint)

    def fresh() -> dict[str, int] | None:
        try:
            got = json.loads(status.read_text())
        except (OSError, ValueError):
            return None
        if got["updated"] <= moment:
            return None
        return {**got["calls"], "fast dirs": got.get("fast_dir_answers", 0)}

    return _wait("a fresh status file", 10, fresh)


@pytest.mark.slow
def test_the_kernel_keeps_a_leased_directorys_listing_until_a_recall(tmp_path: Path) -> None:
    """A directory the mount made (leased with its mkdir) is listed once; the kernel keeps
    the listing, and lists it again with no ``readdir`` request; another mount's create
    in it recalls the lease, and the holder's next listing shows the new name."""
    with ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc:
        opts = f"allow_other,lease={TERM * 3}"
        with _two_mounts(pc, tmp_path, opts) as (a, b):
            d = a.mountpoint / "d"
            d.mkdir()
            names = [f"f{i}" for i in range(3)]
            for name in names:
                (d / name).write_bytes(b"x")
            assert sorted(os.listdir(d)) == names  # read once, kept
            before = _calls_after(pc, a, time.time())
            for _ in range(5):
                assert sorted(os.listdir(d)) == names
            after = _calls_after(pc, a, time.time())
            # Each listing an opendir and a releasedir (answered in pyfuse3's callback, or
            # the opendir by its handler): no readdir, which would count two more.
            opened = after.get("opendir", 0) - before.get("opendir", 0)
            assert after["fast dirs"] - before["fast dirs"] + opened == 5 * 2, (before, after)
            assert after.get("readdir", 0) == before.get("readdir", 0), (before, after)
            (b.mountpoint / "d" / "new").write_bytes(b"y")  # recalls a's lease
            assert sorted(os.listdir(d)) == [*names, "new"]
            assert sorted(os.listdir(b.mountpoint / "d")) == [*names, "new"]


@pytest.mark.parametrize(
    "profile",
    [  # 36 s each (cool-downs between recalls): the slow suite; tier 3 covers the recall
        pytest.param("healthy", marks=pytest.mark.slow),
        pytest.param("withhold-recalls", marks=pytest.mark.slow),
        pytest.param("forge-recalls", marks=pytest.mark.slow),
    ],
)
def test_a_create_on_another_mount_recalls_the_lease_and_is_seen_at_once(
    tmp_path: Path, profile: str
) -> None:
    node_args = {} if profile == "healthy" else {1: ["--byzantine", profile]}
    with ProcessCluster(
        tmp_path / "c", map_size=64 * MIB, durable=False, node_args=node_args
    ) as pc:
        opts = f"allow_other,lease={TERM * 3}"
        with _two_mounts(pc, tmp_path, opts) as (a, b):
            (a.mountpoint / "d").mkdir()
            _lease_directory(pc, a, a.mountpoint / "d")
            for i in range(CREATES):
                # Looked up missing under the lease: the kernel caches the miss while the
                # lease runs (not 1 s), and must forget it when the lease is recalled.
                for _ in range(2):
                    assert not (a.mountpoint / "d" / f"new{i}").exists()
                started = time.monotonic()
                (b.mountpoint / "d" / f"new{i}").write_bytes(b"x" * 10)
                took = time.monotonic() - started
                assert took < TERM, f"the create waited {took:.1f} s: the recall did not arrive"
                # The holder finds and lists the new file at once (no stale miss or listing).
                assert (a.mountpoint / "d" / f"new{i}").read_bytes() == b"x" * 10
                assert f"new{i}" in os.listdir(a.mountpoint / "d")
                _lease_directory(pc, a, a.mountpoint / "d")
            # Each create recalled the directory's lease, once; a forger's recalls alone,
            # naming the objects of every request this mount sends, were never believed.
            _wait("the status file", 10, lambda: _leases(pc, a).get("recalled", 0) >= CREATES)
            got = _leases(pc, a)
            assert got["recalled"] == CREATES, got


@pytest.mark.slow
def test_a_holder_killed_holds_the_other_mount_off_at_most_its_term(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc:
        opts = f"allow_other,lease={TERM}"
        with Mount(pc.config, tmp_path / "b", client="client1", options=opts) as b:
            a = Mount(pc.config, tmp_path / "a", client="client0", options=opts)
            with a:
                (a.mountpoint / "d").mkdir()
                (a.mountpoint / "d" / "kept").write_bytes(b"fsynced")
                _lease_directory(pc, a, a.mountpoint / "d")
                assert a.proc is not None
                a.proc.kill()  # kill -9 of the daemon: no release, no answer to recalls
                a.proc.wait()
            started = time.monotonic()
            (b.mountpoint / "d" / "after").write_bytes(b"y")
            took = time.monotonic() - started
            assert took <= TERM + 6, f"waited {took:.1f} s for a {TERM} s lease"
            assert sorted(os.listdir(b.mountpoint / "d")) == ["after", "kept"]
            assert (b.mountpoint / "d" / "kept").read_bytes() == b"fsynced"


@pytest.mark.slow
def test_a_holder_killed_with_creates_left_to_write_back_loses_only_those(
    tmp_path: Path,
) -> None:
    """Directory write-back (``fs/writeback/``): the mount holds the directory's
    exclusive lease, so its closes of new files return before the creates are sent.  Killed
    with ``kill -9`` then, it loses those creates, and only those: the other mount waits
    at most the lease's term and lists what was ``fsync``ed (the directory, then a
    file), byte for byte: a directory whose mkdir waited is lost with what
    was made in it, one made before a file in it was ``fsync``ed is there."""
    term = 30
    with ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc:
        opts = f"allow_other,lease={term},commit=60"
        with Mount(pc.config, tmp_path / "b", client="client1", options=opts) as b:
            a = Mount(pc.config, tmp_path / "a", client="client0", options=opts)
            with a:
                d = a.mountpoint / "d"
                d.mkdir()
                sent = _lease_exclusively(pc, a, d, "sent")
                fsync_paths(d)  # (they wait in write-back too: d came leased with its mkdir)
                for i in range(3):
                    (d / f"lost{i}").write_bytes(b"l" * 100)
                fd = os.open(d / "synced", os.O_CREAT | os.O_WRONLY, 0o644)
                os.write(fd, b"fsynced")
                os.fsync(fd)
                os.close(fd)
                # mkdirs left to write-back too (fs/writeback/mkdirs.py): one lost with its
                # file, one sent by the fsync of the file made in it.
                (d / "lostdir").mkdir()
                (d / "lostdir" / "f").write_bytes(b"lost")
                (d / "keptdir").mkdir()
                fd = os.open(d / "keptdir" / "f", os.O_CREAT | os.O_WRONLY, 0o644)
                os.write(fd, b"kept")
                os.fsync(fd)
                os.close(fd)
                _wait("closes left to write-back", 10, lambda: _leases(pc, a).get("deferred"))
                _wait(
                    "mkdirs left to write-back",
                    10,
                    lambda: _leases(pc, a).get("mkdirs_deferred") == 2,
                )
                assert a.proc is not None
                a.proc.kill()  # kill -9 of the daemon: no write-back, no release
                a.proc.wait()
            started = time.monotonic()
            names = sorted(os.listdir(b.mountpoint / "d"))
            took = time.monotonic() - started
            assert took <= term + 6, f"waited {took:.1f} s for a {term} s lease"
            assert names == sorted([*sent, "synced", "keptdir"]), names
            assert (b.mountpoint / "d" / "synced").read_bytes() == b"fsynced"
            assert os.listdir(b.mountpoint / "d" / "keptdir") == ["f"]
            assert (b.mountpoint / "d" / "keptdir" / "f").read_bytes() == b"kept"
            for i, name in enumerate(sent):
                assert (b.mountpoint / "d" / name).read_bytes() == b"s" * i


@pytest.mark.slow  # 23 s: it waits out the dead holder's lease
def test_a_holder_killed_with_appends_left_to_write_back_loses_only_those(
    tmp_path: Path,
) -> None:
    """Files leased with their create (``fs/writeback/held.py``): the mount holds the file it
    made, so the close of an append returns before the write is sent.  Killed with
    ``kill -9`` then, it loses that append, and only that: the other mount waits at most
    the lease's term and reads what was ``fsync``ed, byte for byte."""
    term = 20  # (a held close needs more than twice the 3 s margin left of the lease)
    with ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc:
        opts = f"allow_other,lease={term},commit=60"
        with Mount(pc.config, tmp_path / "b", client="client1", options=opts) as b:
            a = Mount(pc.config, tmp_path / "a", client="client0", options=opts)
            with a:
                d = a.mountpoint / "d"
                d.mkdir()
                _lease_exclusively(pc, a, d, "warm")
                for data, sync in ((b"created\n", True), (b"synced\n", True), (b"lost\n", False)):
                    fd = os.open(d / "log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
                    os.write(fd, data)
                    if sync:
                        os.fsync(fd)
                    os.close(fd)
                _wait("a close left to write-back", 10, lambda: _leases(pc, a).get("held_closes"))
                assert a.proc is not None
                a.proc.kill()  # kill -9 of the daemon: no write-back, no release
                a.proc.wait()
            started = time.monotonic()
            got = (b.mountpoint / "d" / "log").read_bytes()
            took = time.monotonic() - started
            assert took <= term + 6, f"waited {took:.1f} s for a {term} s lease"
            assert got == b"created\nsynced\n", got


@pytest.mark.slow
def test_a_holder_paused_past_its_term_comes_back_without_its_leases(tmp_path: Path) -> None:
    """A holder whose machine pauses (``SIGSTOP`` of its daemon) with creates left to
    write back: the other mount waits at most the lease's term, then works without them;
    resumed (``SIGCONT``), the holder answers nothing from the leases that ended meanwhile
    (it lists the other mount's file at once) and sends the creates it kept, which the other
    mount then sees (a mount cut off past its lease sends them when it can)."""
    term = 30
    with ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc:
        opts = f"allow_other,lease={term},commit=60"
        with _two_mounts(pc, tmp_path, opts) as (a, b):
            d = a.mountpoint / "d"
            d.mkdir()
            made = _lease_exclusively(pc, a, d, "sent")
            for i in range(3):
                (d / f"kept{i}").write_bytes(b"k" * 100)
                made.append(f"kept{i}")
            _wait("closes left to write-back", 10, lambda: _leases(pc, a).get("deferred"))
            assert a.proc is not None
            os.kill(a.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                (b.mountpoint / "d" / "after").write_bytes(b"b")
                took = time.monotonic() - started
                assert took <= term + 6, f"waited {took:.1f} s for a {term} s lease"
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            assert "after" in os.listdir(d)  # not the listing of its ended lease
            assert (d / "after").read_bytes() == b"b"
            everything = sorted([*made, "after"])
            _wait(
                "the paused mount's creates on the other mount",
                30,
                lambda: sorted(os.listdir(b.mountpoint / "d")) == everything,
            )
            for name in made:
                assert (b.mountpoint / "d" / name).read_bytes() == (
                    a.mountpoint / "d" / name
                ).read_bytes()


@pytest.mark.slow
def test_cp_r_into_a_leased_directory_waits_for_write_back_and_is_listed_locally(
    tmp_path: Path,
) -> None:
    """``cp -r`` creates each file with ``O_EXCL``: in a directory the mount holds
    exclusively, whose listing it knows, those creates wait for write-back like any other
    (no server can answer EEXIST while the lease lives), and the mount's own ``ls -l`` of
    the copy is answered from that listing without sending them.  Another mount's listing
    recalls the lease and finds every file, byte for byte."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    want = {f"f{i}": bytes([65 + i]) * (100 + 50 * i) for i in range(12)}
    for name, data in want.items():
        (src / name).write_bytes(data)
        (src / "sub" / name).write_bytes(data[::-1])
    with ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc:
        opts = "allow_other,lease=30,commit=60"
        with _two_mounts(pc, tmp_path, opts) as (a, b):
            d = a.mountpoint / "d"
            d.mkdir()
            warm = _lease_exclusively(pc, a, d, "warm")
            _wait("the status file", 10, lambda: _holds_exclusively(pc, a))
            before = _leases(pc, a)
            subprocess.run(["cp", "-r", str(src), str(d / "copy")], check=True)
            listed = {e.name: e.stat().st_size for e in os.scandir(d / "copy")}
            assert listed == {"sub": listed["sub"], **{n: len(v) for n, v in want.items()}}

            def grown(key: str, by: int) -> bool:
                return _leases(pc, a).get(key, 0) >= before.get(key, 0) + by

            # The copy's creates in d/copy waited (its own exclusive lease came after
            # a few), and its listing was answered in the mount.
            _wait("creates left to write-back", 10, lambda: grown("deferred", len(want)))
            _wait("a listing in the mount", 10, lambda: grown("local_listings", 1))
            got = b.mountpoint / "d"
            assert sorted(os.listdir(got)) == sorted([*warm, "copy"])
            for name, data in want.items():
                assert (got / "copy" / name).read_bytes() == data
                assert (got / "copy" / "sub" / name).read_bytes() == data[::-1]
