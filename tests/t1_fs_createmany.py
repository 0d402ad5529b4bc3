"""Tier 1: ``fs.createmany`` (directory write-back, ``fs/writeback/``), through the ``fs``
registry as a node runs it: several files made in one update leave exactly what their
``fs.createwrite`` one after another would, or nothing; what a Byzantine client could slip
into a batch (a later time than the one nodes check, an object named twice or not at all)
is refused."""

from __future__ import annotations

import stat as st
from typing import Any

import pytest

from bftfs.fsobjects import FS, new_dir, stat_of
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry([FS])
DIR = 16
S = 10**9
T0 = 1_700_000_000 * S


def item(oid: int, name: bytes, content: bytes, now: int) -> dict[str, Any]:
    return {
        "o": oid,
        "name": name,
        "mode": st.S_IFREG | 0o644,
        "uid": 0,
        "gid": 0,
        "rdev": 0,
        "d": oid + 1000,
        "alloc": 0,
        "i": content,
        "now": now,
        "mtime": now,
        "attrs": {},
    }


FILES = [item(22 + 6 * k, b"f%d" % k, b"content %d" % k, T0 + k * S) for k in range(3)]


def states(*oids: int) -> dict[int, Any]:
    return {DIR: new_dir(1, 0o755, 0, 0, T0), **{o: None for o in oids}}


def createmany(files: list[dict[str, Any]], **top: Any) -> tuple[dict[int, Any], Any]:
    arg = {"p": DIR, "now": max(f["now"] for f in files), "files": files, **top}
    raw, answer = REG.update("fs.createmany", states(*(f["o"] for f in files)), arg, 7)
    return {oid: unpack(b) for oid, b in raw.items()}, answer


def test_a_batch_leaves_what_its_creates_one_after_another_leave() -> None:
    got, (stats, pst) = createmany(FILES)
    work = states(*(f["o"] for f in FILES))
    for f in FILES:
        one = {DIR: work[DIR], f["o"]: None}
        raw, _ = REG.update("fs.createwrite", one, {**f, "p": DIR}, 7)
        work.update({oid: unpack(b) for oid, b in raw.items()})
    assert got == work
    assert [s["size"] for s in stats] == [len(f["i"]) for f in FILES]
    assert pst == stat_of(work[DIR])


@pytest.mark.parametrize(
    ("files", "top", "why"),
    [
        ([FILES[0], {**FILES[1], "name": FILES[0]["name"]}], {}, "exists"),
        (FILES, {"now": T0}, "invalid"),  # a file dated after the time nodes check
        ([FILES[0], {**FILES[1], "p": DIR}], {}, "invalid"),
        ([FILES[0], {**FILES[1], "o": FILES[0]["o"]}], {}, "invalid"),
        ([], {}, "invalid"),
    ],
    ids=["a name twice", "a later time", "its own directory", "an object twice", "empty"],
)
def test_a_batch_one_of_whose_files_is_refused_makes_nothing(
    files: list[dict[str, Any]], top: dict[str, Any], why: str
) -> None:
    oids = {f["o"] for f in files} or {22}
    arg = {"p": DIR, "now": max((f["now"] for f in files), default=T0), "files": files, **top}
    with pytest.raises(MethodRefused) as e:
        REG.update("fs.createmany", states(*oids), arg, 7)
    assert e.value.code == why


def test_every_object_of_a_batch_but_the_directory_is_one_of_its_files() -> None:
    arg = {"p": DIR, "now": T0, "files": [FILES[0]]}
    with pytest.raises(MethodRefused, match="every object"):
        REG.update("fs.createmany", states(FILES[0]["o"], 99), arg, 7)


def test_a_file_without_content_is_made_as_its_create_would_with_its_write_lease() -> None:
    """An item with a write lease (``tok``) is a plain ``fs.create`` of a regular file (its
    creator writes its blocks next): the same state as that create, the lease included;
    another type of file is refused."""
    plain = {k: v for k, v in item(40, b"big", b"", T0).items() if k not in ("mtime", "attrs")}
    plain.update(tok=99, lease=30 * S)
    got, (stats, pst) = createmany([FILES[0], plain])
    work = states(FILES[0]["o"], 40)
    raw, _ = REG.update(
        "fs.createwrite", {DIR: work[DIR], FILES[0]["o"]: None}, {**FILES[0], "p": DIR}, 7
    )
    work.update({oid: unpack(b) for oid, b in raw.items()})
    raw, (alone, _) = REG.update("fs.create", {DIR: work[DIR], 40: None}, {**plain, "p": DIR}, 7)
    work.update({oid: unpack(b) for oid, b in raw.items()})
    assert got == work and stats[1] == alone
    assert got[40]["wl"][0] == 99 and got[40]["size"] == 0
    fifo = dict(plain, o=41, name=b"fifo", mode=st.S_IFIFO | 0o644)
    with pytest.raises(MethodRefused) as e:
        createmany([FILES[0], fifo])
    assert e.value.code == "invalid"


def test_unlinkmany_leaves_what_its_unlinks_one_after_another_leave() -> None:
    """``fs.unlinkmany`` (write-back of removals): the names go as their ``fs.unlink`` one
    after another would take them; one refused (a name that names another object) refuses
    them all."""
    made, _ = createmany(FILES)
    gone = [{"o": f["o"], "name": f["name"], "now": T0 + 9 * S} for f in FILES[:2]]
    arg = {"p": DIR, "now": T0 + 9 * S, "files": gone}
    states_ = {DIR: made[DIR], **{f["o"]: made[f["o"]] for f in FILES[:2]}}
    raw, (stats, _) = REG.update("fs.unlinkmany", states_, arg, 7)
    got = {oid: unpack(b) for oid, b in raw.items()}
    work = dict(states_)
    for g in gone:
        raw, _ = REG.update("fs.unlink", {DIR: work[DIR], g["o"]: work[g["o"]]}, {**g, "p": DIR}, 7)
        work.update({oid: unpack(b) for oid, b in raw.items()})
    assert got == work and [s["nl"] for s in stats] == [0, 0]
    wrong = [gone[0], {**gone[1], "o": FILES[2]["o"]}]  # f1's name does not name f2
    bad = {DIR: made[DIR], FILES[0]["o"]: made[FILES[0]["o"]], FILES[2]["o"]: made[FILES[2]["o"]]}
    with pytest.raises(MethodRefused):
        REG.update("fs.unlinkmany", bad, {**arg, "files": wrong}, 7)
