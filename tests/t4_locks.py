"""Tier 4: ``flock`` and ``fcntl`` locks across two real mounts (issue 37): the kernel
sends them to the daemon (pyfuse3 with ``scripts/pyfuse3-locks.patch``), the daemon to the
servers' lock objects, so a lock taken through one mount is seen through the other.

Real node processes, two real FUSE mounts (``client0``, ``client1``), the programs people
use (``flock(1)``, Python's ``fcntl.lockf`` in a subprocess).  Holders report that they
hold their lock on stdout; every wait is a subprocess with a timeout, never a sleep."""

from __future__ import annotations

import os
import select
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import two_mounts

from bftfs.testing.mounts import Mount, abort, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: Seconds any one program of a test may take (a hang fails the test, it does not stall it).
PATIENCE = 60

#: A holder: locks ``argv[2]`` bytes from ``argv[3]`` (``lockf``, exclusive, not waiting)
#: of file ``argv[1]``, says "held", and keeps the lock until its stdin closes.
HOLD = """
import fcntl, sys
f = open(sys.argv[1], "r+b")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[2]), int(sys.argv[3]))
print("held", flush=True)
sys.stdin.read()
"""

#: Tries ``lockf`` on ``argv[2]`` bytes from ``argv[3]`` without waiting: prints "got" or
#: "busy".
TRY = """
import fcntl, sys
f = open(sys.argv[1], "r+b")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[2]), int(sys.argv[3]))
except BlockingIOError:
    print("busy")
else:
    print("got")
"""


#: Dirties a shared mapping of ``argv[1]``, then locks the file (the daemon drops the
#: kernel's pages of it, which first writes the dirty ones back through the daemon),
#: dirties it again and unlocks: what SQLite does in WAL mode with its ``-shm`` file.
MMAP_LOCK = """
import fcntl, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:5] = b"dirty"
fcntl.lockf(fd, fcntl.LOCK_EX)
m[5:10] = b"again"
fcntl.lockf(fd, fcntl.LOCK_UN)
m.close()
os.close(fd)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(
        tmp_path_factory.mktemp("cluster") / "c", map_size=1 << 30, durable=False, clients=3
    ) as pc:
        yield pc


@pytest.fixture(scope="module")
def mounts(
    cluster: ProcessCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    with two_mounts(cluster, tmp_path_factory.mktemp("mnt")) as both:
        yield both


@pytest.fixture
def files(mounts: tuple[Path, Path], request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """A fresh file of 100 bytes, as seen through each mount."""
    name = request.node.name.replace("[", "_").replace("]", "_")
    (mounts[0] / name).write_bytes(b"x" * 100)
    return mounts[0] / name, mounts[1] / name


class Holder:
    """A process that holds a lock until it is let go (or the test fails)."""

    def __init__(self, argv: list[str], ready: bytes) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the holder says when it holds the lock
        assert line.strip() == ready, f"holder did not start: {line!r}"

    def let_go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=PATIENCE) == 0

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=PATIENCE)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def run_or_abort(argv: list[str], mountpoint: Path) -> str:
    """``argv``'s output; past :data:`PATIENCE` the mount's FUSE connection is aborted (a
    program waiting on a request the daemon never answers cannot even be killed) and the
    test fails."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as p:
        try:
            out, _ = p.communicate(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            abort(mountpoint)
            p.kill()
            p.communicate()
            pytest.fail(f"{argv[0]} waited past {PATIENCE} s: the mount hung (aborted)")
    assert p.returncode == 0, f"{argv[0]} exited {p.returncode}"
    return out


def flock_holder(path: Path) -> Holder:
    """``flock -x path`` around a shell that says "held" and waits for its stdin to close."""
    return Holder(["flock", "-x", str(path), "sh", "-c", "echo held; cat >/dev/null"], b"held")


def flock_n(path: Path, *options: str) -> int:
    return subprocess.run(["flock", *options, str(path), "true"], timeout=PATIENCE).returncode


def try_lockf(path: Path, length: int, start: int) -> str:
    out = subprocess.run(
        [sys.executable, "-c", TRY, str(path), str(length), str(start)],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=True,
    )
    return out.stdout.strip()


def test_flock_held_on_one_mount_makes_flock_n_fail_on_the_other(
    files: tuple[Path, Path],
) -> None:
    mine, theirs = files
    with flock_holder(mine) as holder:
        assert flock_n(theirs, "-n") == 1  # refused at once: -n never waits
        assert flock_n(mine, "-n") == 1  # another open file on the same mount too
        assert flock_n(theirs, "-s", "-n") == 1  # a shared lock conflicts with it as well
        holder.let_go()
    assert flock_n(theirs, "-n") == 0


def test_a_waiting_flock_gets_the_lock_when_the_holder_lets_go(files: tuple[Path, Path]) -> None:
    mine, theirs = files
    with flock_holder(mine) as holder:
        waiter = subprocess.Popen(
            ["flock", "-x", str(theirs), "echo", "got"], stdout=subprocess.PIPE
        )
        try:
            holder.let_go()
            out, _ = waiter.communicate(timeout=PATIENCE)
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait()
        assert waiter.returncode == 0 and out == b"got\n"


def test_a_signal_ends_a_waiting_lock(files: tuple[Path, Path]) -> None:
    """``flock -w 1`` waits with an alarm: the signal interrupts the blocking lock (the
    daemon answers EINTR to the kernel's interrupt), and flock gives up, status 1."""
    mine, theirs = files
    with flock_holder(mine) as holder:
        assert flock_n(theirs, "-w", "1") == 1
        holder.let_go()


def test_fcntl_byte_ranges_conflict_only_where_they_overlap(files: tuple[Path, Path]) -> None:
    mine, theirs = files
    argv = [sys.executable, "-c", HOLD, str(mine), "10", "0"]  # bytes 0..9
    with Holder(argv, b"held") as holder:
        assert try_lockf(theirs, 10, 5) == "busy"  # 5..14 overlaps
        assert try_lockf(theirs, 0, 9) == "busy"  # 9..end overlaps
        assert try_lockf(theirs, 10, 10) == "got"  # 10..19 does not
        assert try_lockf(mine, 1, 0) == "busy"  # another process on the same mount
        holder.let_go()
    assert try_lockf(theirs, 10, 5) == "got"


def test_closing_any_descriptor_drops_the_processs_posix_locks(files: tuple[Path, Path]) -> None:
    """POSIX: a process's locks on a file go when it closes any descriptor of the file,
    not only the one it locked through (FUSE's flush carries the lock owner)."""
    mine, theirs = files
    program = """
import fcntl, sys
locked = open(sys.argv[1], "r+b")
other = open(sys.argv[1], "rb")
fcntl.lockf(locked, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
sys.stdin.readline()
other.close()
print("closed", flush=True)
sys.stdin.read()
"""
    with Holder([sys.executable, "-c", program, str(mine)], b"held") as holder:
        assert try_lockf(theirs, 0, 0) == "busy"
        assert holder.proc.stdin is not None and holder.proc.stdout is not None
        holder.proc.stdin.write(b"\n")
        holder.proc.stdin.flush()
        assert holder.proc.stdout.readline().strip() == b"closed"
        assert try_lockf(theirs, 0, 0) == "got"
        holder.let_go()


def test_a_counter_incremented_under_flock_from_both_mounts_loses_nothing(
    files: tuple[Path, Path],
) -> None:
    """Two shell loops, one per mount, each add 1 to a number in a file 15 times under
    ``flock``: what one wrote before it unlocked is what the other reads after it locks
    (the write reaches the servers before the unlock, the kernel's cached pages go at the
    lock), so the file ends at 30."""
    mine, theirs = files
    mine.write_text("0\n")
    add_one = 'n=$(cat "$1"); echo $((n+1)) > "$1"'
    loop = f'for i in $(seq 15); do flock -x "$1" sh -c \'{add_one}\' sh "$1"; done'
    procs = [subprocess.Popen(["sh", "-c", loop, "sh", str(p)]) for p in (mine, theirs)]
    try:
        for p in procs:
            assert p.wait(timeout=PATIENCE * 3) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert mine.read_text() == "30\n"
    assert theirs.read_text() == "30\n"


#: One SQLite writer (rollback journal: WAL needs shared memory, which cannot span
#: machines): ``argv[3]`` transactions of one row each, as writer ``argv[2]``.
SQLITE_WRITER = """
import sqlite3, sys
path, who, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(path, timeout=600, isolation_level=None)
assert db.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
for i in range(n):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (who, i, "x" * (i % 300)))
    db.execute("COMMIT")
    if (i + 1) % 25 == 0:
        print(i + 1, flush=True)
db.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["none", "node-killed-and-restarted"])
def test_sqlite_written_from_two_mounts_at_once_keeps_every_row(
    cluster: ProcessCluster, files: tuple[Path, Path], fault: str
) -> None:
    """Two writers, one per mount, at the same time, each committing its transactions
    under SQLite's own fcntl locks: every committed row of both is there and
    ``PRAGMA integrity_check`` says ok through both mounts; also with a node killed (-9)
    after writer 0's 25th commit and restarted after its 50th.  (Without the open file
    taking the servers' version at each lock, one writer's rows were lost.)"""
    mine, theirs = files
    mine.unlink()
    db = sqlite3.connect(mine)
    db.execute("CREATE TABLE t (who INTEGER, i INTEGER, v TEXT)")
    db.commit()
    db.close()
    n = int(os.environ.get("BFTFS_SQLITE_TRANSACTIONS", "80"))  # the 2 000: by hand
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SQLITE_WRITER, str(path), str(who), str(n)],
            stdout=subprocess.PIPE,
        )
        for who, path in enumerate((mine, theirs))
    ]
    killed = False
    try:
        if fault != "none":
            out = procs[0].stdout
            assert out is not None
            for line in out:  # the writer's progress: a line per 25 commits
                if int(line) >= 25 and not killed:
                    cluster.kill(3)
                    killed = True
                elif int(line) >= 50:
                    cluster.start(3)
                    killed = False
                    break
        for p in procs:
            assert p.wait(timeout=PATIENCE * 10 * max(1, n // 80)) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        if killed:
            cluster.start(3)
    for path in (mine, theirs):
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            rows = db.execute("SELECT who, i FROM t ORDER BY who, i").fetchall()
        finally:
            db.close()
        assert rows == [(who, i) for who in (0, 1) for i in range(n)]


@pytest.mark.slow
def test_a_kill_9_of_the_holders_mount_frees_its_locks_within_the_lease(
    cluster: ProcessCluster, mounts: tuple[Path, Path], tmp_path: Path
) -> None:
    """The mount holding a flock lock is killed (-9): nobody releases the lock, and a
    waiter on the other mount gets it once the lock's lease (``locklease=10``) ran out on
    the servers: within the lease and a few seconds."""
    lease = 10.0
    options = f"{'allow_other,' if os.getuid() == 0 else ''}locklease={lease:g}"
    theirs = mounts[1] / "killed-holder"
    with Mount(cluster.config, tmp_path / "dying", client="client0", options=options) as dying:
        (dying.mountpoint / "killed-holder").write_bytes(b"x")
        with flock_holder(dying.mountpoint / "killed-holder"):
            assert flock_n(theirs, "-n") == 1
            assert dying.proc is not None
            os.kill(dying.proc.pid, signal.SIGKILL)
            start = time.monotonic()
            assert flock_n(theirs, "-w", str(3 * lease)) == 0
            waited = time.monotonic() - start
    assert waited < lease + 5, waited


def test_waiters_on_two_other_mounts_get_the_lock_in_turn(
    cluster: ProcessCluster, mounts: tuple[Path, Path], tmp_path: Path
) -> None:
    """Three mounts: a flock holder on one, a blocking ``flock -x`` on each of the others.
    When the holder lets go exactly one waiter gets the lock (woken by the nodes' push),
    and the other once that one lets go."""
    name = "waiters-in-turn"
    (mounts[0] / name).write_bytes(b"x")
    with Mount(cluster.config, tmp_path / "third", client="client2") as third:
        paths = [mounts[1] / name, third.mountpoint / name]
        with flock_holder(mounts[0] / name) as holder:
            argv = "flock -x {} sh -c 'echo held; cat >/dev/null'"
            waiters = [
                subprocess.Popen(
                    ["sh", "-c", argv.format(shlex.quote(str(p)))],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                for p in paths
            ]
            try:
                holder.let_go()
                outs = {w.stdout: w for w in waiters if w.stdout is not None}
                ready, _, _ = select.select(list(outs), [], [], PATIENCE)
                assert len(ready) == 1, "not exactly one waiter got the lock"
                first = outs[ready[0]]
                assert ready[0].readline().strip() == b"held"
                second = next(w for w in waiters if w is not first)
                assert second.stdout is not None
                assert select.select([second.stdout], [], [], 0)[0] == []  # still waiting
                assert first.stdin is not None
                first.stdin.close()
                assert first.wait(timeout=PATIENCE) == 0
                assert second.stdout.readline().strip() == b"held"
                assert second.stdin is not None
                second.stdin.close()
                assert second.wait(timeout=PATIENCE) == 0
            finally:
                for w in waiters:
                    if w.poll() is None:
                        w.kill()
                        w.wait()
                    for pipe in (w.stdin, w.stdout):
                        if pipe is not None:
                            pipe.close()


#: Takes an open-file-description lock (``F_OFD_SETLK``, exclusive, whole file) on each of
#: the files ``argv[1:]`` (one open each, in one process), printing "got" or "busy" per file,
#: then holds them until stdin closes.
OFD = """
import fcntl, struct, sys
files = [open(p, "r+b") for p in sys.argv[1:]]
for f in files:
    lock = struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 0, 0, 0)
    try:
        fcntl.fcntl(f, fcntl.F_OFD_SETLK, lock)
    except BlockingIOError:
        print("busy", flush=True)
    else:
        print("got", flush=True)
sys.stdin.read()
"""


def test_ofd_locks_belong_to_the_open_file_and_go_with_its_last_close(
    files: tuple[Path, Path],
) -> None:
    """OFD locks: a second open in the same process conflicts with the first (the lock is
    the open file's, not the process's), so does an open on the other mount; once the
    holder's file is closed (FUSE's release, sent after the close returns) the other mount
    gets it."""
    mine, theirs = files
    argv = [sys.executable, "-c", OFD, str(mine), str(mine)]
    with Holder(argv, b"got") as holder:
        assert holder.proc.stdout is not None
        assert holder.proc.stdout.readline().strip() == b"busy"  # its own second open
        other = subprocess.run(
            [sys.executable, "-c", OFD, str(theirs)], input=b"", capture_output=True,
            timeout=PATIENCE, check=True,
        )  # fmt: skip
        assert other.stdout.strip() == b"busy"
        holder.let_go()
    deadline = time.monotonic() + PATIENCE  # the release reaches the daemon after the exit
    while True:
        other = subprocess.run(
            [sys.executable, "-c", OFD, str(theirs)], input=b"", capture_output=True,
            timeout=PATIENCE, check=True,
        )  # fmt: skip
        if other.stdout.strip() == b"got":
            break
        assert time.monotonic() < deadline, "the OFD lock outlived its file's last close"


def test_a_lock_over_dirty_shared_mapped_pages_does_not_hang_the_mount(
    files: tuple[Path, Path], mounts: tuple[Path, Path]
) -> None:
    """The daemon dropped the kernel's pages of a file just locked from its event loop's
    thread, and the kernel first writes a shared mapping's dirty pages back through the
    daemon: a wait on itself (the whole mount hung; SQLite in WAL mode did it).  The
    pages now go from a worker thread; the other mount reads what the mapping wrote."""
    a, b = files
    a.write_bytes(b"x" * 8192)
    assert run_or_abort([sys.executable, "-c", MMAP_LOCK, str(a)], mounts[0]) == ""
    assert a.read_bytes()[:10] == b"dirtyagain"
    assert b.read_bytes()[:10] == b"dirtyagain"


def test_sqlite_in_wal_mode_commits_on_a_mount(mounts: tuple[Path, Path]) -> None:
    """SQLite's WAL mode (a shared mapping of its ``-shm`` file, locks on it) commits and
    reads back on a mount, in a subprocess so that a hang fails the test."""
    db = mounts[0] / "wal.sqlite"
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "assert c.execute('pragma journal_mode=wal').fetchone()[0] == 'wal'\n"
        "c.execute('create table t(k integer primary key, v text)')\n"
        "for i in range(10):\n"
        "    c.execute('insert into t(v) values (?)', (str(i),)); c.commit()\n"
        "print(c.execute('select count(*) from t').fetchone()[0])\n"
    )
    assert run_or_abort([sys.executable, "-c", code, str(db)], mounts[0]).strip() == "10"
