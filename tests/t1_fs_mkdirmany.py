"""Tier 1: ``fs.mkdirmany`` (write-back of mkdirs, ``fs/writeback/mkdirs.py``), through the
``fs`` registry as a node runs it: several directories made in one update leave exactly
what their ``fs.mkdir`` one after another would, or nothing; a batch asked with the
caller's exclusive lease on the parent (``lx``) leases every new directory as a lone
mkdir does; what a Byzantine client could slip into a batch is refused."""

from __future__ import annotations

from typing import Any

import pytest

from bftfs.crypto import VolumeKey
from bftfs.fs.clients.seal import Seal
from bftfs.fsobjects import FS, new_dir, stat_of
from bftfs.fsobjects.leases import EXCLUSIVE, holders
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry([FS])
DIR = 16
A, B = 101, 102
S = 10**9
T0 = 1_700_000_000 * S


def item(oid: int, name: bytes, now: int, mode: int = 0o755) -> dict[str, Any]:
    return {"o": oid, "name": name, "mode": mode, "uid": 0, "gid": 0, "now": now}


DIRS = [item(22 + 6 * k, b"%02x" % k, T0 + k * S, 0o700 + k) for k in range(4)]


def states(*oids: int, parent: Any = None) -> dict[int, Any]:
    return {DIR: parent or new_dir(1, 0o755, 0, 0, T0), **{o: None for o in oids}}


def update(
    method: str, got: dict[int, Any], arg: dict[str, Any], caller: int = A
) -> tuple[dict[int, Any], Any]:
    raw, answer = REG.update(method, got, arg, caller)
    return {oid: unpack(b) for oid, b in raw.items()}, answer


def mkdirmany(dirs: list[dict[str, Any]], parent: Any = None, **top: Any) -> Any:
    arg = {"p": DIR, "now": max(d["now"] for d in dirs), "files": dirs, **top}
    return update("fs.mkdirmany", states(*(d["o"] for d in dirs), parent=parent), arg)


def test_a_batch_leaves_what_its_mkdirs_one_after_another_leave() -> None:
    got, (stats, pst) = mkdirmany(DIRS)
    work = states(*(d["o"] for d in DIRS))
    for d in DIRS:
        made, _ = update("fs.mkdir", {DIR: work[DIR], d["o"]: None}, {**d, "p": DIR})
        work.update(made)
    assert got == work
    assert got[DIR]["nd"] == len(DIRS) and stat_of(got[DIR])["nl"] == 2 + len(DIRS)
    assert [s["mode"] & 0o7777 for s in stats] == [d["mode"] for d in DIRS]
    assert pst == stat_of(work[DIR])


@pytest.mark.parametrize(
    ("dirs", "top", "why"),
    [
        ([DIRS[0], {**DIRS[1], "name": DIRS[0]["name"]}], {}, "exists"),
        (DIRS, {"now": T0}, "invalid"),  # a directory dated after the time nodes check
        ([DIRS[0], {**DIRS[1], "p": DIR}], {}, "invalid"),
        ([DIRS[0], {**DIRS[1], "o": DIRS[0]["o"]}], {}, "invalid"),
        ([], {}, "invalid"),
    ],
    ids=["a name twice", "a later time", "its own directory", "an object twice", "empty"],
)
def test_a_batch_one_of_whose_directories_is_refused_makes_nothing(
    dirs: list[dict[str, Any]], top: dict[str, Any], why: str
) -> None:
    oids = {d["o"] for d in dirs} or {22}
    arg = {"p": DIR, "now": max((d["now"] for d in dirs), default=T0), "files": dirs, **top}
    with pytest.raises(MethodRefused) as e:
        REG.update("fs.mkdirmany", states(*oids), arg, A)
    assert e.value.code == why


def test_an_object_that_exists_is_no_new_directory() -> None:
    """A batch naming an existing object (a second send of a batch that took effect, or a
    client reusing an id) is refused whole, as a lone mkdir of it is."""
    taken = states(*(d["o"] for d in DIRS))
    taken[DIRS[2]["o"]] = new_dir(DIR, 0o755, 0, 0, T0)
    arg = {"p": DIR, "now": DIRS[-1]["now"], "files": DIRS}
    with pytest.raises(MethodRefused) as e:
        REG.update("fs.mkdirmany", taken, arg, A)
    with pytest.raises(MethodRefused) as alone:
        lone = {DIR: taken[DIR], DIRS[2]["o"]: taken[DIRS[2]["o"]]}
        REG.update("fs.mkdir", lone, {**DIRS[2], "p": DIR}, A)
    assert e.value.code == alone.value.code == "oid-exists"


def test_every_new_directory_of_a_batch_under_the_parents_lease_comes_leased() -> None:
    """``lx``: each directory of the batch is leased to the caller until its exclusive
    lease on the parent ends, as a lone ``fs.mkdir`` with ``lx`` leases it; another client
    holding no lease there gets none."""
    lease = {"kind": EXCLUSIVE, "lt": T0, "term": 30 * S}
    held, _ = update("fs.lease", {DIR: new_dir(1, 0o755, 0, 0, T0)}, lease)
    parent = held[DIR]
    got, _ = mkdirmany(DIRS, parent, lx=1, lt=T0 + S)
    for d in DIRS:
        assert holders(got[d["o"]]) == [[A, EXCLUSIVE, T0 + 30 * S, 0]]
    arg = {"p": DIR, "now": DIRS[-1]["now"], "files": DIRS, "lx": 1, "lt": T0 + 31 * S}
    other, _ = update("fs.mkdirmany", states(*(d["o"] for d in DIRS), parent=parent), arg, B)
    assert all(holders(other[d["o"]]) == [] for d in DIRS)


def test_the_names_of_a_batch_are_sealed_in_their_directory() -> None:
    """A volume with a key seals every name of a batch as a lone mkdir's, bound to the
    parent (``fs/clients/seal.py``): the nodes see no plain name."""
    seal = Seal(VolumeKey(bytes(range(32))))
    arg = {"p": DIR, "now": DIRS[-1]["now"], "files": DIRS}
    sealed = seal.seal_argument("fs.mkdirmany", arg, [DIR, *(d["o"] for d in DIRS)])
    names = [f["name"] for f in sealed["files"]]
    assert all(n not in {d["name"] for d in DIRS} for n in names)
    assert [seal.open_name(DIR, n) for n in names] == [d["name"] for d in DIRS]
    one = seal.seal_argument("fs.mkdir", {**DIRS[0], "p": DIR}, [DIR, DIRS[0]["o"]])
    assert seal.open_name(DIR, one["name"]) == DIRS[0]["name"]
