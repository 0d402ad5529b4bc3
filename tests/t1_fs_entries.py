"""Tier 1: bucketed directory entries (bftfs.fsobjects.dirents) against a plain dict model,
and the directory methods on both layouts (buckets, and the single map of older clusters)."""

from __future__ import annotations

import random

import msgpack
import pytest

from bftfs import fsobjects as obj
from bftfs.fsobjects import dirents as E
from bftfs.qu.canon import canonical, unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry(obj.OBJECT_TYPES)
NOW = 1_700_000_000_000_000_000


def _names(rng: random.Random, k: int) -> list[bytes]:
    return [f"n{rng.randrange(10**9)}-{i}".encode() for i in range(k)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_changes_match_a_dict_model(seed: int) -> None:
    rng = random.Random(seed)
    model: dict[bytes, list[int]] = {}
    e: object = {}
    pool = _names(rng, 400)
    for _ in range(1500):
        ents = E.Entries(e)
        for _ in range(rng.randrange(1, 4)):
            name = rng.choice(pool)
            if name in model and rng.random() < 0.5:
                del ents[name]
                del model[name]
            else:
                value = [rng.randrange(1, 1 << 62), rng.choice([4, 8, 10])]
                ents[name] = value
                model[name] = value
            assert ents.get(name) == model.get(name)
        assert ents.empty() == (not model)
        e = unpack(canonical(ents.packed()))  # as a server stores and reads it back
        assert E.all_entries(e) == dict(sorted(model.items()))
        assert E.is_empty(e) == (not model)
        assert all(e.values()), "empty buckets are never stored"
    assert len(e) <= E.BUCKETS


def test_an_update_repacks_only_the_bucket_it_touches() -> None:
    rng = random.Random(7)
    ents = E.Entries({})
    for name in _names(rng, 2000):
        ents[name] = [1, 8]
    before = ents.packed()
    again = E.Entries(before)
    again[b"new-name"] = [2, 8]
    after = again.packed()
    changed = [i for i in after if after[i] != before.get(i)]
    assert changed == [E.bucket_of(b"new-name")]
    assert all(after[i] is before[i] for i in before if i not in changed)


def _legacy_dir(names: dict[bytes, list[int]]) -> dict:
    d = obj.new_dir(obj.ROOT, 0o755, 0, 0, NOW)
    d["e"] = msgpack.packb(dict(sorted(names.items())), use_bin_type=True)
    return unpack(canonical(d))


def test_directories_of_older_clusters_read_and_move_to_buckets() -> None:
    """A directory state with ``e`` as one packed map (before buckets) answers lookups and
    readdir, takes creates and removals, and is stored with buckets afterwards."""
    d_oid, f_oid, g_oid = 5, 7, 9
    d = _legacy_dir({b"a": [f_oid, 8]})
    f = {**_new_file(), "nl": 1}
    assert REG.query("fs.lookup", {d_oid: d}, b"a") == [f_oid, 8]
    assert obj.entries(REG.query("fs.readdir", {d_oid: d}, None)) == {b"a": [f_oid, 8]}
    arg = {"p": d_oid, "o": g_oid, "name": b"b", "mode": 0o100644, "uid": 0, "gid": 0}
    arg.update(now=NOW, d=11, alloc=0)
    new, _ = REG.update("fs.create", {d_oid: d, g_oid: None}, arg)
    d2 = unpack(new[d_oid])
    assert isinstance(d2["e"], dict)
    assert obj.entries(d2) == {b"a": [f_oid, 8], b"b": [g_oid, 8]}
    arg = {"p": d_oid, "o": f_oid, "name": b"a", "now": NOW}
    new, _ = REG.update("fs.unlink", {d_oid: d2, f_oid: f}, arg)
    assert obj.entries(unpack(new[d_oid])) == {b"b": [g_oid, 8]}


def _new_file() -> dict:
    return {
        "k": "f", "mode": 0o100644, "uid": 0, "gid": 0, "rdev": 0, "nl": 0, "size": 0,
        "alloc": 0, "d": 3, "at": NOW, "mt": NOW, "ct": NOW, "t": None, "x": {}, "v": 0,
    }  # fmt: skip


def test_rmdir_and_rename_over_a_directory_check_emptiness_on_buckets() -> None:
    parent, child, f_oid = 5, 6, 7
    p = obj.new_dir(obj.ROOT, 0o755, 0, 0, NOW)
    p["e"] = E.Entries({}).packed()
    ents = E.Entries({})
    ents[b"c"] = [child, obj.DIR_TYPE]
    p["e"], p["nd"] = ents.packed(), 1
    c = obj.new_dir(parent, 0o755, 0, 0, NOW)
    cents = E.Entries({})
    cents[b"f"] = [f_oid, 8]
    c_full = dict(c, e=cents.packed())
    states = {parent: unpack(canonical(p)), child: unpack(canonical(c_full))}
    with pytest.raises(MethodRefused) as err:
        REG.update("fs.rmdir", states, {"p": parent, "o": child, "name": b"c", "now": NOW})
    assert err.value.code == "not-empty"
    states[child] = unpack(canonical(c))
    new, _ = REG.update("fs.rmdir", states, {"p": parent, "o": child, "name": b"c", "now": NOW})
    assert unpack(new[parent])["e"] == {}
