"""Two mounts of one cluster used the way people share a file system (issue 22).

Close-to-open as NFS gives it: an open on one mount sees the size and the contents of the
last close on any mount, whatever the kernel cached before; appends separated by close and
open keep every byte, and ``O_APPEND`` writers on two mounts lose nothing acknowledged.
Every check runs against real node processes and two real FUSE mounts (``client0`` and
``client1``) with the default cache timeouts, so a stale kernel cache would show.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mount_helpers import two_mounts

from bftfs.testing.mounts import fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(
        tmp_path_factory.mktemp("cluster") / "c", map_size=1 << 30, durable=False
    ) as pc:
        yield pc


@pytest.fixture(scope="module")
def mounts(
    cluster: ProcessCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    with two_mounts(cluster, tmp_path_factory.mktemp("mnt")) as both:
        yield both


@pytest.fixture
def dirs(mounts: tuple[Path, Path], request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """The same fresh directory, as seen through each mount."""
    name = request.node.name.replace("[", "_").replace("]", "_")
    (mounts[0] / name).mkdir()
    return mounts[0] / name, mounts[1] / name


def _write(path: Path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


@pytest.mark.parametrize("size", [6, 20_000, 300_000])
def test_a_rewrite_that_changes_the_size_is_seen_at_the_next_open(
    dirs: tuple[Path, Path], size: int
) -> None:
    """Item 1: the second kernel cached the file (size and pages); the first mount rewrites
    it longer, then shorter.  Each open on the second mount sees exactly the new contents
    and size - not the old length, not the old bytes, no zeros up to the old size."""
    mine, theirs = dirs
    first = b"h" * size
    _write(mine / "f", first)
    assert (theirs / "f").read_bytes() == first
    assert (theirs / "f").stat().st_size == size
    for content in (b"L" * (size * 3 + 17), b"s" * (size // 2 + 1), b"", b"again" * 7):
        _write(mine / "f", content)
        with open(theirs / "f", "rb") as f:
            assert os.fstat(f.fileno()).st_size == len(content)
            assert f.read() == content
        assert (theirs / "f").stat().st_size == len(content)


def test_sequential_appends_from_two_mounts_keep_every_line(dirs: tuple[Path, Path]) -> None:
    """Item 2: ``echo ... >> log`` alternating between the mounts (each append opens,
    writes and closes): every line of both is in the file, in order, on both mounts."""
    mine, theirs = dirs
    expect = b""
    for i in range(1, 6):
        for side, path in (("A", mine), ("B", theirs)):
            line = f"{side} line {i}\n".encode()
            _write(path / "log", line, "ab")
            expect += line
    assert (mine / "log").read_bytes() == expect
    assert (theirs / "log").read_bytes() == expect


def test_sequential_appends_to_a_large_file_from_two_mounts(dirs: tuple[Path, Path]) -> None:
    """The same with a file past the inline limit and a block boundary (PASIS blocks)."""
    mine, theirs = dirs
    expect = b"x" * 65_530
    _write(mine / "big", expect)
    for i in range(4):
        for path in (theirs, mine):
            chunk = f"<{path.name}:{i}>".encode() * 3
            _write(path / "big", chunk, "ab")
            expect += chunk
    assert (mine / "big").read_bytes() == expect
    assert (theirs / "big").read_bytes() == expect


@pytest.mark.parametrize("lines", [150])
@pytest.mark.slow
def test_concurrent_o_append_writers_on_two_mounts_lose_nothing(
    dirs: tuple[Path, Path], lines: int
) -> None:
    """Item 2: two writers, one per mount, each appending ``lines`` one-line records
    (open O_APPEND, write, close) at the same time: every acknowledged record is in the
    file exactly once, whole, and no NUL byte appears; each writer's records in order."""
    mine, theirs = dirs
    errors: list[BaseException] = []

    def writer(path: Path, tag: str) -> None:
        try:
            for i in range(lines):
                fd = os.open(path / "shared.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, f"{tag} {i:05d} {'.' * 20}\n".encode())
                finally:
                    os.close(fd)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [
        threading.Thread(target=writer, args=(mine, "A")),
        threading.Thread(target=writer, args=(theirs, "B")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    data = (mine / "shared.log").read_bytes()
    assert data == (theirs / "shared.log").read_bytes()
    assert b"\0" not in data
    records = data.decode().splitlines()
    for tag in "AB":
        got = [r for r in records if r.startswith(tag + " ")]
        assert got == [f"{tag} {i:05d} {'.' * 20}" for i in range(lines)]
    assert len(records) == 2 * lines


def test_concurrent_appends_to_a_block_file_lose_nothing(dirs: tuple[Path, Path]) -> None:
    """As above on a file already past the inline limit: the appends share its last PASIS
    block, which each client rewrites whole - only one at a time (the write lease)."""
    mine, theirs = dirs
    head = b"h" * 70_000
    _write(mine / "big.log", head)
    errors: list[BaseException] = []

    def writer(path: Path, tag: str) -> None:
        try:
            for i in range(40):
                with open(path / "big.log", "ab") as f:
                    f.write(f"{tag}{i:03d}\n".encode() * 50)
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=writer, args=(p, t)) for p, t in ((mine, "A"), (theirs, "B"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    data = (theirs / "big.log").read_bytes()
    assert data == (mine / "big.log").read_bytes()
    assert data.startswith(head)
    records = data[len(head) :].decode().splitlines()
    assert len(records) == 2 * 40 * 50
    for tag in "AB":
        got = [r for r in records if r.startswith(tag)]
        assert got == [f"{tag}{i:03d}" for i in range(40) for _ in range(50)]


def test_an_append_beside_a_mount_appending_and_syncing_without_pause_is_taken(
    dirs: tuple[Path, Path],
) -> None:
    """One mount appends to a log and syncs it without a pause while the other appends a
    few records, syncing each.  The busy writer's next version was always made before the
    other's flush could lock the one it had read, so that flush failed 64 times and
    answered EIO (found in a user trial, 2026-12-07); it now claims the write lease after
    two failures (``fs.lock`` with ``any``) and takes its turn.  Every record of both is
    in the file exactly once."""
    mine, theirs = dirs
    head = b"h" * 70_000  # past the inline limit: the records share a PASIS block
    _write(mine / "log", head)
    started, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    written: list[int] = []

    def busy() -> None:
        i = 0
        try:
            with open(mine / "log", "ab", buffering=0) as f:
                while not done.is_set() and i < 3000:
                    f.write(f"A{i:05d}\n".encode())
                    os.fsync(f.fileno())
                    i += 1
                    if i == 10:
                        started.set()
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)
        finally:
            written.append(i)
            started.set()

    t = threading.Thread(target=busy)
    t.start()
    try:
        started.wait()
        with open(theirs / "log", "ab", buffering=0) as f:
            for j in range(2):
                f.write(f"B{j:05d}\n".encode())
                os.fsync(f.fileno())
    finally:
        done.set()
        t.join()
    assert not errors, errors
    data = (theirs / "log").read_bytes()
    assert data == (mine / "log").read_bytes()
    assert data.startswith(head)
    records = data[len(head) :].decode().splitlines()
    assert sorted(r for r in records if r.startswith("A")) == [
        f"A{i:05d}" for i in range(written[0])
    ]
    assert [r for r in records if r.startswith("B")] == [f"B{j:05d}" for j in range(2)]
    assert len(records) == written[0] + 2


def test_writes_to_distinct_ranges_of_one_block_from_two_mounts_are_both_kept(
    dirs: tuple[Path, Path],
) -> None:
    """Two clients write different byte ranges of the same blocks, each open-write-close,
    alternately and then at the same time: every byte either wrote is in the file (a
    flush that finds the file changed re-applies its writes on the new content instead of
    sending its stale copy of the whole block)."""
    mine, theirs = dirs
    size = 200_000
    _write(mine / "f", b"." * size)
    errors: list[BaseException] = []

    def writer(path: Path, parity: int) -> None:
        try:
            for i in range(parity, 60, 2):  # 1000-byte stripes, interleaved between writers
                with open(path / "f", "r+b") as f:
                    f.seek(i * 1000 + 3000 * (i % 5))
                    f.write(bytes([65 + parity]) * 1000)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p, k)) for k, p in enumerate((mine, theirs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    expect = bytearray(b"." * size)
    for i in range(60):
        at = i * 1000 + 3000 * (i % 5)
        expect[at : at + 1000] = bytes([65 + i % 2]) * 1000
    assert (mine / "f").read_bytes() == bytes(expect)
    assert (theirs / "f").read_bytes() == bytes(expect)


def test_a_streamed_big_file_is_complete_for_the_other_mount_at_close(
    dirs: tuple[Path, Path],
) -> None:
    """Issue 19: 20 MiB written in 1 MiB calls pass the 8 MiB flush bound twice, so flushes
    run in the background while the writer goes on (write-behind); the close returns only
    when everything is on a quorum, so the other mount's open reads all of it (through its
    background read-ahead), and after a rewrite the new content, none of the old."""
    mine, theirs = dirs
    rng = random.Random(19)
    for _version in range(2):
        data = rng.randbytes(20 * 1024 * 1024 + 4321)
        with open(mine / "big", "wb") as f:
            for off in range(0, len(data), 1 << 20):
                f.write(data[off : off + (1 << 20)])
        with open(theirs / "big", "rb") as f:
            assert os.fstat(f.fileno()).st_size == len(data)
            got = b"".join(iter(lambda: f.read(1 << 20), b""))
        assert got == data


def _loop_on_both(dirs: tuple[Path, Path], body: Any, rounds: int) -> list[str]:
    """Run ``body(directory, tag, i)`` for ``i < rounds`` on both mounts at once; the
    errors either side met, as text."""
    errors: list[str] = []

    def side(path: Path, tag: str) -> None:
        for i in range(rounds):
            try:
                body(path, tag, i)
            except OSError as e:
                errors.append(f"{tag} {i}: {e!r} in {e.__traceback__.tb_next.tb_frame.f_lineno}")

    threads = [threading.Thread(target=side, args=(p, t)) for p, t in zip(dirs, "AB", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.slow
def test_two_clients_creating_and_removing_one_name_keep_the_directory_alive(
    dirs: tuple[Path, Path],
) -> None:
    """Item 3 and 5: what SQLite does with its journal, from two mounts on one name -
    open(O_CREAT|O_TRUNC), write, fsync, close, unlink.  No call fails (an unlink may find
    the name already gone: ENOENT is the only answer allowed, the other client removed
    it), and afterwards the directory answers stat, listing, create and removal on both."""

    def journal(path: Path, tag: str, i: int) -> None:
        fd = os.open(path / "j", os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        try:
            os.write(fd, tag.encode() * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / "j")

    assert _loop_on_both(dirs, journal, 60) == []
    for path in dirs:
        assert os.listdir(path) == []
        (path / "after").write_bytes(b"ok")
        assert (path / "after").read_bytes() == b"ok"
        os.unlink(path / "after")
        os.stat(path)


@pytest.mark.slow
def test_two_clients_creating_and_removing_distinct_names_in_one_directory(
    dirs: tuple[Path, Path],
) -> None:
    """Item 5: contention on a directory between two clients is retried inside the file
    system, never answered EIO."""

    def churn(path: Path, tag: str, i: int) -> None:
        name = path / f"{tag}{i % 7}"
        name.write_bytes(b"x" * (i % 3) * 100)
        if i % 2:
            os.unlink(name)

    errors = _loop_on_both(dirs, churn, 120)
    mine, theirs = dirs
    last = {i % 7: i for i in range(120)}  # each name's last round decides if it exists
    expect = sorted(f"{t}{j}" for t in "AB" for j, i in last.items() if i % 2 == 0)
    assert sorted(os.listdir(mine)) == expect == sorted(os.listdir(theirs))
    assert errors == []


def test_a_truncation_by_a_name_renamed_over_elsewhere_changes_the_new_file(
    dirs: tuple[Path, Path],
) -> None:
    """The second mount cached ``e`` (and ``b``); the first writes ``b`` and renames it over
    ``e``.  ``truncate e`` on the second mount must shorten the file ``e`` names now - it
    went to the removed old ``e`` and was lost (the consistency checker, seed 12)."""
    mine, theirs = dirs
    (mine / "e").write_bytes(b"E" * 117_990)
    (mine / "b").write_bytes(b"1" * 8193)
    assert len((theirs / "e").read_bytes()) == 117_990
    assert len((theirs / "b").read_bytes()) == 8193
    (mine / "b").write_bytes(b"2" * 100)
    os.rename(mine / "b", mine / "e")
    os.truncate(theirs / "e", 50)
    assert (mine / "e").read_bytes() == b"2" * 50
    assert (theirs / "e").read_bytes() == b"2" * 50
    os.chmod(theirs / "e", 0o600)  # by path too: the file the name leads to now
    assert (mine / "e").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_sqlite_used_in_turn_from_two_mounts(dirs: tuple[Path, Path]) -> None:
    """A SQLite database written by one mount, then the other, in turns (each closes the
    database before the other opens it; at once: ``t4_locks.py``): every row of
    both is there and ``PRAGMA integrity_check`` says ok on both mounts."""
    mine, theirs = dirs
    for turn in range(6):
        side = (mine, theirs)[turn % 2]
        db = sqlite3.connect(side / "shared.db")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS t (turn INTEGER, k INTEGER, v TEXT)")
            with db:
                db.executemany(
                    "INSERT INTO t VALUES (?, ?, ?)",
                    [(turn, k, f"{turn}-{k}-" + "x" * (k % 300)) for k in range(200)],
                )
            with db:
                db.execute("DELETE FROM t WHERE turn = ? AND k % 7 = 0", (turn,))
        finally:
            db.close()
    for side in (mine, theirs):
        db = sqlite3.connect(side / "shared.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            rows = db.execute("SELECT turn, k FROM t ORDER BY turn, k").fetchall()
        finally:
            db.close()
        assert rows == [(t, k) for t in range(6) for k in range(200) if k % 7]
