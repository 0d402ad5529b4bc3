"""Tier 4: links to files whose create waits in write-back (issue 62,
``fs/writeback/links.py``), through real mounts of node processes.

git writes each object as a temporary file (``O_CREAT|O_EXCL``), links it to its final name
and unlinks the temporary: three rounds per object (the create sent ahead of the link, the
link, the unlink).  In a directory the mount holds exclusively the link is now answered in
the mount and the unlink of the temporary drops it: no round while it runs, one create of
the final name later.  Each test checks what the mount shows (names, link counts, inode
numbers, contents) and what a second mount sees once the first ``fsync``ed the directory
or the second one's look recalled the lease; the rounds are counted from the mount's
metrics (Q/U operations by method, ``t4_stat_leases._metrics``).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import suite_cluster
from t4_leases import _lease_exclusively
from t4_stat_leases import _metrics, _rounds

from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: Lease term and commit window: long enough that nothing is sent by time alone meanwhile.
OPTIONS = "allow_other,metrics_port=0,lease=60,commit=60"
#: Objects each test writes the way git does.
OBJECTS = 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with suite_cluster(tmp_path_factory.mktemp("cluster") / "c") as pc:
        yield pc


def _objects(seed: int) -> dict[str, bytes]:
    """``OBJECTS`` final names and their contents (seeded, a few hundred bytes: inline)."""
    rng = random.Random(seed)
    return {
        f"{i:02x}{rng.getrandbits(64):016x}": rng.randbytes(rng.randrange(1, 900))
        for i in range(OBJECTS)
    }


def _temporary(d: Path, data: bytes, name: str) -> Path:
    """A temporary object file as git writes one: ``O_CREAT|O_EXCL``, one write, close."""
    tmp = d / f"tmp_obj_{name[:6]}"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o444)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return tmp


def _git_objects(d: Path, objects: dict[str, bytes]) -> None:
    """Each object written as git's ``finalize_object_file`` does: link, unlink."""
    for name, data in objects.items():
        with contextlib.suppress(FileNotFoundError):  # git looks for it first: missing
            os.lstat(d / name)
        tmp = _temporary(d, data, name)
        os.link(tmp, d / name)
        os.unlink(tmp)


def _tree(d: Path) -> dict[str, tuple[int, bytes]]:
    """Each name of ``d``: its link count and content."""
    return {n: (os.lstat(d / n).st_nlink, (d / n).read_bytes()) for n in sorted(os.listdir(d))}


def test_git_objects_cost_no_round_and_a_second_mount_sees_them(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """git's create, link and unlink of the temporary, twelve times in a directory held
    exclusively: no Q/U round while it runs (before: three per object), each final name
    with one link and its content, no temporary left; after the directory's ``fsync`` a
    second mount sees the same tree, and the first mount's rounds for it are the batched
    creates (fewer than one per object), no link and no removal."""
    objects = _objects(1)
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d = a.mountpoint / "objects"
        d.mkdir()
        warm = _lease_exclusively(cluster, a, d, "warm")
        fsync_paths(d)
        before = _metrics(cluster, a)
        _git_objects(d, objects)
        during = _metrics(cluster, a)
        assert _rounds(before, during) == {}
        want = {n: (1, data) for n, data in objects.items()}
        want.update({w: (1, (d / w).read_bytes()) for w in warm})
        assert _tree(d) == want
        fsync_paths(d)
        sent = _rounds(during, _metrics(cluster, a))
        assert "fs.link" not in sent and "fs.unlink" not in sent, sent
        assert 0 < sum(sent.values()) < OBJECTS, sent
        assert _tree(b.mountpoint / "objects") == want


def test_a_link_kept_gives_two_names_of_one_file_everywhere(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """A link held back and not unlinked: both names lead to one inode with two links in
    the mount; the directory's ``fsync`` sends the create and the link, and the second
    mount sees both names, one inode, two links, the content."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d = a.mountpoint / "kept"
        d.mkdir()
        _lease_exclusively(cluster, a, d, "warm")
        fsync_paths(d)
        before = _metrics(cluster, a)
        tmp = _temporary(d, b"object body\n", "kept00")
        os.link(tmp, d / "final")
        assert _rounds(before, _metrics(cluster, a)) == {}
        assert os.stat(tmp).st_nlink == os.stat(d / "final").st_nlink == 2
        assert os.stat(tmp).st_ino == os.stat(d / "final").st_ino
        fsync_paths(d)
        sent = _rounds(before, _metrics(cluster, a))
        assert sent.get("fs.link") == 1, sent
        e = b.mountpoint / "kept"
        s1, s2 = os.stat(e / tmp.name), os.stat(e / "final")
        assert (s1.st_ino, s1.st_nlink) == (s2.st_ino, 2)
        assert (e / tmp.name).read_bytes() == (e / "final").read_bytes() == b"object body\n"


def test_removing_the_new_name_keeps_the_old_one(cluster: ProcessCluster, tmp_path: Path) -> None:
    """Link held back, then the new name removed (not the temporary): the old name stays
    with one link and its content, in the mount and, after a second mount's look recalls
    the lease, there too; the new name is gone in both."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d = a.mountpoint / "swap"
        d.mkdir()
        warm = _lease_exclusively(cluster, a, d, "warm")
        fsync_paths(d)
        tmp = _temporary(d, b"stays", "swap00")
        os.link(tmp, d / "final")
        os.unlink(d / "final")
        assert not (d / "final").exists()
        assert (os.stat(tmp).st_nlink, tmp.read_bytes()) == (1, b"stays")
        e = b.mountpoint / "swap"
        assert sorted(os.listdir(e)) == sorted([*warm, tmp.name])  # recalls a's lease
        assert ((e / tmp.name).stat().st_nlink, (e / tmp.name).read_bytes()) == (1, b"stays")


def test_a_recall_sends_the_link_held_back(cluster: ProcessCluster, tmp_path: Path) -> None:
    """Link held back, nothing ``fsync``ed: the second mount's listing recalls the lease
    and finds both names (the create, then the link), one inode with two links; the
    temporary's removal after that goes to the servers and the second mount sees the
    final name alone."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d = a.mountpoint / "recall"
        d.mkdir()
        warm = _lease_exclusively(cluster, a, d, "warm")
        fsync_paths(d)
        tmp = _temporary(d, b"seen", "recall")
        os.link(tmp, d / "final")
        e = b.mountpoint / "recall"
        assert sorted(os.listdir(e)) == sorted([*warm, tmp.name, "final"])
        assert os.stat(e / "final").st_nlink == 2
        assert os.stat(e / "final").st_ino == os.stat(e / tmp.name).st_ino
        os.unlink(tmp)
        fsync_paths(d)
        assert sorted(os.listdir(e)) == sorted([*warm, "final"])
        assert ((e / "final").stat().st_nlink, (e / "final").read_bytes()) == (1, b"seen")


def test_renaming_the_held_name_sends_the_link_first(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """A rename of the name a held link keeps: both names are on the servers before it, so
    the renamed name and the final name lead to one file with two links, here and in the
    second mount."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d = a.mountpoint / "moved"
        d.mkdir()
        _lease_exclusively(cluster, a, d, "warm")
        fsync_paths(d)
        tmp = _temporary(d, b"moved", "moved0")
        os.link(tmp, d / "final")
        os.rename(tmp, d / "other")
        assert not tmp.exists()
        assert os.stat(d / "other").st_ino == os.stat(d / "final").st_ino
        assert os.stat(d / "other").st_nlink == 2
        fsync_paths(d)
        e = b.mountpoint / "moved"
        assert not (e / tmp.name).exists()
        assert os.stat(e / "other").st_ino == os.stat(e / "final").st_ino
        assert ((e / "other").stat().st_nlink, (e / "other").read_bytes()) == (2, b"moved")


def test_an_unmount_sends_the_link_held_back(cluster: ProcessCluster, tmp_path: Path) -> None:
    """Link held back, the mount then unmounted without an ``fsync``: the unmount sends
    the create and the link, and a second mount sees both names of one file."""
    with Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b:
        with Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a:
            d = a.mountpoint / "unmounted"
            d.mkdir()
            warm = _lease_exclusively(cluster, a, d, "warm")
            fsync_paths(d)
            tmp = _temporary(d, b"at unmount", "unmnt0")
            os.link(tmp, d / "final")
        e = b.mountpoint / "unmounted"
        assert sorted(os.listdir(e)) == sorted([*warm, tmp.name, "final"])
        s1, s2 = os.stat(e / tmp.name), os.stat(e / "final")
        assert (s1.st_ino, s1.st_nlink) == (s2.st_ino, 2)
        assert (e / "final").read_bytes() == b"at unmount"


def test_a_link_over_an_existing_name_says_eexist(cluster: ProcessCluster, tmp_path: Path) -> None:
    """git writing an object it wrote already: the link's name is another file whose create
    waits too, so the link is not answered in the mount and the servers say EEXIST; both
    files keep their content and one link, here and in the second mount."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d = a.mountpoint / "dup"
        d.mkdir()
        _lease_exclusively(cluster, a, d, "warm")
        fsync_paths(d)
        (d / "final").write_bytes(b"first")
        tmp = _temporary(d, b"second", "dup000")
        with pytest.raises(FileExistsError):
            os.link(tmp, d / "final")
        assert [os.stat(p).st_nlink for p in (tmp, d / "final")] == [1, 1]
        fsync_paths(d)
        e = b.mountpoint / "dup"
        assert (e / "final").read_bytes() == b"first"
        assert ((e / tmp.name).stat().st_nlink, (e / tmp.name).read_bytes()) == (1, b"second")
