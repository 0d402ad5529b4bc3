"""Tier 1: ``fs.writemany`` (held files written back together, ``fs/writeback/writemany.py``),
through the ``fs`` registry as a node runs it: several files' inline contents in one update
leave exactly what each one's ``fs.write`` one after another would, or nothing; what a
Byzantine client could slip into a batch (a later time than the one nodes check, blocks,
an object named twice or not at all, a write on a stale version) is refused."""

from __future__ import annotations

from typing import Any

import pytest
from t1_fs_createmany import DIR, FILES, REG, T0, S, states

from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused


def made() -> dict[int, Any]:
    """Three small files, as ``fs.createmany`` leaves them."""
    raw, _ = REG.update(
        "fs.createmany",
        states(*(f["o"] for f in FILES)),
        {"p": DIR, "now": max(f["now"] for f in FILES), "files": FILES},
        7,
    )
    return {oid: unpack(b) for oid, b in raw.items() if oid != DIR}


def write(oid: int, f: dict[str, Any], content: bytes, now: int) -> dict[str, Any]:
    return {
        "o": oid,
        "d": f["d"],
        "v": f["v"],
        "tok": 5,
        "now": now,
        "end": len(content),
        "mtime": now,
        "i": content,
        "attrs": {},
    }


def writemany(files: dict[int, Any], items: list[dict[str, Any]], **top: Any) -> Any:
    arg = {"now": max(i["now"] for i in items), "files": items, **top}
    return REG.update("fs.writemany", dict(files), arg, 7)


def test_a_batch_leaves_what_its_writes_one_after_another_leave() -> None:
    files = made()
    items = [write(o, f, b"new %d" % o, T0 + 9 * S) for o, f in files.items()]
    raw, stats = writemany(files, items)
    got = {oid: unpack(b) for oid, b in raw.items()}
    work = dict(files)
    alone = []
    for it in items:
        one = {k: v for k, v in it.items() if k != "o"}
        r, s = REG.update("fs.write", {it["o"]: work[it["o"]]}, one, 7)
        work.update({oid: unpack(b) for oid, b in r.items()})
        alone.append(s)
    assert got == work and stats == alone
    assert [s["size"] for s in stats] == [len(it["i"]) for it in items]


@pytest.mark.parametrize(
    ("change", "top", "why"),
    [
        (lambda its: [its[0], {**its[1], "v": its[1]["v"] + 1}], {}, "stale"),
        (lambda its: its, {"now": T0}, "invalid"),  # dated after the time nodes check
        (lambda its: [its[0], {**its[1], "o": its[0]["o"]}], {}, "invalid"),
        (lambda its: [its[0], {**its[1], "bt": T0}], {}, "invalid"),
        (lambda its: [its[0], {k: v for k, v in its[1].items() if k != "i"}], {}, "invalid"),
        (lambda its: [], {"now": T0}, "invalid"),
    ],
    ids=["a stale version", "a later time", "an object twice", "blocks", "no content", "empty"],
)
def test_a_batch_one_of_whose_writes_is_refused_writes_nothing(
    change: Any, top: dict[str, Any], why: str
) -> None:
    files = made()
    items = change([write(o, f, b"x", T0 + 9 * S) for o, f in files.items()][:2])
    arg = {"now": max((i["now"] for i in items), default=T0), "files": items, **top}
    objects = {o: files[o] for o in list(files)[:2]}
    with pytest.raises(MethodRefused) as e:
        REG.update("fs.writemany", objects, arg, 7)
    assert e.value.code == why


def test_every_object_of_a_batch_is_one_it_writes() -> None:
    files = made()
    (o, f), *_ = files.items()
    with pytest.raises(MethodRefused, match="every object"):
        writemany(files, [write(o, f, b"x", T0 + 9 * S)])
