"""The inode numbers of a live mount's snapshot directories (``fs/history/snapinodes.py``, issue
36): never a live object's, never one number for two things, stable for one thing."""

from __future__ import annotations

import random

import pytest

from bftfs.fs.history import SNAPDIR, InodeMap, is_live
from bftfs.fsobjects import MAX_OID, ROOT, SNAPSHOTS


def test_every_object_id_is_live_and_nothing_past_is() -> None:
    assert is_live(ROOT) and is_live(MAX_OID) and is_live(SNAPSHOTS)
    assert not is_live(SNAPDIR)
    m = InodeMap()
    assert not is_live(m.inode(("s", 1), ROOT))
    assert not is_live(m.inode(("s", 1), MAX_OID))


def test_one_object_of_one_view_keeps_its_number_and_nothing_else_gets_it() -> None:
    rng = random.Random(36)
    m = InodeMap()
    views = [("a", 10), ("b", 20), ("a", 30)]  # "a" made again at another moment
    oids = [ROOT, MAX_OID, *(rng.randrange(2, MAX_OID) for _ in range(200))]
    given = {(v, o): m.inode(v, o) for v in views for o in oids}
    assert len(set(given.values())) == len(given)  # one number per (view, object)
    assert all(ino > SNAPDIR for ino in given.values())  # none is .snapshots itself
    assert all(ino < 1 << 64 for ino in given.values())  # a kernel inode number
    for (v, o), ino in given.items():
        assert m.inode(v, o) == ino  # the same again, as often as the kernel asks
        assert m.lookup(ino) == (v, o)
    assert len(m) == len(given)


def test_numbers_never_given_are_unknown() -> None:
    m = InodeMap()
    m.inode(("s", 1), ROOT)
    assert m.lookup(ROOT) is None  # a live number
    assert m.lookup(SNAPDIR) is None
    assert m.lookup(SNAPDIR + 2) is None  # the next, not given yet


def test_what_is_no_object_id_has_no_number() -> None:
    m = InodeMap()
    for bad in (0, -1, MAX_OID + 1, SNAPDIR + 1):
        with pytest.raises(ValueError):
            m.inode(("s", 1), bad)
