"""Tier 1: a client's big frame arriving slowly is foreground activity (docs/wan.md item 1).

Across a WAN a write's batch of fragments (5.6 MB for 16 blocks) takes about 0.9 s to cross
a 50 Mbit/s link, longer than ``stream_idle_seconds`` (0.5 s).  Counting only requests
read, a node saw the gaps between whole frames as quiet: the run of client requests broke,
no stream was seen, and lazy verification ran on the links the write needed.  The server
now counts each chunk of a client's big frame (``FrameReader.on_progress`` calling
``Server.client_active``) like a request.

Under trio's ``MockClock`` a sender paces frames over a memory stream at a WAN link's rate
(the pacing is the link, not synchronisation); a sampler reads the node's stream state
(``rw/lazy.stream_state``, pure: time is an argument) every 50 ms of the transfer.
"""

from __future__ import annotations

import trio
import trio.testing

from bftfs.crypto import Identity, KeyRing
from bftfs.ids import PrincipalId
from bftfs.net.frames import LENGTH, FrameReader
from bftfs.net.server import Server
from bftfs.policy import VerificationPolicy
from bftfs.rw.lazy import stream_state

#: A write's batch to one node: 16 fragments of a 1 MiB block (m = 3).
FRAME = 16 * 349_726
#: 50 Mbit/s, sent in 64 KiB chunks (about 10 ms each).
RATE = 6.25e6
CHUNK = 64 * 1024
FRAMES = 4


def run_transfer(count_bytes: bool) -> list[tuple[bool, bool]]:
    """(streaming, verification would wait) at every 50 ms of a slow 4-frame write."""
    policy = VerificationPolicy()
    me = Identity.generate(PrincipalId(0))
    server: Server[None] = Server(KeyRing(me, {}), context=lambda _p: None)
    server.busy_gap = max(policy.stream_idle_seconds, policy.idle_seconds)
    samples: list[tuple[bool, bool]] = []

    async def main() -> None:
        send, receive = trio.testing.memory_stream_pair()
        reader = FrameReader(receive, max_frame=FRAME + 1024)
        if count_bytes:  # what Server._read_loop sets on a client's connection
            reader.on_progress = lambda _got, _left: server.client_active(trio.current_time())

        async def sender() -> None:
            for _ in range(FRAMES):
                data = LENGTH.pack(FRAME) + bytes(FRAME)
                for at in range(0, len(data), CHUNK):
                    await send.send_all(data[at : at + CHUNK])
                    await trio.sleep(CHUNK / RATE)

        async def receiver() -> None:
            for _ in range(FRAMES):
                frame = await reader.read()
                assert frame is not None and len(frame) == FRAME
                server.client_active(trio.current_time())  # the request, read whole

        async def sampler(done: trio.Event) -> None:
            start = trio.current_time()
            while not done.is_set():
                await trio.sleep(0.05)
                now = trio.current_time()
                if now - start > policy.stream_seconds + 0.9:  # past the first frame and 1 s
                    state = stream_state(
                        policy, now, server.last_client_request, server.client_busy_since
                    )
                    waits = now - server.last_client_request < state.idle_after
                    samples.append((state.streaming, waits))

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler, done)
            async with trio.open_nursery() as inner:
                inner.start_soon(sender)
                inner.start_soon(receiver)
            done.set()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]
    return samples


def test_a_slowly_arriving_write_is_a_stream_that_verification_waits_for() -> None:
    samples = run_transfer(count_bytes=True)
    assert len(samples) > 30  # 3.6 s of transfer, the last 1.7 s sampled
    assert all(streaming and waits for streaming, waits in samples)


def test_counting_only_requests_read_saw_the_same_write_as_quiet() -> None:
    """The rule before: frames 0.9 s apart broke the run, and verification ran in the gaps."""
    samples = run_transfer(count_bytes=False)
    assert not any(streaming for streaming, _ in samples)
    assert sum(not waits for _, waits in samples) > len(samples) // 2
