"""Warnings name the path a call was about (issue 67): the FUSE layer keeps what the
kernel resolved (``fuse/paths.py``) instead of printing the arguments' repr."""

from __future__ import annotations

from types import SimpleNamespace

from bftfs.fuse.paths import LIMIT, KnownPaths, describe, learn


def _attr(ino: int) -> SimpleNamespace:
    return SimpleNamespace(st_ino=ino)


def test_lookups_creates_and_renames_name_inodes_and_handles() -> None:
    paths = KnownPaths()
    learn(paths, "mkdir", (None, 1, b"src", 0o755, None), _attr(10))
    learn(paths, "lookup", (None, 10, b"lua", None), _attr(11))
    learn(
        paths, "create", (None, 11, b"lapi.c", 0o644, 0, None), (SimpleNamespace(fh=7), _attr(12))
    )
    assert paths.path(12) == "/src/lua/lapi.c"
    assert describe(paths, "write", (None, 7, 0, b"x")) == "/src/lua/lapi.c (fh 7)"
    assert describe(paths, "unlink", (None, 11, b"old.c", None)) == "/src/lua/old.c"
    learn(paths, "rename", (None, 11, b"lapi.c", 10, b"api.c", 0, None), None)
    assert paths.path(12) == "/src/api.c"
    assert describe(paths, "rename", (None, 10, b"a", 1, b"b", 0, None)) == "/src/a -> /b"
    learn(paths, "release", (None, 7), None)
    assert describe(paths, "read", (None, 7, 0, 10)) == "fh 7"
    learn(paths, "opendir", (None, 10, None), (9, True))
    assert describe(paths, "readdir", (None, 9, 0, None)) == "/src (fh 9)"


def test_what_is_not_known_is_said_so_and_the_table_is_bounded() -> None:
    paths = KnownPaths()
    assert describe(paths, "getattr", (None, 99, None)) == "inode 99"
    paths.found(50, b"leaf", 51)  # its parent never seen
    assert paths.path(51) == ".../leaf"
    for i in range(LIMIT + 1):
        paths.found(1, b"f", 1000 + i)
    assert paths.path(51) == "inode 51"  # forgotten when the table filled
    assert paths.path(1000 + LIMIT) == "/f"


def test_a_rename_moves_the_inode_last_seen_under_the_name() -> None:
    """Found through an index (it walked every known name at each rename): a name found
    again for another inode is that inode's; a rename of a name not known moves nothing."""
    paths = KnownPaths()
    paths.found(1, b"a", 20)
    paths.found(1, b"a", 21)  # replaced (an atomic save): "a" is 21 now
    paths.found(1, b"b", 20)  # 20 seen under another name since
    paths.moved(1, b"a", 1, b"c")
    assert (paths.path(21), paths.path(20)) == ("/c", "/b")
    paths.moved(1, b"a", 1, b"d")  # nothing known as "a" any more
    paths.moved(1, b"b", 1, b"e")
    assert (paths.path(21), paths.path(20)) == ("/c", "/e")
