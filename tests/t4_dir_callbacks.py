"""Tier 4: our pyfuse3's directory requests answered in their C callback (patch 7,
``scripts/pyfuse3-locks.patch``), through a real FUSE mount of a tiny file system in a
process of its own: bare records list names with no attributes, and an answer the
callback cannot send is EIO, never a request left unanswered (a hung ``ls``)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bftfs.testing.mounts import fuse_available

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: The file system: one directory (the root) whose requests ``opendir_now`` and
#: ``readdir_now`` answer as MODE says: ``good`` lists ``f`` and ``d`` bare, ``open`` and
#: ``read`` answer what cannot be sent.
SCRIPT = r"""
import stat, sys
import pyfuse3, trio

class Ops(pyfuse3.Operations):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode
    async def getattr(self, inode, ctx=None):
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_mode = stat.S_IFDIR | 0o755
        e.st_nlink = 2
        return e
    async def opendir(self, inode, ctx):
        return 1
    async def readdir(self, fh, start, token):
        return None
    async def releasedir(self, fh):
        return None
    def opendir_now(self, inode, ctx):
        return "no handle" if self.mode == "open" else 7
    def readdir_now(self, fh, start, size):
        if self.mode == "read":
            return [(b"f", "no attributes", 1)]
        entries = [(b".", 1, 4, 1), (b"..", 1, 4, 2), (b"f", 20, 8, 3), (b"d", 21, 4, 4)]
        return entries[start:]
    def releasedir_now(self, fh):
        return True

pyfuse3.init(Ops(sys.argv[1]), sys.argv[2], {"fsname=bftfs-callbacks"})
print("ready", flush=True)
try:
    trio.run(pyfuse3.main)
finally:
    pyfuse3.close(unmount=True)
"""

#: Seconds a listing may take before the test calls it hung.
HUNG = 20


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``serve(mode)``: the file system mounted in ``MODE``; unmounted and stopped after."""
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(mode: str) -> Path:
        mnt = tmp_path / mode
        mnt.mkdir()
        child = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, mode, str(mnt)], stdout=subprocess.PIPE, text=True
        )
        started.append((child, mnt))
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + HUNG
        while not mnt.is_mount():
            assert time.monotonic() < deadline, "the file system was not mounted"
            time.sleep(0.01)
        return mnt

    yield start
    for child, mnt in started:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        child.terminate()
        child.wait(timeout=HUNG)
        if child.stdout is not None:
            child.stdout.close()


def _list(mnt: Path) -> subprocess.CompletedProcess[str]:
    """``os.listdir`` of ``mnt`` in a process of its own (a hung request cannot hang the
    test: the timeout fails it)."""
    return subprocess.run(
        [sys.executable, "-c", "import os, sys; print(sorted(os.listdir(sys.argv[1])))", mnt],
        capture_output=True,
        text=True,
        timeout=HUNG,
    )


def test_bare_records_list_names_without_attributes(serve: Callable[[str], Path]) -> None:
    mnt = serve("good")
    got = _list(mnt)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "['d', 'f']"


@pytest.mark.parametrize("mode", ["open", "read"])
def test_an_answer_the_callback_cannot_send_is_eio(serve: Callable[[str], Path], mode: str) -> None:
    mnt = serve(mode)
    got = _list(mnt)
    assert got.returncode != 0
    assert "Errno 5" in got.stderr, got.stderr
