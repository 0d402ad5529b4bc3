"""Leases over a mount's router across groups (issue 66, ``fs/clients/groups.py``): three
in-memory groups serving the file system's types (``t1_groups_crossing.Groups``).  A
lease's recall and release name objects of several groups at once (an update's objects,
a mount's leases given back): each goes to every group for its objects, not EXDEV; and a
``lookupstat`` split over two groups raises another client's ``leased`` refusal as
itself, which the mount's calls recall (``fs/clients/calls.py``), not in an exception
group (answered EIO).  Both were found by the two-mount checker over three groups
(``tests/t4_groups_consistency.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from t1_groups_crossing import Groups, _clock, tree, virtual

from bftfs.fsobjects import ROOT
from bftfs.fsobjects.leases import EXCLUSIVE, MOUNT, tag_query
from bftfs.qu.objects import MethodRefused


def _lease(mount: int) -> dict[str, Any]:
    return {"kind": EXCLUSIVE, "lt": _clock(), "term": 30 * 10**9, MOUNT: mount}


def test_a_recall_and_a_release_across_groups_go_to_each_group() -> None:
    g = Groups()

    async def main() -> None:
        holder, other = g.mount(0), g.mount(1)
        a, b, f = await tree(g, holder)
        assert g.layout.group_of_object(f) != g.layout.group_of_object(b)
        for oid in (f, b):
            await holder.update(oid, "fs.lease", _lease(1))
        recalled = await other.update(sorted([f, b]), "fs.recall", {"lt": _clock(), MOUNT: 2})
        assert sorted(item[0] for item in recalled) == sorted([f, b])
        with pytest.raises(MethodRefused) as e:  # held, and being recalled
            await other.update(f, "fs.lease", _lease(2))
        assert e.value.code == "recalled"
        assert await holder.update(sorted([f, b]), "fs.release", {"lt": _clock(), MOUNT: 1}) is None
        assert holder.crossed == 0 and other.crossed == 0
        for oid in (f, b):  # released on both groups: the other takes them
            await other.update(oid, "fs.lease", _lease(2))

    virtual(main)


def test_a_split_lookupstat_raises_leased_as_itself() -> None:
    g = Groups()

    async def main() -> None:
        holder, other = g.mount(0), g.mount(1)
        a, _b, _f = await tree(g, holder)
        assert g.layout.group_of_object(a) != g.layout.group_of_object(ROOT)
        await holder.update(a, "fs.lease", _lease(1))
        entry = {"p": ROOT, "o": a, "name": b"a"}
        with pytest.raises(MethodRefused) as e:  # not an ExceptionGroup around it
            await other.query([ROOT, a], "fs.lookupstat", tag_query(entry, 2))
        assert e.value.code == "leased"
        got = await holder.query([ROOT, a], "fs.lookupstat", tag_query(entry, 1))
        assert got["e"][0] == a and got["s"] is not None

    virtual(main)
