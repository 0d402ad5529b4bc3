"""Tier 4: ``stat``, ``ls -l`` and extended attributes of files a mount holds leases on, or
holds back, answered in the mount (issue 62), through real mounts of node processes.

``ls -l`` asks every file for ``security.selinux`` (and its ACLs, which the FUSE layer
answers itself); each became a Q/U query, and one of a file whose create was held back
sent the held-back creates first.  Under a lease, or held back, the mount knows the
object has no extended attributes and answers ENODATA without a round; the kernel keeps
a held-back file's attributes for what is left of the lease it waits under, and forgets
them when another mount's look recalls it.  Counts come from the mount's Prometheus
metrics: Q/U operations by method (``bftfs_mount_qu_operations_total``; answers given in
the mount are counted as ``known ...`` and ``leased ...``) and kernel requests by operation.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import suite_cluster
from t4_leases import _lease_exclusively, _leases, _wait

from bftfs.fuse import control
from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: What ``ls -l`` asks of each file that reaches the mount's file system (strace of
#: coreutils 9.1; ``system.posix_acl_*`` are answered by the FUSE layer).
SELINUX = "security.selinux"
#: Files of the listed tree.
FILES = 24
#: Lease term and commit window of the mounts: long enough that nothing ends or is sent by
#: time alone while a test runs.
OPTIONS = "allow_other,metrics_port=0,lease=60,commit=60"
#: Rounds that keep leases (renewals, releases): not answers to what the test asks.
_UPKEEP = frozenset({"fs.lease", "fs.release"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with suite_cluster(tmp_path_factory.mktemp("cluster") / "c") as pc:
        yield pc


def _metrics(pc: ProcessCluster, m: Mount) -> Counter[str]:
    """The mount's Q/U operations by method (``qu <method>``) and kernel requests by
    operation (``fuse <op>``), now."""
    status = control.status_file(pc.config, m.mountpoint)
    _wait("the status file", 10, status.exists)
    address = json.loads(status.read_text())["metrics"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: Counter[str] = Counter()
    for line in text.splitlines():
        for prefix, kind in (
            ('bftfs_mount_qu_operations_total{method="', "qu"),
            ('bftfs_mount_request_duration_seconds_count{op="', "fuse"),
        ):
            if line.startswith(prefix):
                out[f"{kind} {line[len(prefix) :].split(chr(34))[0]}"] = int(
                    float(line.split()[-1])
                )
        if line.startswith("bftfs_mount_absent_xattr_answers_total "):
            out["absent xattrs"] = int(float(line.split()[-1]))
        if line.startswith("bftfs_mount_fast_dir_answers_total "):
            out["fast dirs"] = int(float(line.split()[-1]))
    return out


def _rounds(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    """Q/U operations sent to the nodes between two readings, by method (answers given in
    the mount and lease upkeep left out)."""
    out = {}
    for key, n in (after - before).items():
        kind, method = key.split(" ", 1)
        if kind == "qu" and " " not in method and method not in _UPKEEP:
            out[method] = n
    return out


def _no_attr(path: Path, name: str = SELINUX) -> bool:
    """Whether ``getxattr`` of ``name`` answers ENODATA (anything else fails the test)."""
    try:
        os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        assert e.errno == errno.ENODATA, e
        return True
    return False


def _tree(m: Mount, pc: ProcessCluster, name: str) -> tuple[Path, list[Path]]:
    """A directory ``name`` leased exclusively to ``m`` with :data:`FILES` more files in
    it, all sent (``fsync`` of the directory): the files are leased to ``m`` with their
    creates."""
    d = m.mountpoint / name
    d.mkdir()
    files = [d / n for n in _lease_exclusively(pc, m, d, "warm")]
    for i in range(FILES):
        (d / f"f{i}.c").write_bytes(b"int x;\n" * (i + 1))
        files.append(d / f"f{i}.c")
    fsync_paths(d)
    return d, files


def test_ls_l_of_leased_files_asks_the_nodes_nothing(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """``ls -lR`` of a tree the mount holds leases on, then each file's ``security.selinux``
    and ``listxattr``: ENODATA and no extended attribute, no Q/U round.  A file given an
    attribute answers its value, and ENODATA for another name."""
    with Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a:
        d, files = _tree(a, cluster, "tree")
        os.listdir(d)
        before = _metrics(cluster, a)
        listed = subprocess.run(["ls", "-lR", str(d)], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        for f in files:
            assert _no_attr(f)
            assert os.listxattr(f) == []
        after = _metrics(cluster, a)
        assert _rounds(before, after) == {}, after - before
        # (ls -l asks the files and the directory: every answer was given in the mount,
        # most before the handlers, fuse/absentxattrs.py)
        answered = after - before
        in_c = answered["absent xattrs"]
        assert answered["qu known fs.getxattr"] + in_c >= 2 * len(files), answered
        assert in_c >= len(files), answered
        tagged = d / "tagged"
        tagged.write_bytes(b"t")
        os.setxattr(tagged, "user.tag", b"value")
        assert os.getxattr(tagged, "user.tag") == b"value"
        assert _no_attr(tagged, "user.other")
        assert os.listxattr(tagged) == ["user.tag"]


def _walk(d: Path) -> dict[str, tuple[int, int, int]]:
    """Each entry under ``d`` (by path) with its number, mode and size, as ``find`` and
    the Andrew stat phase see them: a listing, then an ``lstat`` of each entry."""
    out = {}
    stack = [d]
    while stack:
        here = stack.pop()
        with os.scandir(here) as it:
            for e in it:
                s = e.stat(follow_symlinks=False)
                assert e.inode() == s.st_ino, e.path
                out[e.path] = (s.st_ino, s.st_mode, s.st_size)
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
    return out


def test_a_walk_of_a_held_tree_is_answered_before_the_handlers(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """A tree the mount holds, copied as ``cp -p`` does (write, then ``chmod``: the kernel
    holds each file's attributes), then walked: every ``opendir``, ``readdir`` and
    ``releasedir`` is answered in its callback (pyfuse3 patch 7), the entries listed
    bare (the kernel keeps the attributes it holds), so no handler runs and no ``stat``
    asks; names, numbers, types and sizes are the files'.  A file written since (the
    kernel dropped its attributes) is listed with them: its new size, still no ``stat``."""
    with Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a:
        d, files = _tree(a, cluster, "walked")
        sub = d / "sub"
        sub.mkdir()
        for i in range(3):
            (sub / f"s{i}.h").write_bytes(b"#define X\n" * (i + 1))
            files.append(sub / f"s{i}.h")
        for f in files:
            os.chmod(f, 0o640)
        before = _metrics(cluster, a)
        seen = _walk(d)
        after = _metrics(cluster, a)
        want = {str(f): (f.stat().st_ino, f.stat().st_mode, f.stat().st_size) for f in files}
        want[str(sub)] = (sub.stat().st_ino, sub.stat().st_mode, sub.stat().st_size)
        assert seen == want
        answered = after - before
        assert _rounds(before, after) == {}, answered
        for op in ("opendir", "readdir", "releasedir", "getattr", "lookup"):
            assert answered[f"fuse {op}"] == 0, answered
        assert answered["fast dirs"] >= 2 * 4, answered  # two directories: open, 2 reads, release
        grown = files[0]
        with open(grown, "ab") as f:
            f.write(b"/* more */\n" * 50)
        (d / "new.c").write_bytes(b"int y;\n")  # the listing changes: the kernel reads it again
        os.chmod(d / "new.c", 0o640)
        before = _metrics(cluster, a)
        seen = _walk(d)
        after = _metrics(cluster, a)
        assert seen[str(grown)][2] == grown.stat().st_size == want[str(grown)][2] + 550
        assert str(d / "new.c") in seen
        answered = after - before
        assert answered["fuse getattr"] == 0 and answered["fuse readdir"] == 0, answered


def test_an_open_files_new_attribute_is_read_back_while_it_is_open(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """The open file's kept attributes said it had none: the attribute just set answered
    ENODATA until the file was closed."""
    with Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a:
        f = a.mountpoint / "open"
        fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"data")
            assert _no_attr(f, "user.a")
            os.setxattr(f, "user.a", b"1")
            assert os.getxattr(f, "user.a") == b"1"
            assert os.listxattr(f) == ["user.a"]
            os.removexattr(f, "user.a")
            assert _no_attr(f, "user.a")
        finally:
            os.close(fd)


def test_another_mounts_new_attribute_recalls_and_is_seen(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Mount ``a`` answers ENODATA for its leased files in the mount; ``b`` sets an
    attribute on one (recalling ``a``'s lease) and removes one it set on another: ``a``
    reads the new value and the removal at once, nothing stale."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d, files = _tree(a, cluster, "shared")
        os.setxattr(files[1], "user.old", b"1")
        for f in files:
            os.listxattr(f)
        before = _metrics(cluster, a)
        assert _no_attr(files[0], "user.new")
        assert _no_attr(files[1], "user.new")
        assert _rounds(before, _metrics(cluster, a)) == {}
        there = b.mountpoint / "shared"
        os.setxattr(there / files[0].name, "user.new", b"from b")
        os.removexattr(there / files[1].name, "user.old")
        assert os.getxattr(files[0], "user.new") == b"from b"
        assert os.listxattr(files[0]) == ["user.new"]
        assert os.listxattr(files[1]) == []
        assert _no_attr(files[1], "user.old")


@pytest.mark.slow
def test_held_back_files_answer_stat_and_getxattr_without_sending(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Files whose creates wait in write-back: ``stat`` and ``getxattr`` are answered
    without sending them, the kernel keeps their attributes past the 1 s attribute timeout
    (no ``getattr`` request), and forgets them when another mount's look at the directory
    recalls the lease: its ``chmod`` shows within the attribute timeout."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d = a.mountpoint / "held"
        d.mkdir()
        _lease_exclusively(cluster, a, d, "warm")
        fsync_paths(d)
        held = [d / f"h{i}" for i in range(4)]
        deferred = _leases(cluster, a).get("deferred", 0)
        for f in held:
            f.write_bytes(b"held back")
        _wait("closes left to write-back", 10, lambda: _leases(cluster, a)["deferred"] > deferred)
        # Waiting out the 1 s the kernel was told at the creates (not a synchronisation:
        # the kernel's timer): the stats ask the mount, which answers the lease's time.
        time.sleep(1.5)
        modes = [f.stat().st_mode for f in held]
        before = _metrics(cluster, a)
        for f in held:
            assert _no_attr(f)
            assert os.listxattr(f) == []
        time.sleep(1.5)  # past the mount's attribute timeout: kept under the lease
        assert [f.stat().st_mode for f in held] == modes
        after = _metrics(cluster, a)
        assert _rounds(before, after) == {}, after - before
        assert (after - before)["fuse getattr"] == 0, after - before
        # (an O_PATH descriptor: its fstat is the kernel's cached attributes, no name is
        # looked up again)
        fd = os.open(held[0], os.O_PATH)
        try:
            os.chmod(b.mountpoint / "held" / held[0].name, 0o600)  # recalls a's lease on d
            # The kernel forgot what it kept under the lease: the new mode shows within the
            # attribute timeout (the create, sent with the release, answers its own
            # attributes that long: ``MetadataCache.own``), not after the lease's 60 s.
            started = time.monotonic()
            _wait("the new mode", 10, lambda: os.fstat(fd).st_mode & 0o777 == 0o600)
            assert time.monotonic() - started < 5
        finally:
            os.close(fd)
        assert (b.mountpoint / "held" / held[1].name).read_bytes() == b"held back"


def _value(path: Path, name: str) -> bytes | None:
    """``getxattr`` of ``name``, None for ENODATA."""
    return None if _no_attr(path, name) else os.getxattr(path, name, follow_symlinks=False)


def test_absent_attributes_are_answered_before_the_handlers_and_changes_show(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Without leases (``lease=0``): ``ls -l`` of files another mount made asks each for
    ``security.selinux`` and its ACL, and the servers' listing said they have none: every
    such request but the first, whose answer notes the entries listed with it, is
    answered by our pyfuse3 before the handlers (``fuse/absentxattrs.py``).  This mount's
    own ``setxattr`` reads back at once, its ``removexattr`` too, and another mount's
    ``setxattr`` shows within the attribute timeout of the answers the table was filled
    from, never later."""
    plain = "allow_other,metrics_port=0,lease=0"
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=plain) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=plain) as b,
    ):
        made = b.mountpoint / "plain"
        made.mkdir()
        for i in range(FILES):
            (made / f"f{i}").write_bytes(b"x" * i)
        fsync_paths(made)
        there = a.mountpoint / "plain"
        before = _metrics(cluster, a)
        ls = subprocess.run(["ls", "-l", str(there)], capture_output=True, text=True, timeout=60)
        assert ls.returncode == 0, ls.stderr
        answered = _metrics(cluster, a) - before
        # (selinux and ACL each; the first entry's selinux notes the others, listed with it)
        assert answered["absent xattrs"] >= 2 * FILES - 1, answered
        assert answered["fuse getxattr"] <= 1, answered
        mine = there / "f0"
        os.setxattr(mine, "user.mine", b"1")
        assert _value(mine, "user.mine") == b"1"
        assert os.listxattr(mine) == ["user.mine"]
        os.removexattr(mine, "user.mine")
        assert _value(mine, "user.mine") is None
        theirs = there / "f1"
        assert _value(theirs, "user.theirs") is None  # (noted: answered before the handlers)
        os.setxattr(made / "f1", "user.theirs", b"2")
        _wait("the other mount's attribute", 10, lambda: _value(theirs, "user.theirs") == b"2")


#: A process asking ``security.selinux`` of one file from four threads as fast as it can:
#: every request is answered in pyfuse3's callback (the file has no attribute), and one is
#: always queued, so the mount's worker never finds the device empty.
HAMMER = r"""
import os, sys, threading
path = sys.argv[1]
def ask():
    while True:
        try:
            os.getxattr(path, "security.selinux", follow_symlinks=False)
        except OSError:
            pass
for _ in range(4):
    threading.Thread(target=ask, daemon=True).start()
print("hammering", flush=True)
sys.stdin.read()
"""


def _within(code: str) -> None:
    """Run ``code`` (``os`` imported) in a process of its own; fail if it fails or takes
    more than 30 s (a request the mount never answers cannot hang the test)."""
    got = subprocess.run(
        [sys.executable, "-c", "import os\n" + code], capture_output=True, text=True, timeout=30
    )
    assert got.returncode == 0, got.stderr


def test_requests_answered_back_to_back_leave_the_loop_its_turn(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """While another process's requests, all answered in pyfuse3's callback, keep the
    device busy, a request that needs the servers still completes: the event loop gets
    its turns (pyfuse3 starts more workers, which yield to each other), and with them the
    servers' replies."""
    with Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a:
        d, files = _tree(a, cluster, "hammered")
        assert _no_attr(files[0])
        hammer = subprocess.Popen(
            [sys.executable, "-c", HAMMER, str(files[0])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert hammer.stdout is not None and hammer.stdout.readline().strip() == "hammering"
            before = _metrics(cluster, a)["absent xattrs"]
            with Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b:
                # b's create recalls a's lease on the directory (a answers it from its
                # event loop), then a lists the directory again (a round): each within
                # a bound far below the lease term, or the test fails, never hangs.
                _within(f"open({str(b.mountpoint / 'hammered' / 'from-b')!r}, 'w').close()")
                _within(f"assert 'from-b' in os.listdir({str(d)!r})")
            assert _metrics(cluster, a)["absent xattrs"] > before  # (it hammered meanwhile)
            assert hammer.poll() is None
        finally:
            hammer.kill()
            hammer.communicate(timeout=30)
