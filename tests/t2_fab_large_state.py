"""A FaB state larger than a frame crosses by chunked state transfer (bftfs/fab/chunks.py,
statetransfer.py): six replicas on loopback TCP with the transport's real 8 MiB frame
limit; node 5 is down while the metadata grows past 9 MiB and the others collect their
logs, then it starts empty, fetches the certified state piece by piece, and serves: with
another node stopped, nothing is learned without node 5's ACCEPTED (5 of 6 are needed).

Before chunks the state went in one SNAPSHOT frame, which the transport refuses above
8 MiB: node 5 never caught up and the last updates never completed.

Waits are on conditions under deadlines; the only time that passes is the ticker's.
"""

from __future__ import annotations

import trio
from t2_fab_tcp import Cluster, until

from bftfs.fab.metaclient import FabMetaClient
from bftfs.fab.replica import Settings
from bftfs.net.endpoint import open_endpoint
from bftfs.net.frames import DEFAULT_MAX_FRAME
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.cluster import TEST_ENDPOINT

Q = FabQuorums.standard(1)
#: Objects of VALUE bytes each: more than a frame in all.
OBJECTS, VALUE = 48, 200_000


async def test_a_node_down_while_the_state_outgrew_a_frame_catches_up_and_serves() -> None:
    cluster = Cluster()
    await cluster.listen()
    # a second of patience, as a node's (timeout 10 made needless view changes under load)
    settings = Settings(window=16, interval=8, timeout=50)
    services, scopes = cluster.services, cluster.scopes
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for i in range(5):  # node 5 is down
                cluster.start(nursery, i, settings)
            ring = cluster.ring(cluster.client)
            async with open_endpoint(ring, cluster.addresses, **TEST_ENDPOINT) as ep:
                client = FabMetaClient(ep, range(Q.a), Q.f, resend=0.5)
                for oid in range(1, OBJECTS + 1):
                    await client.update([oid], "kv.put", ["v", bytes([oid]) * VALUE])
                live = [s.replica for s in services]
                await until(lambda: all(r.checkpoints.stable >= OBJECTS for r in live), 30)
                whole = len(live[0].execution.snapshot())
                assert whole > DEFAULT_MAX_FRAME  # one SNAPSHOT could not carry it
                assert all(s > 8 for r in live for s in r.learner.learned)  # log collected

                cluster.start(
                    nursery, 5, settings
                )  # starts empty: the slots it missed are gone, only a state helps
                late = services[5].replica
                assert await client.update([1], "kv.get", "v") == bytes([1]) * VALUE
                await until(lambda: late.statistics().installed >= 1, 30)
                assert late.execution.objects[OBJECTS] == {"v": bytes([OBJECTS]) * VALUE}

                leader = live[0].election.leader()
                other = next(i for i in range(1, 5) if i != leader)
                scopes[other].cancel()  # now every slot needs node 5's ACCEPTED
                for k in range(3):
                    await client.update([1], "kv.put", [f"after{k}", b"x"])
                assert late.execution.objects[1]["after2"] == b"x"
            nursery.cancel_scope.cancel()
