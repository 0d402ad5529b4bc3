"""The table of inodes with no extended attribute that our pyfuse3 answers from before
the handlers (``bftfs/fuse/absentxattrs.py``, ``scripts/pyfuse3-locks.patch`` version 5,
issue 62); the C side is exercised through real mounts in ``t4_stat_leases.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyfuse3
import pytest

from bftfs.fuse import absentxattrs
from bftfs.fuse.absentxattrs import AbsentXattrs


@pytest.fixture
def table() -> Iterator[dict[int, float]]:
    """The installed pyfuse3's table, empty before and after the test."""
    pyfuse3.no_xattrs.clear()
    yield pyfuse3.no_xattrs
    pyfuse3.no_xattrs.clear()


def test_the_installed_pyfuse3_answers_from_the_table() -> None:
    """Patch 5 is what ``scripts/pyfuse3-locks.sh`` checks: a released pyfuse3 has no
    table, and the mount would then leave every request to its handlers."""
    assert pyfuse3.LOCKS_PATCH >= 5
    assert isinstance(pyfuse3.no_xattrs, dict)
    assert AbsentXattrs().enabled


def test_an_inode_is_noted_until_its_time_and_forgotten(table: dict[int, float]) -> None:
    absent = AbsentXattrs()
    start = time.monotonic()
    absent.note(7, 2.0)
    absent.note(8, 0.0)  # no time to keep it: not noted
    absent.note(9, -1.0)
    assert set(table) == {7}
    assert start + 2.0 <= table[7] <= time.monotonic() + 2.0
    absent.forget([7, 11])
    assert table == {}


def test_the_table_is_emptied_at_its_limit(
    table: dict[int, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(absentxattrs, "LIMIT", 3)
    absent = AbsentXattrs()
    for ino in (1, 2, 3):
        absent.note(ino, 5.0)
    absent.note(4, 5.0)
    assert set(table) == {4}


def test_without_the_patch_nothing_is_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pyfuse3, "no_xattrs")
    absent = AbsentXattrs()
    assert not absent.enabled
    absent.note(1, 5.0)
    absent.forget([1])
    absent.start()
    assert absent.answered() == 0
