"""A cross-group removal on an out-of-date view of an entry (issue 66, ``layout/txn.py``
``OUT_OF_DATE``): over three in-memory groups (``t1_groups_crossing.Groups``), a mount
whose cache still maps ``a/f`` to a file of another group that was unlinked since (its
last link gone) unlinks ``a/f``, which now names a new file.  The directory's half
refuses ``stale`` (the entry names another object), the old file's half ``invalid``
(link count already zero): the refusal given is ``stale``, as the one-group method's,
so the file system reads again and retries, not EINVAL (the two-mount checker over
three groups found it, seed 5)."""

from __future__ import annotations

import pytest
from t1_groups_crossing import Groups, _clock, create, names, rename_arg, tree, virtual

from bftfs.qu.objects import MethodRefused


def test_a_stale_cross_group_unlink_is_refused_stale() -> None:
    g = Groups()

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        old = await create(g, qu, b, b"x")  # on b's group, moved into a: across groups
        await qu.update(sorted([b, a, old]), "fs.rename", rename_arg(b, b"x", a, b"y", old))
        gone = {"p": a, "o": old, "name": b"y", "now": _clock()}
        await qu.update(sorted([a, old]), "fs.unlink", gone)  # its last link
        new = await create(g, qu, a, b"y")
        assert g.layout.group_of_object(old) != g.layout.group_of_object(a)
        with pytest.raises(MethodRefused) as e:  # a mount still seeing a/y -> old
            await qu.update(sorted([a, old]), "fs.unlink", {**gone, "now": _clock()})
        assert e.value.code == "stale"
        assert (await names(qu, a))[b"y"] == new

    virtual(main)
