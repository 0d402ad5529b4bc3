"""Tier 3: a create whose update is sent again after it took effect (issue 65's EEXIST on
the WAN bed), on the in-process cluster with real TCP and LMDB.

A new directory outside a directory this mount holds comes leased (``NEW_LEASE``), and
its lease time is checked against every node's clock both ways.  When more than ``b``
nodes judge it too far behind (here: their copy of the request is held longer than the
skew, as a far link or a restarting node holds it) while the others apply it, the mount
sends the update again with a fresh time (``Meta._with_fresh_lease_time``); that send's
repair completes the first, and the method then finds the new object's id taken
(``oid-exists``).  ``_make`` took that for a clash of random ids, drew another, and the
name it had just made answered EEXIST.  Now the entry naming the drawn id shows the
update made it; a name truly taken still answers EEXIST, and an id truly taken another id.
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import RW_OPTIONS

from bftfs.fs.errors import Exists
from bftfs.fs.filesystem import open_file_system
from bftfs.fsobjects import DIR_TYPE, ROOT
from bftfs.fsobjects.leases import LEASE_SKEW
from bftfs.qu.messages import KIND_REQUEST
from bftfs.qu.request import Request
from bftfs.rw.client import open_rw_client
from bftfs.testing.cluster import open_cluster, qu_client

#: How long the late nodes hold the first mkdir's request: past the lease time's skew.
HOLD = LEASE_SKEW / 1e9 + 0.5


async def test_a_mkdir_sent_again_after_it_took_effect_answers_made(tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, clients=2) as cl,
        AsyncExitStack() as stack,
    ):
        cfg = cl.config
        late = list(range(1, cfg.b + 2))  # b + 1 nodes: their refusal decides
        first: dict[str, Any] = {}  # the first mkdir's request id and when it is let go
        held: set[int] = set()
        armed = trio.Event()

        def holder(node: int) -> Any:
            async def hold_first_mkdir(ctx: Any, payload: Any, honest: Any) -> Any:
                req = Request.from_bytes(payload, cfg.n) if isinstance(payload, bytes) else None
                op = None if req is None else req.op
                if armed.is_set() and op is not None and op.method == "fs.mkdir":
                    if "seq" not in first:
                        first.update(seq=op.seq, until=trio.current_time() + HOLD)
                    if op.seq == first["seq"] and trio.current_time() < first["until"]:
                        held.add(node)  # (its resends too, until the time is past)
                        await trio.sleep_until(first["until"])
                return await honest(ctx, payload)

            return hold_first_mkdir

        for i in late:
            cl.faults[i].byzantine(KIND_REQUEST, holder(i))
        rw = await stack.enter_async_context(open_rw_client(cl.client(0), cfg, **RW_OPTIONS))
        fs = await stack.enter_async_context(
            open_file_system(qu_client(cl, 0), rw, cfg, rng=random.Random(65), lease_term=30.0)
        )
        assert fs.meta.leases is not None
        fs.meta.leases.listen(cl.client(0), cfg.node_ids)

        raw = qu_client(cl, 1)
        # An id truly taken: the next id the mount draws is made first by another client.
        state = fs.meta.rng.getstate()
        squatted = fs.meta.new_oid(near=ROOT, spread=b"first")
        fs.meta.rng.setstate(state)
        arg = {"p": ROOT, "o": squatted, "name": b"squatter", "mode": 0o755, "uid": 0}
        await raw.update([ROOT, squatted], "fs.mkdir", {**arg, "gid": 0, "now": fs.meta.now()})
        drawn = await fs.mkdir(ROOT, b"first", 0o755, 0, 0)
        assert drawn.ino != squatted
        assert await raw.query(ROOT, "fs.lookup", b"squatter") == [squatted, DIR_TYPE]
        assert fs.meta.methods["fs.mkdir"] == 2  # refused oid-exists, then another id

        armed.set()
        made = await fs.mkdir(ROOT, b"top", 0o755, 0, 0)  # before: Exists

        assert held == set(late)  # the scenario: b + 1 nodes judged the first send late
        assert fs.meta.methods["fs.mkdir"] == 3  # one update, answered made, no new id
        assert await raw.query(ROOT, "fs.lookup", b"top") == [made.ino, DIR_TYPE]
        assert (await fs.lookup(ROOT, b"top")).ino == made.ino
        with pytest.raises(Exists):  # a name truly taken
            await fs.mkdir(ROOT, b"top", 0o755, 0, 0)
