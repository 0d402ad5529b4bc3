"""A node process that loses power inside a Q/U update's LMDB transaction (issue 18).

Node 3 runs the ``power-cut-in-update`` profile: it ends (``os._exit``, no commit, no
clean-up) right after the first put of its third Q/U update step, while a client keeps
making directories.  Then:

1. its store, read directly while the process is dead, holds whole updates only: every
   object's newest candidate has its version and stored request, and no version lies
   beyond its object's history (an update split over two transactions would leave one
   half);
2. the client's operations all completed without it (t = 1);
3. restarted without the profile, the node catches up and then holds, for every object,
   the newest version the other nodes hold, with the same state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs import local
from bftfs.connect import open_client
from bftfs.fs.session import open_session
from bftfs.node.store import Store
from bftfs.qu import reads, schema
from bftfs.testing.byzantine.profiles import POWER_CUT_AT_STEP
from bftfs.testing.processes import ProcessCluster

CUT = 3  # the node that loses power (node 0 is the reference)


def _newest(pc: ProcessCluster, i: int) -> dict[int, tuple[Any, Any]]:
    """Every object's newest candidate on node ``i`` and its state, read from its LMDB
    directly (LMDB lets a second process read while the node runs), checking that each
    update is whole."""
    store = Store(pc.config.node(i).data_dir / "lmdb", map_size=pc.config.map_size, durable=False)
    try:
        return store.read(_whole_updates)
    finally:
        store.close()


def _whole_updates(kv: Any) -> dict[int, tuple[Any, Any]]:

    out = {}
    newest = {}
    for key, raw in kv.scan(schema.DB_RH, schema.oid_key(0), schema.OID_END):
        oid = int.from_bytes(bytes(key), "big")
        rh, _ = schema.load_rh_raw(bytes(raw))
        newest[oid] = lt = max(c.lt for c in rh)
        version = schema.load_version(kv, oid, lt)
        assert version is not None, f"object {oid}: history names {lt} but no version"
        assert schema.load_request(kv, lt) is not None, f"object {oid}: no request for {lt}"
        out[oid] = (lt, reads.read_version(kv, oid, lt))
    for oid, versions in _versions_by_object(kv).items():
        assert oid in newest, f"versions of object {oid} with no history"
        beyond = [v for v in versions if v > newest[oid]]
        assert not beyond, f"object {oid}: versions {beyond} beyond its history"
    return out


def _versions_by_object(kv: Any) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    for oid in {
        int.from_bytes(bytes(k)[:8], "big")
        for k, _ in kv.scan(schema.DB_VER, schema.oid_key(0), schema.OID_END)
    }:
        found[oid] = [v.lt for v in reads.versions(kv, oid)]
    return found


async def _make_dirs_until_cut(pc: ProcessCluster) -> list[bytes]:
    made = []
    async with open_session(pc.config, "client0") as s:
        for k in range(200):
            name = f"d{k}".encode()
            await s.fs.mkdir(obj.ROOT, name, 0o755, 0, 0)
            made.append(name)
            if local.running_pid(pc.config.node(CUT)) is None and k >= 5:
                break
        # Node CUT is gone: more updates, which it misses.
        for k in range(5):
            name = f"after{k}".encode()
            await s.fs.mkdir(obj.ROOT, name, 0o755, 0, 0)
            made.append(name)
    return made


async def _catch_up_done(pc: ProcessCluster) -> None:
    async with open_client(pc.config) as ep:
        with trio.fail_after(60):
            while True:
                stats = await ep.call(CUT, "stats", None)
                if stats["progress"].get("qu.catchup", {}).get("state") == "done":
                    return
                await trio.sleep(0.1)  # polling another process's progress


async def _names(pc: ProcessCluster) -> set[bytes]:
    async with open_session(pc.config, "client1") as s:
        return {name for name, _ in await s.fs.readdir(obj.ROOT)}


def test_power_cut_inside_an_update_leaves_whole_updates(tmp_path: Path) -> None:
    profile = ["--byzantine", "power-cut-in-update"]
    with ProcessCluster(tmp_path / "c", map_size=1 << 28, node_args={CUT: profile}) as pc:
        made = trio.run(_make_dirs_until_cut, pc)
        assert local.running_pid(pc.config.node(CUT)) is None, "the power cut never came"
        log = local.stderr_path(pc.config.node(CUT)).read_text()  # written as the power goes
        assert "process ends inside a write transaction" in log
        assert len(made) > POWER_CUT_AT_STEP

        after_cut = _newest(pc, CUT)
        assert after_cut, "the node committed nothing before the cut"
        others = _newest(pc, 0)
        assert len(after_cut) < len(others) or any(
            after_cut[o][0] < others[o][0] for o in after_cut
        ), "the node missed nothing while it was down"

        pc.node_args.pop(CUT)
        pc.start(CUT)
        trio.run(_catch_up_done, pc)
        assert _names_ok(trio.run(_names, pc), made)
        pc.stop(CUT)
        recovered = _newest(pc, CUT)
        reference = _newest(pc, 0)
        for oid, (lt, state) in reference.items():
            assert recovered.get(oid) == (lt, state), f"object {oid} behind after catch-up"


def _names_ok(names: set[bytes], made: list[bytes]) -> bool:
    return set(made) <= names
