"""The snapshots as read-only directories inside a live mount (issue 36, "Browsing"):
real node processes, a real FUSE mount and the real command line.

``mount/.snapshots/NAME`` must show the tree as it was at snapshot ``NAME`` (files since
changed or removed read back as they were, files made since are absent), stay out of the
root's listing, refuse every change with EROFS, and list a snapshot made while the mount
runs.  Without the snapshot browser (``fs/history/snapshots.py``) ``.snapshots`` does not exist
in a mount and every test here fails at its first look inside it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bftfs.fs.history import SNAPDIR
from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: Seconds a test waits for what it polls (a listing to show a new snapshot).
DEADLINE = 15.0


def bftfs(cluster: ProcessCluster, *args: str) -> subprocess.CompletedProcess:
    """Run the real command line against ``cluster``; it must succeed."""
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(cluster.home / "cluster.toml")]
    got = subprocess.run(cmd, capture_output=True, timeout=120)
    if got.returncode != 0:
        raise AssertionError(f"{cmd} -> {got.returncode}: {got.stderr.decode()}")
    return got


def tree_of(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a directory."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
    return out


def files_and_bytes(root: Path) -> tuple[int, int]:
    """The regular files under ``root`` and their bytes, each inode once (``du -b``)."""
    seen: dict[int, int] = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            s = os.lstat(Path(dirpath, f))
            if stat.S_ISREG(s.st_mode):
                seen[s.st_ino] = s.st_size
    return len(seen), sum(seen.values())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, Path]]:
    """A cluster of real node processes and one live mount of it."""
    home = tmp_path_factory.mktemp("snapdirs") / "c"
    mp = tmp_path_factory.mktemp("mnt") / "m"
    with ProcessCluster(home, map_size=1 << 30, durable=False) as pc, Mount(pc.config, mp) as m:
        yield pc, m.mountpoint


@pytest.mark.slow
def test_a_snapshot_directory_shows_the_tree_as_it_was(
    setup: tuple[ProcessCluster, Path],
) -> None:
    cluster, mnt = setup
    rng = random.Random(36)
    top = mnt / "proj"
    (top / "sub").mkdir(parents=True)
    files = {
        "keep": b"unchanged",
        "changed": rng.randbytes(300_000),  # in PASIS blocks
        "small": b"inline, then rewritten",
        "gone": b"removed after the snapshot",
        "sub/deep": rng.randbytes(5000),
    }
    for rel, data in files.items():
        (top / rel).write_bytes(data)
    (top / "twin").hardlink_to(top / "keep")  # one file, two names: counted once
    then = tree_of(top)
    # What directory write-back holds (leases, on by default) reaches the nodes, and so a
    # snapshot, at an fsync of its directory (docs/history.md), as before a ZFS snapshot.
    fsync_paths(top, top / "sub")
    bftfs(cluster, "snapshot", "create", "before-edits")
    (top / "changed").write_bytes(b"x" * 1000)
    (top / "small").write_bytes(b"now")
    os.unlink(top / "gone")
    (top / "new").write_bytes(b"made after")
    shown = mnt / ".snapshots" / "before-edits" / "proj"
    assert tree_of(shown) == then
    assert (shown / "changed").read_bytes() == files["changed"]
    assert (shown / "gone").read_bytes() == files["gone"]
    assert not (shown / "new").exists()
    assert (top / "changed").read_bytes() == b"x" * 1000  # the live tree is the live one
    # One file in two snapshots is two versions: two inodes, the kernel mixes up neither
    fsync_paths(top)
    bftfs(cluster, "snapshot", "create", "after-edits")
    later = mnt / ".snapshots" / "after-edits" / "proj"
    assert (later / "changed").read_bytes() == b"x" * 1000
    assert (shown / "changed").read_bytes() == files["changed"]  # both cached now
    assert (later / "small").read_bytes() == b"now" and not (later / "gone").exists()
    assert os.stat(later / "changed").st_ino != os.stat(shown / "changed").st_ino
    assert os.stat(later / "changed").st_size == 1000
    assert os.stat(shown / "changed").st_size == len(files["changed"])
    # Inode numbers: above every live one, and not the live file's
    past, live = os.stat(shown / "keep"), os.stat(top / "keep")
    assert past.st_ino > SNAPDIR and live.st_ino < SNAPDIR
    assert os.path.samefile(shown / "keep", shown / "twin")
    assert os.stat(mnt / ".snapshots").st_ino == SNAPDIR
    # Going up from a snapshot's root leads to .snapshots, then to the mount's root
    assert os.path.samefile(shown / ".." / "..", mnt / ".snapshots")
    assert os.path.samefile(mnt / ".snapshots" / "..", mnt)
    # `snapshot list` counts the files and bytes the snapshot's directory shows
    listed = json.loads(bftfs(cluster, "snapshot", "list", "--json").stdout)["before-edits"]
    whole = files_and_bytes(mnt / ".snapshots" / "before-edits")
    assert (listed["files"], listed["bytes"]) == whole
    assert whole[1] >= sum(len(d) for d in files.values())  # (the others' files too)
    text = bftfs(cluster, "snapshot", "list").stdout.decode()
    assert f"{whole[0]} files" in text and "before-edits" in text


def test_the_snapshots_directory_is_hidden_from_the_roots_listing(
    setup: tuple[ProcessCluster, Path],
) -> None:
    cluster, mnt = setup
    (mnt / "visible").write_bytes(b"here")
    assert "visible" in os.listdir(mnt)
    assert ".snapshots" not in os.listdir(mnt)
    assert (mnt / ".snapshots").is_dir()  # reached by name
    with pytest.raises(OSError) as e:
        (mnt / ".snapshots").mkdir()
    assert e.value.errno == errno.EEXIST
    (mnt / "would-be").mkdir()
    for refused in (
        lambda: os.rmdir(mnt / ".snapshots"),
        lambda: os.rename(mnt / "would-be", mnt / ".snapshots"),
        lambda: os.utime(mnt / ".snapshots", (0, 0)),
    ):
        with pytest.raises(OSError) as e:
            refused()
        assert e.value.errno == errno.EROFS
    assert (mnt / "would-be").is_dir()


def test_every_change_under_snapshots_is_refused_with_erofs(
    setup: tuple[ProcessCluster, Path],
) -> None:
    cluster, mnt = setup
    (mnt / "ro").mkdir()
    (mnt / "ro" / "f").write_bytes(b"as it was")
    bftfs(cluster, "snapshot", "create", "frozen")
    snap = mnt / ".snapshots" / "frozen"
    f = snap / "ro" / "f"
    assert f.read_bytes() == b"as it was"
    attempts = {
        "write": lambda: f.write_bytes(b"x"),
        "append": lambda: open(f, "ab").close(),
        "create": lambda: (snap / "ro" / "new").write_bytes(b"x"),
        "mkdir": lambda: (snap / "ro" / "d").mkdir(),
        "unlink": lambda: f.unlink(),
        "rename": lambda: f.rename(snap / "ro" / "g"),
        "chmod": lambda: f.chmod(0o600),
        "utime": lambda: os.utime(f, (0, 0)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "mkdir in .snapshots": lambda: (mnt / ".snapshots" / "mine").mkdir(),
        "rmdir a snapshot": lambda: os.rmdir(snap),
        "move out": lambda: os.rename(f, mnt / "ro" / "stolen"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, what
    assert f.read_bytes() == b"as it was" and not (mnt / "ro" / "stolen").exists()
    with open(f, "rb") as handle:  # its inode is no object: no lock on the cluster
        with pytest.raises(OSError) as e:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert e.value.errno == errno.ENOLCK


def test_a_snapshot_made_while_mounted_appears_and_a_deleted_one_goes(
    setup: tuple[ProcessCluster, Path],
) -> None:
    cluster, mnt = setup
    listing = mnt / ".snapshots"
    assert "later" not in os.listdir(listing)
    (mnt / "while").write_bytes(b"then")
    bftfs(cluster, "snapshot", "create", "later")
    (mnt / "while").write_bytes(b"now")
    deadline = time.monotonic() + DEADLINE
    while "later" not in os.listdir(listing):
        assert time.monotonic() < deadline, f"not listed: {os.listdir(listing)}"
        time.sleep(0.1)
    assert (listing / "later" / "while").read_bytes() == b"then"
    names = json.loads(bftfs(cluster, "snapshot", "list", "--json").stdout)
    assert sorted(os.listdir(listing)) == sorted(names)
    bftfs(cluster, "snapshot", "delete", "later")
    deadline = time.monotonic() + DEADLINE
    while "later" in os.listdir(listing):
        assert time.monotonic() < deadline, f"still listed: {os.listdir(listing)}"
        time.sleep(0.1)
